//! Compiles `proto/safetytwin/v1/*.proto` with the protoc that `protoc-bin-vendored` ships, so
//! the build needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let protos =
        ["model.proto", "ingest.proto", "twin.proto"].map(|p| root.join("safetytwin/v1").join(p));
    // Without these cargo reruns the script only when the crate's own files change, and an
    // edited .proto would leave stale generated code behind.
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("safetytwin_v1.bin"),
        )
        .compile_protos(&protos, &[root])?;
    Ok(())
}

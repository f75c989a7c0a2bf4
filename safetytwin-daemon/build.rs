//! Embeds the eBPF object built by `cargo xtask build-ebpf`. When it has not been built, an
//! empty object is embedded and the daemon says how to build it (`--bpf-object` still works),
//! so the userspace workspace builds and tests on machines without the BPF toolchain.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("safetytwin-ebpf.o");
    println!("cargo:rerun-if-env-changed=SAFETYTWIN_EBPF_OBJECT");
    let object = env::var_os("SAFETYTWIN_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/safetytwin-ebpf")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes).expect("write embedded object"),
        Err(_) => {
            println!(
                "cargo:warning=eBPF object {} not found; embedding none (run `cargo xtask build-ebpf`)",
                object.display()
            );
            fs::write(&out, []).expect("write empty object");
        }
    }
}

//! The replayer's command line refuses unsafe or incomplete configurations with one clear line
//! and a non-zero exit, never a backtrace.

use std::process::Command;

fn serve(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_safetytwin-replayer"))
        .arg("serve")
        .args(args)
        .args([
            "--data",
            &std::env::temp_dir().join("st-cli").to_string_lossy(),
        ])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plaintext_only_on_loopback_and_tls_needs_every_file() {
    let (code, err) = serve(&["--insecure", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("only on a loopback address"), "{err}");
    assert!(!err.contains("panicked"));

    let (code, err) = serve(&["--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--tls-cert") && err.contains("--token-file"),
        "{err}"
    );

    let (code, err) = serve(&[
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        "/x",
        "--client-ca",
        "/x",
        "--token-file",
        "/x",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read /"), "{err}");
}

//! The shipped configuration file (`packaging/config/daemon.toml`) is valid for `run`, with its
//! commented defaults switched on too, and a bad file stops the daemon with one line naming the
//! key (exit 2), never a backtrace. No root needed: `--help` ends before the probes.

use std::process::Command;

fn daemon_run_help(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("daemon.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_safetytwin-daemon"))
        .args(["run", "--config"])
        .arg(&path)
        .arg("--help")
        .output()
        .unwrap()
}

#[test]
fn shipped_config_and_its_defaults_parse_and_bad_keys_are_named() {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/config/daemon.toml"
    ))
    .unwrap();
    let out = daemon_run_help(&shipped);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The documented defaults must be valid settings too.
    let defaults = safetytwin_cli::defaults_switched_on(&shipped);
    let out = daemon_run_help(&defaults);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = daemon_run_help("intervall = 5\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("key `intervall`") && !err.contains("panicked"),
        "{err}"
    );
}

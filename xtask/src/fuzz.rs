//! The fuzz targets in `fuzz/` (their own workspace): `cargo xtask fuzz` for long runs, and the
//! two passes `cargo xtask test` makes — every committed corpus file replayed through its
//! target on the stable toolchain, then, where cargo-fuzz is installed (`cargo xtask fuzz`
//! installs it), a short coverage-guided run of each target. On a fresh machine the first pass
//! costs about 80 s; the second would add the instrumented build (several minutes), so it is
//! left to machines that fuzz anyway.
//!
//! cargo-fuzz needs `-Z` flags; the rustup stable compiler takes them with `RUSTC_BOOTSTRAP=1`,
//! so no nightly toolchain is installed. The instrumented build lands in `fuzz/target`, apart
//! from the workspace's target directory, whose plain builds it would otherwise invalidate.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::{cargo_bin, root, run_cmd, step};

/// The targets, as named in `fuzz/Cargo.toml` and `fuzz/corpus/`.
pub const TARGETS: &[&str] = &["wire", "spool", "btf", "plan", "config", "host"];

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Seconds per target of the pass in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 5;

/// Whether cargo-fuzz (that version) is installed.
pub fn installed() -> bool {
    Command::new(cargo_bin().join("cargo-fuzz"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
        .unwrap_or(false)
}

/// Installs cargo-fuzz unless that version is there (about 70 s).
pub fn install() -> Result<()> {
    if installed() {
        return Ok(());
    }
    step(
        &format!("cargo install cargo-fuzz {CARGO_FUZZ_VERSION} (about 70 s)"),
        || {
            run_cmd(Command::new("cargo").args([
                "install",
                "--locked",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
            ]))
        },
    )
}

fn fuzz_dir() -> std::path::PathBuf {
    root().join("fuzz")
}

/// Every corpus and regression file through its target, on the stable toolchain (a plain
/// `cargo test` of the fuzz crate's library, sharing the workspace's target directory).
pub fn replay() -> Result<()> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .unwrap_or_else(|| root().join("target").into_os_string());
    step("fuzz corpora replayed (cargo test, fuzz/)", || {
        run_cmd(
            Command::new("cargo")
                .args(["test", "--lib"])
                .current_dir(fuzz_dir())
                .env("CARGO_TARGET_DIR", target_dir),
        )
    })
}

/// A `cargo fuzz` command in `fuzz/`, with the flags every call needs.
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("fuzz")
        .args(args)
        .current_dir(fuzz_dir())
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS");
    cmd
}

/// Runs `targets` (all when empty) one after the other for `seconds` each (0: not at all),
/// starting from their committed corpus. What they find goes to `fuzz/target/found/<target>/`,
/// never straight into the committed corpus; with `minimize`, the corpus is then replaced by
/// its minimized union with what was found. A crash, or an input slower than 10 s, fails the
/// run and leaves the input in `fuzz/artifacts/<target>/`.
pub fn run(targets: &[String], seconds: u64, minimize: bool) -> Result<()> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target `{t}` (targets: {})", TARGETS.join(", "));
        }
    }
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    // No AddressSanitizer: the targets are safe Rust, and it halves the execution rate.
    // Debug assertions and overflow checks stay on (cargo fuzz's default).
    step("cargo fuzz build", || {
        run_cmd(&mut cargo_fuzz(&["build", "--sanitizer", "none"]))
    })?;
    for target in targets {
        if seconds > 0 {
            fuzz(target, seconds)?;
        }
        if minimize {
            step(&format!("minimize corpus/{target}"), || {
                minimize_corpus(target)
            })?;
        }
    }
    Ok(())
}

fn fuzz(target: &str, seconds: u64) -> Result<()> {
    let max_time = format!("-max_total_time={seconds}");
    let found = fuzz_dir().join("target/found").join(target);
    std::fs::create_dir_all(&found)?;
    let found = found.to_str().expect("UTF-8 path");
    let corpus = Path::new("corpus").join(target);
    let corpus = corpus.to_str().expect("ASCII path");
    step(&format!("cargo fuzz run {target} ({seconds} s)"), || {
        run_cmd(&mut cargo_fuzz(&[
            "run",
            "--sanitizer",
            "none",
            target,
            found,
            corpus,
            "--",
            &max_time,
            // Inputs grow up to here; the seeds are a few kB, a whole kernel's BTF needless.
            "-max_len=65536",
            "-timeout=10",
            "-print_final_stats=1",
        ]))
    })?;
    Ok(())
}

/// Where cargo fuzz puts the target binaries (it builds for the host triple, explicitly).
const BINARIES: &str = "target/x86_64-unknown-linux-gnu/release";

/// Replaces `corpus/<target>/` by the fewest of its files and `target/found/<target>/` that
/// cover the same edges. Hit counts, compare operands and value profiles are not kept as
/// features: they multiply the inputs (1276 instead of 396 for `wire`) without new code
/// reached. The named seeds (`seed-*`) stay.
fn minimize_corpus(target: &str) -> Result<()> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    let merged = dir.join("target/merged").join(target);
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged)?;
    run_cmd(
        Command::new(dir.join(BINARIES).join(target))
            .args([
                "-merge=1",
                "-use_counters=0",
                "-use_cmp=0",
                "-use_value_profile=0",
                "-max_len=65536",
            ])
            .arg(&merged)
            .arg(&corpus)
            .arg(dir.join("target/found").join(target)),
    )?;
    for entry in std::fs::read_dir(&corpus)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with("seed-") {
            std::fs::remove_file(entry.path())?;
        }
    }
    for entry in std::fs::read_dir(&merged)? {
        let entry = entry?;
        std::fs::rename(entry.path(), corpus.join(entry.file_name()))?;
    }
    Ok(())
}

//! The lint that keeps serialization at the edge: only `safetytwin-proto` knows prost. Any
//! other workspace crate that names prost in its non-test sources (`src/**/*.rs`, `build.rs`)
//! or lists it among its normal or build dependencies fails `cargo xtask lint`, one line per
//! place. Tests, benches and the fuzz workspace may use prost directly (`[dev-dependencies]`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The crate that may know prost.
const PROTO: &str = "safetytwin-proto";

/// The crate name the check looks for (spelled once, so this file does not trip it).
const CRATE: &str = "prost";

/// Fails with every place outside `safetytwin-proto` that uses prost.
pub fn check(root: &Path) -> Result<()> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let metadata: Value = serde_json::from_slice(&out.stdout).context("cargo metadata")?;
    let mut found = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        if package["name"] == PROTO {
            continue;
        }
        let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
        if depends_on_prost(package) {
            found.push(format!(
                "{}: {CRATE} is a dependency outside [dev-dependencies]",
                shown(root, &manifest)
            ));
        }
        let dir = manifest.parent().unwrap_or(root);
        let mut files = vec![dir.join("build.rs")];
        sources(&dir.join("src"), &mut files)?;
        for file in files.iter().filter(|f| f.is_file()) {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            for (n, line) in text.lines().enumerate() {
                if uses_prost(line) {
                    found.push(format!("{}:{}: uses {CRATE}", shown(root, file), n + 1));
                    break;
                }
            }
        }
    }
    if !found.is_empty() {
        for f in &found {
            eprintln!("{f}");
        }
        bail!(
            "{} place(s) outside {PROTO} use {CRATE}: serialization stays at the edge \
             (use safetytwin_proto::wire or convert)",
            found.len()
        );
    }
    Ok(())
}

/// `path` relative to the workspace root, for the message.
fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            sources(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// Whether a package of `cargo metadata` lists prost as a normal or build dependency.
fn depends_on_prost(package: &Value) -> bool {
    package["dependencies"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| d["name"] == CRATE && d["kind"] != "dev")
}

/// Whether a line of Rust names the [`CRATE`]: a path into it (comments included) or an
/// import of it (a `use` or `extern crate` item), not another crate whose name merely ends
/// in it, such as tonic's.
fn uses_prost(line: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(CRATE).any(|(at, _)| {
        let before = &line[..at];
        let after = &line[at + CRATE.len()..];
        if before.chars().next_back().is_some_and(ident) || after.starts_with(ident) {
            return false;
        }
        let head = before.trim();
        after.starts_with("::")
            || ["use", "extern crate"].contains(&head)
            || (head.starts_with("pub") && head.ends_with(" use"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matcher_finds_prost_paths_and_imports_only() {
        let uses = |s: &str| uses_prost(&s.replace('%', CRATE));
        assert!(uses("use %::Message;"));
        assert!(uses("pub use %;"));
        assert!(uses("    use %::{Message, bytes::Buf};"));
        assert!(uses("fn f<T: %::Message>(t: T) {}"));
        assert!(uses("let e: %::DecodeError = todo();"));
        assert!(uses("    1 + ::%::length_delimiter_len(len) + len"));
        assert!(uses("extern crate %;"));
        assert!(uses("pub(crate) use % as wire;"));

        assert!(!uses("type Encoder = tonic_%::ProstEncoder<SyncResponse>;"));
        assert!(!uses("use tonic_%::ProstEncoder;"));
        assert!(!uses("/// Batches by (host, seq), %-encoded `DeltaBatch`."));
        assert!(!uses("// % would refuse it too"));
        assert!(!uses("//! Tests may use % directly."));
        assert!(!uses("let my_% = 1; reuse %x::a;"));
        assert!(!uses("const CRATE: &str = \"%\";"));
    }

    #[test]
    fn only_normal_and_build_dependencies_count() {
        let package = |kind: Value| {
            serde_json::json!({ "dependencies": [
                { "name": "tonic-prost", "kind": null },
                { "name": CRATE, "kind": kind },
            ]})
        };
        assert!(depends_on_prost(&package(Value::Null)));
        assert!(depends_on_prost(&package("build".into())));
        assert!(!depends_on_prost(&package("dev".into())));
    }
}

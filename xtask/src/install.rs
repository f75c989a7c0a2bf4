//! `install`: the release binaries into PREFIX/bin, the systemd units (from
//! `packaging/systemd/`, pointed at PREFIX) and their configuration files (from
//! `packaging/config/` to /etc/safetytwin/, never overwriting an operator's), and the state
//! directories.
//!
//! The plan is computed first and is pure, so `--dry-run` prints exactly what a real run would
//! do and the tests run it under a scratch root. Every step compares before it writes, so a
//! second install reports everything unchanged.

use std::{
    fmt, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The binaries, by name in `target/release` and in PREFIX/bin.
const BINARIES: [&str; 2] = ["safetytwin-daemon", "safetytwin-replayer"];
/// Where the shipped units say the binaries are; replaced by PREFIX/bin.
const SHIPPED_BIN_DIR: &str = "/usr/local/bin/";
/// The state directory: traversable by qemu (it opens its overlay under `twins/`), not listable.
const STATE_DIR: &str = "var/lib/safetytwin";

/// What one install step does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Create a directory (and its parents) if missing, and give it `mode`.
    Dir { path: PathBuf, mode: u32 },
    /// Write `to` with exactly these bytes and `mode` (replaced atomically: a binary may be
    /// running).
    File {
        from: PathBuf,
        to: PathBuf,
        mode: u32,
        /// The shipped text with this replacement applied (units: the binaries' directory).
        rewrite: Option<(String, String)>,
    },
    /// Write `to` from `from` only when `to` does not exist: the operator's settings win.
    FileIfAbsent { from: PathBuf, to: PathBuf },
}

/// What a step did, or would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Unchanged,
    KeptExisting,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Dir { path, mode } => write!(f, "directory {} ({mode:04o})", path.display()),
            Action::File { from, to, .. } => {
                write!(f, "{} -> {}", from.display(), to.display())
            }
            Action::FileIfAbsent { from, to } => {
                write!(f, "{} -> {} (if absent)", from.display(), to.display())
            }
        }
    }
}

/// Every step, in order. `source` is the workspace, `dest` the file system root (`/`, or a
/// scratch directory in tests).
fn plan(source: &Path, dest: &Path, prefix: &Path) -> Vec<Action> {
    let under = |p: &Path| dest.join(p.strip_prefix("/").unwrap_or(p));
    let bin_dir = under(&prefix.join("bin"));
    let bin_prefix = format!("{}/", prefix.join("bin").display());
    let mut actions = vec![
        Action::Dir {
            path: bin_dir.clone(),
            mode: 0o755,
        },
        Action::Dir {
            path: dest.join("etc/systemd/system"),
            mode: 0o755,
        },
        Action::Dir {
            path: dest.join("etc/safetytwin"),
            mode: 0o755,
        },
    ];
    for name in BINARIES {
        actions.push(Action::File {
            from: source.join("target/release").join(name),
            to: bin_dir.join(name),
            mode: 0o755,
            rewrite: None,
        });
        let unit = format!("{name}.service");
        actions.push(Action::File {
            from: source.join("packaging/systemd").join(&unit),
            to: dest.join("etc/systemd/system").join(&unit),
            mode: 0o644,
            rewrite: Some((SHIPPED_BIN_DIR.to_owned(), bin_prefix.clone())),
        });
        let config = format!("{}.toml", name.trim_start_matches("safetytwin-"));
        actions.push(Action::FileIfAbsent {
            from: source.join("packaging/config").join(&config),
            to: dest.join("etc/safetytwin").join(&config),
        });
    }
    actions.extend([
        Action::Dir {
            path: dest.join(STATE_DIR),
            mode: 0o711,
        },
        Action::Dir {
            path: dest.join(STATE_DIR).join("spool"),
            mode: 0o700,
        },
        // For the certificates the configuration files point at.
        Action::Dir {
            path: dest.join("etc/safetytwin/certs"),
            mode: 0o700,
        },
    ]);
    actions
}

fn mode_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

fn contents(from: &Path, rewrite: &Option<(String, String)>) -> Result<Vec<u8>> {
    let bytes = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    Ok(match rewrite {
        None => bytes,
        Some((old, new)) => String::from_utf8(bytes)
            .with_context(|| format!("{} is not UTF-8", from.display()))?
            .replace(old, new)
            .into_bytes(),
    })
}

impl Action {
    /// Does the step, or with `dry_run` only says what it would do.
    fn apply(&self, dry_run: bool) -> Result<Outcome> {
        match self {
            Action::Dir { path, mode } => {
                if path.is_dir() && mode_of(path) == Some(*mode) {
                    return Ok(Outcome::Unchanged);
                }
                if !dry_run {
                    fs::create_dir_all(path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                        .with_context(|| format!("cannot chmod {}", path.display()))?;
                }
                Ok(Outcome::Done)
            }
            Action::File {
                from,
                to,
                mode,
                rewrite,
            } => {
                if dry_run && !from.exists() {
                    // Not built yet: a real run builds it first.
                    return Ok(Outcome::Done);
                }
                let bytes = contents(from, rewrite)?;
                if fs::read(to).is_ok_and(|old| old == bytes) && mode_of(to) == Some(*mode) {
                    return Ok(Outcome::Unchanged);
                }
                if !dry_run {
                    write_atomically(to, &bytes, *mode)?;
                }
                Ok(Outcome::Done)
            }
            Action::FileIfAbsent { from, to } => {
                if to.exists() {
                    return Ok(Outcome::KeptExisting);
                }
                if !dry_run {
                    write_atomically(to, &contents(from, &None)?, 0o644)?;
                }
                Ok(Outcome::Done)
            }
        }
    }
}

/// Replaces `to` by a rename, so a running binary keeps its old inode (no ETXTBSY) and a
/// crash never leaves half a file.
fn write_atomically(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = to.file_name().context("no file name")?.to_string_lossy();
    let tmp = to.with_file_name(format!(".{name}.xtask-install"));
    fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("cannot replace {}", to.display()))
}

/// Runs the plan; prints each step and what it did. Returns how many steps changed something.
fn apply(actions: &[Action], dry_run: bool) -> Result<usize> {
    let mut changed = 0;
    for action in actions {
        let outcome = action.apply(dry_run)?;
        let what = match (outcome, dry_run) {
            (Outcome::Done, true) => "would install",
            (Outcome::Done, false) => "installed",
            (Outcome::Unchanged, _) => "unchanged",
            (Outcome::KeptExisting, _) => "kept (exists)",
        };
        changed += usize::from(outcome == Outcome::Done);
        eprintln!("    {what:>13}  {action}");
    }
    Ok(changed)
}

/// Checks unit files with `systemd-analyze verify`; `Ok(false)` when it is not installed.
fn verify_units(units: &[PathBuf]) -> Result<bool> {
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).context("cannot run systemd-analyze"),
    };
    if !out.status.success() {
        bail!(
            "systemd-analyze verify failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(true)
}

/// `cargo xtask install`: `build` builds the release binaries (skipped by `--dry-run`).
pub fn run(
    source: &Path,
    prefix: &Path,
    dry_run: bool,
    build: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if !prefix.is_absolute() {
        bail!("--prefix must be absolute, not {}", prefix.display());
    }
    let actions = plan(source, Path::new("/"), prefix);
    if dry_run {
        eprintln!(
            "==> dry run: would build the release binaries (setup, build-ebpf, cargo build --release), then:"
        );
        apply(&actions, true)?;
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "installing into {} and /etc needs root (or try --dry-run)",
            prefix.display()
        );
    }
    build()?;
    eprintln!("==> install");
    let changed = apply(&actions, false)?;
    eprintln!("    {changed} of {} steps changed something", actions.len());
    let units: Vec<PathBuf> = BINARIES
        .iter()
        .map(|b| Path::new("/etc/systemd/system").join(format!("{b}.service")))
        .collect();
    if verify_units(&units)? {
        eprintln!("    systemd-analyze verify: both units OK");
    } else {
        eprintln!("    systemd-analyze not found (apt-get install systemd): units not verified");
    }
    next_steps();
    Ok(())
}

fn next_steps() {
    eprintln!(
        "\nnext steps:\n\
         \x20 1. certificates: cargo xtask gen-certs --dir /etc/safetytwin/certs --name <replayer host>\n\
         \x20    --host <host id> (repeat per monitored host: its /etc/machine-id); copy ca.pem and\n\
         \x20    <host id>/daemon.pem, daemon.key to that host's /etc/safetytwin/certs\n\
         \x20 2. edit /etc/safetytwin/replayer.toml (controller) and /etc/safetytwin/daemon.toml\n\
         \x20    (monitored hosts): every setting is documented there with its default\n\
         \x20 3. systemctl daemon-reload\n\
         \x20    systemctl enable --now safetytwin-replayer.service   # on the controller\n\
         \x20    systemctl enable --now safetytwin-daemon.service     # on each monitored host"
    );
    if !Path::new("/run/systemd/system").is_dir() {
        eprintln!(
            "\nnote: systemd is not PID 1 on this machine, so the units cannot be started here;\n\
             run the binaries directly (e.g. `cargo xtask up`) or install on a systemd host."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> PathBuf {
        crate::root()
    }

    /// A workspace with stand-in binaries (the real ones need a release build).
    fn fake_source() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path();
        fs::create_dir_all(src.join("target/release")).unwrap();
        for b in BINARIES {
            fs::write(src.join("target/release").join(b), "#!/bin/sh\n").unwrap();
        }
        for dir in ["packaging/systemd", "packaging/config"] {
            fs::create_dir_all(src.join(dir)).unwrap();
            for entry in fs::read_dir(source().join(dir)).unwrap() {
                let entry = entry.unwrap();
                fs::copy(entry.path(), src.join(dir).join(entry.file_name())).unwrap();
            }
        }
        tmp
    }

    #[test]
    fn install_is_idempotent_and_keeps_the_operators_defaults() {
        let (src_dir, dest_dir) = (fake_source(), tempfile::tempdir().unwrap());
        let (src, dest) = (src_dir.path(), dest_dir.path());
        let prefix = Path::new("/opt/st");
        let actions = plan(src, dest, prefix);
        assert!(apply(&actions, true).unwrap() > 0);
        assert!(!dest.join("opt").exists(), "a dry run writes nothing");

        assert_eq!(apply(&actions, false).unwrap(), actions.len());
        let unit =
            fs::read_to_string(dest.join("etc/systemd/system/safetytwin-daemon.service")).unwrap();
        assert!(unit.contains(
            "ExecStart=/opt/st/bin/safetytwin-daemon run --config /etc/safetytwin/daemon.toml"
        ));
        assert!(!unit.contains(SHIPPED_BIN_DIR));
        assert_eq!(
            mode_of(&dest.join("opt/st/bin/safetytwin-replayer")),
            Some(0o755)
        );
        assert_eq!(mode_of(&dest.join("var/lib/safetytwin")), Some(0o711));
        assert_eq!(mode_of(&dest.join("var/lib/safetytwin/spool")), Some(0o700));

        let default = dest.join("etc/safetytwin/daemon.toml");
        fs::write(&default, "interval = 30\n").unwrap();
        assert_eq!(apply(&actions, false).unwrap(), 0, "nothing left to do");
        assert_eq!(fs::read_to_string(&default).unwrap(), "interval = 30\n");

        // A newer binary is installed again.
        fs::write(
            src.join("target/release/safetytwin-daemon"),
            "#!/bin/sh\n# v2\n",
        )
        .unwrap();
        assert_eq!(apply(&actions, false).unwrap(), 1);
    }

    /// The shipped units, as installed (pointing at real executables), pass
    /// `systemd-analyze verify` where it is installed.
    #[test]
    fn units_verify() {
        let (src_dir, dest_dir) = (fake_source(), tempfile::tempdir().unwrap());
        let (src, dest) = (src_dir.path(), dest_dir.path());
        // `verify` checks that ExecStart= is executable, from /: the prefix must hold them.
        let prefix_dir = tempfile::tempdir().unwrap();
        let prefix = prefix_dir.path();
        fs::create_dir_all(prefix.join("bin")).unwrap();
        for b in BINARIES {
            write_atomically(&prefix.join("bin").join(b), b"#!/bin/sh\n", 0o755).unwrap();
        }
        apply(&plan(src, dest, prefix), false).unwrap();
        let units: Vec<PathBuf> = BINARIES
            .iter()
            .map(|b| dest.join(format!("etc/systemd/system/{b}.service")))
            .collect();
        match verify_units(&units) {
            Ok(true) => {}
            Ok(false) => eprintln!("skipping units_verify: systemd-analyze is not installed"),
            Err(e) => panic!("{e:#}"),
        }
    }
}

//! The twin's virtual machine, behind a trait: the applier (`applier.rs`) decides what to do,
//! a backend does it inside one host's twin. `libvirt/` (cargo feature `libvirt`, on by
//! default) drives a QEMU/KVM domain and its guest agent; the trait keeps everything else
//! buildable and testable on machines without libvirt.
//!
//! Every call is blocking (libvirt's API is); async callers use `spawn_blocking`.

#[cfg(any(test, feature = "testing"))]
pub mod fake;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod plan;

use std::time::Duration;

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// libvirt refused or failed (connection, domain definition, snapshot).
    #[error("libvirt: {0}")]
    Libvirt(String),
    /// The guest agent did not answer in time or answered with an error.
    #[error("guest agent: {0}")]
    Agent(String),
    /// The twin image is missing or unusable.
    #[error("twin image: {0}")]
    Image(String),
    /// Local I/O (overlay, console log).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No snapshot of that name.
    #[error("no snapshot {0:?}")]
    NoSuchSnapshot(String),
}

/// The domain's run state, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Not defined.
    Absent,
    /// Defined, not running.
    ShutOff,
    /// Running.
    Running,
    /// Paused (e.g. while a snapshot is taken).
    Paused,
    /// Anything else (crashed, in shutdown, pmsuspended).
    Other,
}

impl DomainState {
    /// The word operators see in `Status`.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Absent => "absent",
            DomainState::ShutOff => "shut off",
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::Other => "other",
        }
    }
}

/// The result of a program run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (or 128 + signal).
    pub code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// One snapshot of a twin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its name (`<host>-<seq>`, see [`snapshot_name`]).
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub created_unix: i64,
}

/// Ready to apply: how long bringing the twin up took, and whether it was adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ensured {
    /// The domain existed (and possibly ran) before.
    pub adopted: bool,
    /// From the call to the first answer of the guest agent.
    pub took: Duration,
}

/// A twin VM per host. `host` is always the host id as the daemon sent it; backends derive
/// their own names from it ([`domain_name`]).
pub trait TwinBackend: Send + Sync + 'static {
    /// Creates and boots the host's twin on first contact, or adopts (and starts) the one that
    /// exists; returns once its guest agent answers.
    fn ensure(&self, host: &str) -> Result<Ensured, VmError>;

    /// The domain's run state.
    fn state(&self, host: &str) -> Result<DomainState, VmError>;

    /// Writes `bytes` to `path` in the guest (created or truncated; mode and owner are the
    /// caller's business).
    fn write_file(&self, host: &str, path: &str, bytes: &[u8]) -> Result<(), VmError>;

    /// Reads a whole file from the guest.
    fn read_file(&self, host: &str, path: &str) -> Result<Vec<u8>, VmError>;

    /// Runs `argv` (argv[0] an absolute path) in the guest and waits for it, up to `timeout`.
    fn exec(&self, host: &str, argv: &[String], timeout: Duration) -> Result<ExecOutput, VmError>;

    /// Runs several programs at once (they are independent) and waits for all of them.
    fn exec_all(
        &self,
        host: &str,
        argvs: &[Vec<String>],
        timeout: Duration,
    ) -> Result<Vec<ExecOutput>, VmError>;

    /// Takes a snapshot named `name` of the running twin (disk and memory).
    fn snapshot(&self, host: &str, name: &str) -> Result<(), VmError>;

    /// Reverts the twin to snapshot `name`; it is running again afterwards.
    fn revert(&self, host: &str, name: &str) -> Result<(), VmError>;

    /// Deletes snapshot `name`.
    fn delete_snapshot(&self, host: &str, name: &str) -> Result<(), VmError>;

    /// The twin's snapshots, oldest first.
    fn snapshots(&self, host: &str) -> Result<Vec<SnapshotInfo>, VmError>;

    /// The release (codename, `bookworm`) new twins run, when the backend knows it; a host of
    /// another release cannot have a twin from it.
    fn release(&self) -> Option<String> {
        None
    }
}

/// Longest host id a twin's names keep as it is.
const KEPT_MAX: usize = 64;
/// How much of an id a hashed name shows, to stay readable.
const SHOWN_MAX: usize = 40;
/// Hex digits of the id's SHA-256 in a hashed name (80 bits: no one finds a second id with the
/// same name).
const HASH_HEX: usize = 20;

fn name_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The libvirt domain of a host's twin, also the stem of its overlay, console log and
/// snapshots. Operators find it with `virsh list`: `safetytwin-<host>` when the id is short and
/// made of `[A-Za-z0-9_.-]` only without `--` (every name so far). Any other id (`a/b`,
/// unicode, over 64 bytes) becomes `safetytwin-<readable part>--<hash>`, the readable part
/// with unsafe characters as `_`, the hash of the exact id: two ids never share a name, since
/// kept ids never contain `--` and hashed names always do.
pub fn domain_name(host: &str) -> String {
    if host.len() <= KEPT_MAX && host.chars().all(name_safe) && !host.contains("--") {
        return format!("safetytwin-{host}");
    }
    use sha2::Digest;
    let shown: String = host
        .chars()
        .map(|c| if name_safe(c) { c } else { '_' })
        .take(SHOWN_MAX)
        .collect();
    let hash: String = sha2::Sha256::digest(host.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("safetytwin-{shown}--{}", &hash[..HASH_HEX])
}

/// The snapshot taken after applying `seq` of `host`.
pub fn snapshot_name(host: &str, seq: u64) -> String {
    format!("{}-{seq}", domain_name(host))
}

/// The seq a snapshot name stands for (None for snapshots this replayer did not name).
pub fn snapshot_seq(host: &str, name: &str) -> Option<u64> {
    name.strip_prefix(&domain_name(host))?
        .strip_prefix('-')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_and_round_trip() {
        assert_eq!(domain_name("web-1.example"), "safetytwin-web-1.example");
        let name = snapshot_name("web-1", 42);
        assert_eq!(name, "safetytwin-web-1-42");
        assert_eq!(snapshot_seq("web-1", &name), Some(42));
        assert_eq!(snapshot_seq("web-2", &name), None);
        assert_eq!(snapshot_seq("web", &name), None);
        assert_eq!(snapshot_seq("web-1", "manual"), None);
        let hashed = domain_name("a/b c");
        assert!(hashed.starts_with("safetytwin-a_b_c--"), "{hashed}");
        let name = snapshot_name("a/b c", 7);
        assert_eq!(snapshot_seq("a/b c", &name), Some(7));
        assert_eq!(snapshot_seq("a_b_c", &name), None);
    }

    #[test]
    fn no_two_ids_share_a_name() {
        let long = "h".repeat(KEPT_MAX + 1);
        let longer = "h".repeat(KEPT_MAX + 2);
        let unicode_twin = format!("{}--x", "_".repeat(2));
        let ids = [
            "web_1",
            "web-1",
            "a.b",
            "a-b",
            "a_b",
            "a/b",
            "a b",
            "a\nb",
            "Web-1",
            "WEB-1",
            "héte",
            "hête",
            "h_te",
            "日本",
            "中国",
            "__",
            unicode_twin.as_str(),
            &long,
            &longer,
            &"h".repeat(KEPT_MAX),
            "a--b",
            "a__b",
        ];
        let mut seen = std::collections::BTreeMap::new();
        for id in ids {
            let name = domain_name(id);
            assert!(name.chars().all(name_safe), "{name}");
            assert!(name.len() <= "safetytwin-".len() + KEPT_MAX, "{name}");
            if let Some(other) = seen.insert(name.clone(), id) {
                panic!("{id:?} and {other:?} both map to {name}");
            }
        }
        // A kept id that imitates a hashed name cannot take it over.
        let fake = domain_name("a/b")
            .trim_start_matches("safetytwin-")
            .to_owned();
        assert_ne!(domain_name(&fake), domain_name("a/b"));
        // Snapshot names embed the host: one host's snapshot never parses as another's.
        for a in ids {
            for b in ids {
                if a != b {
                    assert_eq!(snapshot_seq(b, &snapshot_name(a, 12)), None, "{a:?} {b:?}");
                }
            }
        }
    }
}

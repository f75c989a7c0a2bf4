//! Builders of model values for tests, shared by the workspace's crates so that each test
//! names only what it is about and a change to a model type is made here once.
//!
//! Compiled for this crate's tests and, through the `fixtures` feature, for other crates' tests
//! (they enable it in their `[dev-dependencies]` only): nothing that ships links it.
//!
//! The values are plausible, not real: everything is root's, and a regular file's hash is the
//! placeholder [`SHA256`], not its content's (which no engine check needs). A test that compares
//! hashes computes its own. A test that needs another mode, owner or content starts from these
//! with struct update syntax (`FileState { mode: 0o640, ..fixtures::text("x") }`).

use std::collections::BTreeSet;

use crate::{
    Batch, BatchHeader, Content, DeltaBatch, FileDelta, FileKind, FileState, Package,
    PackageStatus, Process, Unit, UnitRuntime, units::unit_type_of,
};

/// The hash every [`text`] file carries: 64 lower-case hex digits, so the wire accepts it.
pub const SHA256: &str = "abababababababababababababababababababababababababababababababab";

/// A regular file holding `content` as text, mode 0644.
pub fn text(content: &str) -> FileState {
    FileState {
        kind: FileKind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: content.len() as u64,
        sha256: Some(SHA256.to_owned()),
        content: Content::Text(content.to_owned()),
        link_target: None,
    }
}

/// A directory with `mode`.
pub fn dir(mode: u32) -> FileState {
    FileState {
        kind: FileKind::Directory,
        mode,
        uid: 0,
        gid: 0,
        size: 0,
        sha256: None,
        content: Content::None,
        link_target: None,
    }
}

/// A symbolic link to `target`, mode 0777.
pub fn symlink(target: &str) -> FileState {
    FileState {
        kind: FileKind::Symlink,
        mode: 0o777,
        uid: 0,
        gid: 0,
        size: target.len() as u64,
        sha256: None,
        content: Content::None,
        link_target: Some(target.to_owned()),
    }
}

/// `path` now has `state`.
pub fn upsert(path: &str, state: FileState) -> FileDelta {
    FileDelta::Upsert {
        path: path.to_owned(),
        state,
    }
}

/// Unit `name`, its type from its suffix, with a cgroup (`/system.slice/NAME`) that has tasks
/// when `active`; no unit file, not enabled.
pub fn unit(name: &str, active: bool) -> Unit {
    Unit {
        name: name.to_owned(),
        unit_type: unit_type_of(name),
        runtime: Some(UnitRuntime {
            cgroup: format!("/system.slice/{name}"),
            cgroup_id: 7,
            active,
            main_pid: None,
        }),
        fragment_path: None,
        dropins: Vec::new(),
        enabled_by: BTreeSet::new(),
    }
}

/// Process `pid` running `exe` (its comm the file name, its argv `[exe]`), a child of pid 1
/// in cgroup 1.
pub fn process(pid: u32, exe: &str) -> Process {
    Process {
        pid,
        ppid: 1,
        uid: 0,
        gid: 0,
        comm: exe.rsplit('/').next().unwrap_or(exe).to_owned(),
        exe: exe.to_owned(),
        argv: vec![exe.to_owned()],
        cgroup_id: 1,
    }
}

/// Package `name` for amd64 at `version`, installed.
pub fn package(name: &str, version: &str) -> Package {
    Package {
        name: name.to_owned(),
        arch: "amd64".to_owned(),
        version: version.to_owned(),
        status: PackageStatus::Installed,
    }
}

/// Batch `seq` of `host` (boot `boot`) holding `delta`; the other header fields are zero.
pub fn batch(host: &str, seq: u64, delta: DeltaBatch) -> Batch {
    Batch {
        header: BatchHeader {
            host_id: host.to_owned(),
            boot_id: "boot".to_owned(),
            seq,
            ..BatchHeader::default()
        },
        delta,
    }
}

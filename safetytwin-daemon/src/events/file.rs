//! `file` events: a change to a file under a watched tree, with absolute, normalised paths.

use safetytwin_common::events::{
    Event,
    file::{FileData, FileOp},
};

use super::{ProcInfo, lossy};
use crate::clock::BootClock;

const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;

/// A file-changing syscall (reported at entry: it may yet fail, and the daemon reads what it
/// names to know), or a file whose inode was dirtied ([`FileOp::Write`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The writer, and when.
    pub info: ProcInfo,
    /// What it did; `None` for an op id this daemon does not know.
    pub op: Option<FileOp>,
    /// Syscall number.
    pub syscall: u32,
    /// Open, rename or `AT_*` flags.
    pub flags: u64,
    /// Mode argument (open with O_CREAT, mkdir, chmod).
    pub mode: u32,
    /// New owner uid for chown (`None`: unchanged).
    pub owner_uid: Option<u32>,
    /// New owner gid for chown (`None`: unchanged).
    pub owner_gid: Option<u32>,
    /// The changed path, absolute and normalised.
    pub path: String,
    /// Rename destination or link source (absolute), or symlink target (as written).
    pub new_path: Option<String>,
    /// A directory walk was cut short: `path` may lack leading components.
    pub truncated: bool,
}

impl FileChange {
    /// The op as the trace stream names it.
    pub fn op_name(&self) -> &'static str {
        match self.op {
            Some(FileOp::Open) if self.flags & O_CREAT != 0 => "create",
            Some(FileOp::Open) if self.flags & O_TRUNC != 0 => "truncate",
            Some(FileOp::Open) => "write",
            Some(FileOp::Rename) => "rename",
            Some(FileOp::Unlink) => "unlink",
            Some(FileOp::Link) => "link",
            Some(FileOp::Symlink) => "symlink",
            Some(FileOp::Mkdir) => "mkdir",
            Some(FileOp::Rmdir) => "rmdir",
            Some(FileOp::Chmod) => "chmod",
            Some(FileOp::Chown) => "chown",
            Some(FileOp::Truncate) => "truncate",
            Some(FileOp::Write) => "write",
            None => "unknown",
        }
    }
}

/// `/`-separated lexical normalisation: drops empty and `.` segments and applies `..`.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Joins the kernel's directory and path strings into one absolute, normalised path.
pub fn join(dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        normalize(path)
    } else {
        normalize(&format!("{dir}/{path}"))
    }
}

fn field(buf: &[u8], len: u32) -> String {
    lossy(&buf[..(len as usize).min(buf.len())])
}

/// `buf[skip..len]`: the part of a path the kernel did not already apply to its directory.
fn rest(buf: &[u8], len: u32, skip: u32) -> String {
    let len = (len as usize).min(buf.len());
    lossy(&buf[(skip as usize).min(len)..len])
}

pub(super) fn decode(bytes: &[u8], clock: &BootClock) -> FileChange {
    let ev = Event::<FileData>::read_from(bytes).expect("length checked by caller");
    let d = &ev.data;
    let op = FileOp::from_u32(d.op);
    let path = join(
        &field(&d.dir, d.dir_len),
        &rest(&d.path, d.path_len, d.path_skip),
    );
    let new_path = match op {
        Some(FileOp::Rename | FileOp::Link) => Some(join(
            &field(&d.new_dir, d.new_dir_len),
            &rest(&d.new_path, d.new_path_len, d.new_path_skip),
        )),
        Some(FileOp::Symlink) => Some(field(&d.new_path, d.new_path_len)),
        _ => None,
    };
    let owner = |id: u32| (id != u32::MAX).then_some(id);
    FileChange {
        info: ProcInfo::from_raw(&ev.info, clock),
        op,
        syscall: d.syscall,
        flags: d.flags,
        mode: d.mode,
        owner_uid: owner(d.owner_uid),
        owner_gid: owner(d.owner_gid),
        path,
        new_path,
        truncated: d.truncated != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_relative_paths_and_normalises() {
        assert_eq!(join("/etc", "a.conf"), "/etc/a.conf");
        assert_eq!(join("", "etc/x"), "/etc/x");
        assert_eq!(join("/root", "../etc/./x//y"), "/etc/x/y");
        assert_eq!(join("/ignored", "/etc/hosts"), "/etc/hosts");
        assert_eq!(normalize("/../.."), "/");
    }
}

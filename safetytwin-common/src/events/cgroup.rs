//! `cgroup`: a cgroup of the unit hierarchy was created, removed, got a task, or became
//! (un)populated (tp_btf `cgroup_mkdir`, `cgroup_rmdir`, `cgroup_attach_task`,
//! `cgroup_notify_populated`). systemd names a unit's cgroup after the unit, so these are the
//! unit lifecycle; other hierarchies are filtered out in the kernel.

use super::Event;

/// Bytes of the cgroup path (relative to the hierarchy root, starting with `/`) that are kept.
pub const CGROUP_PATH_LEN: usize = 256;

/// What happened to the cgroup.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CgroupOp {
    /// `cgroup_mkdir`.
    Mkdir = 1,
    /// `cgroup_rmdir`.
    Rmdir = 2,
    /// `cgroup_attach_task`: a process (thread group) moved in.
    Attach = 3,
    /// `cgroup_notify_populated`: `value` is 1 when the cgroup (or a descendant) got its first
    /// task, 0 when its last task left.
    Populated = 4,
}

impl CgroupOp {
    /// The op with this id.
    pub const fn from_u32(v: u32) -> Option<CgroupOp> {
        match v {
            1 => Some(CgroupOp::Mkdir),
            2 => Some(CgroupOp::Rmdir),
            3 => Some(CgroupOp::Attach),
            4 => Some(CgroupOp::Populated),
            _ => None,
        }
    }
}

/// Data of a cgroup event. The header's task is the one that triggered it.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct CgroupData {
    /// A [`CgroupOp`].
    pub op: u32,
    /// For `Populated`, 1 or 0; for `Attach`, the moved process's tgid; else 0.
    pub value: u32,
    /// The cgroup's id (the kernfs node id, i.e. its directory's inode number).
    pub cgroup_id: u64,
    /// Depth below the hierarchy root (the root is 0).
    pub level: u32,
    /// Valid bytes of `path`.
    pub path_len: u32,
    /// Path relative to the hierarchy root, e.g. `/system.slice/nginx.service`.
    pub path: [u8; CGROUP_PATH_LEN],
}

/// A cgroup record.
pub type CgroupEvent = Event<CgroupData>;

const _: () = assert!(core::mem::size_of::<CgroupData>() == 24 + CGROUP_PATH_LEN);

//! `cgroup` events: a cgroup of the unit hierarchy changed; `units` maps it to a systemd unit.

use safetytwin_common::events::{
    Event,
    cgroup::{CgroupData, CgroupOp},
};

use super::{ProcInfo, lossy};
use crate::clock::BootClock;

/// A change to a cgroup of the unit hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupChange {
    /// The task whose action caused it, and when.
    pub info: ProcInfo,
    /// What happened; `None` for an op id this daemon does not know.
    pub op: Option<CgroupOp>,
    /// For `Populated`, 1 or 0; for `Attach`, the moved process.
    pub value: u32,
    /// The cgroup's id (its directory's inode number).
    pub cgroup_id: u64,
    /// Depth below the hierarchy root.
    pub level: u32,
    /// Path relative to the hierarchy root.
    pub path: String,
}

pub(super) fn decode(bytes: &[u8], clock: &BootClock) -> CgroupChange {
    let ev = Event::<CgroupData>::read_from(bytes).expect("length checked by caller");
    let d = &ev.data;
    let path_len = (d.path_len as usize).min(d.path.len());
    CgroupChange {
        info: ProcInfo::from_raw(&ev.info, clock),
        op: CgroupOp::from_u32(d.op),
        value: d.value,
        cgroup_id: d.cgroup_id,
        level: d.level,
        path: lossy(&d.path[..path_len]),
    }
}

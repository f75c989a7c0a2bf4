//! `fork` events: a new process exists; it still runs its parent's program.

use safetytwin_common::events::{Event, fork::ForkData};

use super::ProcInfo;
use crate::clock::BootClock;

/// A process was created. `info` describes the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// The child, and when.
    pub info: ProcInfo,
    /// The process that called fork/clone (the `ppid` unless `CLONE_PARENT`).
    pub creator_pid: u32,
}

pub(super) fn decode(bytes: &[u8], clock: &BootClock) -> Fork {
    let ev = Event::<ForkData>::read_from(bytes).expect("length checked by caller");
    Fork {
        info: ProcInfo::from_raw(&ev.info, clock),
        creator_pid: ev.data.creator_pid,
    }
}

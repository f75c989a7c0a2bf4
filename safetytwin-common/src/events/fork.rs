//! `fork`: a new process (a new thread group) was created (tp_btf `sched_process_fork`); new
//! threads are filtered out in the kernel. The header describes the child.

use super::Event;

/// Data of a fork event.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ForkData {
    /// Thread group id of the task that called fork/clone; differs from the child's `ppid`
    /// with `CLONE_PARENT`.
    pub creator_pid: u32,
    /// Always zero; keeps the record free of implicit padding.
    pub _reserved: u32,
}

/// A fork record.
pub type ForkEvent = Event<ForkData>;

const _: () = assert!(core::mem::size_of::<ForkEvent>() == 64);

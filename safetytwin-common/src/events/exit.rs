//! `exit`: the last thread of a process exited (tp_btf `sched_process_exit` with
//! `group_dead`); thread exits are filtered out in the kernel.

use super::Event;

/// Data of an exit event.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ExitData {
    /// `task_struct.exit_code`: a wait(2) status (exit code in bits 8–15, signal in 0–6).
    pub status: u32,
    /// Always zero; keeps the record free of implicit padding.
    pub _reserved: u32,
}

/// An exit record.
pub type ExitEvent = Event<ExitData>;

const _: () = assert!(core::mem::size_of::<ExitEvent>() == 64);

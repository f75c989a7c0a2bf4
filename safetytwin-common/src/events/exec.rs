//! `exec`: a process replaced its image (tp_btf `sched_process_exec`, after the point of no
//! return, so only successful execs are seen).

use super::Event;

/// Bytes of the executed file's path that are kept.
pub const FILENAME_LEN: usize = 256;
/// Bytes of the NUL-separated argument block (`mm->arg_start..arg_end`) that are kept.
pub const ARGV_LEN: usize = 256;

/// Data of an exec event.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct ExecData {
    /// The thread id before exec (differs from the pid when a non-leader thread called exec).
    pub old_tid: u32,
    /// Valid bytes in `filename`, without the NUL.
    pub filename_len: u32,
    /// Valid bytes in `argv`.
    pub argv_len: u32,
    /// 1 when the argument block was longer than [`ARGV_LEN`], else 0.
    pub argv_truncated: u32,
    /// `linux_binprm.filename`, as passed to exec.
    pub filename: [u8; FILENAME_LEN],
    /// The start of the argument block: NUL-separated arguments.
    pub argv: [u8; ARGV_LEN],
}

/// An exec record.
pub type ExecEvent = Event<ExecData>;

impl ExecEvent {
    /// Size of the record in the ring buffer.
    pub const SIZE: usize = core::mem::size_of::<ExecEvent>();
}

const _: () = assert!(core::mem::size_of::<ExecData>() == 16 + FILENAME_LEN + ARGV_LEN);
const _: () = assert!(ExecEvent::SIZE == 56 + 16 + FILENAME_LEN + ARGV_LEN);

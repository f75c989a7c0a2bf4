//! The event envelope and one module per event kind.
//!
//! Every record in the ring buffer is an [`Event<T>`]: the [`EventInfo`] header first (the
//! decoder reads `kind` at offset 0 before it knows the rest), then the kind's data. Kind ids are
//! grouped in ranges (process 1–99, files 100–199, units 200–299); a retired id is never reused.

pub mod cgroup;
pub mod exec;
pub mod exit;
pub mod file;
pub mod fork;

use crate::COMM_LEN;

/// The kind of an event, stored as `EventInfo::kind`.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// A successful `execve`/`execveat` ([`exec::ExecEvent`]).
    Exec = 1,
    /// The last thread of a process exited ([`exit::ExitEvent`]).
    Exit = 2,
    /// A new process (not a thread) was forked ([`fork::ForkEvent`]).
    Fork = 3,
    /// A file under a watched tree changed ([`file::FileEvent`]).
    File = 100,
    /// A cgroup of the unit hierarchy changed ([`cgroup::CgroupEvent`]).
    Cgroup = 200,
}

impl Type {
    /// Every kind, in id order.
    pub const ALL: [Type; 5] = [Type::Exec, Type::Exit, Type::Fork, Type::File, Type::Cgroup];

    /// The kind with id `id`, if there is one.
    pub const fn from_u32(id: u32) -> Option<Type> {
        match id {
            1 => Some(Type::Exec),
            2 => Some(Type::Exit),
            3 => Some(Type::Fork),
            100 => Some(Type::File),
            200 => Some(Type::Cgroup),
            _ => None,
        }
    }

    /// Size in bytes of this kind's record. Exhaustive on purpose: a new kind that is not
    /// given a size here fails to compile.
    pub const fn record_size(self) -> usize {
        match self {
            Type::Exec => core::mem::size_of::<exec::ExecEvent>(),
            Type::Exit => core::mem::size_of::<exit::ExitEvent>(),
            Type::Fork => core::mem::size_of::<fork::ForkEvent>(),
            Type::File => core::mem::size_of::<file::FileEvent>(),
            Type::Cgroup => core::mem::size_of::<cgroup::CgroupEvent>(),
        }
    }
}

/// The largest record any probe writes.
pub const MAX_EVENT_SIZE: usize = {
    let mut max = 0;
    let mut i = 0;
    while i < Type::ALL.len() {
        let size = Type::ALL[i].record_size();
        if size > max {
            max = size;
        }
        i += 1;
    }
    max
};

/// Header common to every event: who did it, when, and in which cgroup.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct EventInfo {
    /// A [`Type`] id.
    pub kind: u32,
    /// Thread group id (the userspace "pid") of the process the event is about.
    pub pid: u32,
    /// Thread id of the task that triggered the event.
    pub tid: u32,
    /// Thread group id of the process's real parent.
    pub ppid: u32,
    /// Real uid of the task.
    pub uid: u32,
    /// Real gid of the task.
    pub gid: u32,
    /// `bpf_ktime_get_boot_ns()` at the event; userspace turns it into wall time.
    pub ts_ns: u64,
    /// cgroup v2 id (the inode of the cgroup's directory in cgroup2fs).
    pub cgroup_id: u64,
    /// `task_struct.comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<EventInfo>() == 56);

/// One record in the ring buffer.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct Event<T> {
    /// Header; must stay first.
    pub info: EventInfo,
    /// The kind's data.
    pub data: T,
}

impl<T: Copy> Event<T> {
    /// Decodes a record from ring-buffer bytes; `None` when `bytes` is too short.
    ///
    /// The ring buffer only guarantees 8-byte alignment of records, and callers may hand us any
    /// slice, so this copies with an unaligned read.
    pub fn read_from(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked above; Event<T> is repr(C) plain data valid for any bit pattern.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

/// Reads the kind id of a raw record without decoding the rest.
pub fn peek_kind(bytes: &[u8]) -> Option<u32> {
    let head: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(u32::from_ne_bytes(head))
}

/// The bytes of a NUL-padded C string buffer up to the first NUL.
pub fn c_str_bytes(buf: &[u8]) -> &[u8] {
    match buf.iter().position(|&b| b == 0) {
        Some(end) => &buf[..end],
        None => buf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_are_bounded() {
        for t in Type::ALL {
            assert_eq!(Type::from_u32(t as u32), Some(t));
            assert!(t.record_size() <= MAX_EVENT_SIZE);
            assert_eq!(t.record_size() % 8, 0, "{t:?} record not 8-byte sized");
        }
        assert_eq!(Type::from_u32(0), None);
        assert_eq!(MAX_EVENT_SIZE, size_of::<file::FileEvent>());
    }

    #[test]
    fn short_buffers_do_not_decode() {
        let bytes = [0u8; 8];
        assert!(Event::<exit::ExitData>::read_from(&bytes).is_none());
        assert_eq!(peek_kind(&bytes[..3]), None);
        assert_eq!(peek_kind(&2u32.to_ne_bytes()), Some(2));
    }

    #[test]
    fn c_str_stops_at_nul() {
        assert_eq!(c_str_bytes(b"sh\0\0garbage"), b"sh");
        assert_eq!(c_str_bytes(b"full"), b"full");
    }
}

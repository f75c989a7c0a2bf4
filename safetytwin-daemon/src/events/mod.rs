//! Kernel records decoded into the daemon's domain events, one module per event kind (the
//! same names as `safetytwin_common::events` and the probes).

pub mod cgroup;
pub mod exec;
pub mod exit;
pub mod file;
pub mod fork;

use std::time::SystemTime;

use safetytwin_common::events::{EventInfo, Type, c_str_bytes, peek_kind};

use crate::clock::BootClock;

pub use cgroup::CgroupChange;
pub use exec::Exec;
pub use exit::Exit;
pub use file::FileChange;
pub use fork::Fork;

/// A ring-buffer record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record's kind id is not one this daemon knows (an older daemon on newer probes).
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    /// The record is shorter than its kind's size.
    #[error("{kind:?} record of {len} bytes, expected {need}")]
    Short {
        /// The kind it claims to be.
        kind: Type,
        /// Its length.
        len: usize,
        /// The length of that kind.
        need: usize,
    },
}

/// Who an event is about and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Thread group id.
    pub pid: u32,
    /// Thread id of the triggering task.
    pub tid: u32,
    /// Parent's thread group id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// cgroup v2 id (0 when unknown).
    pub cgroup_id: u64,
    /// Task command name.
    pub comm: String,
    /// Wall-clock time of the event.
    pub ts: SystemTime,
}

impl ProcInfo {
    fn from_raw(info: &EventInfo, clock: &BootClock) -> Self {
        ProcInfo {
            pid: info.pid,
            tid: info.tid,
            ppid: info.ppid,
            uid: info.uid,
            gid: info.gid,
            cgroup_id: info.cgroup_id,
            comm: lossy(c_str_bytes(&info.comm)),
            // 0: the probes were loaded without the stamp (`TracerConfig::stamp`); the event
            // is at most one drain period old.
            ts: match info.ts_ns {
                0 => SystemTime::now(),
                ns => clock.wall(ns),
            },
        }
    }
}

/// An event on the host, as the probes saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// See [`Exec`].
    Exec(Exec),
    /// See [`Exit`].
    Exit(Exit),
    /// See [`Fork`].
    Fork(Fork),
    /// See [`FileChange`].
    File(FileChange),
    /// See [`CgroupChange`].
    Cgroup(CgroupChange),
}

impl HostEvent {
    /// The process the event is about (for cgroup events: the one that caused it).
    pub fn info(&self) -> &ProcInfo {
        match self {
            HostEvent::Exec(e) => &e.info,
            HostEvent::Exit(e) => &e.info,
            HostEvent::Fork(e) => &e.info,
            HostEvent::File(e) => &e.info,
            HostEvent::Cgroup(e) => &e.info,
        }
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8], clock: &BootClock) -> Result<HostEvent, DecodeError> {
    let id = peek_kind(bytes).ok_or(DecodeError::UnknownKind(0))?;
    let kind = Type::from_u32(id).ok_or(DecodeError::UnknownKind(id))?;
    if bytes.len() < kind.record_size() {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            need: kind.record_size(),
        });
    }
    Ok(match kind {
        Type::Exec => HostEvent::Exec(exec::decode(bytes, clock)),
        Type::Exit => HostEvent::Exit(exit::decode(bytes, clock)),
        Type::Fork => HostEvent::Fork(fork::decode(bytes, clock)),
        Type::File => HostEvent::File(file::decode(bytes, clock)),
        Type::Cgroup => HostEvent::Cgroup(cgroup::decode(bytes, clock)),
    })
}

/// Kernel bytes as text; invalid UTF-8 is replaced rather than rejected.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use safetytwin_common::events::{Event, exit::ExitData};

    pub(crate) fn raw_info(kind: Type, pid: u32) -> EventInfo {
        let mut comm = [0u8; 16];
        comm[..2].copy_from_slice(b"sh");
        EventInfo {
            kind: kind as u32,
            pid,
            tid: pid,
            ppid: 1,
            uid: 1000,
            gid: 100,
            ts_ns: 5_000_000_000,
            cgroup_id: 42,
            comm,
        }
    }

    pub(crate) fn bytes_of<T: Copy>(ev: &Event<T>) -> Vec<u8> {
        // SAFETY: repr(C) plain data without padding.
        unsafe {
            std::slice::from_raw_parts((ev as *const Event<T>).cast::<u8>(), size_of::<Event<T>>())
        }
        .to_vec()
    }

    #[test]
    fn rejects_unknown_and_short_records() {
        let clock = BootClock::fixed(0);
        assert_eq!(decode(&[], &clock), Err(DecodeError::UnknownKind(0)));
        assert_eq!(
            decode(&99u32.to_ne_bytes(), &clock),
            Err(DecodeError::UnknownKind(99))
        );
        let ev = Event {
            info: raw_info(Type::Exit, 7),
            data: ExitData {
                status: 0,
                _reserved: 0,
            },
        };
        let bytes = bytes_of(&ev);
        assert!(matches!(
            decode(&bytes[..40], &clock),
            Err(DecodeError::Short {
                kind: Type::Exit,
                len: 40,
                ..
            })
        ));
        let ok = decode(&bytes, &clock).unwrap();
        assert_eq!(ok.info().comm, "sh");
        assert_eq!(ok.info().cgroup_id, 42);
    }

    /// An event the kernel did not stamp gets the time it was read, not the boot's.
    #[test]
    fn an_unstamped_event_is_now() {
        let mut info = raw_info(Type::Exit, 7);
        info.ts_ns = 0;
        let ev = Event {
            info,
            data: ExitData {
                status: 0,
                _reserved: 0,
            },
        };
        let read = decode(&bytes_of(&ev), &BootClock::fixed(10)).unwrap();
        let skew = SystemTime::now()
            .duration_since(read.info().ts)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < std::time::Duration::from_secs(1), "skew {skew:?}");
    }
}

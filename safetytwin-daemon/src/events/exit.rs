//! `exit` events: the last thread of a process is gone.

use safetytwin_common::events::{Event, exit::ExitData};

use super::ProcInfo;
use crate::clock::BootClock;

/// A process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Who and when.
    pub info: ProcInfo,
    /// The wait(2) status.
    pub status: u32,
}

impl Exit {
    /// The exit code when the process exited normally (`WIFEXITED`).
    pub fn exit_code(&self) -> Option<u8> {
        (self.status & 0x7f == 0).then_some(((self.status >> 8) & 0xff) as u8)
    }

    /// The signal that killed the process (`WIFSIGNALED`).
    pub fn signal(&self) -> Option<u8> {
        let sig = (self.status & 0x7f) as u8;
        (sig != 0 && sig != 0x7f).then_some(sig)
    }
}

pub(super) fn decode(bytes: &[u8], clock: &BootClock) -> Exit {
    let ev = Event::<ExitData>::read_from(bytes).expect("length checked by caller");
    Exit {
        info: ProcInfo::from_raw(&ev.info, clock),
        status: ev.data.status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::raw_info;
    use safetytwin_common::events::Type;

    fn exit(status: u32) -> Exit {
        Exit {
            info: ProcInfo::from_raw(&raw_info(Type::Exit, 3), &BootClock::fixed(0)),
            status,
        }
    }

    #[test]
    fn wait_status_decoding() {
        assert_eq!(exit(3 << 8).exit_code(), Some(3));
        assert_eq!(exit(3 << 8).signal(), None);
        assert_eq!(exit(9).exit_code(), None);
        assert_eq!(exit(9).signal(), Some(9));
        // killed by SIGSEGV with a core dump
        assert_eq!(exit(0x80 | 11).signal(), Some(11));
    }
}

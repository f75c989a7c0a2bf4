//! `exec` events: a process runs a new program.

use safetytwin_common::events::{Event, exec::ExecData};

use super::{ProcInfo, lossy};
use crate::clock::BootClock;

/// A successful exec, or (with `snapshot`) a process found by the start-up scan of /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// Who and when.
    pub info: ProcInfo,
    /// Path of the executed file as passed to exec (from /proc: the `exe` link).
    pub filename: String,
    /// Arguments, from the first [`safetytwin_common::events::exec::ARGV_LEN`] bytes.
    pub argv: Vec<String>,
    /// The argument block was longer than what was kept.
    pub argv_truncated: bool,
    /// Seeded from /proc at start-up rather than seen by the kernel probe.
    pub snapshot: bool,
}

/// Splits a NUL-separated argument block.
pub fn split_argv(block: &[u8]) -> Vec<String> {
    let block = block.strip_suffix(&[0]).unwrap_or(block);
    if block.is_empty() {
        return Vec::new();
    }
    block.split(|&b| b == 0).map(lossy).collect()
}

pub(super) fn decode(bytes: &[u8], clock: &BootClock) -> Exec {
    let ev = Event::<ExecData>::read_from(bytes).expect("length checked by caller");
    let d = &ev.data;
    let filename_len = (d.filename_len as usize).min(d.filename.len());
    let argv_len = (d.argv_len as usize).min(d.argv.len());
    Exec {
        info: ProcInfo::from_raw(&ev.info, clock),
        filename: lossy(&d.filename[..filename_len]),
        argv: split_argv(&d.argv[..argv_len]),
        argv_truncated: d.argv_truncated != 0,
        snapshot: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{
        HostEvent, decode,
        tests::{bytes_of, raw_info},
    };
    use safetytwin_common::events::{Type, exec::ARGV_LEN};

    #[test]
    fn splits_argument_blocks() {
        assert_eq!(split_argv(b"sh\0-c\0exit 3\0"), ["sh", "-c", "exit 3"]);
        assert_eq!(split_argv(b"cut-sho"), ["cut-sho"]);
        assert_eq!(split_argv(b"a\0\0b\0"), ["a", "", "b"]);
        assert!(split_argv(b"").is_empty());
    }

    #[test]
    fn decodes_only_the_valid_bytes() {
        let mut data = ExecData {
            old_tid: 9,
            filename_len: 7,
            argv_len: 8,
            argv_truncated: 1,
            filename: [b'X'; 256],
            argv: [b'Y'; ARGV_LEN],
        };
        data.filename[..7].copy_from_slice(b"/bin/sh");
        data.argv[..8].copy_from_slice(b"sh\0-c\0x\0");
        let bytes = bytes_of(&Event {
            info: raw_info(Type::Exec, 10),
            data,
        });
        let HostEvent::Exec(exec) = decode(&bytes, &BootClock::fixed(0)).unwrap() else {
            panic!("not an exec");
        };
        assert_eq!(exec.filename, "/bin/sh");
        assert_eq!(exec.argv, ["sh", "-c", "x"]);
        assert!(exec.argv_truncated && !exec.snapshot);
    }
}

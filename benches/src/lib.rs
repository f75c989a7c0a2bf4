//! Shared fixtures for the criterion benchmarks in `benches/benches/`.

use safetytwin_common::events::{
    Event, EventInfo, Type,
    exec::{ARGV_LEN, ExecData, FILENAME_LEN},
};

/// The bytes of a typical exec record, as a probe writes it into the ring buffer.
pub fn exec_record() -> Vec<u8> {
    let mut filename = [0u8; FILENAME_LEN];
    filename[..13].copy_from_slice(b"/usr/bin/make");
    let mut argv = [0u8; ARGV_LEN];
    let args = b"make\0-j2\0all\0";
    argv[..args.len()].copy_from_slice(args);
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"make");
    let ev = Event {
        info: EventInfo {
            kind: Type::Exec as u32,
            pid: 4242,
            tid: 4242,
            ppid: 1,
            uid: 0,
            gid: 0,
            ts_ns: 1_000_000_000,
            cgroup_id: 1,
            comm,
        },
        data: ExecData {
            old_tid: 4242,
            filename_len: 13,
            argv_len: args.len() as u32,
            argv_truncated: 0,
            filename,
            argv,
        },
    };
    // SAFETY: repr(C) plain data without padding.
    unsafe {
        std::slice::from_raw_parts(
            (&ev as *const Event<ExecData>).cast::<u8>(),
            size_of::<Event<ExecData>>(),
        )
    }
    .to_vec()
}

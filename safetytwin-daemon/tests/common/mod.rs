//! Helpers for the privileged tests: they load the real probes, so they need root and kernel
//! BTF, and skip with a plain message only where those are truly absent.

#![allow(dead_code)]

use std::path::Path;

/// True when this process can load the probes; prints why not otherwise.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {test}: needs root to load eBPF programs");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        eprintln!("skipping {test}: kernel has no BTF (/sys/kernel/btf/vmlinux)");
        return false;
    }
    true
}

/// A marker unique to this test run, to find our own processes among the host's.
pub fn marker(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

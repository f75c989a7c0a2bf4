//! safetytwin's kernel side: tp_btf probes on the scheduler's process lifecycle, the unit
//! hierarchy's cgroups and dirtied inodes, and syscall tracepoints on the calls that change a
//! file's name or attributes.
//!
//! Each probe filters in the kernel (threads are not processes), fills one record directly in
//! the ring buffer and submits it without waking userspace unless the ring is filling up; the
//! daemon drains on a timer. Struct offsets come from the `OFFSETS` global, written by the
//! daemon from the kernel's BTF at load time.
#![no_std]
#![no_main]

mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// `bpf_probe_read_*` are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

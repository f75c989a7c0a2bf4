//! safetytwin's kernel side: tp_btf probes on the scheduler's process lifecycle tracepoints.
//!
//! Each probe filters in the kernel (threads are not processes), fills one record directly in
//! the ring buffer and submits it without waking userspace unless the ring is filling up; the
//! daemon drains on a timer. Struct offsets come from the `OFFSETS` global, written by the
//! daemon from the kernel's BTF at load time.
#![no_std]
#![no_main]
// For one instruction Rust has no stable way to emit on this target: the atomic add
// (`kernel::atomic_add`); the target has no compare-and-swap, so `AtomicU64::fetch_add` is absent.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

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

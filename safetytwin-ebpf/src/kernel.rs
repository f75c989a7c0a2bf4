//! Reads of kernel memory at BTF-resolved offsets, and the header every event shares.

use aya_ebpf::helpers::{
    bpf_get_current_uid_gid,
    generated::{self, bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
};
use safetytwin_common::{events::EventInfo, offsets::Offsets};

use crate::maps::STAMP;

/// Reads a `T` at `base + off`; zero when the read faults, so a record is still delivered.
///
/// Branch-free on purpose: the helper zeroes the destination on failure, so the return code is
/// not looked at, and the verifier does not fork its state at every read of a loop.
#[inline(always)]
pub fn read<T: Copy>(base: u64, off: u32) -> T {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: bpf_probe_read_kernel tolerates any source address and always writes all
    // `size_of::<T>()` bytes of the destination (zeroes on failure); T is plain data.
    unsafe {
        generated::bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            (base + off as u64) as *const core::ffi::c_void,
        );
        value.assume_init()
    }
}

/// Reads a `T` at `base + off` where `base` is a BTF-typed kernel pointer (a tp_btf argument,
/// or a pointer field loaded through one) and `off` a load-time constant: a direct load, which
/// the verifier checks against BTF and the JIT makes fault-tolerant, instead of a helper call.
#[inline(always)]
pub fn load<T: Copy>(base: u64, off: u32) -> T {
    // SAFETY: the verifier only accepts this load when `base + off` is a readable member.
    unsafe { core::ptr::read_volatile((base as *const u8).add(off as usize).cast::<T>()) }
}

/// Fills the header from `task` (a BTF-typed `struct task_struct *`); uid, gid and cgroup are
/// the current task's, which is `task` itself for exec and exit and the parent (same creds) for
/// fork.
#[inline(always)]
pub fn fill_info(info: *mut EventInfo, kind: u32, task: u64, off: &Offsets) {
    let parent: u64 = load(task, off.task_real_parent);
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `info` points into a live ring-buffer reservation of the right size.
    unsafe {
        (*info).kind = kind;
        (*info).pid = load(task, off.task_tgid);
        (*info).tid = load(task, off.task_pid);
        (*info).ppid = load(parent, off.task_tgid);
        (*info).uid = uid_gid as u32;
        (*info).gid = (uid_gid >> 32) as u32;
        (*info).ts_ns = if STAMP.load() != 0 {
            bpf_ktime_get_boot_ns()
        } else {
            0
        };
        (*info).cgroup_id = bpf_get_current_cgroup_id();
        (*info).comm = load(task, off.task_comm);
    }
}

//! Maps and load-time globals shared by every probe, and the one function that emits a record.

use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use safetytwin_common::{
    counters::{COUNTERS_INDEX, Counters},
    offsets::Offsets,
};

/// Default ring size; the daemon overrides it (`--ring-bytes`) with `set_max_entries`.
const DEFAULT_RING_BYTES: u32 = 4 << 20;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Kernel struct offsets, resolved from BTF by the daemon.
#[unsafe(no_mangle)]
pub static OFFSETS: Global<Offsets> = Global::new(Offsets {
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_mm: 0,
    task_exit_code: 0,
    task_comm: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    binprm_filename: 0,
    cgroup_root: 0,
    cgroup_level: 0,
    cgroup_kn: 0,
    cgroup_root_hierarchy_id: 0,
    kernfs_node_id: 0,
    _reserved: [0; 2],
});

/// Hierarchy id whose cgroups are systemd units: 0 is cgroup v2 (unified and hybrid hosts).
#[unsafe(no_mangle)]
pub static UNIT_HIERARCHY: Global<u32> = Global::new(0);

/// Fill level (bytes) at which a probe wakes userspace instead of waiting for its timed drain.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new((DEFAULT_RING_BYTES / 2) as u64);

/// Reserves a `T` in the ring buffer, lets `fill` write it and submits it. Counts the attempt in
/// `produced` and a failed reservation in `dropped`. `fill` cannot fail: once a record is
/// produced it is delivered, or the accounting `received + dropped == produced` would break.
#[inline(always)]
pub fn emit<T: 'static>(fill: impl FnOnce(*mut T)) -> Result<i32, i32> {
    let counters = COUNTERS.get_ptr_mut(COUNTERS_INDEX).ok_or(1)?;
    // SAFETY: per-CPU slot; tracepoint programs run with preemption disabled.
    unsafe { (*counters).produced += 1 };
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        // SAFETY: as above.
        unsafe { (*counters).dropped += 1 };
        return Err(1);
    };
    fill(entry.as_mut_ptr());
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
    Ok(0)
}

//! Maps and load-time globals shared by every probe, and the one function that emits a record.

use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use safetytwin_common::{
    counters::{COUNTERS_INDEX, Counters},
    events::file::{FileData, MAX_SYSCALL, MAX_WATCHED, PATH_LEN, SyscallEntry, WatchedPrefix},
    offsets::Offsets,
};

/// Default ring size; the daemon overrides it (`--ring-bytes`) with `set_max_entries`.
const DEFAULT_RING_BYTES: u32 = 4 << 20;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// Watched tree prefixes, filled by the daemon before the probes attach.
#[map]
pub static WATCHED: Array<WatchedPrefix> = Array::with_max_entries(MAX_WATCHED as u32, 0);

/// What each traced syscall does and where its arguments are, by syscall number; filled by
/// the daemon from its syscall table (`safetytwin-daemon/src/syscalls.rs`).
#[map]
pub static SYSCALLS: Array<SyscallEntry> = Array::with_max_entries(MAX_SYSCALL, 0);

/// Where a file record is built before it is emitted (too big for the 512-byte stack).
#[map]
pub static SCRATCH: PerCpuArray<FileData> = PerCpuArray::with_max_entries(1, 0);

/// State of a directory walk between `bpf_loop` steps (see `probes::file::walk_step`, and
/// `climb_step`, which uses `dentry`, `pos`, `dev` and `slot`).
#[repr(C)]
pub struct WalkState {
    pub mnt: u64,
    pub dentry: u64,
    /// Start of the path gathered so far in `PATH_SCRATCH` (it ends at `PATH_LEN`).
    pub pos: u64,
    /// 1 once the walk reached the root of the mount namespace.
    pub complete: u64,
    /// Length of the relative path, and how much of it leading `./` and `../` consumed.
    pub n: u64,
    pub rel: u64,
    /// 1 while leading `./` and `../` are being consumed.
    pub parsing: u64,
    /// `../` seen: directories to go up before recording names.
    pub ups: u64,
    /// 1 when walking for the record's `new_path`, 0 for `path`.
    pub second: u64,
    /// The filesystem a dirtied inode is on.
    pub dev: u64,
    /// The watched tree reached, as its slot + 1; 0 while none is.
    pub slot: u64,
}

#[map]
pub static WALK: PerCpuArray<WalkState> = PerCpuArray::with_max_entries(1, 0);

/// Room to join a directory and a relative path for the watched-prefix comparison.
#[map]
pub static FULL_SCRATCH: PerCpuArray<[u64; 128]> = PerCpuArray::with_max_entries(1, 0);

/// Room to assemble a directory path right to left with masked, verifiable offsets.
#[map]
pub static PATH_SCRATCH: PerCpuArray<[u8; 2 * PATH_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// Kernel struct offsets, resolved from BTF by the daemon.
#[unsafe(no_mangle)]
// SAFETY: Offsets is plain u32s; all-zero is a valid value (the daemon always overrides it).
pub static OFFSETS: Global<Offsets> = Global::new(unsafe { core::mem::zeroed() });

/// Hierarchy id whose cgroups are systemd units: 0 is cgroup v2 (unified and hybrid hosts).
#[unsafe(no_mangle)]
pub static UNIT_HIERARCHY: Global<u32> = Global::new(0);

/// 1: every record carries `bpf_ktime_get_boot_ns` in `ts_ns`; 0: it carries 0. A read-only
/// global, so the verifier drops the branch not taken and an unstamped probe pays nothing for
/// the helper (110–200 ns a call in this VM). Only `trace` prints times; the batches need none.
#[unsafe(no_mangle)]
pub static STAMP: Global<u32> = Global::new(1);

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

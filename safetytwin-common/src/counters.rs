//! Per-CPU loss accounting for the event ring buffer.
//!
//! Every probe bumps `produced` before it reserves ring space and `dropped` when the reservation
//! fails, so that once the ring is drained `received + dropped == produced` holds exactly.

/// Name of the `PerCpuArray` map holding one [`Counters`] per CPU at index [`COUNTERS_INDEX`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the ring buffer map that carries events to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// The only index used in [`COUNTERS_MAP`].
pub const COUNTERS_INDEX: u32 = 0;
/// Name of the global holding the fill level (bytes) above which a probe wakes userspace.
pub const WAKEUP_BYTES_GLOBAL: &str = "WAKEUP_BYTES";
/// Name of the global holding the hierarchy id whose cgroups are units (0: cgroup v2).
pub const UNIT_HIERARCHY_GLOBAL: &str = "UNIT_HIERARCHY";
/// Name of the global that says whether events carry the kernel's time (1) or 0 in `ts_ns`.
pub const STAMP_GLOBAL: &str = "STAMP";

/// Counters of one CPU. Plain adds are safe: tracepoint programs run with preemption disabled.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Events a probe tried to emit.
    pub produced: u64,
    /// Events lost because the ring buffer had no room.
    pub dropped: u64,
}

const _: () = assert!(core::mem::size_of::<Counters>() == 16);

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], only u64 fields, no padding.
unsafe impl aya::Pod for Counters {}

impl Counters {
    /// Sums the per-CPU values.
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a Counters>) -> Counters {
        per_cpu
            .into_iter()
            .fold(Counters::default(), |acc, c| Counters {
                produced: acc.produced.wrapping_add(c.produced),
                dropped: acc.dropped.wrapping_add(c.dropped),
            })
    }
}

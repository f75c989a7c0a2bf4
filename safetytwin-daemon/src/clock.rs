//! Turns the kernel's boot-time timestamps (`bpf_ktime_get_boot_ns`) into wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall time minus boot time, measured once, so each event costs an addition.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Nanoseconds since the Unix epoch at boot (`CLOCK_REALTIME - CLOCK_BOOTTIME`).
    boot_epoch_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on every Linux we run on.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl BootClock {
    /// Measures the offset now.
    pub fn now() -> Self {
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        let real = clock_ns(libc::CLOCK_REALTIME);
        BootClock {
            boot_epoch_ns: real - boot,
        }
    }

    /// A clock with a given boot epoch, for tests.
    pub fn fixed(boot_epoch_ns: i128) -> Self {
        BootClock { boot_epoch_ns }
    }

    /// Boot-time nanoseconds now.
    pub fn boot_ns() -> u64 {
        clock_ns(libc::CLOCK_BOOTTIME) as u64
    }

    /// Wall time of a boot-time timestamp.
    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let ns = (self.boot_epoch_ns + boot_ns as i128).max(0);
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_maps_to_now() {
        let clock = BootClock::now();
        let wall = clock.wall(BootClock::boot_ns());
        let skew = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(1), "skew {skew:?}");
        assert_eq!(
            BootClock::fixed(10).wall(5),
            UNIX_EPOCH + Duration::from_nanos(15)
        );
    }
}

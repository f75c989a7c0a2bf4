//! The twin's Prometheus series: applies, their steps, snapshots and reverts. Every series is
//! declared here, so its name, help text and buckets are defined once; the services crate
//! serves them beside ingest's (`safetytwin_services::metrics`).
//!
//! Recording is an atomic add on the series of its labels (found under a read lock), which is
//! noise next to the guest call it measures.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, proto::MetricFamily,
};

/// Bucket bounds for applies and their steps, seconds (a guest call to a VM snapshot).
const APPLY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Why the applier reverted a twin.
#[derive(Debug, Clone, Copy)]
pub enum RevertCause {
    /// `Twin.Revert` or `POST /api/v1/snapshots/{name}`.
    Operator,
    /// A failed apply went back to the last good snapshot.
    Failure,
}

/// The kind of an apply step, the label of its duration: a planned step, or the snapshot.
#[derive(Debug, Clone, Copy)]
pub enum StepKind {
    /// A step of the plan.
    Planned(crate::vm::plan::StepKind),
    /// The check after the steps: what they changed, read back from the twin.
    Verify,
    /// Taking the snapshot.
    Snapshot,
}

impl From<crate::vm::plan::StepKind> for StepKind {
    fn from(kind: crate::vm::plan::StepKind) -> Self {
        StepKind::Planned(kind)
    }
}

impl StepKind {
    fn as_str(self) -> &'static str {
        use crate::vm::plan::StepKind as Planned;
        match self {
            StepKind::Planned(Planned::Stop) => "stop",
            StepKind::Planned(Planned::Packages) => "packages",
            StepKind::Planned(Planned::Accounts) => "accounts",
            StepKind::Planned(Planned::Remove) => "remove",
            StepKind::Planned(Planned::Write) => "write",
            StepKind::Planned(Planned::DaemonReload) => "daemon-reload",
            StepKind::Planned(Planned::Units) => "units",
            StepKind::Planned(Planned::Health) => "health",
            StepKind::Verify => "verify",
            StepKind::Snapshot => "snapshot",
        }
    }
}

/// The twin's series; cheap to record into from any thread.
pub struct TwinMetrics {
    registry: Registry,
    applies: IntCounterVec,
    apply_seconds: Histogram,
    apply_items: IntCounterVec,
    step_seconds: HistogramVec,
    snapshots_taken: IntCounterVec,
    snapshots_deleted: IntCounterVec,
    snapshots_kept: IntGaugeVec,
    reverts: IntCounterVec,
    failures: IntCounterVec,
    differences: IntGaugeVec,
    lease_moves: IntCounter,
    leases_held: IntGauge,
}

impl std::fmt::Debug for TwinMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TwinMetrics")
    }
}

impl Default for TwinMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            prometheus::register_int_counter_vec_with_registry!(
                Opts::new(name, help),
                labels,
                registry
            )
            .expect("a valid series, declared once")
        };
        let host = &["host"];
        let applies = counters(
            "safetytwin_replayer_applies_total",
            "Twin applies that ran guest steps, by host and result.",
            &["host", "result"],
        );
        let apply_items = counters(
            "safetytwin_replayer_apply_items_total",
            "Items (paths, units) applied to the twin, by host.",
            host,
        );
        let snapshots_taken = counters(
            "safetytwin_replayer_snapshots_taken_total",
            "Twin snapshots taken, by host.",
            host,
        );
        let snapshots_deleted = counters(
            "safetytwin_replayer_snapshots_deleted_total",
            "Twin snapshots retired, by host.",
            host,
        );
        let reverts = counters(
            "safetytwin_replayer_reverts_total",
            "Twin reverts to a snapshot, by host and cause (operator or failure).",
            &["host", "cause"],
        );
        let failures = counters(
            "safetytwin_replayer_apply_failures_total",
            "Twin applies that failed, by host.",
            host,
        );
        let apply_seconds = prometheus::register_histogram_with_registry!(
            HistogramOpts::new(
                "safetytwin_replayer_apply_duration_seconds",
                "Time of each twin apply, snapshot excluded."
            )
            .buckets(APPLY_BUCKETS.to_vec()),
            registry
        )
        .expect("a valid series, declared once");
        let step_seconds = prometheus::register_histogram_vec_with_registry!(
            HistogramOpts::new(
                "safetytwin_replayer_apply_step_duration_seconds",
                "Time of each apply step, by step kind."
            )
            .buckets(APPLY_BUCKETS.to_vec()),
            &["step"],
            registry
        )
        .expect("a valid series, declared once");
        let snapshots_kept = prometheus::register_int_gauge_vec_with_registry!(
            Opts::new(
                "safetytwin_replayer_snapshots_kept",
                "Twin snapshots kept now, by host."
            ),
            host,
            registry
        )
        .expect("a valid series, declared once");
        let differences = prometheus::register_int_gauge_vec_with_registry!(
            Opts::new(
                "safetytwin_replayer_verify_differences",
                "Differences between the twin and the host found by the last verify, by host."
            ),
            host,
            registry
        )
        .expect("a valid series, declared once");
        let lease_moves = prometheus::register_int_counter_with_registry!(
            Opts::new(
                "safetytwin_replayer_lease_moves_total",
                "Twins this worker took over from another worker whose lease ended."
            ),
            registry
        )
        .expect("a valid series, declared once");
        let leases_held = prometheus::register_int_gauge_with_registry!(
            Opts::new(
                "safetytwin_replayer_leases_held",
                "Twins this worker drives now (a shared store; every twin with the embedded one)."
            ),
            registry
        )
        .expect("a valid series, declared once");
        // The step kinds are known: each series exists from the start, so a scrape sees 0, not
        // nothing (as the unlabelled ones do).
        for kind in crate::vm::plan::StepKind::ALL {
            step_seconds.with_label_values(&[StepKind::Planned(kind).as_str()]);
        }
        step_seconds.with_label_values(&[StepKind::Snapshot.as_str()]);
        TwinMetrics {
            registry,
            applies,
            apply_seconds,
            apply_items,
            step_seconds,
            snapshots_taken,
            snapshots_deleted,
            snapshots_kept,
            reverts,
            failures,
            differences,
            lease_moves,
            leases_held,
        }
    }
}

impl TwinMetrics {
    /// A lease round left this worker driving `held` twins, `moved` of them taken over.
    pub fn leases(&self, held: usize, moved: usize) {
        self.leases_held.set(held as i64);
        self.lease_moves.inc_by(moved as u64);
    }

    /// An apply of `host` ran for `took` and changed `items` (ok) or failed.
    pub fn applied(&self, host: &str, took: Duration, items: usize, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.applies.with_label_values(&[host, result]).inc();
        self.apply_seconds.observe(took.as_secs_f64());
        if ok {
            self.apply_items
                .with_label_values(&[host])
                .inc_by(items as u64);
        } else {
            self.failures.with_label_values(&[host]).inc();
        }
    }

    /// One apply step of `kind` took `took`.
    pub fn step(&self, kind: StepKind, took: Duration) {
        self.step_seconds
            .with_label_values(&[kind.as_str()])
            .observe(took.as_secs_f64());
    }

    /// A snapshot of `host`'s twin was taken.
    pub fn snapshot_taken(&self, host: &str) {
        self.snapshots_taken.with_label_values(&[host]).inc();
    }

    /// A snapshot of `host`'s twin was retired.
    pub fn snapshot_deleted(&self, host: &str) {
        self.snapshots_deleted.with_label_values(&[host]).inc();
    }

    /// `host`'s twin now has `n` snapshots.
    pub fn snapshots_kept(&self, host: &str, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.snapshots_kept.with_label_values(&[host]).set(n);
    }

    /// `host`'s twin went back to a snapshot.
    pub fn reverted(&self, host: &str, cause: RevertCause) {
        let cause = match cause {
            RevertCause::Operator => "operator",
            RevertCause::Failure => "failure",
        };
        self.reverts.with_label_values(&[host, cause]).inc();
    }

    /// The last verify of `host`'s twin found `n` differences.
    pub fn verified(&self, host: &str, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.differences.with_label_values(&[host]).set(n);
    }

    /// Every family that has a value, for an exposition that serves them with others.
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

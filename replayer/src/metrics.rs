//! The replayer's Prometheus metrics: what ingest and the applier record, served by
//! `GET /metrics` (`http.rs`). Every series is declared here, so the names, help texts and
//! buckets are defined once; the `prometheus` crate keeps the values and writes the text
//! exposition.
//!
//! Recording is an atomic add on the series of its labels (found under a read lock), which is
//! noise next to the redb transaction or guest call it measures; the exposition is built only
//! when scraped.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};

/// Bucket bounds for store appends, seconds (an fsync'ed redb transaction).
const APPEND_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Bucket bounds for batch sizes, bytes (heartbeats are tens of bytes, a first batch megabytes).
const SIZE_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];
/// Bucket bounds for applies and their steps, seconds (a guest call to a VM snapshot).
const APPLY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Declares series into a registry: one call per family.
struct Families(Registry);

impl Families {
    fn add<C: Collector + Clone + 'static>(&self, c: Result<C, prometheus::Error>) -> C {
        let c = c.expect("a valid series");
        self.0
            .register(Box::new(c.clone()))
            .expect("every series name is declared once");
        c
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        ))
    }

    fn histograms(&self, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        ))
    }
}

/// The replayer's metrics; cheap to record into from any thread.
pub struct Metrics {
    registry: Registry,
    batches_stored: IntCounterVec,
    batches_duplicate: IntCounterVec,
    batches_refused: IntCounterVec,
    streams_conflicting: IntCounterVec,
    streams_replaced: IntCounterVec,
    resyncs_requested: IntCounterVec,
    batch_bytes: Histogram,
    append_seconds: Histogram,
    daemons: IntGauge,
    applies: IntCounterVec,
    apply_seconds: Histogram,
    apply_items: IntCounterVec,
    step_seconds: HistogramVec,
    snapshots_taken: IntCounterVec,
    snapshots_deleted: IntCounterVec,
    snapshots_kept: IntGaugeVec,
    reverts: IntCounterVec,
    failures: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let f = Families(Registry::new());
        let host = &["host"];
        let m = Metrics {
            batches_stored: f.counters(
                "safetytwin_replayer_batches_stored_total",
                "Batches stored, by host.",
                host,
            ),
            batches_duplicate: f.counters(
                "safetytwin_replayer_batches_duplicate_total",
                "Batches acknowledged as duplicates (already stored), by host.",
                host,
            ),
            batches_refused: f.counters(
                "safetytwin_replayer_batches_refused_total",
                "Ingest streams ended with an error, by gRPC code.",
                &["code"],
            ),
            streams_conflicting: f.counters(
                "safetytwin_replayer_streams_conflicting_total",
                "Daemon streams refused because another boot streams for the same host id (a \
                 clone?), by host.",
                host,
            ),
            streams_replaced: f.counters(
                "safetytwin_replayer_streams_replaced_total",
                "Daemon streams ended by a newer stream of the same host and boot (a reconnect), \
                 by host.",
                host,
            ),
            resyncs_requested: f.counters(
                "safetytwin_replayer_resyncs_requested_total",
                "Daemons asked to resync because their history does not continue the stored one, \
                 by host.",
                host,
            ),
            batch_bytes: f.histogram(
                "safetytwin_replayer_batch_size_bytes",
                "Encoded size of each received batch.",
                SIZE_BUCKETS,
            ),
            append_seconds: f.histogram(
                "safetytwin_replayer_ingest_append_seconds",
                "Time to store a batch (one redb transaction).",
                APPEND_BUCKETS,
            ),
            daemons: f.gauge(
                "safetytwin_replayer_daemons_connected",
                "Daemon ingest streams open now.",
            ),
            applies: f.counters(
                "safetytwin_replayer_applies_total",
                "Twin applies that ran guest steps, by host and result.",
                &["host", "result"],
            ),
            apply_seconds: f.histogram(
                "safetytwin_replayer_apply_duration_seconds",
                "Time of each twin apply, snapshot excluded.",
                APPLY_BUCKETS,
            ),
            apply_items: f.counters(
                "safetytwin_replayer_apply_items_total",
                "Items (paths, units) applied to the twin, by host.",
                host,
            ),
            step_seconds: f.histograms(
                "safetytwin_replayer_apply_step_duration_seconds",
                "Time of each apply step, by step kind.",
                APPLY_BUCKETS,
                &["step"],
            ),
            snapshots_taken: f.counters(
                "safetytwin_replayer_snapshots_taken_total",
                "Twin snapshots taken, by host.",
                host,
            ),
            snapshots_deleted: f.counters(
                "safetytwin_replayer_snapshots_deleted_total",
                "Twin snapshots retired, by host.",
                host,
            ),
            snapshots_kept: f.gauges(
                "safetytwin_replayer_snapshots_kept",
                "Twin snapshots kept now, by host.",
                host,
            ),
            reverts: f.counters(
                "safetytwin_replayer_reverts_total",
                "Twin reverts to a snapshot, by host and cause (operator or failure).",
                &["host", "cause"],
            ),
            failures: f.counters(
                "safetytwin_replayer_apply_failures_total",
                "Twin applies that failed, by host.",
                host,
            ),
            registry: f.0,
        };
        // The step kinds are known: each series exists from the start, so a scrape sees 0, not
        // nothing (as the unlabelled ones do).
        for kind in StepKind::ALL {
            m.step_seconds.with_label_values(&[kind.as_str()]);
        }
        m
    }
}

/// Why the applier reverted a twin.
#[derive(Debug, Clone, Copy)]
pub enum RevertCause {
    /// `Twin.Revert` or `POST /api/v1/snapshots/{name}`.
    Operator,
    /// A failed apply went back to the last good snapshot.
    Failure,
}

/// The kind of an apply step, the label of its duration.
#[derive(Debug, Clone, Copy)]
pub enum StepKind {
    /// Removing paths.
    Remove,
    /// Writing the archive of files.
    Write,
    /// `systemctl daemon-reload`.
    DaemonReload,
    /// Starting, stopping and restarting units.
    Units,
    /// Checking that the units that should run are active.
    Health,
    /// Taking the snapshot.
    Snapshot,
}

impl StepKind {
    /// Every kind, in the order of a plan.
    const ALL: [StepKind; 6] = [
        StepKind::Remove,
        StepKind::Write,
        StepKind::DaemonReload,
        StepKind::Units,
        StepKind::Health,
        StepKind::Snapshot,
    ];

    fn as_str(self) -> &'static str {
        match self {
            StepKind::Remove => "remove",
            StepKind::Write => "write",
            StepKind::DaemonReload => "daemon-reload",
            StepKind::Units => "units",
            StepKind::Health => "health",
            StepKind::Snapshot => "snapshot",
        }
    }
}

/// Counts an open daemon stream until dropped.
#[derive(Debug)]
pub struct Connected(IntGauge);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// A batch received for `host`: its encoded size, and how long storing it took.
    pub fn batch_received(&self, host: &str, bytes: usize, append: Duration, stored: bool) {
        let family = if stored {
            &self.batches_stored
        } else {
            &self.batches_duplicate
        };
        family.with_label_values(&[host]).inc();
        self.batch_bytes.observe(bytes as f64);
        self.append_seconds.observe(append.as_secs_f64());
    }

    /// An ingest stream ended with `code` (a gRPC code name, e.g. "FailedPrecondition").
    pub fn batch_refused(&self, code: &str) {
        self.batches_refused.with_label_values(&[code]).inc();
    }

    /// A stream for `host` was refused: another boot streams for it.
    pub fn stream_conflicting(&self, host: &str) {
        self.streams_conflicting.with_label_values(&[host]).inc();
    }

    /// A stream for `host` was ended by a newer one from the same boot.
    pub fn stream_replaced(&self, host: &str) {
        self.streams_replaced.with_label_values(&[host]).inc();
    }

    /// `host`'s daemon was asked to resync: its history does not continue the stored one.
    pub fn resync_requested(&self, host: &str) {
        self.resyncs_requested.with_label_values(&[host]).inc();
    }

    /// A daemon stream opened; it counts as connected until the guard drops.
    pub fn daemon_connected(&self) -> Connected {
        self.daemons.inc();
        Connected(self.daemons.clone())
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

    /// The text exposition (format 0.0.4) of every series that has a value. A labelled family
    /// appears with its first series.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Fails only on a family without a name or a sample, which `gather` never returns.
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            tracing::warn!("metrics: {e}");
        }
        text
    }
}

impl From<crate::vm::plan::StepKind> for StepKind {
    fn from(kind: crate::vm::plan::StepKind) -> Self {
        use crate::vm::plan::StepKind as Planned;
        match kind {
            Planned::Remove => StepKind::Remove,
            Planned::Write => StepKind::Write,
            Planned::DaemonReload => StepKind::DaemonReload,
            Planned::Units => StepKind::Units,
            Planned::Health => StepKind::Health,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetytwin_cli::exposition::shape;
    use std::sync::Arc;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::default();
        m.batch_received("a\"b\\c\nd", 100, Duration::from_millis(2), true);
        m.batch_received("x", 5000, Duration::from_secs(3), false);
        m.batch_refused("Unauthenticated");
        let text = m.render();
        for line in [
            r#"safetytwin_replayer_batches_stored_total{host="a\"b\\c\nd"} 1"#,
            r#"safetytwin_replayer_batches_duplicate_total{host="x"} 1"#,
            r#"safetytwin_replayer_batches_refused_total{code="Unauthenticated"} 1"#,
            r#"safetytwin_replayer_batch_size_bytes_bucket{le="256"} 1"#,
            r#"safetytwin_replayer_batch_size_bytes_bucket{le="4096"} 1"#,
            r#"safetytwin_replayer_batch_size_bytes_bucket{le="16384"} 2"#,
            r#"safetytwin_replayer_batch_size_bytes_bucket{le="+Inf"} 2"#,
            "safetytwin_replayer_batch_size_bytes_sum 5100",
            "safetytwin_replayer_batch_size_bytes_count 2",
            r#"safetytwin_replayer_ingest_append_seconds_bucket{le="1"} 1"#,
            r#"safetytwin_replayer_ingest_append_seconds_bucket{le="+Inf"} 2"#,
            "safetytwin_replayer_daemons_connected 0",
            "safetytwin_replayer_apply_duration_seconds_count 0",
            "# TYPE safetytwin_replayer_apply_step_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    /// The series dashboards and alerts rely on: names, types, label sets and buckets, once
    /// every one has been recorded.
    #[test]
    fn every_series_name_type_and_label_set_is_pinned() {
        let m = Arc::new(Metrics::default());
        m.batch_received("h", 100, Duration::from_millis(2), true);
        m.batch_received("h", 100, Duration::from_millis(2), false);
        m.batch_refused("Unauthenticated");
        m.stream_conflicting("h");
        m.stream_replaced("h");
        m.resync_requested("h");
        let _connected = m.daemon_connected();
        m.applied("h", Duration::from_secs(1), 3, true);
        m.applied("h", Duration::from_secs(1), 0, false);
        for kind in [
            StepKind::Remove,
            StepKind::Write,
            StepKind::DaemonReload,
            StepKind::Units,
            StepKind::Health,
            StepKind::Snapshot,
        ] {
            m.step(kind, Duration::from_millis(20));
        }
        m.snapshot_taken("h");
        m.snapshot_deleted("h");
        m.snapshots_kept("h", 2);
        m.reverted("h", RevertCause::Operator);
        m.reverted("h", RevertCause::Failure);
        const APPLY: &str = "le=0.01,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,120,+Inf";
        let host = r#"{host="h"}"#;
        assert_eq!(
            shape(&m.render()),
            [
                r#"safetytwin_replayer_applies_total counter {host="h",result="failed"} {host="h",result="ok"}"#.to_owned(),
                format!("safetytwin_replayer_apply_duration_seconds histogram {{}} {APPLY}"),
                format!("safetytwin_replayer_apply_failures_total counter {host}"),
                format!("safetytwin_replayer_apply_items_total counter {host}"),
                format!(
                    "safetytwin_replayer_apply_step_duration_seconds histogram \
                     {{step=\"daemon-reload\"}} {{step=\"health\"}} {{step=\"remove\"}} \
                     {{step=\"snapshot\"}} {{step=\"units\"}} {{step=\"write\"}} {APPLY}"
                ),
                "safetytwin_replayer_batch_size_bytes histogram {} \
                 le=256,1024,4096,16384,65536,262144,1048576,4194304,16777216,+Inf"
                    .to_owned(),
                format!("safetytwin_replayer_batches_duplicate_total counter {host}"),
                r#"safetytwin_replayer_batches_refused_total counter {code="Unauthenticated"}"#.to_owned(),
                format!("safetytwin_replayer_batches_stored_total counter {host}"),
                "safetytwin_replayer_daemons_connected gauge {}".to_owned(),
                "safetytwin_replayer_ingest_append_seconds histogram {} \
                 le=0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,+Inf"
                    .to_owned(),
                format!("safetytwin_replayer_resyncs_requested_total counter {host}"),
                r#"safetytwin_replayer_reverts_total counter {cause="failure",host="h"} {cause="operator",host="h"}"#.to_owned(),
                format!("safetytwin_replayer_snapshots_deleted_total counter {host}"),
                format!("safetytwin_replayer_snapshots_kept gauge {host}"),
                format!("safetytwin_replayer_snapshots_taken_total counter {host}"),
                format!("safetytwin_replayer_streams_conflicting_total counter {host}"),
                format!("safetytwin_replayer_streams_replaced_total counter {host}"),
            ]
        );
    }

    #[test]
    fn connected_daemons_count_until_the_guard_drops() {
        let m = Arc::new(Metrics::default());
        let a = m.daemon_connected();
        let b = m.daemon_connected();
        assert!(
            m.render()
                .contains("safetytwin_replayer_daemons_connected 2\n")
        );
        drop((a, b));
        assert!(
            m.render()
                .contains("safetytwin_replayer_daemons_connected 0\n")
        );
    }
}

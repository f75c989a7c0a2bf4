//! The replayer's Prometheus metrics, served by `GET /metrics` (`http.rs`): ingest's series,
//! declared here, and the twin's (`safetytwin_twin::metrics`), declared there. Each series is
//! declared once, with its name, help text and buckets; the `prometheus` crate keeps the values
//! and writes the text exposition.
//!
//! Recording is an atomic add on the series of its labels (found under a read lock), which is
//! noise next to the redb transaction it measures; the exposition is built only when scraped.

use std::{sync::Arc, time::Duration};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use safetytwin_twin::metrics::TwinMetrics;

/// Bucket bounds for store appends, seconds (an fsync'ed redb transaction).
const APPEND_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Bucket bounds for batch sizes, bytes (heartbeats are tens of bytes, a first batch megabytes).
const SIZE_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// The replayer's metrics; cheap to record into from any thread.
pub struct Metrics {
    registry: Registry,
    twin: Arc<TwinMetrics>,
    batches_stored: IntCounterVec,
    batches_duplicate: IntCounterVec,
    batches_refused: IntCounterVec,
    streams_conflicting: IntCounterVec,
    streams_replaced: IntCounterVec,
    resyncs_requested: IntCounterVec,
    batch_bytes: Histogram,
    append_seconds: Histogram,
    daemons: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    /// Ingest's series and a twin's that nothing records into (no `--twin`): a scrape still
    /// sees every series.
    fn default() -> Self {
        Metrics::new(Arc::default())
    }
}

impl Metrics {
    /// Ingest's series, served with `twin`'s (the applier's).
    pub fn new(twin: Arc<TwinMetrics>) -> Self {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            prometheus::register_int_counter_vec_with_registry!(
                Opts::new(name, help),
                labels,
                registry
            )
            .expect("a valid series, declared once")
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            prometheus::register_histogram_with_registry!(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                registry
            )
            .expect("a valid series, declared once")
        };
        let host = &["host"];
        Metrics {
            batches_stored: counters(
                "safetytwin_replayer_batches_stored_total",
                "Batches stored, by host.",
                host,
            ),
            batches_duplicate: counters(
                "safetytwin_replayer_batches_duplicate_total",
                "Batches acknowledged as duplicates (already stored), by host.",
                host,
            ),
            batches_refused: counters(
                "safetytwin_replayer_batches_refused_total",
                "Ingest streams ended with an error, by gRPC code.",
                &["code"],
            ),
            streams_conflicting: counters(
                "safetytwin_replayer_streams_conflicting_total",
                "Daemon streams refused because another boot streams for the same host id (a \
                 clone?), by host.",
                host,
            ),
            streams_replaced: counters(
                "safetytwin_replayer_streams_replaced_total",
                "Daemon streams ended by a newer stream of the same host and boot (a reconnect), \
                 by host.",
                host,
            ),
            resyncs_requested: counters(
                "safetytwin_replayer_resyncs_requested_total",
                "Daemons asked to resync because their history does not continue the stored one, \
                 by host.",
                host,
            ),
            batch_bytes: histogram(
                "safetytwin_replayer_batch_size_bytes",
                "Encoded size of each received batch.",
                SIZE_BUCKETS,
            ),
            append_seconds: histogram(
                "safetytwin_replayer_ingest_append_seconds",
                "Time to store a batch (one redb transaction).",
                APPEND_BUCKETS,
            ),
            daemons: prometheus::register_int_gauge_with_registry!(
                "safetytwin_replayer_daemons_connected",
                "Daemon ingest streams open now.",
                registry
            )
            .expect("a valid series, declared once"),
            registry,
            twin,
        }
    }

    /// The twin's series, served with these.
    pub fn twin(&self) -> &TwinMetrics {
        &self.twin
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

    /// The text exposition (format 0.0.4) of every series that has a value. A labelled family
    /// appears with its first series.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.twin.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = String::new();
        // Fails only on a family without a name or a sample, which `gather` never returns.
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut text) {
            tracing::warn!("metrics: {e}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetytwin_cli::exposition::shape;
    use safetytwin_twin::{
        metrics::{RevertCause, StepKind},
        vm::plan::StepKind as PlannedKind,
    };

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
        m.twin().applied("h", Duration::from_secs(1), 3, true);
        m.twin().applied("h", Duration::from_secs(1), 0, false);
        for kind in PlannedKind::ALL {
            m.twin().step(kind.into(), Duration::from_millis(20));
        }
        m.twin().step(StepKind::Snapshot, Duration::from_millis(20));
        m.twin().snapshot_taken("h");
        m.twin().snapshot_deleted("h");
        m.twin().snapshots_kept("h", 2);
        m.twin().reverted("h", RevertCause::Operator);
        m.twin().reverted("h", RevertCause::Failure);
        m.twin().verified("h", 3);
        m.twin().leases(4, 1);
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
                     {{step=\"accounts\"}} {{step=\"daemon-reload\"}} {{step=\"health\"}} \
                     {{step=\"packages\"}} {{step=\"remove\"}} \
                     {{step=\"snapshot\"}} {{step=\"stop\"}} {{step=\"units\"}} {{step=\"write\"}} {APPLY}"
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
                "safetytwin_replayer_lease_moves_total counter {}".to_owned(),
                "safetytwin_replayer_leases_held gauge {}".to_owned(),
                format!("safetytwin_replayer_resyncs_requested_total counter {host}"),
                r#"safetytwin_replayer_reverts_total counter {cause="failure",host="h"} {cause="operator",host="h"}"#.to_owned(),
                format!("safetytwin_replayer_snapshots_deleted_total counter {host}"),
                format!("safetytwin_replayer_snapshots_kept gauge {host}"),
                format!("safetytwin_replayer_snapshots_taken_total counter {host}"),
                format!("safetytwin_replayer_streams_conflicting_total counter {host}"),
                format!("safetytwin_replayer_streams_replaced_total counter {host}"),
                format!("safetytwin_replayer_verify_differences gauge {host}"),
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

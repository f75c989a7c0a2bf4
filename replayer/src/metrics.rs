//! The replayer's Prometheus metrics: what ingest and the applier record, and the text
//! exposition `GET /metrics` serves. Every series lives here, so the names, help texts and
//! buckets are defined once.
//!
//! Recording takes one uncontended mutex around a few map updates, which is noise next to the
//! redb transaction or guest call it measures; the exposition is built only when scraped.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{Arc, Mutex},
    time::Duration,
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

/// A family's kind in the exposition.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram(&'static [f64]),
}

/// One metric family: its name, help and kind.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// Its one series has no labels.
    unlabelled: bool,
}

const fn family(name: &'static str, help: &'static str, kind: Kind) -> Family {
    Family {
        name,
        help,
        kind,
        unlabelled: false,
    }
}

const fn unlabelled(name: &'static str, help: &'static str, kind: Kind) -> Family {
    Family {
        name,
        help,
        kind,
        unlabelled: true,
    }
}

const BATCHES_STORED: Family = family(
    "safetytwin_replayer_batches_stored_total",
    "Batches stored, by host.",
    Kind::Counter,
);
const BATCHES_DUPLICATE: Family = family(
    "safetytwin_replayer_batches_duplicate_total",
    "Batches acknowledged as duplicates (already stored), by host.",
    Kind::Counter,
);
const BATCHES_REFUSED: Family = family(
    "safetytwin_replayer_batches_refused_total",
    "Ingest streams ended with an error, by gRPC code.",
    Kind::Counter,
);
const STREAMS_CONFLICTING: Family = family(
    "safetytwin_replayer_streams_conflicting_total",
    "Daemon streams refused because another boot streams for the same host id (a clone?), by host.",
    Kind::Counter,
);
const STREAMS_REPLACED: Family = family(
    "safetytwin_replayer_streams_replaced_total",
    "Daemon streams ended by a newer stream of the same host and boot (a reconnect), by host.",
    Kind::Counter,
);
const RESYNCS_REQUESTED: Family = family(
    "safetytwin_replayer_resyncs_requested_total",
    "Daemons asked to resync because their history does not continue the stored one, by host.",
    Kind::Counter,
);
const BATCH_BYTES: Family = unlabelled(
    "safetytwin_replayer_batch_size_bytes",
    "Encoded size of each received batch.",
    Kind::Histogram(SIZE_BUCKETS),
);
const APPEND_SECONDS: Family = unlabelled(
    "safetytwin_replayer_ingest_append_seconds",
    "Time to store a batch (one redb transaction).",
    Kind::Histogram(APPEND_BUCKETS),
);
const DAEMONS: Family = unlabelled(
    "safetytwin_replayer_daemons_connected",
    "Daemon ingest streams open now.",
    Kind::Gauge,
);
const APPLIES: Family = family(
    "safetytwin_replayer_applies_total",
    "Twin applies that ran guest steps, by host and result.",
    Kind::Counter,
);
const APPLY_SECONDS: Family = unlabelled(
    "safetytwin_replayer_apply_duration_seconds",
    "Time of each twin apply, snapshot excluded.",
    Kind::Histogram(APPLY_BUCKETS),
);
const APPLY_ITEMS: Family = family(
    "safetytwin_replayer_apply_items_total",
    "Items (paths, units) applied to the twin, by host.",
    Kind::Counter,
);
const STEP_SECONDS: Family = family(
    "safetytwin_replayer_apply_step_duration_seconds",
    "Time of each apply step, by step kind.",
    Kind::Histogram(APPLY_BUCKETS),
);
const SNAPSHOTS_TAKEN: Family = family(
    "safetytwin_replayer_snapshots_taken_total",
    "Twin snapshots taken, by host.",
    Kind::Counter,
);
const SNAPSHOTS_DELETED: Family = family(
    "safetytwin_replayer_snapshots_deleted_total",
    "Twin snapshots retired, by host.",
    Kind::Counter,
);
const SNAPSHOTS_KEPT: Family = family(
    "safetytwin_replayer_snapshots_kept",
    "Twin snapshots kept now, by host.",
    Kind::Gauge,
);
const REVERTS: Family = family(
    "safetytwin_replayer_reverts_total",
    "Twin reverts to a snapshot, by host and cause (operator or failure).",
    Kind::Counter,
);
const FAILURES: Family = family(
    "safetytwin_replayer_apply_failures_total",
    "Twin applies that failed, by host.",
    Kind::Counter,
);

/// Every family, in exposition order.
const FAMILIES: &[&Family] = &[
    &BATCHES_STORED,
    &BATCHES_DUPLICATE,
    &BATCHES_REFUSED,
    &STREAMS_CONFLICTING,
    &STREAMS_REPLACED,
    &RESYNCS_REQUESTED,
    &BATCH_BYTES,
    &APPEND_SECONDS,
    &DAEMONS,
    &APPLIES,
    &APPLY_SECONDS,
    &APPLY_ITEMS,
    &STEP_SECONDS,
    &SNAPSHOTS_TAKEN,
    &SNAPSHOTS_DELETED,
    &SNAPSHOTS_KEPT,
    &REVERTS,
    &FAILURES,
];

/// A series' labels, as (name, value) pairs in a fixed order.
type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); one more than the bounds, for +Inf.
    counts: Vec<u64>,
    sum: f64,
}

/// A series' value.
enum Value {
    /// Counters and gauges.
    Number(f64),
    Histogram(Histogram),
}

/// The values of every series, keyed by family name and labels.
#[derive(Default)]
struct Series(BTreeMap<(&'static str, Labels), Value>);

impl Series {
    fn add(&mut self, f: &Family, labels: Labels, by: f64) {
        match self.0.entry((f.name, labels)).or_insert(Value::Number(0.0)) {
            Value::Number(v) => *v += by,
            Value::Histogram(_) => unreachable!("{} is a histogram", f.name),
        }
    }

    fn set(&mut self, f: &Family, labels: Labels, to: f64) {
        self.0.insert((f.name, labels), Value::Number(to));
    }

    fn observe(&mut self, f: &Family, labels: Labels, value: f64) {
        let Kind::Histogram(bounds) = f.kind else {
            unreachable!("{} is not a histogram", f.name)
        };
        let entry = self.0.entry((f.name, labels)).or_insert_with(|| {
            Value::Histogram(Histogram {
                counts: vec![0; bounds.len() + 1],
                sum: 0.0,
            })
        });
        let Value::Histogram(h) = entry else {
            unreachable!("{} is a histogram", f.name)
        };
        let bucket = bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(bounds.len());
        h.counts[bucket] += 1;
        h.sum += value;
    }
}

/// The replayer's metrics; cheap to record into from any thread.
#[derive(Default)]
pub struct Metrics {
    series: Mutex<Series>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn host(h: &str) -> Labels {
    vec![("host", h.to_owned())]
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
pub struct Connected(Arc<Metrics>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.with(|s| s.add(&DAEMONS, Vec::new(), -1.0));
    }
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Series)) {
        // A panic while recording cannot leave a series half-updated in a way that matters.
        f(&mut self.series.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A batch received for `host`: its encoded size, and how long storing it took.
    pub fn batch_received(&self, host: &str, bytes: usize, append: Duration, stored: bool) {
        self.with(|s| {
            let family = if stored {
                &BATCHES_STORED
            } else {
                &BATCHES_DUPLICATE
            };
            s.add(family, self::host(host), 1.0);
            s.observe(&BATCH_BYTES, Vec::new(), bytes as f64);
            s.observe(&APPEND_SECONDS, Vec::new(), append.as_secs_f64());
        });
    }

    /// An ingest stream ended with `code` (a gRPC code name, e.g. "FailedPrecondition").
    pub fn batch_refused(&self, code: &str) {
        self.with(|s| s.add(&BATCHES_REFUSED, vec![("code", code.to_owned())], 1.0));
    }

    /// A stream for `host` was refused: another boot streams for it.
    pub fn stream_conflicting(&self, host: &str) {
        self.with(|s| s.add(&STREAMS_CONFLICTING, self::host(host), 1.0));
    }

    /// A stream for `host` was ended by a newer one from the same boot.
    pub fn stream_replaced(&self, host: &str) {
        self.with(|s| s.add(&STREAMS_REPLACED, self::host(host), 1.0));
    }

    /// `host`'s daemon was asked to resync: its history does not continue the stored one.
    pub fn resync_requested(&self, host: &str) {
        self.with(|s| s.add(&RESYNCS_REQUESTED, self::host(host), 1.0));
    }

    /// A daemon stream opened; it counts as connected until the guard drops.
    pub fn daemon_connected(self: &Arc<Self>) -> Connected {
        self.with(|s| s.add(&DAEMONS, Vec::new(), 1.0));
        Connected(self.clone())
    }

    /// An apply of `host` ran for `took` and changed `items` (ok) or failed.
    pub fn applied(&self, host: &str, took: Duration, items: usize, ok: bool) {
        self.with(|s| {
            let result = if ok { "ok" } else { "failed" };
            s.add(
                &APPLIES,
                vec![("host", host.to_owned()), ("result", result.to_owned())],
                1.0,
            );
            s.observe(&APPLY_SECONDS, Vec::new(), took.as_secs_f64());
            if ok {
                s.add(&APPLY_ITEMS, self::host(host), items as f64);
            } else {
                s.add(&FAILURES, self::host(host), 1.0);
            }
        });
    }

    /// One apply step of `kind` took `took`.
    pub fn step(&self, kind: StepKind, took: Duration) {
        self.with(|s| {
            s.observe(
                &STEP_SECONDS,
                vec![("step", kind.as_str().to_owned())],
                took.as_secs_f64(),
            )
        });
    }

    /// A snapshot of `host`'s twin was taken.
    pub fn snapshot_taken(&self, host: &str) {
        self.with(|s| s.add(&SNAPSHOTS_TAKEN, self::host(host), 1.0));
    }

    /// A snapshot of `host`'s twin was retired.
    pub fn snapshot_deleted(&self, host: &str) {
        self.with(|s| s.add(&SNAPSHOTS_DELETED, self::host(host), 1.0));
    }

    /// `host`'s twin now has `n` snapshots.
    pub fn snapshots_kept(&self, host: &str, n: usize) {
        self.with(|s| s.set(&SNAPSHOTS_KEPT, self::host(host), n as f64));
    }

    /// `host`'s twin went back to a snapshot.
    pub fn reverted(&self, host: &str, cause: RevertCause) {
        let cause = match cause {
            RevertCause::Operator => "operator",
            RevertCause::Failure => "failure",
        };
        self.with(|s| {
            s.add(
                &REVERTS,
                vec![("host", host.to_owned()), ("cause", cause.to_owned())],
                1.0,
            )
        });
    }

    /// The text exposition (format 0.0.4) of every series.
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for f in FAMILIES {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            let mut any = false;
            // Keys sort by family name first, so this family's series are contiguous.
            for ((_, labels), value) in series
                .0
                .range((f.name, Vec::new())..)
                .take_while(|((name, _), _)| *name == f.name)
            {
                any = true;
                write_series(&mut out, f, labels, value);
            }
            // An unlabelled series exists from the start: a scrape sees 0, not nothing.
            if !any && f.unlabelled {
                let empty = match f.kind {
                    Kind::Histogram(bounds) => Value::Histogram(Histogram {
                        counts: vec![0; bounds.len() + 1],
                        sum: 0.0,
                    }),
                    Kind::Counter | Kind::Gauge => Value::Number(0.0),
                };
                write_series(&mut out, f, &Vec::new(), &empty);
            }
        }
        out
    }
}

/// Formats a float the way Prometheus reads it.
fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

/// `{a="x",b="y"}` with `extra` last; label values escaped.
fn label_set(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        pairs.push(format!("{k}=\"{v}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn write_series(out: &mut String, f: &Family, labels: &Labels, value: &Value) {
    match (f.kind, value) {
        (Kind::Histogram(bounds), Value::Histogram(h)) => {
            let mut cumulative = 0;
            for (bound, count) in bounds.iter().chain([&f64::INFINITY]).zip(&h.counts) {
                cumulative += count;
                let le = number(*bound);
                let _ = writeln!(
                    out,
                    "{}_bucket{} {cumulative}",
                    f.name,
                    label_set(labels, Some(("le", &le)))
                );
            }
            let set = label_set(labels, None);
            let _ = writeln!(out, "{}_sum{set} {}", f.name, number(h.sum));
            let _ = writeln!(out, "{}_count{set} {cumulative}", f.name);
        }
        (_, Value::Number(v)) => {
            let _ = writeln!(out, "{}{} {}", f.name, label_set(labels, None), number(*v));
        }
        (_, Value::Histogram(_)) => unreachable!("{} is not a histogram", f.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

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

    /// Every family as `name type label-sets`, a histogram's bounds after `le=`: what a
    /// scraper keys on, whatever order a library writes families and labels in. A histogram
    /// must have its `_sum` and `_count` and the same bounds for every label set.
    fn shape(text: &str) -> Vec<String> {
        #[derive(Default)]
        struct Family {
            kind: String,
            sets: BTreeSet<String>,
            bounds: Vec<String>,
            parts: BTreeSet<(String, &'static str)>,
        }
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.entry(name.to_owned()).or_default().kind = kind.to_owned();
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, _) = line.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let mut labels: Vec<&str> = labels
                .strip_suffix('}')
                .map(|l| l.split(',').collect())
                .unwrap_or_default();
            labels.sort_unstable();
            let le = labels.iter().position(|l| l.starts_with("le=\""));
            let le = le.map(|i| labels.remove(i)[4..].trim_end_matches('"').to_owned());
            let set = format!("{{{}}}", labels.join(","));
            let histogram = ["_bucket", "_sum", "_count"].into_iter().find_map(|s| {
                let f = name.strip_suffix(s)?;
                (families.get(f)?.kind == "histogram").then_some((f, s))
            });
            let f = match histogram {
                Some((f, part)) => {
                    let f = families.get_mut(f).unwrap();
                    f.parts.insert((set.clone(), part));
                    if let Some(le) = le {
                        assert_eq!(part, "_bucket");
                        if !f.bounds.contains(&le) {
                            f.bounds.push(le);
                        }
                    }
                    f
                }
                None => families
                    .get_mut(name)
                    .unwrap_or_else(|| panic!("no # TYPE for {line}")),
            };
            f.sets.insert(set);
        }
        families
            .into_iter()
            .map(|(name, f)| {
                let sets = Vec::from_iter(f.sets.iter().map(String::as_str)).join(" ");
                if f.kind != "histogram" {
                    return format!("{name} {} {sets}", f.kind);
                }
                for set in &f.sets {
                    for part in ["_bucket", "_sum", "_count"] {
                        assert!(f.parts.contains(&(set.clone(), part)), "{name}{part}{set}");
                    }
                }
                format!("{name} histogram {sets} le={}", f.bounds.join(","))
            })
            .collect()
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

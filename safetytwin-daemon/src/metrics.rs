//! The daemon's Prometheus metrics and the endpoint that serves them (`--metrics ADDR`).
//!
//! Counting stays off the hot path: the drain counts events by kind in a plain local array and
//! publishes it once per drain; everything else is updated once per drain or per batch (relaxed
//! atomic adds and stores inside the `prometheus` crate's series; each value is read on its own,
//! no two need to agree). The spool and the sender keep their own counters, read under the
//! spool's lock only when scraped (that lock is never held across an await, and the runtime has
//! one thread, so a scrape never waits on it).
//!
//! The endpoint is an axum router on hyper: `GET /metrics` returns the text exposition format,
//! and the connection closes. It has no authentication and no TLS, so [`bind`] refuses a
//! non-loopback address unless the operator explicitly allows it; connections are few, small
//! and short ([`serve`]).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, PoisonError, atomic::Ordering::Relaxed},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use safetytwin_model::{DeltaBatch, HostModel};
use safetytwin_proto::{sender::SenderLink, spool::Spool};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{events::HostEvent, tracer::Stats};

/// Event kinds, in the order of [`EventCounts`]; the `kind` label's values.
const KINDS: [&str; 5] = ["exec", "exit", "fork", "file", "cgroup"];

/// The sections of a batch and of the model; the `kind` label's values.
const SECTIONS: [&str; 6] = ["files", "units", "processes", "packages", "users", "groups"];

/// Upper bounds (seconds) of the batch cut histogram: from a batch with nothing dirty (well under
/// a millisecond) to one that reads thousands of files.
const CUT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The spool's and the sender's gauges (name, help), in the order [`LinkSeries`] reads them.
const LINK_GAUGES: [(&str, &str); 4] = [
    (
        "safetytwin_daemon_spool_batches",
        "Batches spooled and not yet acknowledged.",
    ),
    (
        "safetytwin_daemon_spool_bytes",
        "Bytes spooled and not yet acknowledged.",
    ),
    (
        "safetytwin_daemon_acked_seq",
        "The last seq the replayer acknowledged (or the spool gave up on).",
    ),
    (
        "safetytwin_daemon_sender_connected",
        "1 while a session with the replayer is established.",
    ),
];

/// The spool's and the sender's counters (name, help), in the order [`LinkSeries`] reads them.
const LINK_COUNTERS: [(&str, &str); 5] = [
    (
        "safetytwin_daemon_batches_acked_total",
        "Batches the replayer acknowledged.",
    ),
    (
        "safetytwin_daemon_sender_reconnects_total",
        "Sessions with the replayer retried after a failure.",
    ),
    (
        "safetytwin_daemon_sender_refused_total",
        "Batches the replayer refused for good (a permanent error): not resent, restated.",
    ),
    (
        "safetytwin_daemon_sender_rebased_total",
        "Times the spool was re-sealed after the replayer's last seq (histories diverged).",
    ),
    (
        "safetytwin_daemon_spool_quarantined_total",
        "Corrupt spool files moved aside into quarantine/ (their history is restated).",
    ),
];

/// The `Content-Type` of the exposition.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address is reachable from other hosts and that was not allowed.
    #[error(
        "--metrics {0} is not a loopback address; the endpoint has no authentication, so pass \
         --metrics-allow-remote to serve it there anyway"
    )]
    NotLoopback(SocketAddr),
    /// The listener could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where to serve the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The address to listen on.
    pub addr: SocketAddr,
    /// Serve on a non-loopback address too.
    pub allow_remote: bool,
}

/// Events decoded in one drain, by kind: plain integers, so counting costs an increment.
#[derive(Debug, Default)]
pub struct EventCounts {
    kinds: [u64; KINDS.len()],
    invalid: u64,
}

impl EventCounts {
    /// Counts one decoded event.
    pub fn event(&mut self, ev: &HostEvent) {
        let i = match ev {
            HostEvent::Exec(_) => 0,
            HostEvent::Exit(_) => 1,
            HostEvent::Fork(_) => 2,
            HostEvent::File(_) => 3,
            HostEvent::Cgroup(_) => 4,
        };
        self.kinds[i] += 1;
    }

    /// Counts one record that could not be decoded.
    pub fn invalid(&mut self) {
        self.invalid += 1;
    }
}

/// Declares series into a registry: one call per family. A labelled family with fixed label
/// values comes back as its series, in the order of the values, all present from the start.
struct Families<'a>(&'a Registry);

impl Families<'_> {
    fn add<C: Collector + Clone + 'static>(&self, c: Result<C, prometheus::Error>) -> C {
        let c = c.expect("a valid series");
        self.0
            .register(Box::new(c.clone()))
            .expect("every series name is declared once");
        c
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }

    fn counters<const N: usize>(
        &self,
        name: &str,
        help: &str,
        values: [&str; N],
    ) -> [IntCounter; N] {
        let family = self.add(IntCounterVec::new(Opts::new(name, help), &["kind"]));
        values.map(|v| family.with_label_values(&[v]))
    }

    fn gauges<const N: usize>(&self, name: &str, help: &str, values: [&str; N]) -> [IntGauge; N] {
        let family = self.add(IntGaugeVec::new(Opts::new(name, help), &["kind"]));
        values.map(|v| family.with_label_values(&[v]))
    }
}

/// Moves a counter up to a total counted elsewhere (the probes', the spool's, the sender's).
/// Only one caller at a time moves a given counter, so nothing is added twice.
fn advance(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What `run` streams through, read only when scraped.
struct LinkSeries {
    spool: Arc<Mutex<Spool>>,
    sender: Arc<SenderLink>,
    gauges: [IntGauge; LINK_GAUGES.len()],
    counters: [IntCounter; LINK_COUNTERS.len()],
    /// Held while a scrape moves the series to what it read, so two scrapes never both add.
    scrape: Mutex<()>,
}

impl Collector for LinkSeries {
    fn desc(&self) -> Vec<&Desc> {
        let gauges = self.gauges.iter().flat_map(|g| g.desc());
        gauges
            .chain(self.counters.iter().flat_map(|c| c.desc()))
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        let (depth, acked_batches, acked_seq, quarantined) = {
            let spool = self.spool.lock().expect("spool lock");
            (
                spool.depth(),
                spool.acked_batches(),
                spool.acked(),
                spool.quarantined(),
            )
        };
        let gauges = [
            depth.batches,
            depth.bytes,
            acked_seq,
            u64::from(self.sender.connected.load(Relaxed)),
        ];
        for (gauge, v) in self.gauges.iter().zip(gauges) {
            gauge.set(gauge_value(v));
        }
        let counters = [
            acked_batches,
            self.sender.reconnects.load(Relaxed),
            self.sender.refused.load(Relaxed),
            self.sender.rebased.load(Relaxed),
            quarantined,
        ];
        for (counter, total) in self.counters.iter().zip(counters) {
            advance(counter, total);
        }
        let gauges = self.gauges.iter().flat_map(|g| g.collect());
        gauges
            .chain(self.counters.iter().flat_map(|c| c.collect()))
            .collect()
    }
}

/// Every value the endpoint exposes.
pub struct Metrics {
    registry: Registry,
    events: [IntCounter; KINDS.len()],
    invalid: IntCounter,
    produced: IntCounter,
    received: IntCounter,
    dropped: IntCounter,
    batches: IntCounter,
    batch_last: [IntGauge; SECTIONS.len()],
    batch_total: [IntCounter; SECTIONS.len()],
    model: [IntGauge; SECTIONS.len()],
    cut_last: Gauge,
    cut: Histogram,
    resyncs: IntCounter,
    /// Registered with the spool's series: only `run` has a spool.
    overflows: IntCounter,
    linked: OnceLock<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let f = Families(&registry);
        Metrics {
            events: f.counters(
                "safetytwin_daemon_events_total",
                "Events read from the ring buffer and decoded, by kind.",
                KINDS,
            ),
            invalid: f.counter(
                "safetytwin_daemon_records_invalid_total",
                "Ring buffer records that could not be decoded (skipped).",
            ),
            produced: f.counter(
                "safetytwin_daemon_ring_produced_total",
                "Events the probes tried to emit.",
            ),
            received: f.counter(
                "safetytwin_daemon_ring_received_total",
                "Records the daemon read from the ring buffer.",
            ),
            dropped: f.counter(
                "safetytwin_daemon_ring_dropped_total",
                "Events lost to a full ring buffer (produced = received + dropped + in flight).",
            ),
            batches: f.counter("safetytwin_daemon_batches_total", "Batches cut."),
            resyncs: f.counter(
                "safetytwin_daemon_resyncs_total",
                "Batches that restated the whole model.",
            ),
            batch_last: f.gauges(
                "safetytwin_daemon_batch_changes",
                "Net changes in the last batch, by section.",
                SECTIONS,
            ),
            batch_total: f.counters(
                "safetytwin_daemon_batch_changes_total",
                "Net changes in all batches, by section.",
                SECTIONS,
            ),
            model: f.gauges(
                "safetytwin_daemon_model_entries",
                "Entries in the host model after the last batch, by section.",
                SECTIONS,
            ),
            cut_last: f.add(Gauge::new(
                "safetytwin_daemon_batch_cut_last_seconds",
                "Time the last cut took (reading dirty files and diffing the window).",
            )),
            cut: f.add(Histogram::with_opts(
                HistogramOpts::new(
                    "safetytwin_daemon_batch_cut_seconds",
                    "Time each cut took (reading dirty files and diffing the window).",
                )
                .buckets(CUT_BUCKETS.to_vec()),
            )),
            overflows: IntCounter::new(
                "safetytwin_daemon_spool_overflows_total",
                "Times the spool was full and its pending batches were dropped for a resync.",
            )
            .expect("a valid series"),
            linked: OnceLock::new(),
            registry,
        }
    }
}

impl Metrics {
    /// Adds one drain's event counts.
    pub fn add_events(&self, counts: &EventCounts) {
        for (total, n) in self.events.iter().zip(counts.kinds) {
            if n > 0 {
                total.inc_by(n);
            }
        }
        if counts.invalid > 0 {
            self.invalid.inc_by(counts.invalid);
        }
    }

    /// Publishes the probes' loss counters (already totals; only the run loop calls this).
    pub fn set_tracer(&self, stats: &Stats) {
        advance(&self.produced, stats.produced);
        advance(&self.received, stats.received);
        advance(&self.dropped, stats.dropped);
    }

    /// Records a cut batch (as sent: a resync's restated model), the time the cut took, and the
    /// model's size after it.
    pub fn batch_cut(&self, batch: &DeltaBatch, model: &HostModel, took: Duration) {
        let sizes = [
            batch.files.len(),
            batch.units.len(),
            batch.processes.len(),
            batch.packages.len(),
            batch.users.len(),
            batch.groups.len(),
        ];
        for (i, n) in sizes.into_iter().enumerate() {
            self.batch_last[i].set(gauge_value(n as u64));
            self.batch_total[i].inc_by(n as u64);
        }
        let model_sizes = [
            model.files.len(),
            model.units.len(),
            model.processes.len(),
            model.packages.len(),
            model.users.len(),
            model.groups.len(),
        ];
        for (gauge, n) in self.model.iter().zip(model_sizes) {
            gauge.set(gauge_value(n as u64));
        }
        self.batches.inc();
        self.cut_last.set(took.as_secs_f64());
        self.cut.observe(took.as_secs_f64());
    }

    /// Counts a resync batch.
    pub fn resync(&self) {
        self.resyncs.inc();
    }

    /// Counts a spool overflow (pending batches dropped).
    pub fn overflow(&self) {
        self.overflows.inc();
    }

    /// From now on, also expose the spool and the sender (`run` only).
    pub fn link(&self, spool: Arc<Mutex<Spool>>, sender: Arc<SenderLink>) {
        // `run` links once; metrics are not worth a panic if that ever changes.
        if self.linked.set(()).is_err() {
            return;
        }
        let valid = "a valid series";
        let link = LinkSeries {
            spool,
            sender,
            gauges: LINK_GAUGES.map(|(name, help)| IntGauge::new(name, help).expect(valid)),
            counters: LINK_COUNTERS.map(|(name, help)| IntCounter::new(name, help).expect(valid)),
            scrape: Mutex::new(()),
        };
        let f = Families(&self.registry);
        f.add(Ok(self.overflows.clone()));
        self.registry
            .register(Box::new(link))
            .expect("every series name is declared once");
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Fails only on a family without a name or a sample, which `gather` never returns.
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            tracing::warn!("metrics: {e}");
        }
        text
    }
}

/// Checks the address and binds the listener (before the probes load, so a bad address fails
/// fast).
pub async fn bind(endpoint: Endpoint) -> Result<TcpListener, MetricsError> {
    if !endpoint.addr.ip().is_loopback() && !endpoint.allow_remote {
        return Err(MetricsError::NotLoopback(endpoint.addr));
    }
    TcpListener::bind(endpoint.addr)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: endpoint.addr,
            source,
        })
}

/// Connections answered at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4;
/// A client gets this long to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head accepted (hyper's smallest read buffer).
const MAX_REQUEST: usize = 8 << 10;

/// `GET /metrics` (and `HEAD`); anything else is 404, another method 405.
fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics\n") })
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
}

/// Answers scrapes until the task is aborted: at most [`MAX_CONNECTIONS`] at once, one request
/// each, within [`CLIENT_TIMEOUT`].
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let router = router(metrics);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of fds and the like: back off instead of spinning.
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, router)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics endpoint: {e}"),
                Err(_) => tracing::debug!("metrics endpoint: client timed out"),
            }
            drop(permit);
        });
    }
}

/// One HTTP/1 request on `stream`, then the connection closes.
async fn answer(
    stream: TcpStream,
    router: Router,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut http = auto::Builder::new(TokioExecutor::new()).http1_only();
    http.http1()
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST)
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        // Header names as the responder before it wrote them, for clients that match exactly.
        .title_case_headers(true);
    http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetytwin_cli::exposition::shape;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn metrics() -> Metrics {
        let m = Metrics::default();
        let mut counts = EventCounts {
            kinds: [3, 2, 1, 4, 0],
            invalid: 0,
        };
        counts.invalid();
        m.add_events(&counts);
        m.add_events(&counts);
        m.set_tracer(&Stats {
            produced: 21,
            received: 20,
            dropped: 1,
        });
        let batch = DeltaBatch::default();
        m.batch_cut(&batch, &HostModel::default(), Duration::from_micros(300));
        m.batch_cut(&batch, &HostModel::default(), Duration::from_millis(30));
        m.batch_cut(&batch, &HostModel::default(), Duration::from_secs(9));
        m
    }

    /// Parses the exposition text the way a scraper does, checking its rules on the way:
    /// HELP then TYPE before a family's samples, samples only of declared families, no family
    /// twice. Returns each sample (name with labels) and its value.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut families = BTreeMap::new();
        let mut samples = BTreeMap::new();
        let mut help = None;
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                help = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(help.as_deref(), Some(name), "HELP before TYPE: {line}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    families.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{name} twice"
                );
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let name = series.split('{').next().unwrap();
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                    "{line}"
                );
                let family = families
                    .keys()
                    .find(|f| {
                        name == f.as_str()
                            || (families[*f] == "histogram"
                                && ["_bucket", "_sum", "_count"]
                                    .iter()
                                    .any(|s| name == format!("{f}{s}")))
                    })
                    .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
                if families[family] == "counter" {
                    assert!(family.ends_with("_total"), "{family}");
                }
                if series.contains('{') {
                    assert!(series.ends_with('}'), "{line}");
                }
                let v: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
                assert!(samples.insert(series.to_owned(), v).is_none(), "{line}");
            }
        }
        samples
    }

    #[test]
    fn exposition_text_follows_the_format() {
        let text = metrics().render();
        let s = parse(&text);
        assert_eq!(s["safetytwin_daemon_events_total{kind=\"exec\"}"], 6.0);
        assert_eq!(s["safetytwin_daemon_events_total{kind=\"file\"}"], 8.0);
        assert_eq!(s["safetytwin_daemon_events_total{kind=\"cgroup\"}"], 0.0);
        assert_eq!(s["safetytwin_daemon_records_invalid_total"], 2.0);
        assert_eq!(s["safetytwin_daemon_ring_produced_total"], 21.0);
        assert_eq!(s["safetytwin_daemon_batches_total"], 3.0);
        assert_eq!(s["safetytwin_daemon_batch_cut_last_seconds"], 9.0);
        // Cumulative buckets: 300 µs ≤ 0.0005, 30 ms ≤ 0.05, 9 s only in +Inf.
        let bucket =
            |le: &str| s[&format!("safetytwin_daemon_batch_cut_seconds_bucket{{le=\"{le}\"}}")];
        assert_eq!(
            (
                bucket("0.0005"),
                bucket("0.025"),
                bucket("0.05"),
                bucket("5")
            ),
            (1.0, 1.0, 2.0, 2.0)
        );
        assert_eq!(bucket("+Inf"), 3.0);
        assert_eq!(s["safetytwin_daemon_batch_cut_seconds_count"], 3.0);
        assert!((s["safetytwin_daemon_batch_cut_seconds_sum"] - 9.0303).abs() < 1e-9);
        // Without a link (`deltas`) there is no spool to report.
        assert!(!text.contains("spool"));
        assert!(text.contains(
            "# HELP safetytwin_daemon_batches_total Batches cut.\n\
             # TYPE safetytwin_daemon_batches_total counter\n\
             safetytwin_daemon_batches_total 3\n"
        ));
    }

    #[test]
    fn the_spool_and_sender_are_reported_when_linked() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path().join("spool"), 1 << 20).unwrap();
        spool.push(b"one").unwrap();
        spool.push(b"two").unwrap();
        spool.ack(1).unwrap();
        let m = metrics();
        let sender = Arc::new(SenderLink::default());
        sender.reconnects.store(2, Relaxed);
        sender.refused.store(3, Relaxed);
        m.link(Arc::new(Mutex::new(spool)), sender);
        let s = parse(&m.render());
        assert_eq!(s["safetytwin_daemon_spool_batches"], 1.0);
        assert_eq!(s["safetytwin_daemon_spool_bytes"], 15.0);
        assert_eq!(s["safetytwin_daemon_batches_acked_total"], 1.0);
        assert_eq!(s["safetytwin_daemon_acked_seq"], 1.0);
        assert_eq!(s["safetytwin_daemon_sender_reconnects_total"], 2.0);
        assert_eq!(s["safetytwin_daemon_sender_connected"], 0.0);
        assert_eq!(s["safetytwin_daemon_sender_refused_total"], 3.0);
        assert_eq!(s["safetytwin_daemon_spool_quarantined_total"], 0.0);
    }

    /// The series dashboards and alerts rely on: names, types, label sets and buckets, linked
    /// (`run`); `deltas` shows the same without the spool and sender ones.
    #[test]
    fn every_series_name_type_and_label_set_is_pinned() {
        const KINDS: &str = r#"{kind="files"} {kind="groups"} {kind="packages"} {kind="processes"} {kind="units"} {kind="users"}"#;
        let linked = [
            "safetytwin_daemon_acked_seq gauge {}".to_owned(),
            format!("safetytwin_daemon_batch_changes gauge {KINDS}"),
            format!("safetytwin_daemon_batch_changes_total counter {KINDS}"),
            "safetytwin_daemon_batch_cut_last_seconds gauge {}".to_owned(),
            "safetytwin_daemon_batch_cut_seconds histogram {} \
             le=0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,5,+Inf"
                .to_owned(),
            "safetytwin_daemon_batches_acked_total counter {}".to_owned(),
            "safetytwin_daemon_batches_total counter {}".to_owned(),
            r#"safetytwin_daemon_events_total counter {kind="cgroup"} {kind="exec"} {kind="exit"} {kind="file"} {kind="fork"}"#.to_owned(),
            format!("safetytwin_daemon_model_entries gauge {KINDS}"),
            "safetytwin_daemon_records_invalid_total counter {}".to_owned(),
            "safetytwin_daemon_resyncs_total counter {}".to_owned(),
            "safetytwin_daemon_ring_dropped_total counter {}".to_owned(),
            "safetytwin_daemon_ring_produced_total counter {}".to_owned(),
            "safetytwin_daemon_ring_received_total counter {}".to_owned(),
            "safetytwin_daemon_sender_connected gauge {}".to_owned(),
            "safetytwin_daemon_sender_rebased_total counter {}".to_owned(),
            "safetytwin_daemon_sender_reconnects_total counter {}".to_owned(),
            "safetytwin_daemon_sender_refused_total counter {}".to_owned(),
            "safetytwin_daemon_spool_batches gauge {}".to_owned(),
            "safetytwin_daemon_spool_bytes gauge {}".to_owned(),
            "safetytwin_daemon_spool_overflows_total counter {}".to_owned(),
            "safetytwin_daemon_spool_quarantined_total counter {}".to_owned(),
        ];
        let m = metrics();
        let unlinked: Vec<String> = linked
            .iter()
            .filter(|f| {
                !["_spool_", "_sender_", "_acked_"]
                    .iter()
                    .any(|p| f.contains(p))
            })
            .cloned()
            .collect();
        assert_eq!(shape(&m.render()), unlinked);
        let dir = tempfile::tempdir().unwrap();
        m.link(
            Arc::new(Mutex::new(
                Spool::open(dir.path().join("spool"), 1 << 20).unwrap(),
            )),
            Arc::new(SenderLink::default()),
        );
        let text = m.render();
        assert_eq!(shape(&text), linked);
    }

    #[tokio::test]
    async fn only_loopback_unless_allowed() {
        let remote = Endpoint {
            addr: "0.0.0.0:0".parse().unwrap(),
            allow_remote: false,
        };
        assert!(matches!(
            bind(remote).await,
            Err(MetricsError::NotLoopback(_))
        ));
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let local = Endpoint {
                addr: addr.parse().unwrap(),
                allow_remote: false,
            };
            // ::1 may be disabled on this host; only the refusal matters.
            assert!(!matches!(
                bind(local).await,
                Err(MetricsError::NotLoopback(_))
            ));
        }
    }

    #[tokio::test]
    async fn serves_get_metrics_and_nothing_else() {
        let listener = bind(Endpoint {
            addr: "127.0.0.1:0".parse().unwrap(),
            allow_remote: false,
        })
        .await
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(metrics())));
        let get = |request: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        // One request per connection, answered in the client's version.
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"));
        assert!(body.contains("safetytwin_daemon_events_total{kind=\"exec\"} 6\n"));
        let ok = get("GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        let head_only = get("HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert!(head_only.starts_with("HTTP/1.0 200 OK\r\n"), "{head_only}");
        assert!(head_only.ends_with("\r\n\r\n"), "no body: {head_only}");
        assert!(
            get("GET / HTTP/1.0\r\n\r\n")
                .await
                .starts_with("HTTP/1.0 404")
        );
        assert!(
            get("POST /metrics HTTP/1.0\r\n\r\n")
                .await
                .starts_with("HTTP/1.0 405")
        );
        server.abort();
    }
}

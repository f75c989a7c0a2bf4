//! The daemon's Prometheus metrics and the endpoint that serves them (`--metrics ADDR`).
//!
//! Counting stays off the hot path: the drain counts events by kind in a plain local array and
//! publishes it once per drain; everything else is updated once per drain or per batch, with
//! relaxed atomics (each value is read on its own; no two need to agree). The spool and the
//! sender keep their own counters, read under the spool's lock only when scraped (that lock is
//! never held across an await, and the runtime has one thread, so a scrape never waits on it).
//!
//! The endpoint is a tiny HTTP/1.0 responder on a tokio listener: `GET /metrics` returns the text
//! exposition format, and the connection closes. It has no authentication and no TLS, so
//! [`bind`] refuses a non-loopback address unless the operator explicitly allows it.

use std::{
    fmt::{Display, Write as _},
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use safetytwin_model::{DeltaBatch, HostModel};
use safetytwin_proto::{sender::SenderLink, spool::Spool};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{events::HostEvent, tracer::Stats};

/// Event kinds, in the order of [`EventCounts`]; the `kind` label's values.
const KINDS: [&str; 5] = ["exec", "exit", "fork", "file", "cgroup"];

/// The three sections of a batch and of the model; the `kind` label's values.
const SECTIONS: [&str; 3] = ["files", "units", "processes"];

/// Upper bounds (seconds) of the batch cut histogram: from a batch with nothing dirty (well under
/// a millisecond) to one that reads thousands of files.
const CUT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

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

/// A histogram with fixed buckets; sums in nanoseconds so that it stays an integer atomic.
#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; CUT_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = CUT_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(CUT_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(nanos(d), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What `run` streams through: read only when scraped.
struct Link {
    spool: Arc<Mutex<Spool>>,
    sender: Arc<SenderLink>,
}

/// Every value the endpoint exposes.
#[derive(Default)]
pub struct Metrics {
    events: [AtomicU64; KINDS.len()],
    invalid: AtomicU64,
    produced: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    batches: AtomicU64,
    batch_last: [AtomicU64; SECTIONS.len()],
    batch_total: [AtomicU64; SECTIONS.len()],
    model: [AtomicU64; SECTIONS.len()],
    cut_last_ns: AtomicU64,
    cut: Histogram,
    resyncs: AtomicU64,
    overflows: AtomicU64,
    link: OnceLock<Link>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    /// Adds one drain's event counts.
    pub fn add_events(&self, counts: &EventCounts) {
        for (total, n) in self.events.iter().zip(counts.kinds) {
            if n > 0 {
                total.fetch_add(n, Relaxed);
            }
        }
        if counts.invalid > 0 {
            self.invalid.fetch_add(counts.invalid, Relaxed);
        }
    }

    /// Publishes the probes' loss counters (already totals).
    pub fn set_tracer(&self, stats: &Stats) {
        self.produced.store(stats.produced, Relaxed);
        self.received.store(stats.received, Relaxed);
        self.dropped.store(stats.dropped, Relaxed);
    }

    /// Records a cut batch (as sent: a resync's restated model), the time the cut took, and the
    /// model's size after it.
    pub fn batch_cut(&self, batch: &DeltaBatch, model: &HostModel, took: Duration) {
        let sizes = [batch.files.len(), batch.units.len(), batch.processes.len()];
        for (i, n) in sizes.into_iter().enumerate() {
            self.batch_last[i].store(n as u64, Relaxed);
            self.batch_total[i].fetch_add(n as u64, Relaxed);
        }
        let model_sizes = [model.files.len(), model.units.len(), model.processes.len()];
        for (gauge, n) in self.model.iter().zip(model_sizes) {
            gauge.store(n as u64, Relaxed);
        }
        self.batches.fetch_add(1, Relaxed);
        self.cut_last_ns.store(nanos(took), Relaxed);
        self.cut.observe(took);
    }

    /// Counts a resync batch.
    pub fn resync(&self) {
        self.resyncs.fetch_add(1, Relaxed);
    }

    /// Counts a spool overflow (pending batches dropped).
    pub fn overflow(&self) {
        self.overflows.fetch_add(1, Relaxed);
    }

    /// From now on, also expose the spool and the sender (`run` only).
    pub fn link(&self, spool: Arc<Mutex<Spool>>, sender: Arc<SenderLink>) {
        // `run` links once; metrics are not worth a panic if that ever changes.
        let _ = self.link.set(Link { spool, sender });
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        let get = |a: &AtomicU64| a.load(Relaxed);
        out.family(
            "safetytwin_daemon_events_total",
            "counter",
            "Events read from the ring buffer and decoded, by kind.",
        );
        for (kind, n) in KINDS.iter().zip(&self.events) {
            out.sample("safetytwin_daemon_events_total", &[("kind", kind)], get(n));
        }
        out.single(
            "safetytwin_daemon_records_invalid_total",
            "counter",
            "Ring buffer records that could not be decoded (skipped).",
            get(&self.invalid),
        );
        for (name, help, value) in [
            (
                "safetytwin_daemon_ring_produced_total",
                "Events the probes tried to emit.",
                &self.produced,
            ),
            (
                "safetytwin_daemon_ring_received_total",
                "Records the daemon read from the ring buffer.",
                &self.received,
            ),
            (
                "safetytwin_daemon_ring_dropped_total",
                "Events lost to a full ring buffer (produced = received + dropped + in flight).",
                &self.dropped,
            ),
            (
                "safetytwin_daemon_batches_total",
                "Batches cut.",
                &self.batches,
            ),
            (
                "safetytwin_daemon_resyncs_total",
                "Batches that restated the whole model.",
                &self.resyncs,
            ),
        ] {
            out.single(name, "counter", help, get(value));
        }
        out.labelled(
            "safetytwin_daemon_batch_changes",
            "gauge",
            "Net changes in the last batch, by section.",
            &self.batch_last,
        );
        out.labelled(
            "safetytwin_daemon_batch_changes_total",
            "counter",
            "Net changes in all batches, by section.",
            &self.batch_total,
        );
        out.labelled(
            "safetytwin_daemon_model_entries",
            "gauge",
            "Entries in the host model after the last batch, by section.",
            &self.model,
        );
        out.single(
            "safetytwin_daemon_batch_cut_last_seconds",
            "gauge",
            "Time the last cut took (reading dirty files and diffing the window).",
            Seconds(get(&self.cut_last_ns)),
        );
        out.histogram(
            "safetytwin_daemon_batch_cut_seconds",
            "Time each cut took (reading dirty files and diffing the window).",
            &self.cut,
        );
        if let Some(link) = self.link.get() {
            self.render_link(link, &mut out);
        }
        out.0
    }

    fn render_link(&self, link: &Link, out: &mut Exposition) {
        let (depth, acked_batches, acked_seq, quarantined) = {
            let spool = link.spool.lock().expect("spool lock");
            (
                spool.depth(),
                spool.acked_batches(),
                spool.acked(),
                spool.quarantined(),
            )
        };
        for (name, kind, help, value) in [
            (
                "safetytwin_daemon_spool_batches",
                "gauge",
                "Batches spooled and not yet acknowledged.",
                depth.batches,
            ),
            (
                "safetytwin_daemon_spool_bytes",
                "gauge",
                "Bytes spooled and not yet acknowledged.",
                depth.bytes,
            ),
            (
                "safetytwin_daemon_spool_overflows_total",
                "counter",
                "Times the spool was full and its pending batches were dropped for a resync.",
                self.overflows.load(Relaxed),
            ),
            (
                "safetytwin_daemon_batches_acked_total",
                "counter",
                "Batches the replayer acknowledged.",
                acked_batches,
            ),
            (
                "safetytwin_daemon_acked_seq",
                "gauge",
                "The last seq the replayer acknowledged (or the spool gave up on).",
                acked_seq,
            ),
            (
                "safetytwin_daemon_sender_connected",
                "gauge",
                "1 while a session with the replayer is established.",
                u64::from(link.sender.connected.load(Relaxed)),
            ),
            (
                "safetytwin_daemon_sender_reconnects_total",
                "counter",
                "Sessions with the replayer retried after a failure.",
                link.sender.reconnects.load(Relaxed),
            ),
            (
                "safetytwin_daemon_sender_refused_total",
                "counter",
                "Batches the replayer refused for good (a permanent error): not resent, restated.",
                link.sender.refused.load(Relaxed),
            ),
            (
                "safetytwin_daemon_sender_rebased_total",
                "counter",
                "Times the spool was re-sealed after the replayer's last seq (histories diverged).",
                link.sender.rebased.load(Relaxed),
            ),
            (
                "safetytwin_daemon_spool_quarantined_total",
                "counter",
                "Corrupt spool files moved aside into quarantine/ (their history is restated).",
                quarantined,
            ),
        ] {
            out.single(name, kind, help, value);
        }
    }
}

/// Nanoseconds shown as seconds.
struct Seconds(u64);

impl Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0 as f64 / 1e9)
    }
}

/// The text being rendered.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                // Label values here are fixed names and bucket bounds: nothing to escape.
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(self.0, "{sep}{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One sample per batch and model section.
    fn labelled(&mut self, name: &str, kind: &str, help: &str, values: &[AtomicU64; 3]) {
        self.family(name, kind, help);
        for (section, v) in SECTIONS.iter().zip(values) {
            self.sample(name, &[("kind", section)], v.load(Relaxed));
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n.load(Relaxed);
            let le = CUT_BUCKETS.get(i).map_or("+Inf".to_owned(), f64::to_string);
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        self.sample(&format!("{name}_sum"), &[], Seconds(h.sum_ns.load(Relaxed)));
        // The +Inf bucket, not `count`: a cut observed between the two loads would otherwise
        // make them disagree.
        self.sample(&format!("{name}_count"), &[], cumulative);
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
/// Longest request head accepted.
const MAX_REQUEST: usize = 8 << 10;

/// Answers scrapes until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
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
        let metrics = metrics.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &metrics)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics endpoint: {e}"),
                Err(_) => tracing::debug!("metrics endpoint: client timed out"),
            }
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    // Read the whole head: closing with unread input would reset the connection and could
    // discard the response before the client reads it.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                false,
            )
            .await;
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            respond(&mut stream, "200 OK", &metrics.render(), method == "HEAD").await
        }
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", "try /metrics\n", false).await,
        _ => respond(&mut stream, "405 Method Not Allowed", "", false).await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

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
        let dir = std::env::temp_dir().join(format!("st-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir, 1 << 20).unwrap();
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
        let _ = std::fs::remove_dir_all(&dir);
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

    /// The series dashboards and alerts rely on: names, types, label sets and buckets, linked
    /// (`run`); `deltas` shows the same without the spool and sender ones.
    #[test]
    fn every_series_name_type_and_label_set_is_pinned() {
        const KINDS: &str = r#"{kind="files"} {kind="processes"} {kind="units"}"#;
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
        let dir = std::env::temp_dir().join(format!("st-metrics-pin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        m.link(
            Arc::new(Mutex::new(Spool::open(&dir, 1 << 20).unwrap())),
            Arc::new(SenderLink::default()),
        );
        let text = m.render();
        let _ = std::fs::remove_dir_all(&dir);
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
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.contains("safetytwin_daemon_events_total{kind=\"exec\"} 6\n"));
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

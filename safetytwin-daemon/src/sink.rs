//! Where cut batches go. The loop picks one sink at start and hands it every cut without asking
//! which it is:
//!
//! - [`PrintSink`] (`deltas`, `poll`): one line per batch, JSON or text, numbered from 1.
//! - [`SpoolSink`] (`run`): seals the batch (host, boot, seq from the spool, window, loss
//!   counters, resync flag), restating the whole model when a resync is due (the first batch, a
//!   sender's request, a spool overflow), keeps only what the replayer can store, spools it in
//!   parts within the budget, and wakes the sender.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime},
};

use safetytwin_model::{Batch, BatchHeader, DeltaBatch, HostModel};
use safetytwin_proto::{
    convert,
    sender::{SenderConfig, SenderLink},
    spool::{Pushed, Spool, SpoolError},
    wire::Wire,
};

use crate::{json, metrics::Metrics, tracer::Stats};

/// One cut window, as the loop hands it to a sink.
#[derive(Debug)]
pub struct Cut<'a> {
    /// The window's net changes.
    pub batch: DeltaBatch,
    /// The model after the cut: a resync restates it, metrics report its size.
    pub model: &'a HostModel,
    /// When the window opened.
    pub start: SystemTime,
    /// When it was cut.
    pub end: SystemTime,
    /// How long the cut took (reading dirty files included).
    pub took: Duration,
    /// The probes' loss counters at the cut.
    pub stats: Stats,
    /// What the scan that found the batch cost (`poll` only).
    pub scan: Option<ScanCost>,
}

/// The cost of one polling scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanCost {
    /// Wall time.
    pub wall: Duration,
    /// This process's CPU time.
    pub cpu: Duration,
}

/// Why a cut batch could not be printed or spooled.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing the output failed (e.g. a closed pipe).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// The spool could not be written.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Where cut batches go.
pub trait BatchSink {
    /// Takes one cut batch. `out` is the loop's output; only a printing sink writes to it.
    fn emit(&mut self, cut: Cut<'_>, out: &mut dyn Write) -> Result<(), SinkError>;
}

/// Prints each batch on the loop's output, JSON or text.
#[derive(Debug)]
pub struct PrintSink {
    json: bool,
    seq: u64,
    metrics: Arc<Metrics>,
}

impl PrintSink {
    /// A sink that prints JSON lines (`json`) or text, counting each batch in `metrics`.
    pub fn new(json: bool, metrics: Arc<Metrics>) -> PrintSink {
        PrintSink {
            json,
            seq: 0,
            metrics,
        }
    }
}

impl BatchSink for PrintSink {
    fn emit(&mut self, cut: Cut<'_>, out: &mut dyn Write) -> Result<(), SinkError> {
        self.metrics.batch_cut(&cut.batch, cut.model, cut.took);
        self.seq += 1;
        if self.json {
            let mut line = json::batch(self.seq, cut.start, cut.end, &cut.batch, &cut.stats);
            if let Some(scan) = cut.scan {
                line["scan"] = serde_json::json!({
                    "wall_us": scan.wall.as_micros() as u64, "cpu_us": scan.cpu.as_micros() as u64,
                    "processes": cut.model.processes.len(), "files": cut.model.files.len(),
                });
            }
            writeln!(out, "{line}")?;
        } else {
            let line = json::human_batch(self.seq, &cut.batch, &cut.stats);
            match cut.scan {
                Some(ScanCost { wall, cpu }) => {
                    writeln!(out, "{line} scan_wall={wall:?} scan_cpu={cpu:?}")?
                }
                None => writeln!(out, "{line}")?,
            }
        }
        Ok(())
    }
}

/// How to reach the replayer, and the spool that makes the stream exactly-once.
#[derive(Debug, Clone)]
pub struct ReplayerOptions {
    /// Endpoint, host and boot ids.
    pub sender: SenderConfig,
    /// The spool directory.
    pub spool_dir: PathBuf,
    /// The spool's bound in bytes.
    pub spool_max_bytes: u64,
    /// The most encoded bytes of one message: a larger batch is spooled and sent as
    /// consecutive parts (see `convert::batch_to_wire_parts`).
    pub max_batch_bytes: usize,
}

/// Seals each batch and spools it for the sender (`run`).
#[derive(Debug)]
pub struct SpoolSink {
    spool: Arc<Mutex<Spool>>,
    link: Arc<SenderLink>,
    host_id: String,
    boot_id: String,
    /// The trees this daemon declares: a path the replayer would refuse stays on this host.
    watched: Vec<String>,
    /// The part budget: the replayer refuses a message over its limit for good, so a batch
    /// larger than this (a large host's resync) goes as several.
    max_batch_bytes: usize,
    /// The first batch after start restates the model: the replayer may hold changes this
    /// daemon's fresh model knows nothing about (it was not running when they were undone).
    first: bool,
    metrics: Arc<Metrics>,
}

impl SpoolSink {
    /// Opens the spool and links it, with the sender's shared state, to `metrics`.
    pub fn open(
        opts: &ReplayerOptions,
        watched: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Result<SpoolSink, SpoolError> {
        let spool = Arc::new(Mutex::new(Spool::open(
            &opts.spool_dir,
            opts.spool_max_bytes,
        )?));
        let link = Arc::new(SenderLink::default());
        metrics.link(spool.clone(), link.clone());
        Ok(SpoolSink {
            spool,
            link,
            host_id: opts.sender.host_id.clone(),
            boot_id: opts.sender.boot_id.clone(),
            watched,
            max_batch_bytes: opts.max_batch_bytes,
            first: true,
            metrics,
        })
    }

    /// The spool, shared with the sender.
    pub fn spool(&self) -> &Arc<Mutex<Spool>> {
        &self.spool
    }

    /// What the sender shares with this sink (the wake-up, the resync request).
    pub fn link(&self) -> &Arc<SenderLink> {
        &self.link
    }
}

impl BatchSink for SpoolSink {
    fn emit(&mut self, cut: Cut<'_>, _out: &mut dyn Write) -> Result<(), SinkError> {
        let Cut {
            mut batch,
            model,
            start,
            end,
            took,
            stats,
            scan: _,
        } = cut;
        let resync =
            std::mem::take(&mut self.first) || self.link.resync.swap(false, Ordering::SeqCst);
        if resync {
            batch = DeltaBatch {
                activity: batch.activity,
                ..model.restate()
            };
            self.metrics.resync();
        }
        // The replayer refuses a whole batch for one path it cannot hold; resending it would
        // be refused forever, so such paths (a file name with a newline) stay on this host.
        for e in convert::retain_sendable(&mut batch, &self.watched) {
            tracing::warn!("not sent: {e}");
        }
        self.metrics.batch_cut(&batch, model, took);
        let unix_ns = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64)
        };
        let mut spool = self.spool.lock().expect("spool lock");
        let sealed = Batch {
            header: BatchHeader {
                host_id: self.host_id.clone(),
                boot_id: self.boot_id.clone(),
                seq: spool.next_seq(),
                window_start_unix_ns: unix_ns(start),
                window_end_unix_ns: unix_ns(end),
                produced: stats.produced,
                received: stats.received,
                dropped: stats.dropped,
                resync,
                more: false,
            },
            delta: batch,
        };
        let parts = convert::batch_to_wire_parts(&sealed, self.max_batch_bytes);
        let bytes: usize = parts.iter().map(Wire::wire_len).sum();
        // The parts were numbered from the spool's next seq; nothing else pushes while the
        // lock is held, so each gets the seq it carries.
        match spool.push_parts(parts.iter().map(Wire::to_bytes))? {
            Pushed::Stored => tracing::info!(
                seq = sealed.header.seq,
                parts = parts.len(),
                resync,
                files = sealed.delta.files.len(),
                units = sealed.delta.units.len(),
                processes = sealed.delta.processes.len(),
                packages = sealed.delta.packages.len(),
                accounts = sealed.delta.users.len() + sealed.delta.groups.len(),
                bytes,
                "batch spooled"
            ),
            Pushed::Overflow => {
                self.metrics.overflow();
                tracing::warn!(
                    seq = sealed.header.seq,
                    parts = parts.len(),
                    "spool full: pending batches dropped, the next batch restates the model"
                );
                self.link.resync.store(true, Ordering::SeqCst);
            }
        }
        drop(spool);
        self.link.wake.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use safetytwin_model::{Change, FileDelta, FileState, Window, fixtures};
    use safetytwin_proto::v1;

    use super::*;

    const HOST: &str = "host-a";
    const BOOT: &str = "boot-1";
    const STATS: Stats = Stats {
        produced: 7,
        received: 6,
        dropped: 1,
    };

    /// A model and its open window, changed by hand instead of by probes.
    #[derive(Default)]
    struct Host {
        model: HostModel,
        window: Window,
    }

    impl Host {
        fn write(&mut self, path: &str, text: &str) {
            self.change(path, Some(fixtures::text(text)));
        }

        fn remove(&mut self, path: &str) {
            self.change(path, None);
        }

        fn change(&mut self, path: &str, state: Option<FileState>) {
            let change = Change::FileObserved {
                path: path.into(),
                state,
            };
            self.model.apply(&change, &mut self.window);
        }

        /// Cuts the window, as the loop does at the end of an interval.
        fn cut(&mut self) -> Cut<'_> {
            let batch = self.model.cut(std::mem::take(&mut self.window));
            Cut {
                batch,
                model: &self.model,
                start: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
                end: SystemTime::UNIX_EPOCH + Duration::from_secs(110),
                took: Duration::from_millis(3),
                stats: STATS,
                scan: None,
            }
        }
    }

    fn spool_sink(dir: &tempfile::TempDir, max_bytes: u64, max_batch_bytes: usize) -> SpoolSink {
        let opts = ReplayerOptions {
            sender: SenderConfig {
                endpoints: vec!["http://127.0.0.1:1".into()],
                host_id: HOST.into(),
                boot_id: BOOT.into(),
                watched: Vec::new(),
                tls: None,
            },
            spool_dir: dir.path().join("spool"),
            spool_max_bytes: max_bytes,
            max_batch_bytes,
        };
        SpoolSink::open(&opts, vec!["/etc".into()], Arc::new(Metrics::default()))
            .expect("spool opens")
    }

    fn emit(sink: &mut impl BatchSink, cut: Cut<'_>) {
        sink.emit(cut, &mut std::io::sink()).expect("emitted");
    }

    /// Every spooled batch (part), in seq order, as the sender would send it.
    fn spooled(sink: &SpoolSink) -> Vec<Batch> {
        let pending = sink.spool().lock().unwrap().pending_after(0).unwrap();
        pending
            .into_iter()
            .map(|(seq, bytes)| {
                let wire = v1::DeltaBatch::from_bytes(bytes.as_slice()).unwrap();
                let batch = convert::batch_from_wire(wire).unwrap();
                assert_eq!(
                    batch.header.seq, seq,
                    "a part carries the seq it is spooled at"
                );
                batch
            })
            .collect()
    }

    fn paths(b: &Batch) -> Vec<&str> {
        b.delta
            .files
            .iter()
            .map(|f| match f {
                FileDelta::Upsert { path, .. } | FileDelta::Remove { path } => path.as_str(),
            })
            .collect()
    }

    fn woken(sink: &SpoolSink) -> bool {
        // A stored permit makes `notified` ready at its first poll.
        let notified = sink.link().wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable()
    }

    #[test]
    fn first_batch_restates_the_model_then_only_changes_follow() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = spool_sink(&dir, 1 << 20, 1 << 20);
        let mut host = Host::default();
        host.write("/etc/a", "a");
        host.write("/etc/b", "b");
        // Cut before the sink sees anything: the replayer must still get /etc/a and /etc/b.
        host.cut();
        host.write("/etc/c", "c");
        emit(&mut sink, host.cut());
        assert!(woken(&sink), "the sender is woken after a batch is spooled");

        host.write("/etc/a", "a2");
        emit(&mut sink, host.cut());

        let batches = spooled(&sink);
        assert_eq!(batches.len(), 2);
        let (first, second) = (&batches[0], &batches[1]);
        assert!(first.header.resync);
        assert_eq!(paths(first), ["/etc/a", "/etc/b", "/etc/c"]);
        assert!(!second.header.resync);
        assert_eq!(second.header.seq, first.header.seq + 1);
        assert_eq!(paths(second), ["/etc/a"]);
    }

    #[test]
    fn the_header_says_host_boot_window_and_loss_counters() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = spool_sink(&dir, 1 << 20, 1 << 20);
        let mut host = Host::default();
        host.write("/etc/a", "a");
        emit(&mut sink, host.cut());
        let header = &spooled(&sink)[0].header;
        assert_eq!(
            *header,
            BatchHeader {
                host_id: HOST.into(),
                boot_id: BOOT.into(),
                seq: 1,
                window_start_unix_ns: 100_000_000_000,
                window_end_unix_ns: 110_000_000_000,
                produced: 7,
                received: 6,
                dropped: 1,
                resync: true,
                more: false,
            }
        );
    }

    #[test]
    fn a_requested_resync_restates_the_model_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = spool_sink(&dir, 1 << 20, 1 << 20);
        let mut host = Host::default();
        host.write("/etc/a", "a");
        host.write("/etc/b", "b");
        emit(&mut sink, host.cut());
        // The sender found the replayer cannot take the spooled history.
        sink.link().resync.store(true, Ordering::SeqCst);
        host.write("/etc/b", "b2");
        emit(&mut sink, host.cut());
        host.write("/etc/b", "b3");
        emit(&mut sink, host.cut());

        let batches = spooled(&sink);
        let resyncs: Vec<bool> = batches.iter().map(|b| b.header.resync).collect();
        assert_eq!(resyncs, [true, true, false], "the request is taken once");
        assert_eq!(paths(&batches[1]), ["/etc/a", "/etc/b"]);
        assert_eq!(paths(&batches[2]), ["/etc/b"]);
        assert!(!sink.link().resync.load(Ordering::SeqCst));
    }

    #[test]
    fn a_spool_overflow_makes_the_next_batch_a_resync() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = spool_sink(&dir, 2_000, 1 << 20);
        let mut host = Host::default();
        host.write("/etc/a", "a");
        emit(&mut sink, host.cut());
        host.write("/etc/big", &"x".repeat(4_000));
        emit(&mut sink, host.cut());
        assert!(
            spooled(&sink).is_empty(),
            "an overflow drops everything pending"
        );
        assert!(sink.link().resync.load(Ordering::SeqCst));
        assert!(woken(&sink), "the sender is woken after an overflow too");

        host.remove("/etc/big");
        host.write("/etc/b", "b");
        emit(&mut sink, host.cut());
        let batches = spooled(&sink);
        assert_eq!(batches.len(), 1);
        assert!(batches[0].header.resync);
        assert_eq!(
            batches[0].header.seq, 3,
            "seqs go on after the dropped batch"
        );
        assert_eq!(paths(&batches[0]), ["/etc/a", "/etc/b"]);
    }

    #[test]
    fn a_batch_over_the_part_budget_is_spooled_as_parts() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = spool_sink(&dir, 1 << 20, 400);
        let mut host = Host::default();
        let names: Vec<String> = (0..8).map(|i| format!("/etc/f{i}")).collect();
        for name in &names {
            host.write(name, &"y".repeat(100));
        }
        emit(&mut sink, host.cut());

        let parts = spooled(&sink);
        assert!(parts.len() > 1, "{} part(s)", parts.len());
        let last = parts.len() - 1;
        for (i, part) in parts.iter().enumerate() {
            let h = &part.header;
            assert_eq!(h.seq, i as u64 + 1);
            assert_eq!(h.more, i < last, "more on all but the last part");
            assert_eq!(h.resync, i == 0, "resync only on the first part");
            assert_eq!((h.host_id.as_str(), h.boot_id.as_str()), (HOST, BOOT));
            assert_eq!(h.window_end_unix_ns, 110_000_000_000);
            let counters = (h.produced, h.received, h.dropped);
            let expected = if i == last { (7, 6, 1) } else { (0, 0, 0) };
            assert_eq!(counters, expected, "counters only on the last part");
        }
        let all: Vec<&str> = parts.iter().flat_map(paths).collect();
        assert_eq!(all, names);
    }

    #[test]
    fn printed_batches_are_json_lines_with_increasing_seqs() {
        let mut sink = PrintSink::new(true, Arc::new(Metrics::default()));
        let mut host = Host::default();
        let mut out = Vec::new();
        host.write("/etc/a", "a");
        sink.emit(host.cut(), &mut out).unwrap();
        sink.emit(host.cut(), &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line["kind"], "batch");
            assert_eq!(line["seq"], i as u64 + 1);
            assert!(line.get("scan").is_none());
        }
    }

    #[test]
    fn a_printed_poll_batch_says_what_its_scan_cost() {
        let mut host = Host::default();
        host.write("/etc/a", "a");
        let scan = Some(ScanCost {
            wall: Duration::from_micros(1500),
            cpu: Duration::from_micros(700),
        });
        let mut json = Vec::new();
        let mut sink = PrintSink::new(true, Arc::new(Metrics::default()));
        sink.emit(Cut { scan, ..host.cut() }, &mut json).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            line["scan"],
            serde_json::json!({"wall_us": 1500, "cpu_us": 700, "processes": 0, "files": 1})
        );
        let mut text = Vec::new();
        let mut sink = PrintSink::new(false, Arc::new(Metrics::default()));
        sink.emit(Cut { scan, ..host.cut() }, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("batch 1: files=0 "), "{text}");
        assert!(
            text.ends_with(" scan_wall=1.5ms scan_cpu=700µs\n"),
            "{text}"
        );
    }
}

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

use prost::Message;
use safetytwin_model::{Batch, BatchHeader, DeltaBatch, HostModel};
use safetytwin_proto::{
    convert,
    sender::{SenderConfig, SenderLink},
    spool::{Pushed, Spool, SpoolError},
};

use crate::{json, metrics::Metrics, run::RunError, tracer::Stats};

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

/// Where cut batches go.
pub trait BatchSink {
    /// Takes one cut batch. `out` is the loop's output; only a printing sink writes to it.
    fn emit(&mut self, cut: Cut<'_>, out: &mut dyn Write) -> Result<(), RunError>;
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
    fn emit(&mut self, cut: Cut<'_>, out: &mut dyn Write) -> Result<(), RunError> {
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
    fn emit(&mut self, cut: Cut<'_>, _out: &mut dyn Write) -> Result<(), RunError> {
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
        let bytes: usize = parts.iter().map(Message::encoded_len).sum();
        // The parts were numbered from the spool's next seq; nothing else pushes while the
        // lock is held, so each gets the seq it carries.
        match spool.push_parts(parts.iter().map(Message::encode_to_vec))? {
            Pushed::Stored => tracing::info!(
                seq = sealed.header.seq,
                parts = parts.len(),
                resync,
                files = sealed.delta.files.len(),
                units = sealed.delta.units.len(),
                processes = sealed.delta.processes.len(),
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

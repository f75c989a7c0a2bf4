//! `poll`: the polling collector that the original design used, kept as the benchmarks'
//! baseline (and for hosts where the probes cannot load). No probes: every interval the scan
//! that seeds the tracer's loop (`run::scan`: /proc, cgroupfs, the watched trees) is repeated
//! and diffed against the previous one, and the difference printed by the loop's own
//! [`PrintSink`], with what the scan cost. Whatever started and ended between two scans is never
//! seen.

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime},
};

use safetytwin_model::HostModel;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    metrics::Metrics,
    observe::ObserveConfig,
    run::{self, RunError},
    sink::{BatchSink, Cut, PrintSink, ScanCost},
    tracer::{Stats, watched_prefixes},
};

/// Options of the polling collector.
#[derive(Debug, Clone)]
pub struct PollOptions {
    /// Time between scans.
    pub interval: Duration,
    /// The trees scanned for files.
    pub watched: Vec<String>,
    /// How files are read.
    pub observe: ObserveConfig,
    /// JSON lines instead of text.
    pub json: bool,
}

/// Scans every interval and prints what changed, until SIGINT/SIGTERM.
pub async fn poll(opts: &PollOptions, out: &mut impl Write) -> Result<(), RunError> {
    let watched = run::real_trees(watched_prefixes(&opts.watched)?);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(opts.interval);
    // Not served: `poll` has no metrics endpoint.
    let mut sink = PrintSink::new(opts.json, Arc::new(Metrics::default()));
    let mut last = HostModel::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        let (cpu0, start) = (cpu_time(), SystemTime::now());
        let model = run::scan(watched.clone(), opts.observe.clone())?;
        let batch = last.diff(&model);
        let end = SystemTime::now();
        let cpu = cpu_time().saturating_sub(cpu0);
        let wall = end.duration_since(start).unwrap_or_default();
        last = model;
        let cut = Cut {
            batch,
            model: &last,
            start,
            end,
            took: wall,
            stats: Stats::default(),
            scan: Some(ScanCost { wall, cpu }),
        };
        sink.emit(cut, out)?;
        out.flush()?;
    }
    Ok(())
}

/// This process's user + system CPU time.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

//! `safetytwin-daemon trace`: attach the probes, print the /proc snapshot and then every kernel
//! event until SIGINT/SIGTERM, and finish with exact loss counters.

use std::{io::Write, time::Duration};

use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cgroups::CgroupIndex,
    clock::BootClock,
    events::{self, HostEvent},
    json,
    process::ProcessTable,
    procfs,
    tracer::{Stats, Tracer, TracerConfig, TracerError, watched_prefixes},
    watch::Watched,
};

/// Options of the trace command.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// How to load the probes.
    pub tracer: TracerConfig,
    /// How often the ring is drained when no probe forced a wakeup.
    pub drain_interval: Duration,
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// Why tracing stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The probes could not be started or read.
    #[error(transparent)]
    Tracer(#[from] TracerError),
    /// Writing the output failed (e.g. a closed pipe).
    #[error("writing events: {0}")]
    Output(#[from] std::io::Error),
}

/// Prints events and keeps the process table until a signal arrives; returns the final stats.
pub async fn run(opts: &TraceOptions, out: &mut impl Write) -> Result<Stats, TraceError> {
    let mut tracer = Tracer::start(&opts.tracer)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let clock = BootClock::now();
    let mut state = State {
        table: ProcessTable::default(),
        cgroups: CgroupIndex::default(),
        watched: Watched::new(watched_prefixes(&opts.tracer.watched)?),
        json: opts.json,
    };

    // The probes are attached, so nothing that starts from here on is missed; the scan covers
    // what existed before. The table tolerates the overlap.
    let cgroup2 = procfs::cgroup2_mount();
    if let Some(root) = &cgroup2 {
        for (id, path) in procfs::scan_cgroups(root) {
            state.cgroups.insert(id, path);
        }
    }
    let now = std::time::SystemTime::now();
    for exec in procfs::scan("/proc".as_ref(), cgroup2.as_deref(), now) {
        state.fold(HostEvent::Exec(exec), out)?;
    }
    out.flush()?;
    tracing::info!(
        processes = state.table.len(),
        "process table seeded from /proc"
    );

    let ring_fd = tracer.ring_fd().try_clone_to_owned()?;
    // SAFETY: the AsyncFd owns this duplicate, so the fd stays open for its whole life.
    let ring = unsafe { AsyncFd::register_with_interest(ring_fd, Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut tick = tokio::time::interval(opts.drain_interval);
    let mut last_dropped = 0;
    loop {
        tokio::select! {
            guard = ring.readable() => guard?.clear_ready(),
            _ = tick.tick() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        drain(&mut tracer, &clock, &mut state, out)?;
        let stats = tracer.stats()?;
        if stats.dropped != last_dropped {
            last_dropped = stats.dropped;
            tracing::warn!(dropped = stats.dropped, "ring buffer full: events lost");
            if opts.json {
                writeln!(out, "{}", json::drops(&stats))?;
            }
        }
        out.flush()?;
    }
    drop(ring);

    // Detach first so nothing new arrives, then drain: the accounting is now exact.
    tracer.detach();
    drain(&mut tracer, &clock, &mut state, out)?;
    let stats = tracer.stats()?;
    if opts.json {
        writeln!(out, "{}", json::drops(&stats))?;
    } else {
        writeln!(
            out,
            "produced={} received={} dropped={}",
            stats.produced, stats.received, stats.dropped
        )?;
    }
    out.flush()?;
    tracing::info!(?stats, processes = state.table.len(), "detached");
    Ok(stats)
}

/// What the trace loop keeps between events.
struct State {
    table: ProcessTable,
    cgroups: CgroupIndex,
    watched: Watched,
    json: bool,
}

impl State {
    /// Prints an event (unless it is a file change outside the watched trees) and folds it in.
    fn fold(&mut self, ev: HostEvent, out: &mut impl Write) -> std::io::Result<()> {
        if !self.watched.keeps(&ev) {
            return Ok(());
        }
        self.cgroups.apply(&ev);
        self.table.apply(&ev);
        if self.json {
            writeln!(out, "{}", json::event(&ev, &self.cgroups))
        } else {
            writeln!(out, "{}", json::human(&ev))
        }
    }
}

fn drain(
    tracer: &mut Tracer,
    clock: &BootClock,
    state: &mut State,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut result = Ok(());
    tracer.drain(|bytes| match events::decode(bytes, clock) {
        Ok(ev) => {
            if result.is_ok() {
                result = state.fold(ev, out);
            }
        }
        Err(e) => tracing::warn!("skipping record: {e}"),
    });
    result
}

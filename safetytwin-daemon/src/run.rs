//! The daemon's loop: attach the probes, seed the model from /proc, the cgroup hierarchy and
//! the watched trees, then drain the ring on a timer (and on the probes' early wakeups) and fold
//! every event in, until SIGINT/SIGTERM. `trace` prints each event; `deltas` cuts a batch of net
//! changes every interval. On exit the probes are detached and the ring drained, so the final
//! loss counters are exact.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use prost::Message;
use safetytwin_model::{Batch, BatchHeader, Change, DeltaBatch, HostModel, Window};
use safetytwin_proto::{
    convert,
    sender::{self, SenderConfig, SenderLink},
    spool::{Pushed, Spool, SpoolError},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cgroups::CgroupIndex,
    changes,
    clock::BootClock,
    events::{self, HostEvent},
    json,
    metrics::{self, EventCounts, Metrics, MetricsError},
    observe::ObserveConfig,
    procfs,
    tracer::{Stats, Tracer, TracerConfig, TracerError, watched_prefixes},
    watch::Watched,
};

/// What the loop prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every event (and the /proc snapshot first).
    Trace,
    /// One batch of net changes per interval (the first holds the whole initial state).
    Deltas {
        /// Time between cuts.
        interval: Duration,
    },
}

/// Where cut batches go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Printed on stdout.
    Print,
    /// Spooled and streamed to a replayer (`run`); boxed, as it dwarfs `Print`.
    Replayer(Box<ReplayerOptions>),
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

/// Options of the loop.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How to load the probes.
    pub tracer: TracerConfig,
    /// How often the ring is drained when no probe forced a wakeup.
    pub drain_interval: Duration,
    /// How files are read at batch cut.
    pub observe: ObserveConfig,
    /// What to print.
    pub mode: Mode,
    /// JSON lines instead of text.
    pub json: bool,
    /// Where batches go (deltas mode).
    pub sink: Sink,
    /// Serve Prometheus metrics here.
    pub metrics: Option<metrics::Endpoint>,
}

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The probes could not be started or read.
    #[error(transparent)]
    Tracer(#[from] TracerError),
    /// Writing the output failed (e.g. a closed pipe).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// The spool could not be opened or written.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// The spool and the sender's shared state, while streaming to a replayer.
struct Link {
    spool: Arc<Mutex<Spool>>,
    shared: Arc<SenderLink>,
    host_id: String,
    boot_id: String,
    /// The part budget: the replayer refuses a message over its limit for good, so a batch
    /// larger than this (a large host's resync) goes as several.
    max_batch_bytes: usize,
    /// The first batch after start restates the model: the replayer may hold changes this
    /// daemon's fresh model knows nothing about (it was not running when they were undone).
    first: bool,
}

/// The model and what the current window has touched.
struct State {
    model: HostModel,
    window: Window,
    cgroups: CgroupIndex,
    watched: Watched,
    dirty: BTreeSet<String>,
    observe: ObserveConfig,
    mode: Mode,
    json: bool,
    seq: u64,
    window_start: SystemTime,
    link: Option<Link>,
}

impl State {
    fn new(watched: Watched, observe: ObserveConfig, mode: Mode, json: bool) -> State {
        State {
            model: HostModel::default(),
            window: Window::default(),
            cgroups: CgroupIndex::default(),
            watched,
            dirty: BTreeSet::new(),
            observe,
            mode,
            json,
            seq: 0,
            window_start: SystemTime::now(),
            link: None,
        }
    }

    fn fold(&mut self, changes: &[Change]) {
        for c in changes {
            self.model.apply(c, &mut self.window);
        }
    }

    /// Folds one event in (file events only dirty their paths) and, tracing, prints it.
    fn on_event(&mut self, ev: HostEvent, out: &mut impl Write) -> std::io::Result<()> {
        if !self.watched.keeps(&ev) {
            return Ok(());
        }
        self.cgroups.apply(&ev);
        let implied = changes::implied(&ev, &self.model);
        self.fold(&implied.changes);
        if self.mode == Mode::Trace {
            // Nothing is cut while tracing; forget what the window touched.
            self.window = Window::default();
            if self.json {
                writeln!(out, "{}", json::event(&ev, &self.cgroups))?;
            } else {
                writeln!(out, "{}", json::human(&ev))?;
            }
        } else {
            self.dirty.extend(self.watched.readable(implied.dirty));
        }
        Ok(())
    }

    /// Reads every dirty path, folds what it found and cuts the window.
    fn cut(&mut self) -> DeltaBatch {
        let mut observed = Vec::new();
        for path in std::mem::take(&mut self.dirty) {
            self.observe.observe_tree(&path, &self.model, &mut observed);
        }
        self.fold(&observed);
        self.model.cut(std::mem::take(&mut self.window))
    }

    /// Cuts the window and prints the batch, or seals, spools and hands it to the sender.
    fn emit_batch(
        &mut self,
        stats: &Stats,
        metrics: &Metrics,
        out: &mut impl Write,
    ) -> Result<(), RunError> {
        let started = Instant::now();
        let mut batch = self.cut();
        let took = started.elapsed();
        let end = SystemTime::now();
        let start = std::mem::replace(&mut self.window_start, end);
        let Some(link) = &mut self.link else {
            metrics.batch_cut(&batch, &self.model, took);
            self.seq += 1;
            if self.json {
                writeln!(out, "{}", json::batch(self.seq, start, end, &batch, stats))?;
            } else {
                writeln!(out, "{}", json::human_batch(self.seq, &batch, stats))?;
            }
            return Ok(());
        };
        let resync =
            std::mem::take(&mut link.first) || link.shared.resync.swap(false, Ordering::SeqCst);
        if resync {
            batch = DeltaBatch {
                activity: batch.activity,
                ..self.model.restate()
            };
            metrics.resync();
        }
        // The replayer refuses a whole batch for one path it cannot hold; resending it would
        // be refused forever, so such paths (a file name with a newline) stay on this host.
        for e in convert::retain_sendable(&mut batch, self.watched.prefixes()) {
            tracing::warn!("not sent: {e}");
        }
        metrics.batch_cut(&batch, &self.model, took);
        let unix_ns = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64)
        };
        let mut spool = link.spool.lock().expect("spool lock");
        let sealed = Batch {
            header: BatchHeader {
                host_id: link.host_id.clone(),
                boot_id: link.boot_id.clone(),
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
        let parts = convert::batch_to_wire_parts(&sealed, link.max_batch_bytes);
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
                metrics.overflow();
                tracing::warn!(
                    seq = sealed.header.seq,
                    parts = parts.len(),
                    "spool full: pending batches dropped, the next batch restates the model"
                );
                link.shared.resync.store(true, Ordering::SeqCst);
            }
        }
        drop(spool);
        link.shared.wake.notify_one();
        Ok(())
    }
}

/// Seeds the model with what existed before the probes saw anything.
fn seed(state: &mut State, out: &mut impl Write) -> std::io::Result<()> {
    let cgroup2 = procfs::cgroup2_mount();
    let mut seed = Vec::new();
    if let Some(root) = &cgroup2 {
        for (id, path) in procfs::scan_cgroups(root) {
            let populated = procfs::cgroup_populated(&root.join(path.trim_start_matches('/')));
            seed.push(Change::CgroupCreated {
                path: path.clone(),
                id,
            });
            if populated {
                seed.push(Change::CgroupPopulated {
                    path: path.clone(),
                    id,
                    populated: true,
                });
            }
            state.cgroups.insert(id, path);
        }
    }
    let now = SystemTime::now();
    for exec in procfs::scan(Path::new("/proc"), cgroup2.as_deref(), now) {
        let ev = HostEvent::Exec(exec);
        if state.mode == Mode::Trace {
            state.on_event(ev, out)?;
        } else {
            seed.extend(changes::implied(&ev, &state.model).changes);
        }
    }
    if matches!(state.mode, Mode::Deltas { .. }) {
        for root in state.watched.prefixes() {
            state.observe.observe_tree(root, &state.model, &mut seed);
        }
    }
    state.fold(&seed);
    tracing::info!(
        processes = state.model.processes.len(),
        files = state.model.files.len(),
        units = state.model.units.len(),
        "model seeded"
    );
    Ok(())
}

/// Runs until a signal arrives; returns the final loss counters.
pub async fn run(opts: &RunOptions, out: &mut impl Write) -> Result<Stats, RunError> {
    let listener = match opts.metrics {
        Some(endpoint) => Some(metrics::bind(endpoint).await?),
        None => None,
    };
    let link = match &opts.sink {
        Sink::Replayer(r) => Some(Link {
            spool: Arc::new(Mutex::new(Spool::open(&r.spool_dir, r.spool_max_bytes)?)),
            shared: Arc::new(SenderLink::default()),
            host_id: r.sender.host_id.clone(),
            boot_id: r.sender.boot_id.clone(),
            max_batch_bytes: r.max_batch_bytes,
            first: true,
        }),
        Sink::Print => None,
    };
    let mut tracer = Tracer::start(&opts.tracer)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let clock = BootClock::now();
    let mut state = State {
        link,
        ..State::new(
            Watched::new(watched_prefixes(&opts.tracer.watched)?),
            opts.observe.clone(),
            opts.mode,
            opts.json,
        )
    };
    let sender = match (&opts.sink, &state.link) {
        (Sink::Replayer(r), Some(link)) => {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let config = SenderConfig {
                watched: state.watched.prefixes().to_vec(),
                ..r.sender.clone()
            };
            let task = tokio::spawn(sender::run(
                config,
                link.spool.clone(),
                link.shared.clone(),
                stopped,
            ));
            Some((stop, task))
        }
        _ => None,
    };
    // Counted whether served or not: cheaper than a branch on every update.
    let metrics = Arc::new(Metrics::default());
    if let Some(link) = &state.link {
        metrics.link(link.spool.clone(), link.shared.clone());
    }
    let server = listener.map(|l| tokio::spawn(metrics::serve(l, metrics.clone())));

    // The probes are attached, so nothing that happens from here on is missed; the seed covers
    // what existed before. Folding tolerates the overlap.
    seed(&mut state, out)?;
    if let Mode::Deltas { .. } = opts.mode {
        // The first batch is the whole initial state (plus what happened while seeding).
        drain(&mut tracer, &clock, &mut state, &metrics, out)?;
        let stats = tracer.stats()?;
        metrics.set_tracer(&stats);
        state.emit_batch(&stats, &metrics, out)?;
    }
    out.flush()?;

    let ring_fd = tracer.ring_fd().try_clone_to_owned()?;
    // SAFETY: the AsyncFd owns this duplicate, so the fd stays open for its whole life.
    let ring = unsafe { AsyncFd::register_with_interest(ring_fd, Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut tick = tokio::time::interval(opts.drain_interval);
    let cut_every = match opts.mode {
        Mode::Deltas { interval } => interval,
        Mode::Trace => Duration::MAX,
    };
    let mut cut = tokio::time::interval_at(
        tokio::time::Instant::now() + cut_every.min(Duration::from_secs(86_400 * 365)),
        cut_every.min(Duration::from_secs(86_400 * 365)),
    );
    let mut last_dropped = 0;
    loop {
        let mut cut_now = false;
        tokio::select! {
            guard = ring.readable() => guard?.clear_ready(),
            _ = tick.tick() => {}
            _ = cut.tick() => cut_now = true,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        if cut_now || opts.mode == Mode::Trace {
            // Before the drain: a write after this point is reported again, so no change made
            // after the cut can hide behind one reported before it.
            tracer.next_generation()?;
        }
        drain(&mut tracer, &clock, &mut state, &metrics, out)?;
        let stats = tracer.stats()?;
        metrics.set_tracer(&stats);
        if stats.dropped != last_dropped {
            last_dropped = stats.dropped;
            tracing::warn!(dropped = stats.dropped, "ring buffer full: events lost");
            if opts.json && opts.mode == Mode::Trace {
                writeln!(out, "{}", json::drops(&stats))?;
            }
        }
        if cut_now {
            state.emit_batch(&stats, &metrics, out)?;
        }
        out.flush()?;
    }
    drop(ring);

    // Detach first so nothing new arrives, then drain: the accounting is now exact.
    tracer.detach();
    drain(&mut tracer, &clock, &mut state, &metrics, out)?;
    let stats = tracer.stats()?;
    metrics.set_tracer(&stats);
    if let Mode::Deltas { .. } = opts.mode {
        state.emit_batch(&stats, &metrics, out)?;
    }
    if let Some((stop, task)) = sender {
        // Give the sender a moment to have the last batch acknowledged; what is not stays
        // spooled for the next start.
        let _ = stop.send(true);
        let _ = task.await;
    }
    if let Some(server) = server {
        server.abort();
    }
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
    tracing::info!(?stats, processes = state.model.processes.len(), "detached");
    Ok(stats)
}

fn drain(
    tracer: &mut Tracer,
    clock: &BootClock,
    state: &mut State,
    metrics: &Metrics,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut result = Ok(());
    let mut counts = EventCounts::default();
    tracer.drain(|bytes| match events::decode(bytes, clock) {
        Ok(ev) => {
            counts.event(&ev);
            if result.is_ok() {
                result = state.on_event(ev, out);
            }
        }
        Err(e) => {
            counts.invalid();
            tracing::warn!("skipping record: {e}");
        }
    });
    metrics.add_events(&counts);
    result
}

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

/// The polling collector that the original design used, kept as the benchmarks' baseline (and
/// for hosts where the probes cannot load): every interval a full scan of /proc, cgroupfs and
/// the watched trees, the same scan that seeds the tracer, diffed against the previous one.
/// Whatever started and ended between two scans is never seen.
pub async fn poll(opts: &PollOptions, out: &mut impl Write) -> Result<(), RunError> {
    let watched = watched_prefixes(&opts.watched)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(opts.interval);
    let mut last = HostModel::default();
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        let (cpu0, start) = (cpu_time(), SystemTime::now());
        let mut state = State::new(
            Watched::new(watched.clone()),
            opts.observe.clone(),
            Mode::Deltas {
                interval: opts.interval,
            },
            opts.json,
        );
        seed(&mut state, &mut std::io::sink())?;
        let batch = last.diff(&state.model);
        let end = SystemTime::now();
        let cpu = cpu_time().saturating_sub(cpu0);
        let wall = end.duration_since(start).unwrap_or_default();
        last = state.model;
        seq += 1;
        let stats = Stats::default();
        if opts.json {
            let mut line = json::batch(seq, start, end, &batch, &stats);
            line["scan"] = serde_json::json!({
                "wall_us": wall.as_micros() as u64, "cpu_us": cpu.as_micros() as u64,
                "processes": last.processes.len(), "files": last.files.len(),
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{} scan_wall={wall:?} scan_cpu={cpu:?}",
                json::human_batch(seq, &batch, &stats)
            )?;
        }
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

//! The daemon's loop: attach the probes, seed the model from /proc, the cgroup hierarchy and
//! the watched trees, then fold in every event the draining thread (`drain.rs`: on a timer and
//! on the probes' early wakeups) hands over, until SIGINT/SIGTERM. `trace` prints each event; `deltas` and `run` cut a
//! batch of net changes every interval and hand it to the sink chosen at start (`sink.rs`:
//! printed, or sealed and spooled for the sender). On exit the probes are detached and the ring
//! drained once more, so the final loss counters are exact.

use std::{
    collections::BTreeSet,
    io::Write,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use safetytwin_model::{Change, HostModel, Window};
use safetytwin_proto::{
    sender::{self, SenderConfig},
    spool::SpoolError,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cgroups::CgroupIndex,
    changes,
    clock::BootClock,
    dirs::DirTimes,
    drain::{Drainer, Record},
    events::HostEvent,
    held::{self, Held},
    inventory::Inventory,
    json,
    metrics::{self, EventCounts, Metrics, MetricsError},
    observe::ObserveConfig,
    procfs,
    sink::{BatchSink, Cut, PrintSink, ReplayerOptions, SinkError, SpoolSink},
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
    /// A batch could not be printed or spooled.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// The model and what the current window has touched.
struct State {
    model: HostModel,
    window: Window,
    cgroups: CgroupIndex,
    watched: Watched,
    dirty: BTreeSet<String>,
    held: Held,
    dir_times: DirTimes,
    observe: ObserveConfig,
    inventory: Inventory,
    mode: Mode,
    json: bool,
    window_start: SystemTime,
}

impl State {
    fn new(watched: Watched, observe: ObserveConfig, mode: Mode, json: bool) -> State {
        State {
            model: HostModel::default(),
            window: Window::default(),
            cgroups: CgroupIndex::default(),
            watched,
            dirty: BTreeSet::new(),
            held: Held::default(),
            dir_times: DirTimes::default(),
            observe,
            inventory: Inventory::new("/"),
            mode,
            json,
            window_start: SystemTime::now(),
        }
    }

    fn fold(&mut self, changes: &[Change]) {
        for c in changes {
            self.model.apply(c, &mut self.window);
        }
    }

    /// Folds one event in (file events only dirty their paths) and, tracing, prints it.
    fn on_event(&mut self, mut ev: HostEvent, out: &mut impl Write) -> std::io::Result<()> {
        self.watched.rename_aliases(&mut ev);
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
            // A file event is reported when the call is made, or while a write is under way:
            // what it names is read at this cut and again at the next (`held.rs`).
            if let HostEvent::File(f) = &ev {
                for path in self.watched.readable(implied.dirty) {
                    self.held.changed(&path, f.info.pid);
                    self.dirty.insert(path);
                }
            }
        }
        Ok(())
    }

    /// Reads every dirty path, folds what it found and cuts the window, which `stats` closes.
    fn cut(&mut self, stats: &Stats) -> Cut<'_> {
        let started = Instant::now();
        let mut observed = Vec::new();
        // Names created with no event (an empty file): their directory's time moved.
        let appeared = self.dir_times.changed_entries(&self.model);
        self.dirty.extend(self.watched.readable(appeared));
        for path in std::mem::take(&mut self.dirty) {
            self.observe.observe_tree(&path, &self.model, &mut observed);
        }
        // Read again next time what changed in this window, and what its writer still holds.
        let proc_root = Path::new("/proc");
        self.dirty
            .extend(self.held.carry(|pid| held::open_fds(proc_root, pid)));
        self.inventory.observe(&mut observed);
        self.fold(&observed);
        let batch = self.model.cut(std::mem::take(&mut self.window));
        let took = started.elapsed();
        let end = SystemTime::now();
        let start = std::mem::replace(&mut self.window_start, end);
        Cut {
            batch,
            model: &self.model,
            start,
            end,
            took,
            stats: *stats,
            scan: None,
        }
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
        state.inventory.observe(&mut seed);
    }
    state.fold(&seed);
    tracing::info!(
        processes = state.model.processes.len(),
        files = state.model.files.len(),
        units = state.model.units.len(),
        packages = state.model.packages.len(),
        users = state.model.users.len(),
        "model seeded"
    );
    Ok(())
}

/// The watched trees, each by its real name (`realpath`): one file is then one path of the
/// model whichever name a writer used.
pub(crate) fn real_trees(prefixes: Vec<String>) -> Watched {
    Watched::resolved(prefixes, |p| {
        std::fs::canonicalize(p)
            .ok()
            .and_then(|r| r.to_str().map(str::to_owned))
    })
}

/// The model a full scan finds now (/proc, the cgroup hierarchy, the watched trees): the scan
/// that seeds the loop, which `poll` repeats every interval.
pub(crate) fn scan(watched: Watched, observe: ObserveConfig) -> std::io::Result<HostModel> {
    let mut state = State::new(
        watched,
        observe,
        Mode::Deltas {
            interval: Duration::ZERO,
        },
        false,
    );
    seed(&mut state, &mut std::io::sink())?;
    Ok(state.model)
}

/// Runs until a signal arrives; returns the final loss counters.
pub async fn run(opts: &RunOptions, out: &mut impl Write) -> Result<Stats, RunError> {
    let listener = match opts.metrics {
        Some(endpoint) => Some(metrics::bind(endpoint).await?),
        None => None,
    };
    // Counted whether served or not: cheaper than a branch on every update.
    let metrics = Arc::new(Metrics::default());
    // The kernel filter takes every name given; the model and the replayer know each tree by
    // its real one.
    let watched = real_trees(watched_prefixes(&opts.tracer.watched)?);
    // The sink is chosen here, once; the loop hands it every cut without asking which it is.
    let (mut sink, link): (Box<dyn BatchSink>, _) = match &opts.sink {
        Sink::Print => (Box::new(PrintSink::new(opts.json, metrics.clone())), None),
        Sink::Replayer(r) => {
            let sink = SpoolSink::open(r, watched.prefixes().to_vec(), metrics.clone())?;
            let link = (sink.spool().clone(), sink.link().clone());
            (Box::new(sink), Some((r, link)))
        }
    };
    let mut tracer = Tracer::load(&opts.tracer)?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let clock = BootClock::now();
    let mut state = State::new(watched, opts.observe.clone(), opts.mode, opts.json);
    let sender = link.map(|(r, (spool, shared))| {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let config = SenderConfig {
            watched: state.watched.prefixes().to_vec(),
            ..r.sender.clone()
        };
        let task = tokio::spawn(sender::run(config, spool, shared, stopped));
        (stop, task)
    });
    let server = listener.map(|l| tokio::spawn(metrics::serve(l, metrics.clone())));

    // Drained on its own thread before the first probe is attached (attaching them all takes
    // most of a second), so neither that, nor the seed, nor a long cut stops the draining.
    let mut drainer = tracer.drain_on_thread(clock, opts.drain_interval)?;
    tracer.attach()?;

    // The probes are attached, so nothing that happens from here on is missed; the seed covers
    // what existed before. Folding tolerates the overlap.
    seed(&mut state, out)?;
    if let Mode::Deltas { .. } = opts.mode {
        // The first batch is the whole initial state (plus what was drained while seeding).
        fold_queued(&mut drainer, &mut state, &metrics, out)?;
        let stats = tracer.stats()?;
        metrics.set_tracer(&stats);
        sink.emit(state.cut(&stats), out)?;
    }
    out.flush()?;

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
            chunk = drainer.chunks.recv() => match chunk {
                Some(chunk) => fold(chunk, &mut state, &metrics, out)?,
                None => {
                    tracing::error!("the ring-draining thread stopped");
                    break;
                }
            },
            _ = cut.tick() => cut_now = true,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
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
            fold_queued(&mut drainer, &mut state, &metrics, out)?;
            sink.emit(state.cut(&stats), out)?;
        }
        out.flush()?;
    }

    // Detach first so nothing new arrives, then the thread's last drain: the accounting is now
    // exact.
    tracer.detach();
    drainer.finish();
    while let Some(chunk) = drainer.chunks.recv().await {
        fold(chunk, &mut state, &metrics, out)?;
    }
    let stats = tracer.stats()?;
    metrics.set_tracer(&stats);
    if let Mode::Deltas { .. } = opts.mode {
        sink.emit(state.cut(&stats), out)?;
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

/// Folds one chunk of drained records in, counting them.
fn fold(
    chunk: Vec<Record>,
    state: &mut State,
    metrics: &Metrics,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut result = Ok(());
    let mut counts = EventCounts::default();
    for record in chunk {
        match record {
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
        }
    }
    metrics.add_events(&counts);
    result
}

/// Folds in every chunk drained so far.
fn fold_queued(
    drainer: &mut Drainer,
    state: &mut State,
    metrics: &Metrics,
    out: &mut impl Write,
) -> std::io::Result<()> {
    while let Ok(chunk) = drainer.chunks.try_recv() {
        fold(chunk, state, metrics, out)?;
    }
    Ok(())
}

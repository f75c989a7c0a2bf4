//! The applier: keeps each host's twin at the latest stored state. [`Applier::catch_up`] is
//! load (the target seq, `Store::complete_seq`: a batch sent in parts is applied once its last
//! part is stored; where the twin stands; the net changes, `Store::changes_between`) → decide
//! (`vm::plan` and its steps) → run (the steps in the guest through a [`TwinBackend`], the
//! check that reads back what they changed (`verify`, [`Scope::Changed`]), then the snapshot,
//! or the revert to the last good one on failure) → commit (one store transaction for
//! the outcome, and its metrics). A batch with nothing to apply makes no guest call and no
//! snapshot.
//!
//! Where the twin stands (applied seq, snapshot, held) lives in the store, so a restarted
//! replayer carries on from there and adopts the running domain.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use safetytwin_model::{Batch, DeltaBatch, HostModel, Package};
use tokio::sync::{broadcast, mpsc};

use safetytwin_store::{
    FailureRecord, SnapshotRecord, Store, StoreError, TwinProgress, VerifyRecord,
};

use crate::{
    metrics::{RevertCause, StepKind, TwinMetrics},
    pool::{Pool, PoolError},
    verify::{self, Check, Followed, Scope},
    vm::{
        DomainState, TwinBackend, VmError,
        plan::{self, Action, ApplyPlan, Skip, Step, Verdict},
        snapshot_name,
    },
};

/// What to do with the twin when an apply fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnFailure {
    /// Revert to the last good snapshot.
    #[default]
    Revert,
    /// Leave the twin as the failed apply left it (to inspect it).
    Keep,
}

/// Which of the host's package changes the twin follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PackageMode {
    /// None: the twin keeps its image's packages.
    Off,
    /// Installs, upgrades, downgrades, removals and purges after the twin's first apply; the
    /// twin starts from its image's package set (an image of the host's release).
    #[default]
    Changes,
    /// Every package of the host, the first apply included (the pool fetches each one).
    All,
}

/// How the applier behaves.
#[derive(Debug, Clone)]
pub struct ApplierConfig {
    /// Path patterns never applied to the twin.
    pub exclude: Vec<String>,
    /// Snapshots kept per twin; the oldest go first.
    pub max_snapshots: usize,
    /// What a failed apply does to the twin.
    pub on_failure: OnFailure,
    /// Longest a single guest step may take.
    pub step_timeout: Duration,
    /// Which package changes the twin follows (with a pool: [`Applier::with_pool`]).
    pub packages: PackageMode,
}

impl Default for ApplierConfig {
    fn default() -> Self {
        ApplierConfig {
            exclude: plan::default_exclude(),
            max_snapshots: 10,
            on_failure: OnFailure::Revert,
            step_timeout: Duration::from_secs(120),
            packages: PackageMode::Changes,
        }
    }
}

/// Why an apply or an operator's twin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The history store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The VM or its guest agent failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A step ran but did not do what it should.
    #[error("{0}")]
    Step(String),
    /// The host's twin has applied nothing yet: there is nothing to verify.
    #[error("host {0}: the twin has applied nothing yet")]
    NotApplied(String),
    /// Another worker drives the host's twin (a shared store): ask it.
    #[error("host {host}: its twin is driven by worker {owner}; ask that replayer")]
    NotDriven {
        /// The host.
        host: String,
        /// The worker holding its lease ("" when none does right now).
        owner: String,
    },
    /// The host has no twin snapshot of that name.
    #[error("host {host}: no snapshot {name:?}")]
    NoSuchSnapshot {
        /// The host.
        host: String,
        /// The name asked for.
        name: String,
    },
}

/// The last apply of a host, for `Status`.
#[derive(Debug, Clone, Default)]
pub struct LastApply {
    /// The seq it brought the twin to.
    pub seq: u64,
    /// Its total time.
    pub took: Duration,
    /// Items it changed.
    pub items: usize,
    /// Each step and its time, in order.
    pub steps: Vec<(String, Duration)>,
    /// When it ended (Unix ns).
    pub unix_ns: i64,
}

/// Applies kept per host for `Applier::applies` (the dashboard's plot): enough for a day of
/// changes every ten minutes, a few KiB per host.
const KEPT_APPLIES: usize = 128;

/// A host's twin as `Status` shows it.
#[derive(Debug, Clone)]
pub struct TwinStatus {
    /// The host.
    pub host: String,
    /// The domain's state.
    pub domain: DomainState,
    /// Where it stands in the history.
    pub progress: TwinProgress,
    /// The last apply that changed something.
    pub last_apply: Option<LastApply>,
    /// The last failure, if any.
    pub last_failure: Option<FailureRecord>,
    /// The last verification (after an apply, or in full), if any.
    pub last_verify: Option<VerifyRecord>,
    /// Who drives it, with a store several replayers share.
    pub lease: Option<safetytwin_store::Lease>,
}

/// Applies stored batches to the hosts' twins.
pub struct Applier {
    store: Arc<Store>,
    backend: Arc<dyn TwinBackend>,
    config: ApplierConfig,
    /// Each host's last applies that changed something, oldest first, at most
    /// [`KEPT_APPLIES`] (since this replayer started).
    last: Mutex<BTreeMap<String, std::collections::VecDeque<LastApply>>>,
    /// One apply at a time: the twins share two cores, and a revert must not race an apply.
    busy: Mutex<()>,
    metrics: Arc<TwinMetrics>,
    /// Where the `.deb`s of package changes come from; without one, packages are not followed.
    pool: Option<Pool>,
    /// This worker's name and lease length, for a store that several replayers share.
    leasing: Option<Leasing>,
    /// The twins this applier drives.
    owned: Mutex<Owned>,
    /// Twins taken from another worker, to be put back at their last snapshot before the next
    /// apply (`take_over`).
    taken: Mutex<std::collections::BTreeSet<String>>,
}

/// A worker among several on a shared store (`Applier::leased`).
#[derive(Debug, Clone)]
struct Leasing {
    worker: String,
    ttl: Duration,
}

/// Which hosts' twins an applier drives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    /// Every host's: the only worker.
    All,
    /// Those it holds a lease on.
    These(std::collections::BTreeSet<String>),
}

/// The twin's first apply is its package base; later ones keep it.
fn base_seq(progress: &TwinProgress, seq: u64) -> u64 {
    if progress.applied_seq == 0 {
        seq
    } else {
        progress.base_seq
    }
}

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// What a host's twin is to catch up to, as loaded from the store.
struct Target {
    /// The latest seq whose batch is complete.
    seq: u64,
    /// Where the twin stands.
    progress: TwinProgress,
    /// The net changes from `progress.applied_seq` to `seq`.
    delta: DeltaBatch,
    /// The host's model at `seq`.
    after: HostModel,
    /// Stamps the written files: the end of `seq`'s window, seconds since the epoch.
    mtime: u64,
    /// A snapshot of `seq` is recorded already (applied again after a revert and resume).
    resnapshot: bool,
}

/// What running a plan did to the twin.
enum Outcome {
    /// Nothing to apply: the twin is at the target as it is.
    Nothing,
    /// The twin did not come up: nothing ran.
    DidNotComeUp(ApplyError),
    /// A step failed after `took`; the twin went back to the snapshot in `reverted`, if any.
    Failed {
        error: ApplyError,
        took: Duration,
        reverted: Result<Option<String>, VmError>,
    },
    /// Every step ran in `took`, what they changed was read back (`verified`, when the
    /// twin answered), then the snapshot was taken.
    Applied {
        took: Duration,
        steps: Vec<(String, Duration)>,
        snapshot: SnapshotRecord,
        verified: Option<VerifyRecord>,
    },
}

/// Which of the host's packages a twin follows, owned (see [`verify::Followed`]).
enum PackageBase {
    All,
    Off,
    Since(BTreeMap<String, Package>),
}

impl PackageBase {
    fn followed(&self) -> Followed<'_> {
        match self {
            PackageBase::All => Followed::All,
            PackageBase::Off => Followed::Off,
            PackageBase::Since(base) => Followed::Since(base),
        }
    }
}

/// The first differences of a report, one per line, for `status`.
const FIRST_DIFFERENCES: usize = 5;

/// Decide: logs what the plan leaves out. Refusals are returned, to be reported in the
/// twin's status with the apply's steps; the policy's skips (exclusions, secrets) go only to
/// the log.
fn report_skips(host: &str, seq: u64, plan: &ApplyPlan) -> Vec<(String, String)> {
    let mut refused = Vec::new();
    for (item, why) in &plan.skipped {
        if why.is_refusal() {
            tracing::warn!(%host, seq, item = %item.escape_debug(), "not applied: {}", why.as_str());
            refused.push((item.clone(), why.as_str().to_owned()));
        } else {
            tracing::debug!(%host, seq, path = %item, "not applied: {}", why.as_str());
        }
    }
    refused
}

impl Applier {
    /// An applier over `store` driving `backend`.
    pub fn new(store: Arc<Store>, backend: Arc<dyn TwinBackend>, config: ApplierConfig) -> Self {
        Applier {
            store,
            backend,
            config,
            last: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(()),
            metrics: Arc::default(),
            pool: None,
            leasing: None,
            owned: Mutex::new(Owned::All),
            taken: Mutex::default(),
        }
    }

    /// Drives, as `worker`, only the twins it holds a lease of `ttl` on when the store is
    /// shared with other replayers (`Store::lease_round`); with the embedded store, every twin
    /// as before. A lease is renewed every third of `ttl`; a worker that cannot renew for
    /// `ttl` stops driving its twins (another takes them).
    pub fn leased(mut self, worker: String, ttl: Duration) -> Self {
        // The store's writes of twin records are fenced on this worker's leases.
        self.store.act_as(&worker);
        self.leasing = Some(Leasing { worker, ttl });
        // Nothing until the first round says what is this worker's.
        self.owned = Mutex::new(Owned::These(Default::default()));
        self
    }

    /// Whether this applier drives `host`'s twin now.
    pub fn owns(&self, host: &str) -> bool {
        match &*self.owned.lock().expect("owned lock") {
            Owned::All => true,
            Owned::These(hosts) => hosts.contains(host),
        }
    }

    /// Renews and takes leases every third of the ttl, until the task is dropped; wakes the
    /// twins it takes (new hosts, or a dead worker's: caught up from the store's history).
    async fn lease(self: Arc<Self>, wake: mpsc::UnboundedSender<String>) {
        let Some(Leasing { worker, ttl }) = self.leasing.clone() else {
            return;
        };
        let mut renewed = std::time::Instant::now();
        loop {
            let (me, w) = (self.clone(), worker.clone());
            let round = tokio::task::spawn_blocking(move || me.store.lease_round(&w, ttl)).await;
            match round {
                Ok(Ok(None)) => {
                    // The only worker: every twin.
                    *self.owned.lock().expect("owned lock") = Owned::All;
                    let _ = wake.send(String::new());
                    return;
                }
                Ok(Ok(Some(round))) => {
                    renewed = std::time::Instant::now();
                    self.metrics.leases(round.held.len(), round.moved.len());
                    for host in &round.moved {
                        tracing::info!(%host, %worker, "twin taken over: its worker's lease ended");
                    }
                    *self.owned.lock().expect("owned lock") =
                        Owned::These(round.held.into_iter().collect());
                    self.taken
                        .lock()
                        .expect("taken lock")
                        .extend(round.taken.iter().cloned());
                    for host in round.taken {
                        let _ = wake.send(host);
                    }
                }
                Ok(Err(e)) => tracing::warn!(%worker, "lease round failed: {e}"),
                Err(e) => tracing::warn!(%worker, "lease round failed: {e}"),
            }
            if renewed.elapsed() >= ttl {
                // Unrenewed for a whole ttl: another worker may hold these twins now.
                let mut owned = self.owned.lock().expect("owned lock");
                if *owned != Owned::These(Default::default()) {
                    tracing::warn!(%worker, "leases not renewed for {ttl:?}: driving no twin");
                    *owned = Owned::These(Default::default());
                    self.metrics.leases(0, 0);
                }
            }
            tokio::time::sleep(ttl / 3).await;
        }
    }

    /// Gives up this worker's leases (a graceful stop), so that others take its twins now.
    pub fn release(&self) -> Result<(), ApplyError> {
        if let Some(l) = &self.leasing {
            self.store.release(&l.worker)?;
        }
        Ok(())
    }

    /// Follows the host's package changes (per [`ApplierConfig::packages`]) with `.deb`s from
    /// `pool`.
    pub fn with_pool(mut self, pool: Pool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Where the applier records its metrics; the server serves them beside ingest's.
    pub fn metrics(&self) -> &Arc<TwinMetrics> {
        &self.metrics
    }

    /// Follows the store: catches every host up at start, then after each stored batch, until
    /// `live` closes. Applies run on blocking threads, one host at a time.
    pub async fn run(self: Arc<Self>, mut live: broadcast::Receiver<Arc<Batch>>) {
        let (wake, mut woken) = mpsc::unbounded_channel::<String>();
        let leasing = tokio::spawn(self.clone().lease(wake.clone()));
        let forward = tokio::spawn({
            let wake = wake.clone();
            // When `live` closes, the lease task's sender must go too, or the loop below waits
            // for ever.
            let leasing = leasing.abort_handle();
            async move {
                loop {
                    match live.recv().await {
                        Ok(batch) => {
                            let _ = wake.send(batch.header.host_id.clone());
                        }
                        // Missed notifications only mean "look at every host".
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = wake.send(String::new());
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
                leasing.abort();
            }
        });
        let _ = wake.send(String::new());
        drop(wake);
        // The store blocks (a PostgreSQL client runs a runtime of its own): never on the
        // async threads.
        let all_hosts = |me: Arc<Self>| async move {
            match tokio::task::spawn_blocking(move || me.store.hosts()).await {
                Ok(Ok(all)) => all,
                Ok(Err(e)) => {
                    tracing::error!("twin: cannot list hosts: {e}");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!("twin: cannot list hosts: {e}");
                    Vec::new()
                }
            }
        };
        // The gauge is set on every change; this covers the twins no batch touches.
        for (host, _) in all_hosts(self.clone()).await {
            let me = self.clone();
            let h = host.clone();
            if let Ok(Ok(s)) = tokio::task::spawn_blocking(move || me.store.snapshots(&h)).await {
                self.metrics.snapshots_kept(&host, s.len());
            }
        }
        while let Some(first) = woken.recv().await {
            // Coalesce: a host behind by several batches is caught up in one apply.
            let mut hosts = std::collections::BTreeSet::from([first]);
            while let Ok(h) = woken.try_recv() {
                hosts.insert(h);
            }
            if hosts.remove("") {
                hosts.extend(all_hosts(self.clone()).await.into_iter().map(|(h, _)| h));
            }
            for host in hosts {
                let me = self.clone();
                let h = host.clone();
                match tokio::task::spawn_blocking(move || me.catch_up(&h)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(%host, "twin: {e}"),
                    Err(e) => tracing::error!(%host, "twin: apply task failed: {e}"),
                }
            }
        }
        forward.abort();
        leasing.abort();
    }

    /// Brings `host`'s twin to the latest stored seq whose batch is complete (blocking):
    /// load where it stands and what changed, decide the plan, run its steps in the guest,
    /// commit the outcome.
    pub fn catch_up(&self, host: &str) -> Result<(), ApplyError> {
        let _busy = self.busy.lock().expect("applier lock");
        if !self.owns(host) {
            // Another worker's twin (a shared store).
            return Ok(());
        }
        if self.taken.lock().expect("taken lock").remove(host) {
            self.take_over(host)?;
        }
        let Some(target) = self.load(host)? else {
            return Ok(());
        };
        if let Some(why) = self.other_release(host, &target.after) {
            // Recorded like a twin that did not come up: `status` says why, nothing runs.
            let outcome = Outcome::DidNotComeUp(ApplyError::Step(why));
            return self.commit(host, &target, &ApplyPlan::default(), outcome);
        }
        let mut plan = plan::plan(
            &target.delta,
            &target.after,
            &self.config.exclude,
            target.mtime,
        );
        self.plan_packages(host, &target, &mut plan);
        self.plan_accounts(host, &mut plan);
        let refused = report_skips(host, target.seq, &plan);
        let outcome = self.run_plan(host, &target, &plan, refused)?;
        self.commit(host, &target, &plan, outcome)
    }

    /// Why `host`'s twin cannot be made from the backend's image: the host runs another
    /// release (its packages' versions exist only there).
    fn other_release(&self, host: &str, after: &HostModel) -> Option<String> {
        let (os, image) = (after.os.as_ref()?, self.backend.release()?);
        (!os.codename.is_empty() && os.codename != image).then(|| {
            format!(
                "host {host} runs {os}, the twin image is {image}: build an image of the \
                 host's release (`cargo xtask build-image --release {}`) and serve with it",
                os.codename
            )
        })
    }

    /// Decide, for packages: what the guest must install, remove and purge to hold the host's
    /// packages (`plan::packages`, against the guest's own `dpkg-query`), each install with its
    /// `.deb` from the pool; a version the pool cannot obtain is skipped and reported.
    fn plan_packages(&self, host: &str, target: &Target, plan: &mut ApplyPlan) {
        let Some(pool) = &self.pool else { return };
        let changes = &target.delta.packages;
        match self.config.packages {
            _ if changes.is_empty() => return,
            PackageMode::Off => return,
            PackageMode::Changes if target.progress.applied_seq == 0 => {
                tracing::info!(
                    %host, packages = changes.len(),
                    "first apply: the twin keeps its image's packages; their changes follow"
                );
                return;
            }
            PackageMode::Changes | PackageMode::All => {}
        }
        // The guest's own set: only what differs is installed. Without it (the twin does not
        // come up) the apply itself reports why.
        if self.backend.ensure(host).is_err() {
            return;
        }
        let guest = match self.backend.exec(
            host,
            &plan::packages_query_argv(),
            self.config.step_timeout,
        ) {
            Ok(out) if out.success() => {
                plan::parse_dpkg_query(&String::from_utf8_lossy(&out.stdout))
            }
            Ok(out) => {
                tracing::warn!(%host, code = out.code, "dpkg-query in the twin failed: packages not applied");
                return;
            }
            Err(e) => {
                tracing::warn!(%host, "dpkg-query in the twin: {e}: packages not applied");
                return;
            }
        };
        let (mut packages, wanted) = plan::packages(&target.delta, &guest, &mut plan.skipped);
        // With what the wanted need and the guest lacks, as the host has it: a package the
        // host held before the twin's first apply is not in the image just because a later
        // install depends on it.
        let mut seen: BTreeSet<String> = wanted.iter().map(Package::key).collect();
        let mut pulled = BTreeSet::new();
        let mut queue: VecDeque<Package> = wanted.into();
        while let Some(p) = queue.pop_front() {
            let deb = pool.get(&p).and_then(|deb| {
                for group in pool.depends(&p, &deb)? {
                    if let Some(dep) = plan::unmet(&group, &p, &target.after.packages, &guest)
                        && seen.insert(dep.key())
                    {
                        tracing::debug!(%host, package = %p.key(), dependency = %dep.key(), "pulled in");
                        pulled.insert(dep.key());
                        queue.push_back(dep.clone());
                    }
                }
                std::fs::read(&deb.path)
                    .map(|bytes| (deb.sha256.clone(), bytes))
                    .map_err(|source| PoolError::Io {
                        path: deb.path.clone(),
                        source,
                    })
            });
            match deb {
                Ok((sha256, bytes)) => packages.add_deb(p, &sha256, bytes),
                // A dependency the host held before the twin's first apply, at a version the
                // sources replaced: without it the package that needs it would not install.
                Err(PoolError::Unavailable { .. })
                    if pulled.remove(&p.key())
                        && let Some(nearest) = pool.nearest(&p) =>
                {
                    tracing::warn!(%host, package = %p.key(), host_version = %p.version,
                        version = %nearest.version, "dependency's version cannot be obtained: installing the sources'");
                    plan.skipped.push((
                        format!(
                            "package {} {} ({} installed)",
                            p.key(),
                            p.version,
                            nearest.version
                        ),
                        Skip::NearestVersion,
                    ));
                    queue.push_back(nearest);
                }
                Err(e) => {
                    tracing::warn!(%host, "{e}");
                    plan.skipped.push((
                        format!("package {} {}", p.key(), p.version),
                        Skip::PackageUnavailable,
                    ));
                }
            }
        }
        plan.packages = packages;
    }

    /// Decide, for accounts: only those the guest does not already hold as the host does
    /// (its own `getent`); without an answer, all of them.
    fn plan_accounts(&self, host: &str, plan: &mut ApplyPlan) {
        if plan.accounts.is_empty() || self.backend.ensure(host).is_err() {
            return;
        }
        let read = |db: &str| {
            let argv = vec!["/usr/bin/getent".to_owned(), db.to_owned()];
            match self.backend.exec(host, &argv, self.config.step_timeout) {
                Ok(out) if out.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
                _ => None,
            }
        };
        if let (Some(passwd), Some(group)) = (read("passwd"), read("group")) {
            plan.accounts
                .keep_differing(&safetytwin_model::accounts::parse(&passwd, &group, None));
        }
    }

    /// Load: the seq `host`'s twin should reach and the changes that bring it there, or
    /// `None` when it has nothing to do (held, up to date, or its last failure not retried).
    /// A twin whose domain is gone starts over from the empty state; one that was shut off
    /// resumes at its snapshot.
    fn load(&self, host: &str) -> Result<Option<Target>, ApplyError> {
        // Parts after it (a large resync still arriving) wait for their last: a state only
        // partly restated would tear down everything the later parts bring back.
        let seq = self.store.complete_seq(host)?;
        let progress = self.store.twin_progress(host)?;
        if progress.held || seq <= progress.applied_seq || self.failed_before(host, &progress, seq)
        {
            return Ok(None);
        }
        let progress = self.adopt_domain(host, progress)?;
        let delta = self
            .store
            .changes_between(host, progress.applied_seq, seq)?;
        let after = self.store.state_at(host, seq)?;
        let mtime = self.store.batch(host, seq)?.map_or(0, |b| {
            (b.header.window_end_unix_ns / 1_000_000_000).max(0) as u64
        });
        // After a revert and resume the same seq is applied again: its old snapshot makes way
        // for the new one.
        let resnapshot = self.store.snapshots(host)?.iter().any(|s| s.seq == seq);
        Ok(Some(Target {
            seq,
            progress,
            delta,
            after,
            mtime,
            resnapshot,
        }))
    }

    /// A failed apply is retried only once something new arrived: heartbeats would otherwise
    /// fail (and revert) the same change every interval.
    fn failed_before(&self, host: &str, progress: &TwinProgress, seq: u64) -> bool {
        progress.failed_seq != 0
            && ((progress.failed_seq + 1)..=seq).all(|s| {
                self.store
                    .batch(host, s)
                    .ok()
                    .flatten()
                    .is_none_or(|b| b.delta.is_empty())
            })
    }

    /// A twin this worker just took from another (whose lease ended: it died, or was cut off,
    /// maybe in the middle of an apply) goes back to the snapshot of the last seq the store
    /// says it holds; where that snapshot is not on this worker's hypervisor, the twin is
    /// rebuilt from the full state (as when its domain is gone, `adopt_domain`).
    fn take_over(&self, host: &str) -> Result<(), ApplyError> {
        let progress = self.store.twin_progress(host)?;
        let Some(snapshot) = progress.snapshot.clone() else {
            return Ok(());
        };
        if self.backend.state(host)? == DomainState::Absent {
            return Ok(());
        }
        let here = self
            .backend
            .snapshots(host)?
            .iter()
            .any(|s| s.name == snapshot);
        if here {
            tracing::info!(%host, %snapshot, seq = progress.applied_seq, "twin taken over: back at its last snapshot");
            self.backend.revert(host, &snapshot)?;
            return Ok(());
        }
        tracing::warn!(%host, %snapshot, "twin taken over without its snapshot here: rebuilding it from the full state");
        self.forget(host)
    }

    /// Starts `host`'s twin over from the empty state: no snapshot, nothing applied.
    fn forget(&self, host: &str) -> Result<(), ApplyError> {
        for s in self.store.snapshots(host)? {
            self.store.remove_snapshot(host, s.seq)?;
        }
        self.store
            .set_twin_progress(host, &TwinProgress::default(), None)?;
        self.metrics.snapshots_kept(host, 0);
        Ok(())
    }

    /// A twin whose domain is gone (undefined by hand, another libvirt) starts over from the
    /// empty state; one that was shut off comes back at its last snapshot, memory included,
    /// rather than by a cold boot that would lose which units run.
    fn adopt_domain(&self, host: &str, progress: TwinProgress) -> Result<TwinProgress, ApplyError> {
        match self.backend.state(host)? {
            DomainState::Absent if progress.applied_seq > 0 => {
                tracing::warn!(%host, "the twin's domain is gone: rebuilding it from the full state");
                self.forget(host)?;
                return Ok(TwinProgress::default());
            }
            DomainState::ShutOff => {
                if let Some(snapshot) = &progress.snapshot {
                    tracing::info!(%host, %snapshot, "twin was shut off: resuming it at its snapshot");
                    self.backend.revert(host, snapshot)?;
                }
            }
            _ => {}
        }
        Ok(progress)
    }

    /// Run: brings the twin up, runs the plan's steps in order, then snapshots the twin (on
    /// success) or reverts it per `on_failure` (on failure). An empty plan touches nothing.
    /// Fails only when the snapshot cannot be taken: the twin's state is then unknown and
    /// nothing is recorded.
    fn run_plan(
        &self,
        host: &str,
        target: &Target,
        plan: &ApplyPlan,
        mut refused: Vec<(String, String)>,
    ) -> Result<Outcome, ApplyError> {
        if plan.is_empty() {
            tracing::debug!(%host, seq = target.seq, "nothing to apply");
            return Ok(Outcome::Nothing);
        }
        match self.backend.ensure(host) {
            Ok(ensured) if !ensured.took.is_zero() => {
                tracing::info!(%host, adopted = ensured.adopted, took = ?ensured.took, "twin ready");
            }
            Ok(_) => {}
            // Recorded like a failed apply, so `status` (and `up`) say why at once.
            Err(e) => {
                return Ok(Outcome::DidNotComeUp(ApplyError::Step(format!(
                    "the twin did not come up: {e}"
                ))));
            }
        }
        let started = Instant::now();
        let mut steps = Vec::new();
        if let Err(error) = self.run_steps(host, &plan.steps(), &mut steps, &mut refused) {
            let took = started.elapsed();
            tracing::error!(%host, seq = target.seq, "twin apply failed: {error}");
            return Ok(Outcome::Failed {
                error,
                took,
                reverted: self.revert_failed(host, &target.progress),
            });
        }
        let took = started.elapsed();
        let t = Instant::now();
        let verified = match self.verify_changes(host, target) {
            Ok(record) => {
                steps.push(("verify".to_owned(), t.elapsed()));
                self.metrics.step(StepKind::Verify, t.elapsed());
                Some(record)
            }
            // The apply stands; only its proof is missing, and `verify` can give it later.
            Err(e) => {
                tracing::warn!(%host, seq = target.seq, "the check after the apply did not run: {e}");
                steps.push((format!("verify not run: {e}"), t.elapsed()));
                None
            }
        };
        // Reported with the steps (`status` shows them), so a skipped item is seen without
        // blocking the applies after it.
        steps.extend(
            refused
                .into_iter()
                .map(|(item, why)| (format!("skipped {item}: {why}"), Duration::ZERO)),
        );
        let name = snapshot_name(host, target.seq);
        let t = Instant::now();
        if target.resnapshot {
            match self.backend.delete_snapshot(host, &name) {
                Ok(()) | Err(VmError::NoSuchSnapshot(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.backend.snapshot(host, &name)?;
        steps.push(("snapshot".to_owned(), t.elapsed()));
        self.metrics.step(StepKind::Snapshot, t.elapsed());
        Ok(Outcome::Applied {
            took,
            steps,
            snapshot: SnapshotRecord {
                host: host.to_owned(),
                seq: target.seq,
                name,
                created_unix_ns: unix_ns(SystemTime::now()),
                apply_us: took.as_micros() as u64,
                items: plan.items() as u64,
            },
            verified,
        })
    }

    /// Runs `steps` in order, each timed (in `ran` and the metrics); stops at the first that
    /// fails. Items the guest refuses one by one go to `refused` and the apply goes on.
    fn run_steps(
        &self,
        host: &str,
        steps: &[Step<'_>],
        ran: &mut Vec<(String, Duration)>,
        refused: &mut Vec<(String, String)>,
    ) -> Result<(), ApplyError> {
        for step in steps {
            let t = Instant::now();
            let r = self.run_step(host, step, refused);
            let took = t.elapsed();
            tracing::info!(%host, step = %step.label, took = ?took, ok = r.is_ok(), "apply step");
            ran.push((step.label.clone(), took));
            self.metrics.step(step.kind.into(), took);
            r?;
        }
        Ok(())
    }

    /// Runs one step's guest actions in order, then judges it by their verdicts: it fails
    /// when one of them failed, or at once when the guest agent does.
    fn run_step(
        &self,
        host: &str,
        step: &Step<'_>,
        refused: &mut Vec<(String, String)>,
    ) -> Result<(), ApplyError> {
        let timeout = self.config.step_timeout;
        let mut verdicts = Vec::new();
        for action in &step.actions {
            match action {
                Action::Upload { path, bytes } => self.backend.write_file(host, path, bytes)?,
                Action::Exec(cmd) => match self.backend.exec(host, &cmd.argv, timeout) {
                    Ok(out) => verdicts.push(cmd.judge.verdict(&out)),
                    Err(_) if cmd.judge.ignores_agent() => {}
                    Err(e) => return Err(e.into()),
                },
                Action::ExecAll(cmds) => {
                    let argvs: Vec<Vec<String>> = cmds.iter().map(|c| c.argv.clone()).collect();
                    let outs = self.backend.exec_all(host, &argvs, timeout)?;
                    verdicts.extend(cmds.iter().zip(&outs).map(|(c, out)| c.judge.verdict(out)));
                }
            }
        }
        let mut failed = Vec::new();
        for verdict in verdicts {
            match verdict {
                Verdict::Ok => {}
                Verdict::Refused(items) => refused.extend(items),
                Verdict::Tolerated(why) => tracing::warn!(%host, "{why}"),
                Verdict::Failed(why) => failed.push(why),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Step(failed.join("; ")))
        }
    }

    /// After a failed apply, reverts the twin to its last good snapshot (per `on_failure`);
    /// the snapshot it went back to, if any.
    fn revert_failed(
        &self,
        host: &str,
        progress: &TwinProgress,
    ) -> Result<Option<String>, VmError> {
        match (&progress.snapshot, self.config.on_failure) {
            (Some(good), OnFailure::Revert) => {
                let t = Instant::now();
                self.backend.revert(host, good)?;
                tracing::warn!(%host, snapshot = %good, took = ?t.elapsed(),
                    "twin reverted to the last good snapshot");
                Ok(Some(good.clone()))
            }
            (None, OnFailure::Revert) => {
                tracing::warn!(
                    %host, "no good snapshot yet: the twin stays as the failed apply left it"
                );
                Ok(None)
            }
            (_, OnFailure::Keep) => Ok(None),
        }
    }

    /// Commit: the outcome's metrics, then one store transaction with where the twin now
    /// stands (the applied seq and its snapshot) or the failure; then retention.
    fn commit(
        &self,
        host: &str,
        target: &Target,
        plan: &ApplyPlan,
        outcome: Outcome,
    ) -> Result<(), ApplyError> {
        let seq = target.seq;
        let failure = |e: &ApplyError| FailureRecord {
            seq,
            message: e.to_string(),
            unix_ns: unix_ns(SystemTime::now()),
        };
        match outcome {
            Outcome::Nothing => {
                let progress = TwinProgress {
                    applied_seq: seq,
                    failed_seq: 0,
                    base_seq: base_seq(&target.progress, seq),
                    ..target.progress.clone()
                };
                self.store.set_twin_progress(host, &progress, None)?;
                Ok(())
            }
            Outcome::DidNotComeUp(error) => {
                self.store.record_failure(host, &failure(&error))?;
                Err(error)
            }
            Outcome::Failed {
                error,
                took,
                reverted,
            } => {
                self.metrics.applied(host, took, plan.items(), false);
                // Reverted before recording: whoever sees the failure sees the twin back. A
                // revert that failed leaves the twin unknown, and nothing is recorded.
                if reverted?.is_some() {
                    self.metrics.reverted(host, RevertCause::Failure);
                }
                self.store.record_failure(host, &failure(&error))?;
                Err(error)
            }
            Outcome::Applied {
                took,
                steps,
                snapshot,
                verified,
            } => {
                self.metrics.snapshot_taken(host);
                let progress = TwinProgress {
                    applied_seq: seq,
                    snapshot: Some(snapshot.name.clone()),
                    held: false,
                    failed_seq: 0,
                    base_seq: base_seq(&target.progress, seq),
                };
                self.store
                    .set_twin_progress(host, &progress, Some(&snapshot))?;
                if let Some(record) = verified {
                    self.store.set_verify(host, &record)?;
                }
                self.metrics.applied(host, took, plan.items(), true);
                tracing::info!(
                    %host, seq, items = plan.items(), took = ?took,
                    per_item = ?took / plan.items().max(1) as u32, snapshot = %snapshot.name,
                    "twin applied"
                );
                let mut last = self.last.lock().expect("last lock");
                let kept = last.entry(host.to_owned()).or_default();
                if kept.len() == KEPT_APPLIES {
                    kept.pop_front();
                }
                kept.push_back(LastApply {
                    seq,
                    took,
                    items: plan.items(),
                    steps,
                    unix_ns: unix_ns(SystemTime::now()),
                });
                drop(last);
                self.retain(host)
            }
        }
    }

    /// Deletes the oldest snapshots beyond `max_snapshots`.
    fn retain(&self, host: &str) -> Result<(), ApplyError> {
        let snapshots = self.store.snapshots(host)?;
        let excess = snapshots
            .len()
            .saturating_sub(self.config.max_snapshots.max(1));
        for old in &snapshots[..excess] {
            match self.backend.delete_snapshot(host, &old.name) {
                Ok(()) | Err(VmError::NoSuchSnapshot(_)) => {}
                Err(e) => return Err(e.into()),
            }
            self.store.remove_snapshot(host, old.seq)?;
            self.metrics.snapshot_deleted(host);
            tracing::info!(%host, snapshot = %old.name, "snapshot retired");
        }
        self.metrics.snapshots_kept(host, snapshots.len() - excess);
        Ok(())
    }

    /// `host`'s snapshots (every host's when `None`), oldest first per host.
    pub fn snapshots(&self, host: Option<&str>) -> Result<Vec<SnapshotRecord>, ApplyError> {
        let hosts = match host {
            Some(h) => vec![h.to_owned()],
            None => self.store.hosts()?.into_iter().map(|(h, _)| h).collect(),
        };
        let mut all = Vec::new();
        for h in hosts {
            all.extend(self.store.snapshots(&h)?);
        }
        Ok(all)
    }

    /// Reverts the twin of `host` (by default whichever host has it) to snapshot `name` and
    /// holds it there: new batches are stored but not applied until [`Applier::resume`].
    pub fn revert(&self, host: Option<&str>, name: &str) -> Result<SnapshotRecord, ApplyError> {
        let host = match host {
            Some(h) => h.to_owned(),
            None => self
                .snapshots(None)?
                .into_iter()
                .find(|s| s.name == name)
                .map(|s| s.host)
                .ok_or_else(|| ApplyError::NoSuchSnapshot {
                    host: "any".into(),
                    name: name.to_owned(),
                })?,
        };
        let host = host.as_str();
        self.driven(host)?;
        let _busy = self.busy.lock().expect("applier lock");
        let record = self
            .store
            .snapshots(host)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ApplyError::NoSuchSnapshot {
                host: host.to_owned(),
                name: name.to_owned(),
            })?;
        let t = Instant::now();
        self.backend.revert(host, name)?;
        self.metrics.reverted(host, RevertCause::Operator);
        tracing::info!(%host, snapshot = %name, took = ?t.elapsed(), "twin reverted, held");
        self.store.set_twin_progress(
            host,
            &TwinProgress {
                applied_seq: record.seq,
                snapshot: Some(record.name.clone()),
                held: true,
                failed_seq: 0,
                base_seq: self.store.twin_progress(host)?.base_seq,
            },
            None,
        )?;
        Ok(record)
    }

    /// Refuses an operator's call on a twin this worker does not drive: it would act on this
    /// worker's hypervisor, where that twin is not kept.
    fn driven(&self, host: &str) -> Result<(), ApplyError> {
        if self.owns(host) {
            return Ok(());
        }
        let owner = self
            .store
            .leases()?
            .into_iter()
            .find(|l| l.host == host && l.expires_in_ms > 0)
            .map(|l| l.owner)
            .unwrap_or_default();
        Err(ApplyError::NotDriven {
            host: host.to_owned(),
            owner,
        })
    }

    /// Lets `host`'s twin follow the history again (after a revert); the next catch-up applies
    /// what changed since the snapshot.
    pub fn resume(&self, host: &str) -> Result<TwinProgress, ApplyError> {
        self.driven(host)?;
        let mut progress = self.store.twin_progress(host)?;
        progress.held = false;
        self.store.set_twin_progress(host, &progress, None)?;
        Ok(progress)
    }

    /// Reads what `host`'s twin holds through the guest agent and compares it with the host's
    /// model at the seq the twin stands at (`verify`); returns that seq and the report.
    pub fn verify(&self, host: &str) -> Result<(u64, verify::Report), ApplyError> {
        self.driven(host)?;
        let _busy = self.busy.lock().expect("applier lock");
        let progress = self.store.twin_progress(host)?;
        let seq = progress.applied_seq;
        if seq == 0 {
            return Err(ApplyError::NotApplied(host.to_owned()));
        }
        let model = self.store.state_at(host, seq)?;
        let base = self.package_base(host, &progress, &model)?;
        let check = Check {
            model: &model,
            exclude: &self.config.exclude,
            scope: Scope::Full,
            packages: base.followed(),
        };
        let (report, record) = self.run_check(host, seq, &check)?;
        self.store.set_verify(host, &record)?;
        Ok((seq, report))
    }

    /// The check after an apply: reads back from the twin what the apply's net changes
    /// touched and compares it with the host's model at the target seq.
    fn verify_changes(&self, host: &str, target: &Target) -> Result<VerifyRecord, ApplyError> {
        let base = self.package_base(host, &target.progress, &target.after)?;
        let check = Check {
            model: &target.after,
            exclude: &self.config.exclude,
            scope: Scope::Changed(&target.delta),
            packages: base.followed(),
        };
        Ok(self.run_check(host, target.seq, &check)?.1)
    }

    /// Which of `host`'s packages its twin follows: by the package mode, and in `changes`
    /// from the host's packages at the twin's first apply (`after`'s, if this is it).
    fn package_base(
        &self,
        host: &str,
        progress: &TwinProgress,
        after: &HostModel,
    ) -> Result<PackageBase, ApplyError> {
        Ok(match (&self.pool, self.config.packages) {
            (None, _) | (_, PackageMode::Off) => PackageBase::Off,
            (Some(_), PackageMode::All) => PackageBase::All,
            (Some(_), PackageMode::Changes) if progress.applied_seq == 0 => {
                PackageBase::Since(after.packages.clone())
            }
            (Some(_), PackageMode::Changes) => PackageBase::Since(
                self.store
                    .state_at(host, progress.base_seq.max(1))?
                    .packages,
            ),
        })
    }

    /// Runs `check`'s probes in `host`'s twin at `seq`, compares, and records the metric.
    fn run_check(
        &self,
        host: &str,
        seq: u64,
        check: &Check<'_>,
    ) -> Result<(verify::Report, VerifyRecord), ApplyError> {
        let t = Instant::now();
        let mut outputs = Vec::new();
        for probe in check.probes() {
            let out = self
                .backend
                .exec(host, &probe.argv, self.config.step_timeout)?;
            outputs.push((probe, out));
        }
        let report = check.compare(&outputs);
        let took = t.elapsed();
        self.metrics.verified(host, report.differences.len());
        let full = matches!(check.scope, Scope::Full);
        tracing::info!(
            %host, seq, full, differences = report.differences.len(), equal = report.equal,
            took = ?took, "twin verified"
        );
        let record = VerifyRecord {
            seq,
            differences: report.differences.len() as u64,
            equal: report.equal as u64,
            by_design: report.by_design.values().sum::<usize>() as u64,
            full,
            unix_ns: unix_ns(SystemTime::now()),
            took_us: took.as_micros() as u64,
            first: report
                .differences
                .iter()
                .take(FIRST_DIFFERENCES)
                .map(|d| format!("{} {}: host {}, twin {}", d.kind, d.item, d.host, d.twin))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        Ok((report, record))
    }

    /// `host`'s last applies that changed something, oldest first (at most 128, since this
    /// replayer started).
    pub fn applies(&self, host: &str) -> Vec<LastApply> {
        self.last
            .lock()
            .expect("last lock")
            .get(host)
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every known host's twin.
    pub fn status(&self) -> Result<Vec<TwinStatus>, ApplyError> {
        let mut leases: BTreeMap<String, safetytwin_store::Lease> = self
            .store
            .leases()?
            .into_iter()
            .map(|l| (l.host.clone(), l))
            .collect();
        self.store
            .hosts()?
            .into_iter()
            .map(|(host, _)| {
                let lease = leases.remove(&host);
                self.status_with(host, lease)
            })
            .collect()
    }

    /// `host`'s twin.
    pub fn status_of(&self, host: &str) -> Result<TwinStatus, ApplyError> {
        let lease = self.store.leases()?.into_iter().find(|l| l.host == host);
        self.status_with(host.to_owned(), lease)
    }

    fn status_with(
        &self,
        host: String,
        lease: Option<safetytwin_store::Lease>,
    ) -> Result<TwinStatus, ApplyError> {
        Ok(TwinStatus {
            lease,
            domain: self.backend.state(&host).unwrap_or(DomainState::Other),
            progress: self.store.twin_progress(&host)?,
            last_apply: self
                .last
                .lock()
                .expect("last lock")
                .get(&host)
                .and_then(|k| k.back().cloned()),
            last_failure: self.store.last_failure(&host)?,
            last_verify: self.store.last_verify(&host)?,
            host,
        })
    }
}

#[cfg(test)]
mod tests {
    use safetytwin_model::{BatchHeader, DeltaBatch, FileDelta, PackageDelta, UnitDelta, fixtures};

    use super::*;
    use crate::vm::fake::FakeTwin as Fake;

    /// The text exposition of the applier's series.
    fn rendered(m: &TwinMetrics) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&m.gather())
            .unwrap()
    }

    const HOST: &str = "h";

    fn conf(seq: u64) -> FileDelta {
        fixtures::upsert("/etc/demo/app.conf", fixtures::text(&format!("{seq}\n")))
    }

    struct Rig {
        store: Arc<Store>,
        fake: Arc<Fake>,
        applier: Applier,
        seq: u64,
        /// Holds the store (and a test's pool); removed when the rig drops.
        dir: tempfile::TempDir,
    }

    impl Rig {
        fn new(failing: Option<&str>, max_snapshots: usize) -> Rig {
            Rig::with(
                Fake {
                    failing: failing.map(str::to_owned),
                    ..Fake::default()
                },
                max_snapshots,
            )
        }

        fn with(fake: Fake, max_snapshots: usize) -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path().join("db")).unwrap());
            let fake = Arc::new(fake);
            let applier = Applier::new(
                store.clone(),
                fake.clone(),
                ApplierConfig {
                    max_snapshots,
                    ..ApplierConfig::default()
                },
            );
            Rig {
                store,
                fake,
                applier,
                seq: 0,
                dir,
            }
        }

        fn push(&mut self, delta: DeltaBatch) -> Result<(), ApplyError> {
            self.push_part(delta, false, false)
        }

        /// Stores the next batch with these flags, then catches up.
        fn push_part(
            &mut self,
            delta: DeltaBatch,
            resync: bool,
            more: bool,
        ) -> Result<(), ApplyError> {
            self.seq += 1;
            let batch = Batch {
                header: BatchHeader {
                    host_id: HOST.into(),
                    seq: self.seq,
                    resync,
                    more,
                    ..BatchHeader::default()
                },
                delta,
            };
            self.store.append(&batch).unwrap();
            self.applier.catch_up(HOST)
        }
    }

    fn files(seq: u64) -> DeltaBatch {
        DeltaBatch {
            files: vec![conf(seq)],
            ..DeltaBatch::default()
        }
    }

    /// Two workers on one shared store (PostgreSQL), with the default 10 s lease: only the
    /// worker holding a host's lease applies to its twin; when that worker dies (it stops
    /// renewing, releases nothing), the other takes every one of its twins within 15 s and
    /// catches them up from the history.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_workers_twins_move_to_the_other_within_the_bound() {
        let Some(db) = safetytwin_store::scratch::Scratch::postgres() else {
            return;
        };
        let db = Arc::new(db);
        let open = |db: Arc<safetytwin_store::scratch::Scratch>| async move {
            Arc::new(
                tokio::task::spawn_blocking(move || db.open())
                    .await
                    .unwrap(),
            )
        };
        let (store_a, store_b) = (open(db.clone()).await, open(db.clone()).await);
        let hosts: Vec<String> = (0..4).map(|i| format!("web-{i}")).collect();
        let append = |store: Arc<Store>, seq: u64| {
            let hosts = hosts.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    hosts
                        .iter()
                        .map(|h| {
                            let b = fixtures::batch(h, seq, files(seq));
                            store.append(&b).unwrap();
                            Arc::new(b)
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap()
            }
        };
        append(store_a.clone(), 1).await;
        let lease = Duration::from_secs(10);
        let worker = |store: Arc<Store>, name: &str| {
            let fake = Arc::new(Fake::default());
            let applier = Applier::new(store, fake.clone(), ApplierConfig::default())
                .leased(name.into(), lease);
            (Arc::new(applier), fake)
        };
        let (a, fake_a) = worker(store_a.clone(), "a");
        let (live_a, _) = broadcast::channel(16);
        let task_a = tokio::spawn(a.clone().run(live_a.subscribe()));
        let applied = |seq: u64| {
            let (store, hosts) = (store_b.clone(), hosts.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    hosts
                        .iter()
                        .all(|h| store.twin_progress(h).unwrap().applied_seq == seq)
                })
                .await
                .unwrap()
            }
        };
        // `a` alone: it takes every twin and applies seq 1.
        let t = std::time::Instant::now();
        while !applied(1).await {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "a never applied seq 1"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(hosts.iter().all(|h| a.owns(h)));
        // `b` joins: nothing is free, it drives nothing.
        let (b, fake_b) = worker(store_b.clone(), "b");
        let (live_b, _) = broadcast::channel(16);
        let task_b = tokio::spawn(b.clone().run(live_b.subscribe()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(hosts.iter().all(|h| !b.owns(h)));
        assert!(fake_b.calls().is_empty());
        // An operator's call on `b` for a twin `a` drives is refused, naming `a`.
        let (b2, h) = (b.clone(), hosts[0].clone());
        let refused = tokio::task::spawn_blocking(move || b2.resume(&h).err())
            .await
            .unwrap();
        assert!(
            matches!(&refused, Some(ApplyError::NotDriven { owner, .. }) if owner == "a"),
            "{refused:?}"
        );
        // `a` dies: its tasks end, its leases are neither renewed nor released.
        drop(live_a);
        task_a.await.unwrap();
        let applied_by_a = fake_a.calls().len();
        let died = std::time::Instant::now();
        for batch in append(store_b.clone(), 2).await {
            let _ = live_b.send(batch);
        }
        while !applied(2).await {
            assert!(
                died.elapsed() < Duration::from_secs(15),
                "a's twins were not taken over and caught up within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = died.elapsed();
        assert!(hosts.iter().all(|h| b.owns(h)));
        assert!(!fake_b.calls().is_empty());
        assert_eq!(fake_a.calls().len(), 0, "a dead worker ran nothing more");
        assert!(applied_by_a > 0);
        assert!(
            rendered(b.metrics()).contains("safetytwin_replayer_lease_moves_total 4\n"),
            "{}",
            rendered(b.metrics())
        );
        eprintln!("the twins moved and caught up {took:?} after their worker died");
        drop(live_b);
        task_b.await.unwrap();
    }

    /// A twin taken from another worker goes back to the snapshot of the seq the store says
    /// it holds before anything else runs (its old worker may have died mid-apply); without
    /// that snapshot on this hypervisor it is rebuilt from the full state.
    #[test]
    fn a_twin_taken_over_restarts_from_its_snapshot_or_from_scratch() {
        let mut rig = Rig::new(None, 5);
        rig.push(files(1)).unwrap();
        let first = crate::vm::snapshot_name(HOST, 1);
        rig.fake.calls();
        rig.applier.taken.lock().unwrap().insert(HOST.into());
        rig.push(files(2)).unwrap();
        let calls = rig.fake.calls();
        assert_eq!(calls.first(), Some(&format!("revert {first}")), "{calls:?}");
        assert_eq!(rig.store.twin_progress(HOST).unwrap().base_seq, 1);

        // Another hypervisor: none of the twin's snapshots is here.
        rig.fake.snapshots.lock().unwrap().clear();
        rig.applier.taken.lock().unwrap().insert(HOST.into());
        rig.push(files(3)).unwrap();
        let calls = rig.fake.calls();
        assert!(!calls.iter().any(|c| c.starts_with("revert")), "{calls:?}");
        let p = rig.store.twin_progress(HOST).unwrap();
        assert_eq!(
            (p.applied_seq, p.base_seq),
            (3, 3),
            "rebuilt: its first apply is seq 3"
        );
        assert_eq!(
            rig.store
                .snapshots(HOST)
                .unwrap()
                .iter()
                .map(|s| s.seq)
                .collect::<Vec<_>>(),
            [3]
        );
    }

    /// A host of another release than the image's gets no twin from it: a recorded failure
    /// that names both and the build command, and not one guest call.
    #[test]
    fn a_host_of_another_release_is_refused_with_the_way_out() {
        let mut rig = Rig::with(
            Fake {
                release: Some("bookworm".into()),
                ..Fake::default()
            },
            5,
        );
        let os = |codename: &str| safetytwin_model::OsRelease {
            id: "debian".into(),
            version_id: "13".into(),
            codename: codename.into(),
        };
        let e = rig
            .push(DeltaBatch {
                files: vec![conf(1)],
                os: Some(os("trixie")),
                ..DeltaBatch::default()
            })
            .unwrap_err();
        assert!(matches!(e, ApplyError::Step(_)), "{e}");
        assert!(rig.fake.calls().is_empty(), "no guest call");
        let status = rig.applier.status().unwrap();
        let failure = status[0].last_failure.as_ref().unwrap();
        assert!(
            failure
                .message
                .contains("runs debian 13 (trixie), the twin image is bookworm")
                && failure
                    .message
                    .contains("cargo xtask build-image --release trixie"),
            "{}",
            failure.message
        );
        assert_eq!(status[0].progress.applied_seq, 0);

        // The same release applies as ever.
        rig.push(DeltaBatch {
            files: vec![conf(2)],
            os: Some(os("bookworm")),
            ..DeltaBatch::default()
        })
        .unwrap();
        assert_eq!(rig.applier.status().unwrap()[0].progress.applied_seq, 2);
    }

    /// Writes a small file as the `.deb`; `missing` is not in the sources.
    struct FakeFetch;

    impl crate::pool::Fetch for FakeFetch {
        fn fetch(
            &self,
            p: &safetytwin_model::Package,
            dir: &std::path::Path,
        ) -> Result<std::path::PathBuf, String> {
            if p.name == "missing" || (p.name == "libtree" && p.version == "1.2-1") {
                return Err(format!(
                    "E: Can't find a source to download version '{}'",
                    p.version
                ));
            }
            let path = dir.join("p.deb");
            std::fs::write(&path, format!("{} {}", p.name, p.version)).unwrap();
            Ok(path)
        }
        /// The sources carry `libtree` 1.2-2 now, not the host's 1.2-1.
        fn candidate(&self, name: &str, _: &str) -> Result<String, String> {
            match name {
                "libtree" => Ok("1.2-2".into()),
                _ => Err(format!("the sources carry no {name}")),
            }
        }
        /// `tree` needs `libtree` (which the host held before the twin's first apply) or
        /// `libtree-alt`, and libc6 (which the guest has).
        fn control(&self, deb: &std::path::Path) -> Result<String, String> {
            let text = std::fs::read_to_string(deb).unwrap();
            Ok(match text.split(' ').next() {
                Some("tree") => "Depends: libc6 (>= 2.34), libtree (>= 1) | libtree-alt\n",
                Some("libtree") => "Depends: libc6\n",
                _ => "",
            }
            .to_owned())
        }
    }

    /// The twin starts from its image's packages; after that, an upgrade, an install and a
    /// purge reach it with `.deb`s from the pool, in one dpkg run that keeps the host's
    /// configuration files, and a version the pool cannot obtain is skipped and reported.
    #[test]
    fn package_changes_after_the_first_apply_come_from_the_pool() {
        let mut rig = Rig::with(
            Fake {
                dpkg: "curl\tamd64\t7.88.1-10\tinstalled\n\
                       libc6\tamd64\t2.36-9\tinstalled\n\
                       nginx\tamd64\t1.22.1-9\tinstalled\n"
                    .into(),
                ..Fake::default()
            },
            5,
        );
        let pool = Pool::open(rig.dir.path().join("pool"), Box::new(FakeFetch)).unwrap();
        let applier = std::mem::replace(
            &mut rig.applier,
            Applier::new(
                rig.store.clone(),
                rig.fake.clone(),
                ApplierConfig::default(),
            ),
        );
        rig.applier = applier.with_pool(pool);

        rig.push(DeltaBatch {
            files: vec![conf(1)],
            packages: vec![
                PackageDelta::Upsert(fixtures::package("curl", "7.88.1-10")),
                PackageDelta::Upsert(fixtures::package("vim", "2:9.0")),
                PackageDelta::Upsert(fixtures::package("libtree", "1.2-1")),
                PackageDelta::Upsert(fixtures::package("libc6", "2.36-9+deb12u4")),
            ],
            ..DeltaBatch::default()
        })
        .unwrap();
        let calls = rig.fake.calls();
        assert!(!calls.iter().any(|c| c.contains("dpkg")), "{calls:?}");

        rig.push(DeltaBatch {
            packages: vec![
                PackageDelta::Upsert(fixtures::package("curl", "7.88.1-10+deb12u5")),
                PackageDelta::Upsert(fixtures::package("tree", "2.1.0-1")),
                PackageDelta::Upsert(fixtures::package("missing", "1.0")),
                safetytwin_model::PackageDelta::Remove {
                    name: "nginx".into(),
                    arch: "amd64".into(),
                },
                safetytwin_model::PackageDelta::Remove {
                    name: "never-there".into(),
                    arch: "amd64".into(),
                },
            ],
            ..DeltaBatch::default()
        })
        .unwrap();
        let sha = |text: &str| {
            use sha2::Digest;
            format!("{:x}", sha2::Sha256::digest(text))
        };
        let (curl, tree) = (sha("curl 7.88.1-10+deb12u5"), sha("tree 2.1.0-1"));
        // Pulled in: the host's, at the sources' version (the host's own is gone from them).
        let libtree = sha("libtree 1.2-2");
        let dpkg = "/usr/bin/env DEBIAN_FRONTEND=noninteractive /usr/bin/dpkg --force-confold \
                    --force-confdef";
        let calls = rig.fake.calls();
        assert_eq!(
            calls[..8],
            [
                "/usr/bin/dpkg-query -W -f ${Package}\t${Architecture}\t${Version}\t${db:Status-Status}\n"
                    .to_owned(),
                "/bin/mkdir -p -- /run/safetytwin-debs".to_owned(),
                format!("write /run/safetytwin-debs/{curl}.deb"),
                format!("write /run/safetytwin-debs/{tree}.deb"),
                format!("write /run/safetytwin-debs/{libtree}.deb"),
                format!(
                    "{dpkg} --install -- /run/safetytwin-debs/{curl}.deb \
                     /run/safetytwin-debs/{tree}.deb /run/safetytwin-debs/{libtree}.deb"
                ),
                "/bin/rm -rf -- /run/safetytwin-debs".to_owned(),
                format!("{dpkg} --purge -- nginx:amd64"),
            ],
            "{calls:#?}"
        );
        // This fake guest's dpkg answers as before the apply: the check after it says so.
        let verified = rig.store.last_verify(HOST).unwrap().unwrap();
        assert_eq!((verified.seq, verified.differences), (2, 4), "{verified:?}");
        assert!(
            verified
                .first
                .lines()
                .any(|l| l == "package nginx:amd64: host -, twin 1.22.1-9 installed"),
            "{}",
            verified.first
        );
        let status = rig.applier.status().unwrap();
        let steps: Vec<&str> = status[0]
            .last_apply
            .as_ref()
            .unwrap()
            .steps
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        assert!(
            steps
                .contains(&"skipped package missing:amd64 1.0: package version cannot be obtained"),
            "{steps:?}"
        );
        assert!(
            steps.contains(
                &"skipped package libtree:amd64 1.2-1 (1.2-2 installed): dependency's version \
                  cannot be obtained: the sources' version installed instead"
            ),
            "{steps:?}"
        );
        assert!(
            steps[0].starts_with("packages: 3 install, 0 remove, 1 purge"),
            "{steps:?}"
        );
    }

    #[test]
    fn applies_snapshots_and_skips_empty_batches() {
        let mut rig = Rig::new(None, 10);
        rig.push(DeltaBatch {
            files: vec![conf(1)],
            units: vec![UnitDelta::Upsert(fixtures::unit("demo.service", true))],
            ..DeltaBatch::default()
        })
        .unwrap();
        assert_eq!(
            rig.fake.calls(),
            [
                "write /run/safetytwin-apply.tar",
                "/bin/tar --extract --preserve-permissions --same-owner --numeric-owner --file /run/safetytwin-apply.tar --directory /",
                "/bin/rm -f -- /run/safetytwin-apply.tar",
                "/bin/systemctl start -- demo.service",
                "/bin/systemctl is-active -- demo.service",
                // The check: what the apply changed, read back.
                "/usr/bin/find /etc/demo/app.conf -maxdepth 0 -printf %p\t%y\t%m\t%U\t%G\t%l\n",
                "/usr/bin/sha256sum --zero -- /etc/demo/app.conf",
                "/bin/systemctl is-active -- demo.service",
                "snapshot safetytwin-h-1",
            ]
        );
        let verified = rig.store.last_verify(HOST).unwrap().unwrap();
        assert_eq!(
            (
                verified.seq,
                verified.differences,
                verified.equal,
                verified.full
            ),
            (1, 0, 2, false),
            "{verified:?}"
        );
        rig.push(DeltaBatch::default()).unwrap();
        assert!(
            rig.fake.calls().is_empty(),
            "an empty batch touches nothing"
        );
        let p = rig.store.twin_progress(HOST).unwrap();
        assert_eq!(
            (p.applied_seq, p.snapshot.as_deref()),
            (2, Some("safetytwin-h-1"))
        );
        let m = rendered(rig.applier.metrics());
        for line in [
            r#"safetytwin_replayer_applies_total{host="h",result="ok"} 1"#,
            r#"safetytwin_replayer_apply_items_total{host="h"} 2"#,
            r#"safetytwin_replayer_snapshots_taken_total{host="h"} 1"#,
            r#"safetytwin_replayer_snapshots_kept{host="h"} 1"#,
            "safetytwin_replayer_apply_duration_seconds_count 1",
        ] {
            assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
        }
        // Steps are labelled by kind, not by their descriptions ("write 1 paths").
        for step in ["write", "units", "health", "verify", "snapshot"] {
            let line = format!(
                r#"safetytwin_replayer_apply_step_duration_seconds_count{{step="{step}"}} 1"#
            );
            assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
        }
    }

    #[test]
    fn a_failed_unit_reverts_to_the_last_good_snapshot_once() {
        let mut rig = Rig::new(Some("bad.service"), 10);
        rig.push(files(1)).unwrap();
        rig.fake.calls();
        let err = rig
            .push(DeltaBatch {
                units: vec![UnitDelta::Upsert(fixtures::unit("bad.service", true))],
                ..DeltaBatch::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("start bad.service"), "{err}");
        let calls = rig.fake.calls();
        assert_eq!(calls.last().unwrap(), "revert safetytwin-h-1");
        assert!(!calls.iter().any(|c| c.starts_with("snapshot")));
        let p = rig.store.twin_progress(HOST).unwrap();
        assert_eq!((p.applied_seq, p.failed_seq), (1, 2));
        assert_eq!(rig.store.last_failure(HOST).unwrap().unwrap().seq, 2);
        let m = rendered(rig.applier.metrics());
        // Labels are written in name order.
        for line in [
            r#"safetytwin_replayer_applies_total{host="h",result="failed"} 1"#,
            r#"safetytwin_replayer_apply_failures_total{host="h"} 1"#,
            r#"safetytwin_replayer_reverts_total{cause="failure",host="h"} 1"#,
        ] {
            assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
        }
        // Heartbeats do not retry (and revert) the same failure every interval.
        rig.push(DeltaBatch::default()).unwrap();
        assert!(rig.fake.calls().is_empty());
        // A new change does: the twin goes from seq 1 to the latest, failing unit included.
        assert!(rig.push(files(4)).is_err());
        assert!(
            rig.fake
                .calls()
                .iter()
                .any(|c| c.ends_with("start -- bad.service"))
        );
    }

    #[test]
    fn retention_keeps_max_snapshots_and_revert_holds() {
        let mut rig = Rig::new(None, 3);
        for seq in 1..=5 {
            rig.push(files(seq)).unwrap();
        }
        let kept: Vec<u64> = rig
            .store
            .snapshots(HOST)
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect();
        assert_eq!(kept, [3, 4, 5]);
        let m = rendered(rig.applier.metrics());
        for line in [
            r#"safetytwin_replayer_snapshots_deleted_total{host="h"} 2"#,
            r#"safetytwin_replayer_snapshots_kept{host="h"} 3"#,
        ] {
            assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
        }
        assert_eq!(rig.fake.snapshots.lock().unwrap().len(), 3);
        assert!(matches!(
            rig.applier.revert(Some(HOST), "safetytwin-h-1"),
            Err(ApplyError::NoSuchSnapshot { .. })
        ));
        rig.applier.revert(None, "safetytwin-h-3").unwrap();
        assert!(
            rendered(rig.applier.metrics())
                .contains(r#"safetytwin_replayer_reverts_total{cause="operator",host="h"} 1"#)
        );
        rig.fake.calls();
        rig.push(files(6)).unwrap();
        assert!(rig.fake.calls().is_empty(), "held after a revert");
        rig.applier.resume(HOST).unwrap();
        rig.applier.catch_up(HOST).unwrap();
        assert!(
            rig.fake
                .calls()
                .contains(&"snapshot safetytwin-h-6".to_owned())
        );
    }

    #[test]
    fn a_twin_that_does_not_boot_is_a_recorded_failure() {
        let mut rig = Rig::with(
            Fake {
                no_boot: true,
                ..Fake::default()
            },
            10,
        );
        let err = rig.push(files(1)).unwrap_err();
        assert!(err.to_string().contains("did not come up"), "{err}");
        let failure = rig.store.last_failure(HOST).unwrap().unwrap();
        assert_eq!(failure.seq, 1);
        assert!(failure.message.contains("240 s"), "{failure:?}");
        let p = rig.store.twin_progress(HOST).unwrap();
        assert_eq!((p.applied_seq, p.failed_seq), (0, 1));
    }

    /// One archive entry the guest's tar refuses is skipped and reported; the rest of the
    /// batch is applied, and later applies are not blocked by it.
    #[test]
    fn an_entry_tar_refuses_is_skipped_and_reported_not_retried_forever() {
        let mut rig = Rig::with(
            Fake {
                tar_refuses: Some("etc/immutable".into()),
                ..Fake::default()
            },
            10,
        );
        rig.push(DeltaBatch {
            files: vec![
                conf(1),
                fixtures::upsert("/etc/immutable", fixtures::text("x\n")),
            ],
            ..DeltaBatch::default()
        })
        .unwrap();
        let p = rig.store.twin_progress(HOST).unwrap();
        assert_eq!((p.applied_seq, p.failed_seq), (1, 0));
        assert_eq!(p.snapshot.as_deref(), Some("safetytwin-h-1"));
        // The check after the apply names what the twin does not hold.
        let verified = rig.store.last_verify(HOST).unwrap().unwrap();
        assert_eq!(
            (verified.differences, verified.equal),
            (1, 1),
            "{verified:?}"
        );
        assert!(verified.first.starts_with("file /etc/immutable: "));
        let status = rig.applier.status().unwrap();
        let steps: Vec<&str> = status[0]
            .last_apply
            .as_ref()
            .unwrap()
            .steps
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        assert!(
            steps
                .iter()
                .any(|s| s.starts_with("skipped /etc/immutable: ")
                    && s.contains("Operation not permitted")),
            "{steps:?}"
        );
        assert!(status[0].last_failure.is_none());
        // Later changes apply normally.
        rig.fake.calls();
        rig.push(files(2)).unwrap();
        assert!(
            rig.fake
                .calls()
                .contains(&"snapshot safetytwin-h-2".to_owned())
        );
        // A tar failure that names no entry of the archive still fails the apply.
        let mut rig = Rig::with(
            Fake {
                tar_broken: true,
                ..Fake::default()
            },
            10,
        );
        let err = rig.push(files(1)).unwrap_err();
        assert!(err.to_string().contains("tar failed"), "{err}");
        assert_eq!(rig.store.twin_progress(HOST).unwrap().failed_seq, 1);
    }

    /// A resync in parts: its first part alone restates only some of the host, so applying it
    /// would remove from the twin what the later parts bring back. Nothing is applied until the
    /// last part is stored; then only what really changed.
    #[test]
    fn a_batch_in_parts_is_applied_once_its_last_part_is_stored() {
        let mut rig = Rig::new(None, 10);
        rig.push(DeltaBatch {
            files: vec![
                conf(1),
                fixtures::upsert("/etc/demo/other.conf", fixtures::text("same\n")),
            ],
            units: vec![UnitDelta::Upsert(fixtures::unit("demo.service", true))],
            ..DeltaBatch::default()
        })
        .unwrap();
        rig.fake.calls();
        let parts = [
            files(2),
            DeltaBatch {
                files: vec![fixtures::upsert(
                    "/etc/demo/other.conf",
                    fixtures::text("same\n"),
                )],
                ..DeltaBatch::default()
            },
            DeltaBatch {
                units: vec![UnitDelta::Upsert(fixtures::unit("demo.service", true))],
                ..DeltaBatch::default()
            },
        ];
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            rig.push_part(part, i == 0, i < last).unwrap();
            if i < last {
                assert!(
                    rig.fake.calls().is_empty(),
                    "part {i} of a batch with more to come was applied"
                );
                let p = rig.store.twin_progress(HOST).unwrap();
                assert_eq!((p.applied_seq, p.failed_seq), (1, 0));
                assert_eq!(rig.store.complete_seq(HOST).unwrap(), 1);
            }
        }
        let calls = rig.fake.calls();
        assert!(
            !calls.iter().any(|c| c.starts_with("/bin/rm -rf")
                || c.contains("stop")
                || c.contains("restart")),
            "the twin lost what the later parts restate: {calls:?}"
        );
        assert_eq!(calls.last().unwrap(), "snapshot safetytwin-h-4");
        let p = rig.store.twin_progress(HOST).unwrap();
        assert_eq!(p.applied_seq, 4);
        assert_eq!(rig.store.complete_seq(HOST).unwrap(), 4);
        // The state at a seq inside the batch is the fold so far (GetState answers it).
        let partial = rig.store.state_at(HOST, 2).unwrap();
        assert_eq!(partial.files.len(), 1);
    }

    /// Names from the wire that could become options never reach systemctl; the refusal is
    /// reported with the apply.
    #[test]
    fn a_unit_name_that_could_be_an_option_is_reported_not_run() {
        let mut rig = Rig::new(None, 10);
        rig.push(DeltaBatch {
            files: vec![conf(1)],
            units: vec![
                UnitDelta::Upsert(fixtures::unit("-Hroot@evil.service", true)),
                UnitDelta::Upsert(fixtures::unit("demo.service", true)),
            ],
            ..DeltaBatch::default()
        })
        .unwrap();
        let calls = rig.fake.calls();
        assert!(!calls.iter().any(|c| c.contains("-Hroot")), "{calls:?}");
        assert!(calls.contains(&"/bin/systemctl start -- demo.service".to_owned()));
        let status = rig.applier.status().unwrap();
        let steps = &status[0].last_apply.as_ref().unwrap().steps;
        assert!(
            steps
                .iter()
                .any(|(s, _)| s == "skipped -Hroot@evil.service: not a valid unit name"),
            "{steps:?}"
        );
    }

    /// The applies that changed something are kept for the dashboard's plot, oldest first and
    /// bounded; the last of them is the status's last apply.
    #[test]
    fn recent_applies_are_kept_bounded_and_in_order() {
        let mut rig = Rig::new(None, 10);
        for seq in 1..=KEPT_APPLIES as u64 + 3 {
            rig.push(DeltaBatch {
                files: vec![conf(seq)],
                ..DeltaBatch::default()
            })
            .unwrap();
        }
        let kept = rig.applier.applies(HOST);
        assert_eq!(kept.len(), KEPT_APPLIES);
        assert_eq!(kept[0].seq, 4);
        assert!(kept.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert!(kept.iter().all(|a| a.unix_ns > 0 && !a.steps.is_empty()));
        let status = rig.applier.status_of(HOST).unwrap();
        assert_eq!(status.last_apply.unwrap().seq, KEPT_APPLIES as u64 + 3);
        assert!(rig.applier.applies("other").is_empty());
    }
}

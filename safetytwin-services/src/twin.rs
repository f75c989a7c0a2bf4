//! `Twin`: the consumer API over the history. `Subscribe` replays stored batches after a seq and
//! then follows new ones live; `GetState` and `Diff` are computed from the history (event
//! sourcing); `ListHosts` and `Status` describe the store. [`Queries`] holds what the JSON API
//! (`http.rs`) answers the same way.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use safetytwin_model::{Batch, BatchHeader, DeltaBatch, FileDelta, HostModel, UnitDelta};
use safetytwin_proto::{
    convert,
    v1::{self, ChangeKind, get_state_request, twin_server::Twin},
};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use safetytwin_proto::parts;
use safetytwin_store::{SnapshotRecord, Store, StoreError};
use safetytwin_twin::{
    applier::{Applier, ApplyError, TwinStatus},
    verify,
};

use crate::{
    outbox::{self, Gone, Outbox},
    status,
};

/// The replayer as `Status` shows it, before it becomes protobuf or JSON.
#[derive(Debug, Clone)]
pub struct Overview {
    /// The replayer's version.
    pub version: &'static str,
    /// Hosts in the history.
    pub hosts: u64,
    /// Batches in the history.
    pub batches: u64,
    /// Time since the server started.
    pub uptime: Duration,
    /// "libvirt" or "none".
    pub twin_backend: &'static str,
    /// Every host's twin (empty without a backend).
    pub twins: Vec<TwinStatus>,
}

/// The consumer calls both APIs answer alike (gRPC here, JSON in `http.rs`); blocking.
#[derive(Clone)]
pub struct Queries {
    store: Arc<Store>,
    applier: Option<Arc<Applier>>,
    started: Instant,
}

impl Queries {
    /// Over `store`; `applier` keeps the twins (None: the replayer runs without a twin
    /// backend).
    pub fn new(store: Arc<Store>, applier: Option<Arc<Applier>>) -> Self {
        Queries {
            store,
            applier,
            started: Instant::now(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The applier, if the replayer keeps twins.
    pub fn applier(&self) -> Option<&Arc<Applier>> {
        self.applier.as_ref()
    }

    /// The replayer, its history and its twins.
    pub fn overview(&self) -> Result<Overview, ApplyError> {
        let hosts = self.store.hosts()?;
        let twins = match &self.applier {
            Some(a) => a.status()?,
            None => Vec::new(),
        };
        Ok(Overview {
            version: env!("CARGO_PKG_VERSION"),
            hosts: hosts.len() as u64,
            batches: hosts.iter().map(|(_, last)| last).sum(),
            uptime: self.started.elapsed(),
            twin_backend: if self.applier.is_some() {
                "libvirt"
            } else {
                "none"
            },
            twins,
        })
    }

    /// `host`'s seq and model at `at` (latest when `None`); seq 0 with the empty model before
    /// its first batch.
    pub fn state(
        &self,
        host: &str,
        at: Option<get_state_request::At>,
    ) -> Result<(u64, HostModel), StoreError> {
        let store = &self.store;
        let last = store.last_seq(host)?;
        let seq = match at {
            None => last,
            Some(get_state_request::At::Seq(seq)) => seq,
            Some(get_state_request::At::UnixNs(t)) => store.seq_at_time(host, t)?.unwrap_or(0),
        };
        let state = if seq == 0 && last > 0 {
            HostModel::default()
        } else {
            store.state_at(host, seq)?
        };
        Ok((seq, state))
    }
}

/// The consumer service.
#[derive(Clone)]
pub struct TwinService {
    queries: Queries,
    live: broadcast::Sender<Arc<Batch>>,
}

impl TwinService {
    /// Answers with `queries`; `live` carries every batch as it is stored.
    pub fn new(queries: Queries, live: broadcast::Sender<Arc<Batch>>) -> Self {
        TwinService { queries, live }
    }

    fn applier(&self) -> Result<Arc<Applier>, Status> {
        self.queries.applier().cloned().ok_or_else(status::no_twin)
    }
}

/// What a subscriber asked to see.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Empty: every host.
    pub host: String,
    /// Which deltas to keep; all when every flag is false.
    pub files: bool,
    /// Keep unit deltas.
    pub units: bool,
    /// Keep process deltas.
    pub processes: bool,
    /// Keep package deltas.
    pub packages: bool,
    /// Keep user and group deltas.
    pub accounts: bool,
    /// Only files under this path.
    pub path_prefix: String,
    /// Only this unit.
    pub unit: String,
    /// Drop batches left empty.
    pub skip_empty: bool,
}

impl Filter {
    fn from_request(r: &v1::SubscribeRequest) -> Filter {
        let has = |k: ChangeKind| r.kinds.contains(&(k as i32));
        let all = r.kinds.is_empty();
        Filter {
            host: r.host_id.clone(),
            files: all || has(ChangeKind::Files),
            units: all || has(ChangeKind::Units),
            processes: all || has(ChangeKind::Processes),
            packages: all || has(ChangeKind::Packages),
            accounts: all || has(ChangeKind::Accounts),
            path_prefix: r.path_prefix.clone(),
            unit: r.unit.clone(),
            skip_empty: r.skip_empty,
        }
    }

    /// The part of `batch` this filter lets through, or `None`.
    pub fn apply(&self, batch: &Batch) -> Option<Batch> {
        if !self.host.is_empty() && batch.header.host_id != self.host {
            return None;
        }
        let d = &batch.delta;
        let under = |p: &str| {
            self.path_prefix.is_empty()
                || p.strip_prefix(self.path_prefix.trim_end_matches('/'))
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        };
        let files = if self.files && self.unit.is_empty() {
            d.files
                .iter()
                .filter(|f| match f {
                    FileDelta::Upsert { path, .. } | FileDelta::Remove { path } => under(path),
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let units = if self.units && self.path_prefix.is_empty() {
            d.units
                .iter()
                .filter(|u| {
                    let name = match u {
                        UnitDelta::Upsert(u) => &u.name,
                        UnitDelta::Remove { name } => name,
                    };
                    self.unit.is_empty() || *name == self.unit
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let narrowed = !self.path_prefix.is_empty() || !self.unit.is_empty();
        let processes = if self.processes && !narrowed {
            d.processes.clone()
        } else {
            Vec::new()
        };
        // Packages and accounts have no path or unit: a narrowed subscription leaves them out.
        let packages = if self.packages && !narrowed {
            d.packages.clone()
        } else {
            Vec::new()
        };
        let (users, groups) = if self.accounts && !narrowed {
            (d.users.clone(), d.groups.clone())
        } else {
            (Vec::new(), Vec::new())
        };
        let out = Batch {
            header: batch.header.clone(),
            delta: DeltaBatch {
                files,
                units,
                processes,
                packages,
                users,
                groups,
                os: if narrowed { None } else { d.os.clone() },
                activity: d.activity,
            },
        };
        (!self.skip_empty || !out.delta.is_empty()).then_some(out)
    }
}

/// A verification's report as `Twin.Verify` answers it.
pub fn verify_to_wire(host: String, seq: u64, report: verify::Report) -> v1::VerifyResponse {
    v1::VerifyResponse {
        host_id: host,
        seq,
        differences: report
            .differences
            .into_iter()
            .map(|d| v1::Difference {
                kind: d.kind.to_owned(),
                item: d.item,
                host: d.host,
                twin: d.twin,
            })
            .collect(),
        by_design: report
            .by_design
            .into_iter()
            .map(|(reason, count)| v1::ByDesign {
                reason,
                count: count as u64,
            })
            .collect(),
        equal: report.equal as u64,
    }
}

async fn blocking<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Status>
where
    ApplyError: From<E>,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| status::apply(e.into()))
}

/// A snapshot record as the `Twin` service answers it.
pub fn snapshot_to_wire(s: SnapshotRecord) -> v1::Snapshot {
    v1::Snapshot {
        host_id: s.host,
        seq: s.seq,
        name: s.name,
        created_unix_ns: s.created_unix_ns,
        apply_micros: s.apply_us,
        items: s.items,
    }
}

/// Lets `host`'s held twin follow the history again and starts its catching up, without
/// waiting for it (a boot, an apply and a snapshot can take minutes). Both APIs resume here.
pub async fn resume(
    applier: Arc<Applier>,
    host: String,
) -> Result<safetytwin_store::TwinProgress, Status> {
    let progress = {
        let (a, h) = (applier.clone(), host.clone());
        blocking(move || a.resume(&h)).await?
    };
    tokio::task::spawn_blocking(move || {
        if let Err(e) = applier.catch_up(&host) {
            tracing::error!(%host, "twin: {e}");
        }
    });
    Ok(progress)
}

/// One twin as JSON, in the shape `Status` gives each twin.
pub fn twin_json(t: TwinStatus) -> serde_json::Value {
    safetytwin_proto::json::twin(&twin_to_wire(t))
}

fn twin_to_wire(t: TwinStatus) -> v1::TwinState {
    let last = t.last_apply.unwrap_or_default();
    let failure = t.last_failure;
    v1::TwinState {
        host_id: t.host,
        domain_state: t.domain.as_str().to_owned(),
        applied_seq: t.progress.applied_seq,
        snapshot: t.progress.snapshot.unwrap_or_default(),
        held: t.progress.held,
        last_apply_seq: last.seq,
        last_apply_micros: last.took.as_micros() as u64,
        last_apply_items: last.items as u64,
        last_apply_steps: last
            .steps
            .into_iter()
            .map(|(name, took)| v1::ApplyStep {
                name,
                micros: took.as_micros() as u64,
            })
            .collect(),
        owner: t
            .lease
            .as_ref()
            .map(|l| l.owner.clone())
            .unwrap_or_default(),
        lease_ms: t.lease.as_ref().map_or(0, |l| l.expires_in_ms),
        lease_moves: t.lease.as_ref().map_or(0, |l| l.moves),
        last_failure_seq: failure.as_ref().map_or(0, |f| f.seq),
        last_failure: failure.map(|f| f.message).unwrap_or_default(),
        last_verify: t.last_verify.map(|v| v1::VerifySummary {
            seq: v.seq,
            differences: v.differences,
            equal: v.equal,
            by_design: v.by_design,
            full: v.full,
            unix_ns: v.unix_ns,
            micros: v.took_us,
            first: v.first,
        }),
    }
}

/// The overview as `Twin.Status` answers it.
pub fn overview_to_wire(o: Overview) -> v1::StatusResponse {
    v1::StatusResponse {
        version: o.version.to_owned(),
        hosts: o.hosts,
        batches: o.batches,
        uptime_seconds: o.uptime.as_secs() as i64,
        twin_backend: o.twin_backend.to_owned(),
        twins: o.twins.into_iter().map(twin_to_wire).collect(),
    }
}

/// Why a subscription's task stopped early.
enum Ended {
    /// The subscriber went away (or was cut off and told so).
    Gone,
    /// It is to be told this.
    Failed(Status),
}

impl From<Gone> for Ended {
    fn from(_: Gone) -> Self {
        Ended::Gone
    }
}

impl From<Status> for Ended {
    fn from(s: Status) -> Self {
        Ended::Failed(s)
    }
}

/// Sends the stored batches after `request.from_seq` (and after what `sent` says went out),
/// waiting for the subscriber; returns how many batches it looked at.
async fn replay(
    store: &Arc<Store>,
    request: &v1::SubscribeRequest,
    filter: &Filter,
    sent: &mut HashMap<String, u64>,
    out: &Outbox<v1::DeltaBatch>,
) -> Result<usize, Ended> {
    let hosts = {
        let store = store.clone();
        blocking(move || store.hosts()).await?
    };
    let mut seen = 0;
    for (host, last) in hosts {
        if !filter.host.is_empty() && host != filter.host {
            continue;
        }
        let after = sent.get(&host).copied().unwrap_or(0).max(request.from_seq);
        for seq in after + 1..=last {
            let (store, h) = (store.clone(), host.clone());
            let Some(batch) = blocking(move || store.batch(&h, seq)).await? else {
                continue;
            };
            seen += 1;
            sent.insert(host.clone(), seq);
            if let Some(b) = filter.apply(&batch) {
                out.send(convert::batch_to_wire(&b)).await?;
            }
        }
    }
    Ok(seen)
}

/// A subscription: the history at the subscriber's pace, then live batches within its
/// budget ([`outbox::SUBSCRIBER`]).
async fn follow(
    store: Arc<Store>,
    live: broadcast::Sender<Arc<Batch>>,
    request: v1::SubscribeRequest,
    out: &Outbox<v1::DeltaBatch>,
) -> Result<(), Ended> {
    let filter = Filter::from_request(&request);
    let mut sent: HashMap<String, u64> = HashMap::new();
    // The history is read without a live receiver: one would keep every batch stored
    // meanwhile in the broadcast ring for as long as a slow subscriber takes. Passes repeat
    // until one finds nothing new; then the receiver comes first and a last pass covers what
    // was stored before it.
    while replay(&store, &request, &filter, &mut sent, out).await? > 0 {}
    let mut live = live.subscribe();
    replay(&store, &request, &filter, &mut sent, out).await?;
    loop {
        let batch = match live.recv().await {
            Ok(b) => b,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                return Err(Ended::Failed(status::fell_behind(&format!(
                    "{n} live batches missed"
                ))));
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        let h = &batch.header;
        if sent.get(&h.host_id).is_some_and(|s| h.seq <= *s) || h.seq <= request.from_seq {
            continue;
        }
        sent.insert(h.host_id.clone(), h.seq);
        if let Some(b) = filter.apply(&batch) {
            // Never waits: the live ring must not hold batches for a stalled subscriber.
            out.offer(convert::batch_to_wire(&b))?;
        }
    }
}

type Batches = Pin<Box<dyn Stream<Item = Result<v1::DeltaBatch, Status>> + Send>>;

/// The parts of one answer, as a response stream.
type Parts<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Sends `parts` at the consumer's pace (a few ahead, [`outbox::PARTS`]).
fn in_parts<T: safetytwin_proto::wire::Wire + Send + 'static>(parts: Vec<T>) -> Parts<T> {
    let (out, inbox) = outbox::outbox(outbox::PARTS);
    tokio::spawn(async move {
        for part in parts {
            if out.send(part).await.is_err() {
                return;
            }
        }
    });
    Box::pin(inbox)
}

impl TwinService {
    /// What `GetState` answers, whole.
    async fn state(&self, r: v1::GetStateRequest) -> Result<(u64, v1::HostState), Status> {
        let queries = self.queries.clone();
        blocking(move || {
            let (seq, state) = queries.state(&r.host_id, r.at)?;
            Ok::<_, StoreError>((seq, convert::model_to_wire(&state)))
        })
        .await
    }

    /// What `Diff` answers, whole.
    async fn delta(&self, r: v1::DiffRequest) -> Result<v1::DeltaBatch, Status> {
        if r.from_seq > r.to_seq {
            return Err(Status::invalid_argument("from_seq is after to_seq"));
        }
        let store = self.queries.store().clone();
        blocking(move || {
            let at = |seq| match seq {
                0 => Ok(HostModel::default()),
                s => store.state_at(&r.host_id, s),
            };
            let delta = at(r.from_seq)?.diff(&at(r.to_seq)?);
            let batch = Batch {
                header: BatchHeader {
                    seq: r.to_seq.max(1),
                    host_id: r.host_id,
                    ..BatchHeader::default()
                },
                delta,
            };
            Ok::<_, StoreError>(convert::batch_to_wire(&batch))
        })
        .await
    }
}

#[tonic::async_trait]
impl Twin for TwinService {
    type SubscribeStream = Batches;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let (outbox, inbox) = outbox::outbox(outbox::SUBSCRIBER);
        let (store, live) = (self.queries.store().clone(), self.live.clone());
        tokio::spawn(async move {
            if let Err(Ended::Failed(status)) = follow(store, live, request, &outbox).await {
                outbox.fail(status);
            }
        });
        Ok(Response::new(Box::pin(inbox)))
    }

    async fn get_state(
        &self,
        request: Request<v1::GetStateRequest>,
    ) -> Result<Response<v1::GetStateResponse>, Status> {
        let (seq, state) = self.state(request.into_inner()).await?;
        Ok(Response::new(v1::GetStateResponse {
            seq,
            state: Some(state),
        }))
    }

    async fn diff(
        &self,
        request: Request<v1::DiffRequest>,
    ) -> Result<Response<v1::DiffResponse>, Status> {
        let delta = self.delta(request.into_inner()).await?;
        Ok(Response::new(v1::DiffResponse { delta: Some(delta) }))
    }

    type GetStatePartsStream = Parts<v1::GetStateResponse>;

    async fn get_state_parts(
        &self,
        request: Request<v1::GetStateRequest>,
    ) -> Result<Response<Self::GetStatePartsStream>, Status> {
        let (seq, state) = self.state(request.into_inner()).await?;
        Ok(Response::new(in_parts(parts::state(seq, state))))
    }

    type DiffPartsStream = Parts<v1::DiffResponse>;

    async fn diff_parts(
        &self,
        request: Request<v1::DiffRequest>,
    ) -> Result<Response<Self::DiffPartsStream>, Status> {
        let delta = self.delta(request.into_inner()).await?;
        Ok(Response::new(in_parts(parts::delta(delta))))
    }

    async fn list_hosts(
        &self,
        _: Request<v1::ListHostsRequest>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        let store = self.queries.store().clone();
        let hosts = blocking(move || -> Result<_, StoreError> {
            store
                .hosts()?
                .into_iter()
                .map(|(host, last)| {
                    let header = store
                        .batch(&host, last)?
                        .map(|b| b.header)
                        .unwrap_or_default();
                    Ok(v1::HostInfo {
                        host_id: host,
                        last_seq: last,
                        boot_id: header.boot_id,
                        last_window_end_unix_ns: header.window_end_unix_ns,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        Ok(Response::new(v1::ListHostsResponse { hosts }))
    }

    async fn status(
        &self,
        _: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let queries = self.queries.clone();
        let o = blocking(move || queries.overview()).await?;
        Ok(Response::new(overview_to_wire(o)))
    }

    async fn list_snapshots(
        &self,
        request: Request<v1::ListSnapshotsRequest>,
    ) -> Result<Response<v1::ListSnapshotsResponse>, Status> {
        let applier = self.applier()?;
        let host = request.into_inner().host_id;
        let snapshots =
            blocking(move || applier.snapshots(Some(host.as_str()).filter(|h| !h.is_empty())))
                .await?;
        Ok(Response::new(v1::ListSnapshotsResponse {
            snapshots: snapshots.into_iter().map(snapshot_to_wire).collect(),
        }))
    }

    async fn revert(
        &self,
        request: Request<v1::RevertRequest>,
    ) -> Result<Response<v1::RevertResponse>, Status> {
        let applier = self.applier()?;
        let v1::RevertRequest { host_id, snapshot } = request.into_inner();
        if snapshot.is_empty() {
            return Err(Status::invalid_argument(
                "RevertRequest.snapshot is missing",
            ));
        }
        let record = blocking(move || {
            applier.revert(Some(host_id.as_str()).filter(|h| !h.is_empty()), &snapshot)
        })
        .await?;
        Ok(Response::new(v1::RevertResponse {
            snapshot: Some(snapshot_to_wire(record)),
        }))
    }

    async fn verify(
        &self,
        request: Request<v1::VerifyRequest>,
    ) -> Result<Response<v1::VerifyResponse>, Status> {
        let applier = self.applier()?;
        let host = request.into_inner().host_id;
        if host.is_empty() {
            return Err(Status::invalid_argument("VerifyRequest.host_id is missing"));
        }
        let (seq, report) = {
            let h = host.clone();
            blocking(move || applier.verify(&h)).await?
        };
        Ok(Response::new(verify_to_wire(host, seq, report)))
    }

    async fn resume(
        &self,
        request: Request<v1::ResumeRequest>,
    ) -> Result<Response<v1::ResumeResponse>, Status> {
        let applier = self.applier()?;
        let host = request.into_inner().host_id;
        if host.is_empty() {
            return Err(Status::invalid_argument("ResumeRequest.host_id is missing"));
        }
        let progress = resume(applier, host).await?;
        Ok(Response::new(v1::ResumeResponse {
            applied_seq: progress.applied_seq,
        }))
    }
}

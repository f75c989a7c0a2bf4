//! `Twin`: the consumer API over the history. `Subscribe` replays stored batches after a seq and
//! then follows new ones live; `GetState` and `Diff` are computed from the history (event
//! sourcing); `ListHosts` and `Status` describe the store.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Instant};

use safetytwin_model::{Batch, BatchHeader, DeltaBatch, FileDelta, HostModel, UnitDelta};
use safetytwin_proto::{
    convert,
    v1::{self, ChangeKind, get_state_request, twin_server::Twin},
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::{
    applier::{Applier, ApplyError, TwinStatus},
    status,
    store::{SnapshotRecord, Store, StoreError},
};

/// The consumer service.
#[derive(Clone)]
pub struct TwinService {
    store: Arc<Store>,
    live: broadcast::Sender<Arc<Batch>>,
    started: Instant,
    applier: Option<Arc<Applier>>,
}

impl TwinService {
    /// Serves `store`; `live` carries every batch as it is stored; `applier` keeps the twins
    /// (None: the replayer runs without a twin backend).
    pub fn new(
        store: Arc<Store>,
        live: broadcast::Sender<Arc<Batch>>,
        applier: Option<Arc<Applier>>,
    ) -> Self {
        TwinService {
            store,
            live,
            started: Instant::now(),
            applier,
        }
    }

    fn applier(&self) -> Result<Arc<Applier>, Status> {
        self.applier.clone().ok_or_else(status::no_twin)
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
        let out = Batch {
            header: batch.header.clone(),
            delta: DeltaBatch {
                files,
                units,
                processes,
                activity: d.activity,
            },
        };
        (!self.skip_empty || !out.delta.is_empty()).then_some(out)
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

fn snapshot_to_wire(s: SnapshotRecord) -> v1::Snapshot {
    v1::Snapshot {
        host_id: s.host,
        seq: s.seq,
        name: s.name,
        created_unix_ns: s.created_unix_ns,
        apply_micros: s.apply_us,
        items: s.items,
    }
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
        last_failure_seq: failure.as_ref().map_or(0, |f| f.seq),
        last_failure: failure.map(|f| f.message).unwrap_or_default(),
    }
}

type Batches = Pin<Box<dyn Stream<Item = Result<v1::DeltaBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Twin for TwinService {
    type SubscribeStream = Batches;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let filter = Filter::from_request(&request);
        // Subscribe to live batches before reading the history, so none falls in between.
        let mut live = self.live.subscribe();
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let hosts = {
                let store = store.clone();
                match blocking(move || store.hosts()).await {
                    Ok(h) => h,
                    Err(s) => return drop(tx.send(Err(s)).await),
                }
            };
            let mut sent: HashMap<String, u64> = HashMap::new();
            for (host, last) in hosts {
                if !filter.host.is_empty() && host != filter.host {
                    continue;
                }
                for seq in request.from_seq + 1..=last {
                    let (store, h) = (store.clone(), host.clone());
                    let batch = match blocking(move || store.batch(&h, seq)).await {
                        Ok(Some(b)) => b,
                        Ok(None) => continue,
                        Err(s) => return drop(tx.send(Err(s)).await),
                    };
                    sent.insert(host.clone(), seq);
                    if let Some(b) = filter.apply(&batch)
                        && tx.send(Ok(convert::batch_to_wire(&b))).await.is_err()
                    {
                        return;
                    }
                }
            }
            loop {
                let batch = match live.recv().await {
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let msg = format!(
                            "subscriber fell {n} batches behind; subscribe again from the last seq it received"
                        );
                        return drop(tx.send(Err(Status::resource_exhausted(msg))).await);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let h = &batch.header;
                if sent.get(&h.host_id).is_some_and(|s| h.seq <= *s) || h.seq <= request.from_seq {
                    continue;
                }
                sent.insert(h.host_id.clone(), h.seq);
                if let Some(b) = filter.apply(&batch)
                    && tx.send(Ok(convert::batch_to_wire(&b))).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_state(
        &self,
        request: Request<v1::GetStateRequest>,
    ) -> Result<Response<v1::GetStateResponse>, Status> {
        let r = request.into_inner();
        let store = self.store.clone();
        let (seq, state) = blocking(move || -> Result<_, StoreError> {
            let last = store.last_seq(&r.host_id)?;
            let seq = match r.at {
                None => last,
                Some(get_state_request::At::Seq(seq)) => seq,
                Some(get_state_request::At::UnixNs(t)) => {
                    store.seq_at_time(&r.host_id, t)?.unwrap_or(0)
                }
            };
            let state = if seq == 0 && last > 0 {
                HostModel::default()
            } else {
                store.state_at(&r.host_id, seq)?
            };
            Ok((seq, state))
        })
        .await?;
        Ok(Response::new(v1::GetStateResponse {
            seq,
            state: Some(convert::model_to_wire(&state)),
        }))
    }

    async fn diff(
        &self,
        request: Request<v1::DiffRequest>,
    ) -> Result<Response<v1::DiffResponse>, Status> {
        let r = request.into_inner();
        if r.from_seq > r.to_seq {
            return Err(Status::invalid_argument("from_seq is after to_seq"));
        }
        let store = self.store.clone();
        let host = r.host_id.clone();
        let delta = blocking(move || -> Result<_, StoreError> {
            let at = |seq| match seq {
                0 => Ok(HostModel::default()),
                s => store.state_at(&host, s),
            };
            Ok(at(r.from_seq)?.diff(&at(r.to_seq)?))
        })
        .await?;
        let batch = Batch {
            header: BatchHeader {
                host_id: r.host_id,
                seq: r.to_seq.max(1),
                ..BatchHeader::default()
            },
            delta,
        };
        Ok(Response::new(v1::DiffResponse {
            delta: Some(convert::batch_to_wire(&batch)),
        }))
    }

    async fn list_hosts(
        &self,
        _: Request<v1::ListHostsRequest>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        let store = self.store.clone();
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
        let store = self.store.clone();
        let hosts = blocking(move || store.hosts()).await?;
        let twins = match self.applier.clone() {
            Some(a) => blocking(move || a.status()).await?,
            None => Vec::new(),
        };
        Ok(Response::new(v1::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            hosts: hosts.len() as u64,
            batches: hosts.iter().map(|(_, last)| last).sum(),
            uptime_seconds: self.started.elapsed().as_secs() as i64,
            twin_backend: if self.applier.is_some() {
                "libvirt"
            } else {
                "none"
            }
            .to_owned(),
            twins: twins.into_iter().map(twin_to_wire).collect(),
        }))
    }

    async fn list_snapshots(
        &self,
        request: Request<v1::ListSnapshotsRequest>,
    ) -> Result<Response<v1::ListSnapshotsResponse>, Status> {
        let applier = self.applier()?;
        let host = request.into_inner().host_id;
        let store = self.store.clone();
        let snapshots = blocking(move || -> Result<_, ApplyError> {
            let hosts = if host.is_empty() {
                store.hosts()?.into_iter().map(|(h, _)| h).collect()
            } else {
                vec![host]
            };
            let mut all = Vec::new();
            for h in hosts {
                all.extend(applier.snapshots(&h)?);
            }
            Ok(all)
        })
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
        let store = self.store.clone();
        let record = blocking(move || -> Result<_, ApplyError> {
            let host = if host_id.is_empty() {
                let mut found = None;
                for (h, _) in store.hosts()? {
                    if store.snapshots(&h)?.iter().any(|s| s.name == snapshot) {
                        found = Some(h);
                        break;
                    }
                }
                found.ok_or_else(|| ApplyError::NoSuchSnapshot {
                    host: "any".into(),
                    name: snapshot.clone(),
                })?
            } else {
                host_id
            };
            applier.revert(&host, &snapshot)
        })
        .await?;
        Ok(Response::new(v1::RevertResponse {
            snapshot: Some(snapshot_to_wire(record)),
        }))
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
        let progress = {
            let (a, h) = (applier.clone(), host.clone());
            blocking(move || a.resume(&h)).await?
        };
        // Catching up can take long (boot, apply, snapshot); the call does not wait for it.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = applier.catch_up(&host) {
                tracing::error!(%host, "twin: {e}");
            }
        });
        Ok(Response::new(v1::ResumeResponse {
            applied_seq: progress.applied_seq,
        }))
    }
}

//! `Ingest.Sync`: the daemon's exactly-once stream. The stream opens with a Hello naming the
//! host; the replayer answers with the last seq it holds, then stores each batch (in one
//! transaction, see `safetytwin-store`) before acknowledging it. A duplicate identical to the stored
//! batch is acknowledged and ignored; a different one, a gap or a malformed batch ends the
//! stream with a precise status and changes nothing.
//!
//! Who may write a host's history: with TLS, only a daemon whose client certificate names that
//! host (`certs.rs`); and only one daemon at a time. A second stream for a live host from the
//! same boot replaces the first (the daemon reconnected before the server saw the old
//! connection die); from another boot it is refused, since two machines then share the host id
//! (a cloned machine-id). A host that rebooted has a new boot id: its retries succeed once
//! HTTP/2 keepalive (`server.rs`) has declared the old connection dead.
//!
//! The Hello also says how far the daemon's spool got (sealed and acked seqs); when that cannot
//! continue the stored history ([`contract::continues`]), `Resume.resync` asks the daemon to
//! continue after the stored last seq with a resync.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use safetytwin_model::Batch;
use safetytwin_proto::{
    contract, convert,
    v1::{self, SyncRequest, SyncResponse, ingest_server::Ingest, sync_request, sync_response},
    wire::Wire,
};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use safetytwin_store::{Appended, Store};

use crate::{certs, metrics::Metrics, refusal::IngestError, status};

/// The one live stream of each host.
#[derive(Default)]
struct LiveStreams {
    streams: Mutex<HashMap<String, LiveStream>>,
    next_id: AtomicU64,
}

struct LiveStream {
    id: u64,
    boot: String,
    /// Notified to end the stream.
    end: Arc<Notify>,
}

/// A host's claim on being the live stream; released when dropped.
struct Claim {
    live: Arc<LiveStreams>,
    host: String,
    id: u64,
    end: Arc<Notify>,
}

impl LiveStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveStream>> {
        // The map stays consistent whatever panicked while it was held.
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the stream of `host` from `boot` the live one, ending one from the same boot.
    fn claim(
        self: &Arc<Self>,
        host: &str,
        boot: &str,
        metrics: &Metrics,
    ) -> Result<Claim, IngestError> {
        let mut streams = self.lock();
        if let Some(live) = streams.get(host) {
            if live.boot != boot {
                metrics.stream_conflicting(host);
                return Err(IngestError::OtherBoot {
                    host: host.to_owned(),
                    boot: boot.to_owned(),
                    live_boot: live.boot.clone(),
                });
            }
            tracing::info!(%host, %boot, "a newer stream of the same boot replaces the live one");
            metrics.stream_replaced(host);
            live.end.notify_one();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let end = Arc::new(Notify::new());
        streams.insert(
            host.to_owned(),
            LiveStream {
                id,
                boot: boot.to_owned(),
                end: end.clone(),
            },
        );
        Ok(Claim {
            live: self.clone(),
            host: host.to_owned(),
            id,
            end,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut streams = self.live.lock();
        // A stream that was replaced leaves its successor's entry alone.
        if streams.get(&self.host).is_some_and(|s| s.id == self.id) {
            streams.remove(&self.host);
        }
    }
}

/// The ingest service over a store.
#[derive(Clone)]
pub struct IngestService {
    store: Arc<Store>,
    live: broadcast::Sender<Arc<Batch>>,
    require_client_cert: bool,
    metrics: Arc<Metrics>,
    streams: Arc<LiveStreams>,
}

impl IngestService {
    /// Serves `store`, publishing every newly stored batch on `live`; with
    /// `require_client_cert`, only peers that presented a certificate the CA signed may send.
    /// Streams, batches and refusals are counted in `metrics`.
    pub fn new(
        store: Arc<Store>,
        live: broadcast::Sender<Arc<Batch>>,
        require_client_cert: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        IngestService {
            store,
            live,
            require_client_cert,
            metrics,
            streams: Arc::default(),
        }
    }

    fn refuse(&self, status: Status) -> Status {
        self.metrics.batch_refused(&format!("{:?}", status.code()));
        status
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<SyncResponse, Status>> + Send>>;

fn response(msg: sync_response::Msg) -> Result<SyncResponse, Status> {
    Ok(SyncResponse { msg: Some(msg) })
}

/// Runs one stream; returns the status that ends it (or `Ok` when the client hung up).
/// `allowed` is the hosts the client certificate names (`None` without TLS).
async fn serve(
    me: IngestService,
    allowed: Option<Vec<String>>,
    mut requests: Streaming<SyncRequest>,
    tx: &mpsc::Sender<Result<SyncResponse, Status>>,
) -> Result<(), Status> {
    let IngestService {
        store,
        live,
        metrics,
        streams,
        ..
    } = me;
    let hello = match requests.next().await {
        Some(Ok(SyncRequest {
            msg: Some(sync_request::Msg::Hello(hello)),
        })) => hello,
        Some(Ok(_)) => {
            return Err(Status::invalid_argument(
                "the stream must open with a Hello",
            ));
        }
        Some(Err(status)) => return Err(status),
        None => return Ok(()),
    };
    if hello.host_id.is_empty() {
        return Err(Status::invalid_argument("Hello.host_id is missing"));
    }
    // The id keys every table and rides in PostgreSQL's notifications (at most 8,000 bytes):
    // the certificates' bound holds for plaintext daemons too.
    if hello.host_id.len() > crate::certs::MAX_HOST_ID {
        return Err(Status::invalid_argument(format!(
            "Hello.host_id is {} bytes long, at most {} are allowed",
            hello.host_id.len(),
            crate::certs::MAX_HOST_ID
        )));
    }
    let host = hello.host_id;
    // Identity first: a client that may not write this host learns nothing more.
    if let Some(named) = allowed
        && !named.contains(&host)
    {
        return Err(status::ingest(IngestError::NotThisHost { host, named }));
    }
    let trees = convert::watched_from_wire(hello.watched).map_err(status::malformed_hello)?;
    let claim = streams
        .claim(&host, &hello.boot_id, &metrics)
        .map_err(status::ingest)?;
    let last = {
        let (store, host) = (store.clone(), host.clone());
        tokio::task::spawn_blocking(move || store.last_seq(&host))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status::store)?
    };
    let resync = !contract::continues(last, hello.sealed_seq, hello.acked_seq);
    if resync {
        tracing::warn!(
            %host,
            boot = %hello.boot_id,
            last,
            sealed = hello.sealed_seq,
            acked = hello.acked_seq,
            "the daemon's history does not continue the stored one (lost spool or store, or \
             another machine with this host id); asking for a resync after the last seq"
        );
        metrics.resync_requested(&host);
    }
    tracing::info!(%host, boot = %hello.boot_id, last, "daemon connected");
    let _connected = metrics.daemon_connected();
    if tx
        .send(response(sync_response::Msg::Resume(v1::Resume {
            last_seq: last,
            resync,
        })))
        .await
        .is_err()
    {
        return Ok(());
    }
    loop {
        let request = tokio::select! {
            request = requests.next() => request,
            () = claim.end.notified() => {
                return Err(status::ingest(IngestError::Replaced { host }));
            }
        };
        let Some(request) = request else {
            break;
        };
        let batch = match request?.msg {
            Some(sync_request::Msg::Batch(batch)) => batch,
            _ => {
                return Err(Status::invalid_argument(
                    "only batches may follow the Hello",
                ));
            }
        };
        let bytes = batch.wire_len();
        let batch = convert::batch_from_wire(batch).map_err(status::malformed)?;
        convert::check_batch_paths(&batch.delta, &trees).map_err(status::malformed)?;
        if batch.header.host_id != host {
            return Err(Status::invalid_argument(format!(
                "batch for host {} on the stream of host {host}",
                batch.header.host_id
            )));
        }
        let seq = batch.header.seq;
        let store = store.clone();
        let batch = Arc::new(batch);
        let stored = batch.clone();
        let (appended, took) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            store.append(&stored).map(|a| (a, t.elapsed()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status::store)?;
        metrics.batch_received(&host, bytes, took, appended == Appended::Stored);
        match appended {
            Appended::Stored => {
                tracing::debug!(%host, seq, "stored");
                // No subscriber is not an error.
                let _ = live.send(batch);
            }
            Appended::Duplicate => tracing::debug!(%host, seq, "duplicate acknowledged"),
        }
        if tx
            .send(response(sync_response::Msg::Ack(v1::Ack { seq })))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type SyncStream = Responses;

    async fn sync(
        &self,
        request: Request<Streaming<SyncRequest>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        // The TLS layer only lets a presented certificate through if the CA signed it.
        let allowed = if self.require_client_cert {
            let Some(leaf) = request.peer_certs().and_then(|c| c.first().cloned()) else {
                return Err(self.refuse(Status::unauthenticated(
                    "daemons must present a client certificate signed by the replayer's CA",
                )));
            };
            let hosts = certs::hosts_of(&leaf)
                .map_err(|e| self.refuse(status::ingest(IngestError::BadCertificate(e))))?;
            Some(hosts)
        } else {
            None
        };
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(status) = serve(me.clone(), allowed, requests, &tx).await {
                tracing::warn!(code = ?status.code(), "ingest stream ended: {}", status.message());
                let _ = tx.send(Err(me.refuse(status))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_live_stream_per_host_and_the_refusals_are_counted() {
        let (live, metrics) = (Arc::new(LiveStreams::default()), Metrics::default());
        let first = live.claim("web-1", "boot-a", &metrics).unwrap();
        // Other hosts are independent.
        let _other = live.claim("web-2", "boot-z", &metrics).unwrap();
        assert!(matches!(
            live.claim("web-1", "boot-b", &metrics),
            Err(IngestError::OtherBoot { .. })
        ));
        let second = live.claim("web-1", "boot-a", &metrics).unwrap();
        // The replaced stream's release leaves its successor's claim in place.
        drop(first);
        assert!(live.claim("web-1", "boot-b", &metrics).is_err());
        drop(second);
        let _third = live.claim("web-1", "boot-b", &metrics).unwrap();
        let text = metrics.render();
        assert!(text.contains(r#"safetytwin_replayer_streams_conflicting_total{host="web-1"} 2"#));
        assert!(text.contains(r#"safetytwin_replayer_streams_replaced_total{host="web-1"} 1"#));
    }
}

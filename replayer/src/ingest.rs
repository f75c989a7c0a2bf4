//! `Ingest.Sync`: the daemon's exactly-once stream. The stream opens with a Hello naming the
//! host; the replayer answers with the last seq it holds, then stores each batch (in one
//! transaction, see `store.rs`) before acknowledging it. A duplicate is acknowledged and
//! ignored; a gap or a malformed batch ends the stream with a precise status and changes nothing.

use std::{pin::Pin, sync::Arc, time::Instant};

use prost::Message;
use safetytwin_model::Batch;
use safetytwin_proto::{
    convert,
    v1::{self, SyncRequest, SyncResponse, ingest_server::Ingest, sync_request, sync_response},
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    metrics::Metrics,
    status,
    store::{Appended, Store},
};

/// The ingest service over a store.
#[derive(Clone)]
pub struct IngestService {
    store: Arc<Store>,
    live: broadcast::Sender<Arc<Batch>>,
    require_client_cert: bool,
    metrics: Arc<Metrics>,
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
async fn serve(
    store: Arc<Store>,
    live: broadcast::Sender<Arc<Batch>>,
    metrics: Arc<Metrics>,
    mut requests: Streaming<SyncRequest>,
    tx: &mpsc::Sender<Result<SyncResponse, Status>>,
) -> Result<(), Status> {
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
    let trees = convert::watched_from_wire(hello.watched).map_err(status::malformed_hello)?;
    let host = hello.host_id;
    let last = {
        let (store, host) = (store.clone(), host.clone());
        tokio::task::spawn_blocking(move || store.last_seq(&host))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status::store)?
    };
    tracing::info!(%host, boot = %hello.boot_id, last, "daemon connected");
    let _connected = metrics.daemon_connected();
    if tx
        .send(response(sync_response::Msg::Resume(v1::Resume {
            last_seq: last,
        })))
        .await
        .is_err()
    {
        return Ok(());
    }
    while let Some(request) = requests.next().await {
        let batch = match request?.msg {
            Some(sync_request::Msg::Batch(batch)) => batch,
            _ => {
                return Err(Status::invalid_argument(
                    "only batches may follow the Hello",
                ));
            }
        };
        let bytes = batch.encoded_len();
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
        if self.require_client_cert && request.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(self.refuse(Status::unauthenticated(
                "daemons must present a client certificate signed by the replayer's CA",
            )));
        }
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            let (store, live, metrics) = (me.store.clone(), me.live.clone(), me.metrics.clone());
            if let Err(status) = serve(store, live, metrics, requests, &tx).await {
                tracing::warn!(code = ?status.code(), "ingest stream ended: {}", status.message());
                let _ = tx.send(Err(me.refuse(status))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

//! The client half of `Ingest.Sync`: sends what the spool holds, in order, and drops each
//! batch from the spool once the replayer acknowledges it. Survives replayer outages of any
//! length (reconnecting with backoff) and daemon restarts (the spool is on disk): on every
//! (re)connect the replayer's `Resume` says what it already holds, and only the rest is sent.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    spool::{Spool, SpoolError},
    v1::{self, SyncRequest, ingest_client::IngestClient, sync_request, sync_response},
};

/// Where and as whom to send.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The replayer, e.g. `https://replayer:50051` (`http://` only without TLS).
    pub endpoint: String,
    /// This host.
    pub host_id: String,
    /// This boot.
    pub boot_id: String,
    /// The trees the daemon watches, declared in the Hello: the replayer refuses file paths
    /// outside them.
    pub watched: Vec<String>,
    /// Mutual TLS; `None` is plaintext.
    pub tls: Option<ClientTls>,
}

/// The daemon's side of mutual TLS, as PEM.
#[derive(Clone)]
pub struct ClientTls {
    /// The CA that signed the replayer's certificate.
    pub ca: Vec<u8>,
    /// The daemon's client certificate.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls { .. }")
    }
}

/// What the sender shares with the loop that cuts batches.
#[derive(Debug, Default)]
pub struct SenderLink {
    /// Woken after a batch is spooled.
    pub wake: Notify,
    /// Set when the replayer cannot take the spooled history (it lost it, or refused a batch):
    /// the next batch must be a resync.
    pub resync: AtomicBool,
    /// True while a session with the replayer is established (for metrics).
    pub connected: AtomicBool,
    /// Sessions retried after a failure or a closed stream (for metrics).
    pub reconnects: AtomicU64,
}

/// Why one session with the replayer ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the replayer closed the stream")]
    Closed,
}

/// Runs until `stop` turns true and everything spooled has been acknowledged (or the replayer is
/// unreachable then); reconnects with backoff in between.
pub async fn run(
    config: SenderConfig,
    spool: Arc<Mutex<Spool>>,
    link: Arc<SenderLink>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let ended = session(&config, &spool, &link, &mut stop, &mut backoff).await;
        link.connected.store(false, Ordering::Relaxed);
        match ended {
            Ok(()) => return,
            Err(e) => {
                if *stop.borrow() {
                    tracing::warn!("replayer unreachable at shutdown ({e}); batches stay spooled");
                    return;
                }
                tracing::warn!("replayer {}: {e}; retrying in {backoff:?}", config.endpoint);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                link.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn pending_after(spool: &Mutex<Spool>, after: u64) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
    spool.lock().expect("spool lock").pending_after(after)
}

async fn session(
    config: &SenderConfig,
    spool: &Mutex<Spool>,
    link: &SenderLink,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<(), SessionError> {
    let mut endpoint = Endpoint::from_shared(config.endpoint.clone())?;
    if let Some(tls) = &config.tls {
        endpoint = endpoint.tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca))
                .identity(Identity::from_pem(&tls.cert, &tls.key)),
        )?;
    }
    let mut client = IngestClient::new(endpoint.connect().await?)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(64);
    let hello = v1::Hello {
        host_id: config.host_id.clone(),
        boot_id: config.boot_id.clone(),
        watched: config.watched.clone(),
    };
    let _ = tx
        .send(SyncRequest {
            msg: Some(sync_request::Msg::Hello(hello)),
        })
        .await;
    let mut responses = client.sync(ReceiverStream::new(rx)).await?.into_inner();
    let last = match responses.message().await?.and_then(|r| r.msg) {
        Some(sync_response::Msg::Resume(r)) => r.last_seq,
        _ => return Err(SessionError::Closed),
    };
    *backoff = Duration::from_millis(100);
    link.connected.store(true, Ordering::Relaxed);
    {
        let mut spool = spool.lock().expect("spool lock");
        spool.ack(last)?;
        let pending = spool.pending_after(last)?;
        if pending.first().is_some_and(|(seq, _)| *seq > last + 1) {
            // The replayer lacks batches the spool no longer has (it lost its store, or the
            // spool overflowed): those pending cannot follow; restate the model instead.
            tracing::warn!(
                last,
                first = pending[0].0,
                "replayer history has a gap; resyncing"
            );
            spool.discard_through(pending.last().map(|(s, _)| *s).unwrap_or(last))?;
            link.resync.store(true, Ordering::SeqCst);
        }
    }
    tracing::info!(endpoint = %config.endpoint, last, "connected to replayer");
    let mut sent = last;
    loop {
        for (seq, payload) in pending_after(spool, sent)? {
            let batch = v1::DeltaBatch::decode(payload.as_slice())
                .map_err(|e| tonic::Status::internal(format!("spooled batch {seq}: {e}")))?;
            if tx
                .send(SyncRequest {
                    msg: Some(sync_request::Msg::Batch(batch)),
                })
                .await
                .is_err()
            {
                return Err(SessionError::Closed);
            }
            sent = seq;
        }
        let stopping = *stop.borrow();
        if stopping && spool.lock().expect("spool lock").acked() >= sent {
            return Ok(());
        }
        tokio::select! {
            _ = link.wake.notified() => {}
            _ = stop.changed(), if !stopping => {}
            _ = tokio::time::sleep(Duration::from_secs(3)), if stopping => {
                tracing::warn!("replayer did not acknowledge everything at shutdown; batches stay spooled");
                return Ok(());
            }
            response = responses.message() => match response {
                Ok(Some(v1::SyncResponse { msg: Some(sync_response::Msg::Ack(ack)) })) => {
                    spool.lock().expect("spool lock").ack(ack.seq)?;
                }
                Ok(_) => return Err(SessionError::Closed),
                Err(status) if status.code() == Code::InvalidArgument => {
                    // A batch the replayer can never take: drop what is pending and resync, or
                    // the same batch would be refused forever.
                    tracing::error!("replayer refused a batch: {}; resyncing", status.message());
                    let mut spool = spool.lock().expect("spool lock");
                    let newest = spool.pending_after(0)?.last().map(|(s, _)| *s).unwrap_or(0);
                    spool.discard_through(newest)?;
                    link.resync.store(true, Ordering::SeqCst);
                    return Err(status.into());
                }
                Err(status) => return Err(status.into()),
            },
        }
    }
}

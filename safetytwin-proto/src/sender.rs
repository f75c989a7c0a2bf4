//! The client half of `Ingest.Sync`: sends what the spool holds, in order, and drops each
//! batch from the spool once the replayer acknowledges it. Survives replayer outages of any
//! length (reconnecting with backoff) and daemon restarts (the spool is on disk): on every
//! (re)connect the replayer's `Resume` says what it already holds, and only the rest is sent.
//!
//! Only an ack the replayer sent for a batch it verified deletes a spooled batch: after a
//! reconnect the batches the replayer may already hold are resent and acked as identical
//! duplicates, never assumed. When the spooled history cannot follow the replayer's (the
//! replayer says so in `Resume`, or the spool has a hole), the spool is *rebased*: the newest
//! pending resync and what follows it are re-sealed from the replayer's last seq + 1, and
//! everything else is dropped (the model is then restated). A batch the replayer refuses for
//! good ([`contract::is_permanent`]) is given up on the same way, logged and counted, instead of
//! being resent forever. Nothing the replayer sends can make a seq wrap.

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
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::{
    contract,
    spool::{Pushed, Spool, SpoolError},
    v1::{self, SyncRequest, ingest_client::IngestClient, sync_request, sync_response},
};

/// Where and as whom to send.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The replayers, e.g. `https://replayer:50051` (`http://` only without TLS): any of them
    /// takes the batches (they share one history); the next is tried when one fails.
    pub endpoints: Vec<String>,
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
    /// Batches the replayer refused for good, given up on and restated (for metrics).
    pub refused: AtomicU64,
    /// Times the spool was rebased onto the replayer's history (for metrics).
    pub rebased: AtomicU64,
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
    #[error("the replayer broke the protocol: {0}")]
    Protocol(String),
    #[error("the spool lost batches after seq {0}; rebasing")]
    Hole(u64),
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
    if config.endpoints.is_empty() {
        tracing::error!("no replayer to send to; batches stay spooled");
        return;
    }
    // The replayer in use: kept while it answers, the next one after a failure.
    let mut at = 0;
    loop {
        let endpoint = &config.endpoints[at];
        let ended = session(&config, endpoint, &spool, &link, &mut stop, &mut backoff).await;
        link.connected.store(false, Ordering::Relaxed);
        match ended {
            Ok(()) => return,
            Err(e) => {
                if *stop.borrow() {
                    tracing::warn!("replayer unreachable at shutdown ({e}); batches stay spooled");
                    return;
                }
                at = (at + 1) % config.endpoints.len();
                tracing::warn!(
                    "replayer {endpoint}: {e}; trying {} in {backoff:?}",
                    config.endpoints[at]
                );
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

/// Whether the spooled records form one run without a hole from the last acked seq to the
/// last sealed one, so the spool can be sent as it is.
fn contiguous(spool: &mut Spool) -> Result<bool, SpoolError> {
    let pending = spool.pending_after(spool.acked())?;
    let mut expect = spool.acked();
    for (seq, _) in &pending {
        if Some(*seq) != expect.checked_add(1) {
            return Ok(false);
        }
        expect = *seq;
    }
    Ok(expect == spool.sealed())
}

/// Makes the spool continue the replayer's history at `base + 1`: the newest resync pending
/// after `after` and the records that follow it without a hole are re-sealed from `base + 1`;
/// everything else is dropped. Returns whether nothing was kept, so the model must be restated.
fn rebase(spool: &mut Spool, base: u64, after: u64) -> Result<bool, SpoolError> {
    let pending = spool.pending_after(after)?;
    let sealed = spool.sealed();
    let mut keep = None;
    // From the newest back: the run must reach the last sealed seq (no hole at the end either).
    let mut next = sealed.checked_add(1);
    for (i, (seq, payload)) in pending.iter().enumerate().rev() {
        if seq.checked_add(1) != next {
            break;
        }
        next = Some(*seq);
        if v1::DeltaBatch::decode(payload.as_slice()).is_ok_and(|b| b.resync) {
            keep = Some(i);
            break;
        }
    }
    spool.restart_after(base)?;
    let Some(from) = keep else {
        return Ok(true);
    };
    for (_, payload) in &pending[from..] {
        let Ok(mut batch) = v1::DeltaBatch::decode(payload.as_slice()) else {
            spool.restart_after(base)?;
            return Ok(true);
        };
        batch.seq = spool.next_seq();
        if spool.push(&batch.encode_to_vec())? == Pushed::Overflow {
            spool.restart_after(base)?;
            return Ok(true);
        }
    }
    Ok(false)
}

async fn session(
    config: &SenderConfig,
    url: &str,
    spool: &Mutex<Spool>,
    link: &SenderLink,
    stop: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<(), SessionError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())?;
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
    let hello = {
        let spool = spool.lock().expect("spool lock");
        v1::Hello {
            host_id: config.host_id.clone(),
            boot_id: config.boot_id.clone(),
            watched: config.watched.clone(),
            sealed_seq: spool.sealed(),
            acked_seq: spool.acked(),
        }
    };
    let _ = tx
        .send(SyncRequest {
            msg: Some(sync_request::Msg::Hello(hello)),
        })
        .await;
    let mut responses = client.sync(ReceiverStream::new(rx)).await?.into_inner();
    let resume = match responses.message().await?.and_then(|r| r.msg) {
        Some(sync_response::Msg::Resume(r)) => r,
        _ => return Err(SessionError::Closed),
    };
    let last = resume.last_seq;
    *backoff = Duration::from_millis(100);
    link.connected.store(true, Ordering::Relaxed);
    let mut sent = {
        let mut spool = spool.lock().expect("spool lock");
        let (acked, sealed) = (spool.acked(), spool.sealed());
        // Pending batches the replayer already holds are resent, not dropped here: it acks
        // each one only if it is the batch it stored, so a history that merely shares seqs
        // with the stored one (a lost spool) is caught rather than deleted unsent.
        if resume.resync || !contract::continues(last, sealed, acked) || !contiguous(&mut spool)? {
            let restate = rebase(&mut spool, last, 0)?;
            tracing::warn!(
                last,
                sealed,
                acked,
                replayer_asked = resume.resync,
                restate,
                "the spooled history does not continue the replayer's; continuing after its last seq"
            );
            link.rebased.fetch_add(1, Ordering::Relaxed);
            if restate {
                link.resync.store(true, Ordering::SeqCst);
            }
        }
        spool.acked()
    };
    tracing::info!(endpoint = %url, last, "connected to replayer");
    loop {
        for (seq, payload) in pending_after(spool, sent)? {
            if Some(seq) != sent.checked_add(1) {
                // A record was quarantined or dropped: what follows cannot be sent as it is.
                return Err(SessionError::Hole(sent));
            }
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
                    let mut spool = spool.lock().expect("spool lock");
                    // Acks come in order, one per batch sent: anything else would delete
                    // batches the replayer never verified.
                    if ack.seq <= spool.acked() || ack.seq > sent {
                        return Err(SessionError::Protocol(format!(
                            "ack {} outside the batches in flight ({}, {sent}]",
                            ack.seq,
                            spool.acked()
                        )));
                    }
                    spool.ack(ack.seq)?;
                }
                Ok(_) => return Err(SessionError::Closed),
                Err(status) if contract::is_permanent(status.code()) => {
                    // The first batch not acked is the one refused (the replayer acks in order
                    // and stops at the first it refuses). Resending it would be refused again:
                    // give it up, keep what can still follow, restate the rest.
                    let mut spool = spool.lock().expect("spool lock");
                    let acked = spool.acked();
                    let refused = acked.saturating_add(1);
                    let restate = rebase(&mut spool, last.max(acked), refused)?;
                    link.refused.fetch_add(1, Ordering::Relaxed);
                    if restate {
                        link.resync.store(true, Ordering::SeqCst);
                    }
                    tracing::error!(
                        seq = refused,
                        code = ?status.code(),
                        restate,
                        "the replayer refused a batch for good, it is not resent: {}",
                        status.message()
                    );
                    return Err(status.into());
                }
                Err(status) => return Err(status.into()),
            },
        }
    }
}

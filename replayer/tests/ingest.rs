//! `Ingest.Sync` over real gRPC on loopback: every documented status for malformed, oversized,
//! out-of-order and duplicate batches, the store unchanged by each, and the server still up.

use std::{net::SocketAddr, sync::Arc};

use prost::Message;
use safetytwin_model::{Batch, BatchHeader, Content, DeltaBatch, FileDelta, FileKind, FileState};
use safetytwin_proto::{
    convert,
    v1::{self, SyncRequest, ingest_client::IngestClient, sync_request, sync_response},
};
use safetytwin_replayer::{server::Server, store::Store};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Code, Streaming};

fn batch(host: &str, seq: u64, text: &str) -> v1::DeltaBatch {
    convert::batch_to_wire(&Batch {
        header: BatchHeader {
            host_id: host.into(),
            boot_id: "boot".into(),
            seq,
            ..BatchHeader::default()
        },
        delta: DeltaBatch {
            files: vec![FileDelta::Upsert {
                path: "/etc/app.conf".into(),
                state: FileState {
                    kind: FileKind::Regular,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    size: text.len() as u64,
                    sha256: Some("0".repeat(64)),
                    content: Content::Text(text.into()),
                    link_target: None,
                },
            }],
            ..DeltaBatch::default()
        },
    })
}

/// Awaits `f`, failing the test instead of hanging it.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), f)
        .await
        .expect("no answer within 10 s")
}

struct Stream {
    tx: mpsc::Sender<SyncRequest>,
    rx: Streaming<v1::SyncResponse>,
}

impl Stream {
    async fn open(addr: SocketAddr, host: &str) -> (Stream, u64) {
        let mut client = IngestClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(SyncRequest {
            msg: Some(sync_request::Msg::Hello(v1::Hello {
                host_id: host.into(),
                boot_id: "boot".into(),
            })),
        })
        .await
        .unwrap();
        let mut rx = within(client.sync(ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        let Some(sync_response::Msg::Resume(resume)) =
            within(rx.next()).await.unwrap().unwrap().msg
        else {
            panic!("no Resume");
        };
        (Stream { tx, rx }, resume.last_seq)
    }

    async fn send(&mut self, b: v1::DeltaBatch) -> Result<u64, Code> {
        self.tx
            .send(SyncRequest {
                msg: Some(sync_request::Msg::Batch(b)),
            })
            .await
            .map_err(|_| Code::Unavailable)?;
        match within(self.rx.next()).await {
            Some(Ok(v1::SyncResponse {
                msg: Some(sync_response::Msg::Ack(ack)),
            })) => Ok(ack.seq),
            Some(Err(status)) => Err(status.code()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_bad_batch_gets_its_status_and_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("st-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(Store::open(dir.join("history.redb")).unwrap());
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), store.clone())
        .await
        .unwrap()
        .max_message_bytes(1 << 20);
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let (mut s, last) = Stream::open(addr, "web-1").await;
    assert_eq!(last, 0);
    assert_eq!(s.send(batch("web-1", 1, "one")).await, Ok(1));
    assert_eq!(s.send(batch("web-1", 2, "two")).await, Ok(2));
    // Duplicate: acknowledged, ignored.
    assert_eq!(s.send(batch("web-1", 2, "changed")).await, Ok(2));
    // Out of order: FAILED_PRECONDITION, and the stream ends.
    assert_eq!(
        s.send(batch("web-1", 4, "four")).await,
        Err(Code::FailedPrecondition)
    );
    let snapshot = || {
        (
            store.last_seq("web-1").unwrap(),
            store.state("web-1").unwrap(),
            store.batch("web-1", 2).unwrap(),
        )
    };
    let before = snapshot();
    assert_eq!(before.0, 2);

    // The server is still up: a new stream resumes after seq 2.
    let (mut s, last) = Stream::open(addr, "web-1").await;
    assert_eq!(last, 2);
    let mut malformed = batch("web-1", 3, "x");
    malformed.files[0].path = "relative/path".into();
    assert_eq!(s.send(malformed).await, Err(Code::InvalidArgument));

    let (mut s, _) = Stream::open(addr, "web-1").await;
    assert_eq!(
        s.send(batch("other-host", 3, "x")).await,
        Err(Code::InvalidArgument)
    );

    let (mut s, _) = Stream::open(addr, "web-1").await;
    let oversized = batch("web-1", 3, &"x".repeat(2 << 20));
    assert!(oversized.encoded_len() > 1 << 20);
    assert_eq!(s.send(oversized).await, Err(Code::OutOfRange));

    let mut client = IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(SyncRequest {
        msg: Some(sync_request::Msg::Batch(batch("web-1", 3, "x"))),
    })
    .await
    .unwrap();
    let mut responses = within(client.sync(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        within(responses.next()).await.unwrap().unwrap_err().code(),
        Code::InvalidArgument,
        "a stream must open with a Hello"
    );

    assert_eq!(snapshot(), before, "a refused batch changed the store");
    // And the next good batch is stored.
    let (mut s, _) = Stream::open(addr, "web-1").await;
    assert_eq!(s.send(batch("web-1", 3, "three")).await, Ok(3));

    // A graceful shutdown waits for open streams: end ours first.
    drop((s, responses, client, tx));
    stop.send(()).unwrap();
    within(handle).await.unwrap().unwrap();
}

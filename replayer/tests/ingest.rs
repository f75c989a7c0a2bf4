//! `Ingest.Sync` over real gRPC on loopback: every documented status for malformed, oversized,
//! out-of-order and duplicate batches, the store unchanged by each, and the server still up.

mod common;

use common::{Running, Stream, batch, within};
use prost::Message;
use safetytwin_proto::v1::{SyncRequest, ingest_client::IngestClient, sync_request};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::Code;

#[tokio::test]
async fn every_bad_batch_gets_its_status_and_changes_nothing() {
    let server = Running::start("ingest", 1 << 20).await;
    let (addr, store) = (server.addr, server.store.clone());

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
    server.stop().await;
}

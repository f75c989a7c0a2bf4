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

/// Opens a stream whose Hello declares `watched`; the code it ends with before any Resume.
async fn hello_refused(addr: std::net::SocketAddr, watched: Vec<String>) -> Code {
    let mut client = IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(SyncRequest {
        msg: Some(sync_request::Msg::Hello(safetytwin_proto::v1::Hello {
            host_id: "web-1".into(),
            boot_id: "boot".into(),
            watched,
        })),
    })
    .await
    .unwrap();
    let mut responses = within(client.sync(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    within(responses.next())
        .await
        .unwrap()
        .expect_err("a Resume for a bad Hello")
        .code()
}

/// Paths that could reach an export directory or the twin through another spelling, or lie
/// outside what the daemon watches, never enter the store.
#[tokio::test]
async fn confine_paths_not_normalized_or_outside_the_declared_trees_are_refused() {
    let server = Running::start("ingest-confine", 1 << 20).await;
    let (addr, store) = (server.addr, server.store.clone());

    // The trees themselves: declared, normalized, bounded in number.
    for watched in [
        vec![],
        vec!["etc".to_owned()],
        vec!["/etc/".to_owned()],
        vec!["/etc/../root".to_owned()],
        vec!["/etc".to_owned(); safetytwin_proto::convert::MAX_WATCHED + 1],
    ] {
        assert_eq!(
            hello_refused(addr, watched.clone()).await,
            Code::InvalidArgument,
            "{watched:?}"
        );
    }

    let (mut s, _) =
        Stream::open_watching(addr, "web-1", &["/etc", "/usr/lib/systemd/system"]).await;
    assert_eq!(s.send(batch("web-1", 1, "one")).await, Ok(1));
    // A graceful shutdown waits for open streams; the refused ones below end by themselves.
    drop(s);
    let snapshot = || {
        (
            store.last_seq("web-1").unwrap(),
            store.state("web-1").unwrap(),
        )
    };
    let before = snapshot();
    let long = format!("/etc/{}", "a/".repeat(2100));
    for path in [
        "/etc//passwd",
        "/etc/./passwd",
        "/etc/../root/.ssh/authorized_keys",
        "/etc/",
        "etc/passwd",
        "/etc/a\0b",
        "/etc/\x1b]0;pwned\x07",
        "/etc/a\nb",
        long.as_str(),
        "/root/.ssh/authorized_keys",
        "/etcetera/x",
        "/usr/lib/systemd/systemd-x",
    ] {
        let (mut s, _) =
            Stream::open_watching(addr, "web-1", &["/etc", "/usr/lib/systemd/system"]).await;
        let mut bad = batch("web-1", 2, "x");
        bad.files[0].path = path.to_owned();
        assert_eq!(
            s.send(bad).await,
            Err(Code::InvalidArgument),
            "{:?}",
            &path[..path.len().min(40)]
        );
    }
    // A removal counts as much as a write; a link target may not hide terminal controls.
    let (mut s, _) = Stream::open_watching(addr, "web-1", &["/etc"]).await;
    let mut bad = batch("web-1", 2, "x");
    bad.files[0].state = None;
    bad.files[0].path = "/var/lib/x".into();
    assert_eq!(s.send(bad).await, Err(Code::InvalidArgument));
    let (mut s, _) = Stream::open_watching(addr, "web-1", &["/etc"]).await;
    let mut bad = batch("web-1", 2, "x");
    let state = bad.files[0].state.as_mut().unwrap();
    state.kind = safetytwin_proto::v1::FileKind::Symlink as i32;
    state.content_state = safetytwin_proto::v1::ContentState::None as i32;
    state.text.clear();
    state.link_target = Some("/etc/x\x1b[2J".into());
    assert_eq!(s.send(bad).await, Err(Code::InvalidArgument));

    assert_eq!(snapshot(), before, "a refused batch changed the store");
    let (mut s, _) = Stream::open_watching(addr, "web-1", &["/etc"]).await;
    assert_eq!(s.send(batch("web-1", 2, "two")).await, Ok(2));
    drop(s);
    server.stop().await;
}

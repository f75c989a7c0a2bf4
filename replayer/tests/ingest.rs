//! `Ingest.Sync` over real gRPC on loopback: every documented status for malformed, oversized,
//! out-of-order and duplicate batches, the store unchanged by each, and the server still up;
//! then the attacks on sequence integrity (a resync far ahead, a different batch under a stored
//! seq, seq u64::MAX, a cloned host id, a daemon that lost its spool, a corrupt spool record),
//! driven through the real service and, where the daemon's side matters, the real sender; and
//! a resync over the message limit, sent in parts.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Running, Stream, batch, within};
use prost::Message;
use safetytwin_model::fixtures;
use safetytwin_proto::{
    convert,
    sender::SenderLink,
    spool::Spool,
    v1::{self, SyncRequest, ingest_client::IngestClient, sync_request},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{
    StreamExt,
    wrappers::{ReceiverStream, TcpListenerStream},
};
use tonic::{Code, Status};

#[tokio::test]
async fn every_bad_batch_gets_its_status_and_changes_nothing() {
    let server = Running::start("ingest", 1 << 20).await;
    let (addr, store) = (server.addr, server.store.clone());

    let (mut s, last) = Stream::open(addr, "web-1").await;
    assert_eq!(last, 0);
    assert_eq!(s.send(batch("web-1", 1, "one")).await, Ok(1));
    assert_eq!(s.send(batch("web-1", 2, "two")).await, Ok(2));
    // Duplicate: acknowledged, ignored.
    assert_eq!(s.send(batch("web-1", 2, "two")).await, Ok(2));
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
            ..safetytwin_proto::v1::Hello::default()
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

/// A batch that restates the whole model.
fn resync(host: &str, seq: u64, text: &str) -> v1::DeltaBatch {
    v1::DeltaBatch {
        resync: true,
        ..batch(host, seq, text)
    }
}

fn hello(host: &str, boot: &str) -> v1::Hello {
    v1::Hello {
        host_id: host.into(),
        boot_id: boot.into(),
        watched: vec!["/".into()],
        ..v1::Hello::default()
    }
}

/// A host id longer than a certificate may name is refused at the Hello, whatever the
/// transport: it would key every table and, on PostgreSQL, overflow the notification that
/// wakes the other replayers (8,000 bytes), failing every append. The longest allowed works.
#[tokio::test]
async fn a_host_id_over_253_bytes_is_refused_at_the_hello() {
    let server = Running::start("ingest-host-id", 1 << 20).await;
    let long = "h".repeat(254);
    assert!(matches!(
        Stream::open_with(server.addr, hello(&long, "boot")).await,
        Err(Code::InvalidArgument)
    ));
    let huge = "h".repeat(100_000);
    assert!(matches!(
        Stream::open_with(server.addr, hello(&huge, "boot")).await,
        Err(Code::InvalidArgument)
    ));
    let longest = "h".repeat(253);
    let (mut s, _) = Stream::open_with(server.addr, hello(&longest, "boot"))
        .await
        .unwrap();
    assert_eq!(s.send(batch(&longest, 1, "one")).await, Ok(1));
    assert_eq!(server.store.hosts().unwrap(), [(longest.clone(), 1)]);
    drop(s);
    server.stop().await;
}

#[tokio::test]
async fn sequence_attacks_are_refused_and_change_nothing() {
    let server = Running::start("ingest-seq", 1 << 20).await;
    let (addr, store) = (server.addr, server.store.clone());
    let (mut s, _) = Stream::open(addr, "web-1").await;
    assert_eq!(s.send(batch("web-1", 1, "one")).await, Ok(1));
    let before = (
        store.last_seq("web-1").unwrap(),
        store.state("web-1").unwrap(),
    );

    // A resync far ahead is not stored: the live daemon's next batches would be "duplicates".
    assert_eq!(
        s.send(resync("web-1", 1 << 62, "far")).await,
        Err(Code::FailedPrecondition)
    );
    let (mut s, _) = Stream::open(addr, "web-1").await;
    // Seq u64::MAX: refused like any gap, nothing wraps, the server stays up.
    assert_eq!(
        s.send(batch("web-1", u64::MAX, "max")).await,
        Err(Code::FailedPrecondition)
    );
    let (mut s, _) = Stream::open(addr, "web-1").await;
    // Seq 0 does not exist.
    assert_eq!(
        s.send(batch("web-1", 0, "zero")).await,
        Err(Code::InvalidArgument)
    );
    let (mut s, _) = Stream::open(addr, "web-1").await;
    // A stored seq with different content: another history, refused.
    assert_eq!(
        s.send(batch("web-1", 1, "not one")).await,
        Err(Code::AlreadyExists)
    );
    assert_eq!(
        (
            store.last_seq("web-1").unwrap(),
            store.state("web-1").unwrap()
        ),
        before,
        "a refused batch changed the store"
    );
    // The live daemon's history goes on: the identical duplicate is acked, the next is stored.
    let (mut s, _) = Stream::open(addr, "web-1").await;
    assert_eq!(s.send(batch("web-1", 1, "one")).await, Ok(1));
    assert_eq!(s.send(batch("web-1", 2, "two")).await, Ok(2));
    assert_eq!(store.last_seq("web-1").unwrap(), 2);
    drop(s);
    server.stop().await;
}

#[tokio::test]
async fn a_clone_is_refused_a_reconnect_replaces() {
    let server = Running::start("ingest-clone", 1 << 20).await;
    let addr = server.addr;
    let (mut first, _) = Stream::open_with(addr, hello("web-1", "boot-a"))
        .await
        .unwrap();
    assert_eq!(first.send(batch("web-1", 1, "one")).await, Ok(1));
    // Another boot with the same host id while the first streams: a clone.
    assert_eq!(
        Stream::open_with(addr, hello("web-1", "boot-b"))
            .await
            .err(),
        Some(Code::Aborted)
    );
    // The first is untouched by the refusal.
    assert_eq!(first.send(batch("web-1", 2, "two")).await, Ok(2));
    // The same boot again: a reconnect whose old stream the server still holds. It wins.
    let (mut second, resume) = Stream::open_with(addr, hello("web-1", "boot-a"))
        .await
        .unwrap();
    assert_eq!(resume.last_seq, 2);
    assert_eq!(
        first.ended().await,
        Some(Code::Aborted),
        "the old stream is ended"
    );
    assert_eq!(second.send(batch("web-1", 3, "three")).await, Ok(3));
    // Once the live stream is gone, another boot (a rebooted host) is welcome.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut third, _) = loop {
        match Stream::open_with(addr, hello("web-1", "boot-b")).await {
            Ok(s) => break s,
            Err(code) => {
                assert_eq!(code, Code::Aborted);
                assert!(
                    Instant::now() < deadline,
                    "the closed stream was never released"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(third.send(batch("web-1", 4, "four")).await, Ok(4));
    drop((first, third));
    server.stop().await;
}

/// A daemon's sender for web-1 on `spool`, with its stop switch.
fn start_sender(
    addr: std::net::SocketAddr,
    spool: &Arc<Mutex<Spool>>,
) -> (
    Arc<SenderLink>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = watch::channel(false);
    let (link, task) =
        common::start_sender(vec![format!("http://{addr}")], "web-1", spool, stopped);
    (link, stop, task)
}

fn push(spool: &Mutex<Spool>, b: impl FnOnce(u64) -> v1::DeltaBatch) -> u64 {
    let mut spool = spool.lock().unwrap();
    let seq = spool.next_seq();
    spool.push(&b(seq).encode_to_vec()).unwrap();
    seq
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn text(store: &safetytwin_store::Store) -> safetytwin_model::Content {
    store.state("web-1").unwrap().unwrap().files["/etc/app.conf"]
        .content
        .clone()
}

#[tokio::test]
async fn a_daemon_that_lost_its_spool_is_resynced_after_the_stored_history() {
    let server = Running::start("ingest-lost", 1 << 20).await;
    let (addr, store) = (server.addr, server.store.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spools");

    // A first life: three batches stored and acknowledged.
    let spool = Arc::new(Mutex::new(Spool::open(dir.join("a"), 1 << 20).unwrap()));
    let (link, stop, task) = start_sender(addr, &spool);
    for n in 0..3 {
        push(&spool, |seq| {
            if n == 0 {
                resync("web-1", seq, "old")
            } else {
                batch("web-1", seq, "old")
            }
        });
        link.wake.notify_one();
    }
    until("3 acked", || spool.lock().unwrap().acked() == 3).await;
    stop.send(true).unwrap();
    within(task).await.unwrap();

    // The spool is lost; the daemon starts while the replayer is down, seals its resync and a
    // change (seqs 1 and 2 again), then the replayer comes back.
    let spool = Arc::new(Mutex::new(Spool::open(dir.join("b"), 1 << 20).unwrap()));
    push(&spool, |seq| resync("web-1", seq, "new"));
    push(&spool, |seq| batch("web-1", seq, "newer"));
    let (link, stop, task) = start_sender(addr, &spool);
    until("the resync is stored", || {
        store.last_seq("web-1").unwrap() == 5
    })
    .await;
    let restated = store.batch("web-1", 4).unwrap().unwrap();
    assert!(
        restated.header.resync,
        "the resync was re-sealed after the stored seq 3"
    );
    assert_eq!(
        text(&store),
        safetytwin_model::Content::Text("newer".into())
    );
    until("acked", || spool.lock().unwrap().acked() == 5).await;
    assert_eq!(link.rebased.load(std::sync::atomic::Ordering::Relaxed), 1);
    stop.send(true).unwrap();
    within(task).await.unwrap();

    // A lost spool that sealed as many seqs as the store holds passes the Hello check; its
    // resent batch 1 differs from the stored one, so it is refused, not acked away.
    let spool = Arc::new(Mutex::new(Spool::open(dir.join("c"), 1 << 20).unwrap()));
    for _ in 0..5 {
        push(&spool, |seq| resync("web-1", seq, "third"));
    }
    let (link, stop, task) = start_sender(addr, &spool);
    until("the last resync is stored", || {
        store.last_seq("web-1").unwrap() == 6
    })
    .await;
    assert!(store.batch("web-1", 6).unwrap().unwrap().header.resync);
    assert_eq!(
        text(&store),
        safetytwin_model::Content::Text("third".into())
    );
    assert_eq!(link.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    stop.send(true).unwrap();
    within(task).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_corrupt_spool_record_is_quarantined_and_the_sender_carries_on() {
    let server = Running::start("ingest-corrupt", 1 << 20).await;
    let (addr, store) = (server.addr, server.store.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let spool = Arc::new(Mutex::new(Spool::open(&dir, 1 << 20).unwrap()));
    push(&spool, |seq| resync("web-1", seq, "one"));
    push(&spool, |seq| batch("web-1", seq, "two"));
    push(&spool, |seq| batch("web-1", seq, "three"));
    let record = dir.join(format!("{:020}.batch", 2));
    let mut bytes = std::fs::read(&record).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&record, bytes).unwrap();

    let (link, stop, task) = start_sender(addr, &spool);
    // 3 cannot follow the lost 2, and no resync follows the hole: the daemon must restate.
    until("a resync is asked for", || {
        link.resync.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    assert_eq!(spool.lock().unwrap().quarantined(), 1);
    assert_eq!(
        std::fs::read_dir(dir.join("quarantine")).unwrap().count(),
        1
    );
    // What `run` does next: a resync.
    link.resync
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let seq = push(&spool, |seq| resync("web-1", seq, "restated"));
    link.wake.notify_one();
    until("the resync is stored", || {
        store.last_seq("web-1").unwrap() == seq
    })
    .await;
    assert_eq!(
        text(&store),
        safetytwin_model::Content::Text("restated".into())
    );
    assert!(!task.is_finished(), "the sender stopped");
    stop.send(true).unwrap();
    within(task).await.unwrap();
    server.stop().await;
}

/// A replayer that lies to the daemon: resumes after `resume`, acks every batch as `ack`.
struct Liar {
    resume: u64,
    ack: Option<u64>,
}

#[tonic::async_trait]
impl v1::ingest_server::Ingest for Liar {
    type SyncStream = ReceiverStream<Result<v1::SyncResponse, Status>>;

    async fn sync(
        &self,
        request: tonic::Request<tonic::Streaming<SyncRequest>>,
    ) -> Result<tonic::Response<Self::SyncStream>, Status> {
        let (resume, ack) = (self.resume, self.ack);
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let say = |msg| v1::SyncResponse { msg: Some(msg) };
            let _ = tx
                .send(Ok(say(v1::sync_response::Msg::Resume(v1::Resume {
                    last_seq: resume,
                    resync: false,
                }))))
                .await;
            while let Some(Ok(_)) = requests.next().await {
                if let Some(seq) = ack {
                    let _ = tx
                        .send(Ok(say(v1::sync_response::Msg::Ack(v1::Ack { seq }))))
                        .await;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test]
async fn a_lying_replayer_cannot_make_the_sender_panic_or_drop_batches() {
    for (name, liar) in [
        (
            "resume-max",
            Liar {
                resume: u64::MAX,
                ack: None,
            },
        ),
        (
            "ack-max",
            Liar {
                resume: 0,
                ack: Some(u64::MAX),
            },
        ),
        (
            "ack-unsent",
            Liar {
                resume: 0,
                ack: Some(7),
            },
        ),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(v1::ingest_server::IngestServer::new(liar))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let spool = Arc::new(Mutex::new(Spool::open(&dir, 1 << 20).unwrap()));
        push(&spool, |seq| resync("web-1", seq, "one"));
        push(&spool, |seq| batch("web-1", seq, "two"));
        let (link, stop, task) = start_sender(addr, &spool);
        until("the sender gave up a session", || {
            link.reconnects.load(std::sync::atomic::Ordering::Relaxed) >= 2
        })
        .await;
        assert!(!task.is_finished(), "{name}: the sender died");
        {
            let mut spool = spool.lock().unwrap();
            assert_eq!(spool.acked(), 0, "{name}");
            assert_eq!(
                spool.pending_after(0).unwrap().len(),
                2,
                "{name}: batches were dropped"
            );
        }
        stop.send(true).unwrap();
        within(task).await.unwrap();
        server.abort();
    }
}

#[tokio::test]
async fn a_batch_over_the_message_limit_is_given_up_once_not_resent_forever() {
    let server = Running::start("ingest-oversized", 1 << 20).await;
    let (addr, store) = (server.addr, server.store.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let spool = Arc::new(Mutex::new(Spool::open(&dir, 16 << 20).unwrap()));
    push(&spool, |seq| resync("web-1", seq, "one"));
    push(&spool, |seq| batch("web-1", seq, &"x".repeat(2 << 20)));
    push(&spool, |seq| batch("web-1", seq, "three"));
    let (link, stop, task) = start_sender(addr, &spool);
    until("a resync is asked for", || {
        link.resync.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    let refused = || link.refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused(), 1);
    assert_eq!(store.last_seq("web-1").unwrap(), 1);
    {
        let mut spool = spool.lock().unwrap();
        assert!(
            spool.pending_after(0).unwrap().is_empty(),
            "the batch is still spooled"
        );
        assert_eq!(
            spool.next_seq(),
            2,
            "the next batch continues the stored history"
        );
    }
    link.resync
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let seq = push(&spool, |seq| resync("web-1", seq, "restated"));
    link.wake.notify_one();
    until("the resync is stored", || {
        store.last_seq("web-1").unwrap() == seq
    })
    .await;
    // Given up once, never resent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refused(), 1);
    stop.send(true).unwrap();
    within(task).await.unwrap();
    server.stop().await;
}

/// A host whose state is larger than the replayer's message limit: its resync, cut into parts
/// as the daemon's `run` cuts it, is stored whole. Sent as one message it was refused
/// (OUT_OF_RANGE), given up, restated and refused again, forever.
#[tokio::test]
async fn a_resync_over_the_message_limit_is_stored_in_parts() {
    const LIMIT: usize = 1 << 20;
    const BUDGET: usize = 512 << 10;
    let server = Running::start("ingest-parts", LIMIT).await;
    let (addr, store) = (server.addr, server.store.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let spool = Arc::new(Mutex::new(Spool::open(&dir, 256 << 20).unwrap()));

    // 2,048 files of 4 KiB: over 8 MiB restated, eight times the limit.
    let file = |i: usize| {
        fixtures::upsert(
            &format!("/etc/big/{i:05}.conf"),
            fixtures::text(&format!("{i:4095}\n")),
        )
    };
    let delta = safetytwin_model::DeltaBatch {
        files: (0..2048).map(file).collect(),
        ..Default::default()
    };
    let mut whole = fixtures::batch("web-1", 0, delta);
    whole.header.resync = true;
    let started = Instant::now();
    let count = {
        let mut spool = spool.lock().unwrap();
        whole.header.seq = spool.next_seq();
        let size = convert::batch_to_wire(&whole).encoded_len();
        assert!(size > 8 * LIMIT, "{size} bytes");
        let parts = convert::batch_to_wire_parts(&whole, BUDGET);
        assert!(parts.iter().all(|p| p.encoded_len() <= BUDGET));
        let pushed = spool.push_parts(parts.iter().map(Message::encode_to_vec));
        assert_eq!(pushed.unwrap(), safetytwin_proto::spool::Pushed::Stored);
        eprintln!(
            "a resync of {:.1} MiB in {} parts of at most {} KiB",
            size as f64 / (1 << 20) as f64,
            parts.len(),
            BUDGET >> 10
        );
        parts.len() as u64
    };
    assert!(count > 8);
    let (link, stop, task) = start_sender(addr, &spool);
    until("every part is stored and acknowledged", || {
        spool.lock().unwrap().acked() == count
    })
    .await;
    eprintln!("stored in {:?}", started.elapsed());
    let refused = link.refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 0, "a part was refused");
    assert_eq!(store.last_seq("web-1").unwrap(), count);
    assert_eq!(store.complete_seq("web-1").unwrap(), count);
    let mut expected = safetytwin_model::HostModel::default();
    expected.apply_batch(&whole.delta);
    assert!(
        store.state("web-1").unwrap() == Some(expected),
        "the stored state is not the whole model"
    );
    // Each part is a batch of the history; only the first restates from nothing.
    let first = store.batch("web-1", 1).unwrap().unwrap();
    let last = store.batch("web-1", count).unwrap().unwrap();
    assert!(first.header.resync && first.header.more);
    assert!(!last.header.resync && !last.header.more);
    stop.send(true).unwrap();
    within(task).await.unwrap();
    server.stop().await;
}

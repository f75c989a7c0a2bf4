//! Bounded resources (issue 11, class 5), each tried as the attack: a subscriber that never
//! reads, idle connections that never handshake, more connections than the cap, and a state
//! larger than the message limit.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{Running, Stream, Tls, batch, within};
use safetytwin_client::Client;
use safetytwin_model::{Content, DeltaBatch, FileDelta, FileKind, FileState, fixtures};
use safetytwin_proto::{
    convert,
    v1::{self, twin_client::TwinClient},
};
use safetytwin_services::{listener::Limits, server::Security};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_stream::StreamExt;
use tonic::Code;

/// A subscriber that never reads, driven through the service itself: the live batches are
/// taken off the broadcast ring at once (none stays pinned there for it), at most the budget
/// waits in its queue, and the first thing it sees when it reads is RESOURCE_EXHAUSTED.
#[tokio::test]
async fn a_stalled_subscriber_is_cut_off_and_pins_no_batch() {
    use std::sync::Arc;

    use safetytwin_proto::v1::twin_server::Twin;
    use safetytwin_services::twin::{Queries, TwinService};
    use safetytwin_store::Store;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(Store::open(dir.join("history.redb")).unwrap());
    let (live, _) = tokio::sync::broadcast::channel(1024);
    let service = TwinService::new(Queries::new(store, None), live.clone());
    let mut stream = service
        .subscribe(tonic::Request::new(v1::SubscribeRequest::default()))
        .await
        .unwrap()
        .into_inner();
    within(async {
        while live.receiver_count() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let text = "x".repeat(100_000);
    let batches: Vec<_> = (1..=200)
        .map(|seq| Arc::new(convert::batch_from_wire(batch("web-1", seq, &text)).unwrap()))
        .collect();
    for b in &batches {
        live.send(b.clone()).unwrap();
    }
    within(async {
        while batches.iter().any(|b| Arc::strong_count(b) > 1) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let first = within(stream.next()).await.unwrap();
    assert_eq!(first.unwrap_err().code(), Code::ResourceExhausted);
    assert!(within(stream.next()).await.is_none());
}

/// The same over real gRPC: a client that subscribes and does not read while 200 batches of
/// 100 KB are stored gets what the connection's windows and the budget held, then
/// RESOURCE_EXHAUSTED; the daemon's stream is not slowed down by it.
#[tokio::test]
async fn a_subscriber_that_never_reads_gets_resource_exhausted() {
    let server = Running::start("stalled", 1 << 20).await;
    let addr = server.addr;
    let mut twin = TwinClient::connect(format!("http://{addr}")).await.unwrap();
    let mut stalled = twin
        .subscribe(v1::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (mut ingest, _) = Stream::open(addr, "web-1").await;
    let text = "x".repeat(100_000);
    for seq in 1..=200 {
        assert_eq!(ingest.send(batch("web-1", seq, &text)).await, Ok(seq));
    }
    let mut received = 0;
    let code = loop {
        match within(stalled.next()).await {
            Some(Ok(b)) => {
                received += 1;
                assert_eq!(b.seq, received);
            }
            Some(Err(status)) => break status.code(),
            None => panic!("the stream ended without an error after {received} batches"),
        }
    };
    assert_eq!(code, Code::ResourceExhausted);
    assert!(received < 200, "received {received}");
    eprintln!("a stalled subscriber got {received} of 200 batches before RESOURCE_EXHAUSTED");
    drop((stalled, ingest, twin));
    server.stop().await;
}

/// Opens `n` TCP connections to `addr` that never send a byte.
async fn idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(TcpStream::connect(addr).await.unwrap());
    }
    all
}

/// How long until the server closes `conn` (EOF or reset), failing past `limit`.
async fn closed_after(conn: &mut TcpStream, started: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

/// 200 idle connections on the gRPC listener and 50 on the HTTP one, over TLS: a real client
/// gets through meanwhile, and each idle one is closed once the handshake timeout is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_that_never_handshake_are_closed_after_the_timeout() {
    let tls = Tls::new("idle-tls");
    // Long enough that a real client's handshake fits in it while the other tests of this
    // binary load both cores; the point is that it is served before any idle one is closed.
    let timeout = Duration::from_secs(2);
    let limits = Limits {
        max_connections: 1024,
        handshake_timeout: timeout,
    };
    let server = Running::start_limited("idle", tls.security(), limits).await;
    let started = Instant::now();
    let mut grpc = idle(server.addr, 200).await;
    let mut http = idle(server.http.unwrap(), 50).await;

    let url = format!("https://localhost:{}", server.addr.port());
    let mut client = Client::connect(&url, Some(&tls.files.ca), Some(&tls.files.token))
        .await
        .unwrap();
    assert_eq!(within(client.status()).await.unwrap().hosts, 0);
    assert!(started.elapsed() < timeout, "the real client waited");

    for conn in grpc.iter_mut().chain(http.iter_mut()) {
        let took = closed_after(conn, started, Duration::from_secs(5)).await;
        assert!(took >= timeout, "closed after {took:?}, before the timeout");
    }
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_secs(3), "took {took:?}");
    eprintln!("250 idle connections closed {took:?} after they were opened");
    // Their slots are free again: the client still gets answers.
    assert_eq!(within(client.status()).await.unwrap().hosts, 0);
    drop((client, grpc, http));
    server.stop().await;
}

/// With a cap of 8, the ninth connection on each listener is closed at once, and a real
/// client gets through as soon as the idle ones go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_are_closed_at_once() {
    let limits = Limits {
        max_connections: 8,
        handshake_timeout: Duration::from_secs(30),
    };
    let server = Running::start_limited("cap", Security::Insecure, limits).await;
    for addr in [server.addr, server.http.unwrap()] {
        let held = idle(addr, 8).await;
        // Let the accept loop take all eight before the ninth comes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        // The reset can come before connect() returns, which then fails with it.
        let took = match TcpStream::connect(addr).await {
            Ok(mut ninth) => closed_after(&mut ninth, started, Duration::from_secs(2)).await,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
                started.elapsed()
            }
        };
        // Far below the 30 s handshake timeout: closed for the cap, not for idling.
        assert!(took < Duration::from_secs(5), "took {took:?}");
        drop(held);
    }
    let mut twin = within(async {
        loop {
            if let Ok(c) = TwinClient::connect(format!("http://{}", server.addr)).await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let status = within(twin.status(v1::StatusRequest {})).await.unwrap();
    assert_eq!(status.into_inner().hosts, 0);
    let http = reqwest::get(format!("http://{}/api/v1/status", server.http.unwrap()))
        .await
        .unwrap();
    assert!(http.status().is_success());
    drop(twin);
    server.stop().await;
}

/// On the plaintext HTTP listener, a client that sends the start of a request and stalls is
/// closed once the timeout is up, like one that sends nothing.
#[tokio::test]
async fn a_stalled_http_request_is_closed_after_the_timeout() {
    use tokio::io::AsyncWriteExt;

    let timeout = Duration::from_millis(500);
    let limits = Limits {
        max_connections: 1024,
        handshake_timeout: timeout,
    };
    let server = Running::start_limited("slow-http", Security::Insecure, limits).await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.http.unwrap()).await.unwrap();
    slow.write_all(b"GET /api/v1/status HTTP/1.1\r\n")
        .await
        .unwrap();
    let took = closed_after(&mut slow, started, Duration::from_secs(5)).await;
    assert!(took >= timeout, "closed after {took:?}");
    assert!(took < timeout * 4, "closed after {took:?}");
    drop(slow);
    server.stop().await;
}

/// `files` files of `size` bytes each, under `/etc/b{seq}/`, as batch `seq`.
fn wide_batch(seq: u64, files: usize, size: usize) -> v1::DeltaBatch {
    let text = "y".repeat(size);
    let delta = DeltaBatch {
        files: (0..files)
            .map(|i| fixtures::upsert(&format!("/etc/b{seq}/f{i:05}.conf"), fixtures::text(&text)))
            .collect(),
        ..DeltaBatch::default()
    };
    convert::batch_to_wire(&fixtures::batch("web-1", seq, delta))
}

/// Three batches of 700 KB under a 1 MiB message limit make a 2.1 MB state: the unary calls
/// cannot answer it, the operator's client (GetStateParts, DiffParts) gets all of it.
#[tokio::test]
async fn a_state_larger_than_the_message_limit_is_served_in_parts() {
    let server = Running::start("parts", 1 << 20).await;
    let (mut ingest, _) = Stream::open(server.addr, "web-1").await;
    for seq in 1..=3 {
        assert_eq!(ingest.send(wide_batch(seq, 700, 1000)).await, Ok(seq));
    }
    let url = format!("http://{}", server.addr);
    let mut twin = TwinClient::connect(url.clone()).await.unwrap();
    let unary = twin
        .get_state(v1::GetStateRequest {
            host_id: "web-1".into(),
            at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(unary.code(), Code::OutOfRange, "{unary:?}");
    let unary = twin
        .diff(v1::DiffRequest {
            host_id: "web-1".into(),
            from_seq: 0,
            to_seq: 3,
        })
        .await
        .unwrap_err();
    assert_eq!(unary.code(), Code::OutOfRange, "{unary:?}");

    let mut client = Client::connect(&url, None, None).await.unwrap();
    let (seq, model) = within(client.state("web-1", None)).await.unwrap();
    assert_eq!((seq, model.files.len()), (3, 2100));
    assert_eq!(
        model.files["/etc/b2/f00699.conf"].content,
        Content::Text("y".repeat(1000))
    );
    let delta = within(client.diff("web-1", 0, 3)).await.unwrap();
    assert_eq!(delta.files.len(), 2100);
    let delta = within(client.diff("web-1", 1, 3)).await.unwrap();
    assert_eq!(delta.files.len(), 1400);
    drop((ingest, twin, client));
    server.stop().await;
}

/// `Diff` over gRPC with 16,000 unit files, each enabled by a symlink: the store folds the
/// history, the model diffs and derives every unit, and the client joins the parts.
#[tokio::test]
async fn diff_of_16000_unit_files_over_grpc_takes_about_a_second_in_debug() {
    const UNITS: usize = 16_000;
    let server = Running::start("diff-units", 64 << 20).await;
    let (mut ingest, _) = Stream::open(server.addr, "web-1").await;
    // Listed by kind only: no content, no hash, root's, 0644.
    let file = |kind| FileState {
        kind,
        ..fixtures::dir(0o644)
    };
    let files = (0..UNITS)
        .flat_map(|i| {
            let name = format!("u{i:05}.service");
            [
                FileDelta::Upsert {
                    path: format!("/etc/systemd/system/{name}"),
                    state: file(FileKind::Regular),
                },
                FileDelta::Upsert {
                    path: format!("/etc/systemd/system/multi-user.target.wants/{name}"),
                    state: file(FileKind::Symlink),
                },
            ]
        })
        .collect();
    let delta = DeltaBatch {
        files,
        ..DeltaBatch::default()
    };
    let batch = convert::batch_to_wire(&fixtures::batch("web-1", 1, delta));
    assert_eq!(ingest.send(batch).await, Ok(1));
    let mut client = Client::connect(&format!("http://{}", server.addr), None, None)
        .await
        .unwrap();
    let started = Instant::now();
    let delta = within(client.diff("web-1", 0, 1)).await.unwrap();
    let took = started.elapsed();
    eprintln!("Diff of {UNITS} unit files over gRPC: {took:?}");
    assert_eq!((delta.files.len(), delta.units.len()), (2 * UNITS, UNITS));
    // A debug build, the whole call (store, model, wire, parts); the model's diff alone is
    // tested against one second in safetytwin-model.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop((ingest, client));
    server.stop().await;
}

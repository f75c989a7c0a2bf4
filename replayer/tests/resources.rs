//! Bounded resources (issue 11, class 5), each tried as the attack: idle connections that
//! never handshake, and more connections than the cap.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{Running, Tls, within};
use safetytwin_proto::v1::{self, twin_client::TwinClient};
use safetytwin_replayer::{client::Client, listener::Limits, server::Security};
use tokio::{io::AsyncReadExt, net::TcpStream};

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
    let timeout = Duration::from_millis(800);
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
    assert!(took < timeout + Duration::from_secs(2), "took {took:?}");
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
        assert!(took < Duration::from_secs(1), "took {took:?}");
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

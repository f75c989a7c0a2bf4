//! TLS: daemons must present a client certificate the CA signed (mutual TLS), consumers a bearer
//! token; the real daemon-side sender streams over mutual TLS; and an independent client, a
//! Python script using grpcio from PyPI, subscribes over TLS and receives the batches. A
//! daemon certificate is good for the host ids it names, and only those.

mod common;

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Running, Tls, batch, within};
use prost::Message;
use safetytwin_proto::{
    sender::{self, ClientTls, SenderConfig, SenderLink},
    spool::Spool,
    v1::{self, SyncRequest, ingest_client::IngestClient, sync_request, twin_client::TwinClient},
};
use safetytwin_services::{certs, server::Security};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

const BATCHES: u64 = 3;

async fn tls_channel(addr: std::net::SocketAddr, ca: &[u8]) -> Channel {
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_for_daemons_tokens_for_consumers_and_a_python_client() {
    let tls = Tls::new("tls-client");
    let (dir, files, token) = (tls.dir.path(), &tls.files, tls.token.clone());
    let read = |p: &std::path::Path| tls.read(p);
    let server = Running::start_with("tls", 1 << 20, tls.security()).await;
    let addr = server.addr;

    // The daemon's sender over mutual TLS.
    let spool = Arc::new(Mutex::new(Spool::open(dir.join("spool"), 1 << 20).unwrap()));
    let link = Arc::new(SenderLink::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sender::run(
        SenderConfig {
            endpoints: vec![format!("https://localhost:{}", addr.port())],
            host_id: "web-1".into(),
            boot_id: "boot".into(),
            watched: vec!["/etc".into()],
            tls: Some(ClientTls {
                ca: read(&files.ca),
                cert: read(&files.client("web-1").unwrap().cert),
                key: read(&files.client("web-1").unwrap().key),
            }),
        },
        spool.clone(),
        link.clone(),
        stopped,
    ));
    for seq in 1..=BATCHES {
        let bytes = batch("web-1", seq, &format!("v{seq}")).encode_to_vec();
        spool.lock().unwrap().push(&bytes).unwrap();
        link.wake.notify_one();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while spool.lock().unwrap().acked() < BATCHES {
        assert!(
            Instant::now() < deadline,
            "batches not acknowledged over mutual TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    within(task).await.unwrap();

    // TLS without a client certificate: no ingest.
    let channel = tls_channel(addr, &read(&files.ca)).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(SyncRequest {
        msg: Some(sync_request::Msg::Hello(v1::Hello {
            host_id: "intruder".into(),
            watched: vec!["/etc".into()],
            ..v1::Hello::default()
        })),
    })
    .await
    .unwrap();
    let refused = IngestClient::new(channel.clone())
        .sync(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Consumers: no token, a wrong token, the right one.
    let status = |t: Option<&'static str>| {
        let channel = channel.clone();
        async move {
            let mut twin = TwinClient::with_interceptor(channel, move |mut r: Request<()>| {
                if let Some(t) = t {
                    r.metadata_mut().insert("authorization", t.parse().unwrap());
                }
                Ok(r)
            });
            twin.status(v1::StatusRequest {})
                .await
                .map(|r| r.into_inner())
        }
    };
    assert_eq!(
        status(None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        status(Some("Bearer not-the-token"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let bearer: &'static str = Box::leak(format!("Bearer {token}").into_boxed_str());
    assert_eq!(status(Some(bearer)).await.unwrap().batches, BATCHES);

    // An independent client: Python and grpcio, installed by the project's own script.
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new("sh")
        .arg(here.join("tests/python/setup.sh"))
        .status()
        .expect("run tests/python/setup.sh");
    assert!(setup.success(), "installing grpcio failed");
    let out = tokio::task::spawn_blocking({
        let (files, here) = (files.clone(), here.to_owned());
        move || {
            Command::new("python3")
                .arg(here.join("tests/python/subscribe.py"))
                .args(["--addr", &format!("localhost:{}", addr.port())])
                .arg("--ca")
                .arg(&files.ca)
                .arg("--token-file")
                .arg(&files.token)
                .args(["--host", "web-1", "--count", &BATCHES.to_string()])
                .arg("--proto-root")
                .arg(here.join("../proto"))
                .output()
                .expect("run python3")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seqs: Vec<u64> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["files"], serde_json::json!(["/etc/app.conf"]));
            v["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);

    drop(channel);
    server.stop().await;
}

/// Opens an ingest stream over mutual TLS as `cert` and says Hello for `host`; sends one batch
/// with `seq`. The ack, or the code that refused the stream.
async fn hello_as(
    addr: std::net::SocketAddr,
    ca: &[u8],
    cert: &certs::ClientFiles,
    host: &str,
    seq: u64,
) -> Result<u64, Code> {
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(&cert.cert).unwrap(),
        std::fs::read(&cert.key).unwrap(),
    );
    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(identity),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    for msg in [
        sync_request::Msg::Hello(v1::Hello {
            host_id: host.into(),
            boot_id: "boot".into(),
            watched: vec!["/".into()],
            ..v1::Hello::default()
        }),
        sync_request::Msg::Batch(batch(host, seq, "x")),
    ] {
        tx.send(SyncRequest { msg: Some(msg) }).await.unwrap();
    }
    let mut responses = within(IngestClient::new(channel).sync(ReceiverStream::new(rx)))
        .await
        .map_err(|s| s.code())?
        .into_inner();
    loop {
        match within(responses.message()).await {
            Ok(Some(v1::SyncResponse {
                msg: Some(v1::sync_response::Msg::Ack(ack)),
            })) => return Ok(ack.seq),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream closed without an answer"),
            Err(status) => {
                if status.code() == Code::PermissionDenied {
                    assert!(
                        status.message().contains("not valid for host"),
                        "{}",
                        status.message()
                    );
                }
                return Err(status.code());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_certificate_writes_only_the_hosts_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let files = certs::generate_for(
        &dir,
        &[],
        &[
            vec!["host-a".into()],
            vec!["host-a".into(), "host-b".into()],
        ],
    )
    .unwrap();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let token = std::fs::read_to_string(&files.token)
        .unwrap()
        .trim()
        .to_owned();
    let server = Running::start_with(
        "tls-identity",
        1 << 20,
        Security::Tls {
            cert: read(&files.server_cert),
            key: read(&files.server_key),
            client_ca: read(&files.ca),
            token,
        },
    )
    .await;
    let (addr, store, ca) = (server.addr, server.store.clone(), read(&files.ca));
    let only_a = &files.clients[0];
    let a_and_b = &files.clients[1];

    // A's certificate says Hello for B: refused, and B's history is untouched.
    assert_eq!(
        hello_as(addr, &ca, only_a, "host-b", 1).await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(store.last_seq("host-b").unwrap(), 0);
    assert!(store.state("host-b").unwrap().is_none());
    // For A it works; a certificate for A and B works for both.
    assert_eq!(hello_as(addr, &ca, only_a, "host-a", 1).await, Ok(1));
    assert_eq!(hello_as(addr, &ca, a_and_b, "host-a", 2).await, Ok(2));
    assert_eq!(hello_as(addr, &ca, a_and_b, "host-b", 1).await, Ok(1));
    assert_eq!(store.last_seq("host-b").unwrap(), 1);

    server.stop().await;
}

/// Lists the services through server reflection version `$v` (`v1` or `v1alpha`), sending
/// `$token` as the bearer token when it is `Some`.
macro_rules! reflect {
    ($v:ident, $channel:expr, $token:expr) => {{
        use tonic_reflection::pb::$v::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let token: Option<&str> = $token;
        let mut request = Request::new(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let mut client = ServerReflectionClient::new($channel.clone());
        match within(client.server_reflection_info(request)).await {
            Err(status) => Err(status.code()),
            Ok(responses) => {
                let mut responses = responses.into_inner();
                match within(responses.message()).await {
                    Err(status) => Err(status.code()),
                    Ok(Some(r)) => match r.message_response {
                        Some(MessageResponse::ListServicesResponse(list)) => {
                            Ok(list.service.into_iter().map(|s| s.name).collect::<Vec<_>>())
                        }
                        other => panic!("unexpected {other:?}"),
                    },
                    Ok(None) => panic!("no answer"),
                }
            }
        }
    }};
}

/// Both reflection versions answer (grpcurl < 1.8.8 and Python's grpcio-reflection speak only
/// v1alpha); over TLS only to a caller with the consumer token, like `Twin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_reflection_answers_v1_and_v1alpha_and_needs_the_token_over_tls() {
    let has_twin = |names: Result<Vec<String>, Code>| {
        let names = names.unwrap();
        assert!(names.iter().any(|n| n == "safetytwin.v1.Twin"), "{names:?}");
    };

    let plain = Running::start("local-reflect-plain", 1 << 20).await;
    let channel = Endpoint::from_shared(format!("http://{}", plain.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    has_twin(reflect!(v1, channel, None));
    has_twin(reflect!(v1alpha, channel, None));
    drop(channel);
    plain.stop().await;

    let tls = Tls::new("local-reflect-certs");
    let server = Running::start_with("local-reflect-tls", 1 << 20, tls.security()).await;
    let channel = tls_channel(server.addr, &tls.read(&tls.files.ca)).await;
    assert_eq!(reflect!(v1, channel, None), Err(Code::Unauthenticated));
    assert_eq!(reflect!(v1alpha, channel, None), Err(Code::Unauthenticated));
    let wrong = "0".repeat(tls.token.len());
    assert_eq!(
        reflect!(v1alpha, channel, Some(&wrong)),
        Err(Code::Unauthenticated)
    );
    has_twin(reflect!(v1, channel, Some(&tls.token)));
    has_twin(reflect!(v1alpha, channel, Some(&tls.token)));
    drop(channel);
    server.stop().await;
}

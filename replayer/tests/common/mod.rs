//! Shared by the gRPC tests: a server on loopback over a fresh store, and an ingest stream.

#![allow(dead_code)]

#[cfg(feature = "libvirt")]
pub mod vm;

use std::{net::SocketAddr, sync::Arc};

use safetytwin_model::{DeltaBatch, fixtures};
use safetytwin_proto::{
    convert,
    v1::{self, SyncRequest, ingest_client::IngestClient, sync_request, sync_response},
};
use safetytwin_services::{
    listener::Limits,
    server::{Security, Server},
};
use safetytwin_store::Store;
use safetytwin_twin::applier::Applier;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Code, Streaming};

/// A running server and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// The HTTP API's address (`start_http`).
    pub http: Option<SocketAddr>,
    pub store: Arc<Store>,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), safetytwin_services::server::ServeError>>,
    /// The store's directory, removed when the server is dropped.
    _dir: tempfile::TempDir,
}

impl Running {
    pub async fn start(name: &str, max_message_bytes: usize) -> Running {
        Self::start_with(name, max_message_bytes, Security::Insecure).await
    }

    pub async fn start_with(name: &str, max_message_bytes: usize, security: Security) -> Running {
        Self::start_inner(name, max_message_bytes, security, None, false).await
    }

    /// Also serving the HTTP API, without a twin.
    pub async fn start_http(name: &str, security: Security) -> Running {
        Self::start_inner(name, 1 << 20, security, None, true).await
    }

    /// With a twin: `applier` builds the applier over the server's store.
    pub async fn start_full(
        name: &str,
        max_message_bytes: usize,
        security: Security,
        applier: impl FnOnce(Arc<Store>) -> Applier,
    ) -> Running {
        Self::start_inner(
            name,
            max_message_bytes,
            security,
            Some(Box::new(applier)),
            false,
        )
        .await
    }

    /// With a twin (`applier`, as in [`Running::start_full`]) and the HTTP API.
    pub async fn start_twin_http(
        name: &str,
        security: Security,
        applier: impl FnOnce(Arc<Store>) -> Applier,
    ) -> Running {
        Self::start_full_inner(
            name,
            1 << 20,
            security,
            Some(Box::new(applier)),
            true,
            Limits::default(),
        )
        .await
    }

    /// With connection `limits` on both listeners (HTTP too), without a twin.
    pub async fn start_limited(name: &str, security: Security, limits: Limits) -> Running {
        Self::start_full_inner(name, 1 << 20, security, None, true, limits).await
    }

    async fn start_inner(
        name: &str,
        max_message_bytes: usize,
        security: Security,
        applier: Option<Box<dyn FnOnce(Arc<Store>) -> Applier + '_>>,
        http: bool,
    ) -> Running {
        Self::start_full_inner(
            name,
            max_message_bytes,
            security,
            applier,
            http,
            Limits::default(),
        )
        .await
    }

    async fn start_full_inner(
        name: &str,
        max_message_bytes: usize,
        security: Security,
        applier: Option<Box<dyn FnOnce(Arc<Store>) -> Applier + '_>>,
        http: bool,
        limits: Limits,
    ) -> Running {
        let dir = scratch(name);
        let store = Arc::new(Store::open(dir.path().join("history.redb")).unwrap());
        let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), store.clone())
            .await
            .unwrap()
            .max_message_bytes(max_message_bytes)
            .security(security)
            .limits(limits);
        if let Some(applier) = applier {
            server = server.twin(Arc::new(applier(store.clone())));
        }
        if http {
            server = server.http("127.0.0.1:0".parse().unwrap()).await.unwrap();
        }
        let addr = server.local_addr();
        let http = server.http_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            http,
            store,
            stop,
            handle,
            _dir: dir,
        }
    }

    /// Stops the server; every client stream must be dropped first (a graceful shutdown
    /// waits for open streams).
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        within(self.handle).await.unwrap().unwrap();
    }
}

pub fn batch(host: &str, seq: u64, text: &str) -> v1::DeltaBatch {
    let delta = DeltaBatch {
        files: vec![fixtures::upsert("/etc/app.conf", fixtures::text(text))],
        ..DeltaBatch::default()
    };
    convert::batch_to_wire(&fixtures::batch(host, seq, delta))
}

/// A fresh CA, certificates and consumer token (in `dir/certs`), and the server security
/// they make: mutual TLS for daemons, the token for consumers.
pub struct Tls {
    pub dir: tempfile::TempDir,
    pub files: safetytwin_services::certs::CertFiles,
    pub token: String,
}

impl Tls {
    pub fn new(name: &str) -> Tls {
        let dir = scratch(name);
        let files =
            safetytwin_services::certs::generate(&dir.path().join("certs"), &[], &["web-1".into()])
                .unwrap();
        let token = std::fs::read_to_string(&files.token)
            .unwrap()
            .trim()
            .to_owned();
        Tls { dir, files, token }
    }

    /// Reads one of the generated files.
    pub fn read(&self, path: &std::path::Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    pub fn security(&self) -> Security {
        Security::Tls {
            cert: self.read(&self.files.server_cert),
            key: self.read(&self.files.server_key),
            client_ca: self.read(&self.files.ca),
            token: self.token.clone(),
        }
    }
}

/// A fresh directory, named after the test's `name` so that one left by a killed run is known.
pub fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("st-{name}-"))
        .tempdir()
        .unwrap()
}

/// Awaits `f`, failing the test instead of hanging it.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), f)
        .await
        .expect("no answer within 10 s")
}

pub struct Stream {
    tx: mpsc::Sender<SyncRequest>,
    rx: Streaming<v1::SyncResponse>,
}

impl Stream {
    /// A stream for `host` declaring the whole file system as watched.
    pub async fn open(addr: SocketAddr, host: &str) -> (Stream, u64) {
        Self::open_watching(addr, host, &["/"]).await
    }

    /// A stream for `host` declaring `watched` in its Hello.
    pub async fn open_watching(addr: SocketAddr, host: &str, watched: &[&str]) -> (Stream, u64) {
        let hello = v1::Hello {
            host_id: host.into(),
            boot_id: "boot".into(),
            watched: watched.iter().map(|w| (*w).to_owned()).collect(),
            ..v1::Hello::default()
        };
        let (s, resume) = Self::open_with(addr, hello).await.unwrap();
        (s, resume.last_seq)
    }

    /// Opens a stream with `hello`: the Resume, or the code that refused the stream.
    pub async fn open_with(
        addr: SocketAddr,
        hello: v1::Hello,
    ) -> Result<(Stream, v1::Resume), Code> {
        let client = IngestClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self::open_on(client, hello).await
    }

    /// A stream for `host` over mutual TLS with `tls`'s certificate for it.
    pub async fn open_tls(addr: SocketAddr, host: &str, tls: &Tls) -> (Stream, u64) {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let cert = tls.files.client(host).expect("a certificate for the host");
        let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(tls.read(&tls.files.ca)))
                    .identity(Identity::from_pem(
                        tls.read(&cert.cert),
                        tls.read(&cert.key),
                    )),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        let hello = v1::Hello {
            host_id: host.into(),
            boot_id: "boot".into(),
            watched: vec!["/".into()],
            ..v1::Hello::default()
        };
        let (s, resume) = Self::open_on(IngestClient::new(channel), hello)
            .await
            .unwrap();
        (s, resume.last_seq)
    }

    async fn open_on<T>(
        mut client: IngestClient<T>,
        hello: v1::Hello,
    ) -> Result<(Stream, v1::Resume), Code>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<tonic::codegen::StdError>,
        T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    {
        let (tx, rx) = mpsc::channel(16);
        tx.send(SyncRequest {
            msg: Some(sync_request::Msg::Hello(hello)),
        })
        .await
        .unwrap();
        let mut rx = within(client.sync(ReceiverStream::new(rx)))
            .await
            .map_err(|s| s.code())?
            .into_inner();
        match within(rx.next()).await {
            Some(Ok(v1::SyncResponse {
                msg: Some(sync_response::Msg::Resume(resume)),
            })) => Ok((Stream { tx, rx }, resume)),
            Some(Err(status)) => Err(status.code()),
            other => panic!("no Resume: {other:?}"),
        }
    }

    /// The code that ended the stream without a batch being sent (e.g. it was replaced).
    pub async fn ended(&mut self) -> Option<Code> {
        match within(self.rx.next()).await {
            Some(Err(status)) => Some(status.code()),
            _ => None,
        }
    }

    pub async fn send(&mut self, b: v1::DeltaBatch) -> Result<u64, Code> {
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

/// A small deterministic generator, seeded from the clock by the kill -9 tests: "random
/// moments" that still vary from run to run (each test prints its seed, to replay a failure).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A loopback address that nothing listens on yet (a replayer process is to bind it).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A daemon's sender for `host` on `spool`, as `run` starts it: plaintext, watching `/etc`,
/// trying `endpoints` in order; it stops when `stop` turns true.
pub fn start_sender(
    endpoints: Vec<String>,
    host: &str,
    spool: &Arc<std::sync::Mutex<safetytwin_proto::spool::Spool>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (
    Arc<safetytwin_proto::sender::SenderLink>,
    tokio::task::JoinHandle<()>,
) {
    use safetytwin_proto::sender::{self, SenderConfig, SenderLink};
    let link = Arc::new(SenderLink::default());
    let task = tokio::spawn(sender::run(
        SenderConfig {
            endpoints,
            host_id: host.into(),
            boot_id: "boot".into(),
            watched: vec!["/etc".into()],
            tls: None,
        },
        spool.clone(),
        link.clone(),
        stop,
    ));
    (link, task)
}

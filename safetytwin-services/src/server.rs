//! The replayer's gRPC server: ingest, the consumer service and server reflection, on one
//! listener; and, when asked, the operator's HTTP API (`http.rs`) on a second one, with the
//! same certificate and token.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use safetytwin_proto::v1::{FILE_DESCRIPTOR_SET, twin_server::TwinServer};
use tokio::{
    net::TcpListener,
    sync::{broadcast, watch},
};
use tonic::{
    Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::server::Router,
};

use safetytwin_store::Store;
use safetytwin_twin::applier::Applier;

use crate::{
    http,
    ingest::IngestService,
    listener::{self, Limits, TlsSetupError},
    metrics::Metrics,
    relay,
    scan::ScannedIngest,
    token::check_bearer,
    twin::{Queries, TwinService},
};

/// Batches a live subscriber may fall behind before it is told to resubscribe.
const LIVE_BACKLOG: usize = 1024;

pub use safetytwin_proto::MAX_MESSAGE_BYTES;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A listener's TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// How callers prove who they are.
#[derive(Clone)]
pub enum Security {
    /// Plaintext, nobody is checked (`--insecure`, loopback only).
    Insecure,
    /// TLS; daemons (`Ingest`) must present a client certificate the CA signed, consumers
    /// (`Twin`) a bearer token.
    Tls {
        /// The server's certificate chain (PEM).
        cert: Vec<u8>,
        /// The server's private key (PEM).
        key: Vec<u8>,
        /// The CA that signs daemon client certificates (PEM).
        client_ca: Vec<u8>,
        /// The consumers' bearer token.
        token: String,
    },
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Security::Insecure => "Insecure",
            Security::Tls { .. } => "Tls",
        })
    }
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    http: Option<TcpListener>,
    http_names: Vec<String>,
    store: Arc<Store>,
    max_message_bytes: usize,
    security: Security,
    applier: Option<Arc<Applier>>,
    metrics: Arc<Metrics>,
    limits: Limits,
}

impl Server {
    /// Binds `addr` (port 0 picks one) over `store`.
    pub async fn bind(addr: SocketAddr, store: Arc<Store>) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Server {
            listener,
            http: None,
            http_names: Vec::new(),
            store,
            max_message_bytes: MAX_MESSAGE_BYTES,
            security: Security::Insecure,
            applier: None,
            metrics: Arc::default(),
            limits: Limits::default(),
        })
    }

    /// Also serves the HTTP API and the metrics on `addr` (port 0 picks one).
    pub async fn http(mut self, addr: SocketAddr) -> Result<Self, ServeError> {
        self.http = Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        );
        Ok(self)
    }

    /// Lets the HTTP API also answer requests addressed to `names` (beyond localhost and the
    /// loopback addresses, or the certificate's names with TLS), e.g. a reverse proxy's.
    pub fn http_names(mut self, names: Vec<String>) -> Self {
        self.http_names = names;
        self
    }

    /// Serves with `security` instead of plaintext.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Keeps the hosts' twins with `applier` (follows every stored batch).
    pub fn twin(mut self, applier: Arc<Applier>) -> Self {
        // /metrics serves the applier's series beside ingest's.
        self.metrics = Arc::new(Metrics::new(applier.metrics().clone()));
        self.applier = Some(applier);
        self
    }

    /// Refuses messages larger than `bytes` (OUT_OF_RANGE) instead of the default.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Each listener holds at most `limits.max_connections` connections and drops those that
    /// have not handshaken within `limits.handshake_timeout` (`listener.rs`).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// The HTTP listener's address, if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener"))
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        // Both versions: grpcurl before 1.8.8 and Python's grpcio-reflection speak only
        // v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        };
        let (reflection_v1, reflection_v1alpha) =
            (reflection().build_v1()?, reflection().build_v1alpha()?);
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        // A shared store: every replayer's batches reach `live` through the store's notices.
        let relay_task = relay::start(self.store.clone(), live.clone());
        let ingest_live = match relay_task {
            // The relay publishes this replayer's batches too, in commit order; what ingest
            // sends here reaches no one.
            Some(_) => broadcast::channel(1).0,
            None => live.clone(),
        };
        let queries = Queries::new(self.store.clone(), self.applier.clone());
        // Dropping the sender (when gRPC stops, for whatever reason) stops HTTP too.
        let (stop_http, http_stopped) = watch::channel(());
        let http_task = match self.http {
            Some(listener) => {
                let port = listener.local_addr().expect("bound listener").port();
                let (tls, token, authority) = match &self.security {
                    Security::Insecure => (None, None, http::Authority::loopback(port)),
                    Security::Tls {
                        cert, key, token, ..
                    } => (
                        Some(listener::tls_acceptor(
                            cert,
                            key,
                            None,
                            &[b"h2", b"http/1.1"],
                        )?),
                        Some(token.clone()),
                        http::Authority::certificate(port, cert)?,
                    ),
                };
                let router = authority
                    .with_names(&self.http_names)
                    .protect(http::Api::new(queries.clone(), self.metrics.clone(), token).router());
                let limits = self.limits;
                Some(match tls {
                    Some(tls) => tokio::spawn(http::serve(
                        listener::accept(listener, limits, listener::tls(tls)),
                        router,
                        limits,
                        http_stopped,
                    )),
                    None => tokio::spawn(http::serve(
                        listener::accept(listener, limits, listener::first_bytes),
                        router,
                        limits,
                        http_stopped,
                    )),
                })
            }
            None => None,
        };
        let applier_task = self
            .applier
            .clone()
            .map(|a| tokio::spawn(a.run(live.subscribe())));
        let (tls, token, require_client_cert) = match &self.security {
            Security::Insecure => (None, None, false),
            Security::Tls {
                cert,
                key,
                client_ca,
                token,
            } => (
                Some(listener::tls_acceptor(
                    cert,
                    key,
                    Some(client_ca),
                    &[b"h2"],
                )?),
                Some(token.clone()),
                true,
            ),
        };
        let ingest = ScannedIngest::new(
            IngestService::new(
                self.store.clone(),
                ingest_live,
                require_client_cert,
                self.metrics,
            ),
            self.max_message_bytes,
        );
        // Reflection describes the consumer API: with TLS, only to callers with its token.
        let consumer = BearerToken(token);
        let twin = InterceptedService::new(
            TwinServer::new(TwinService::new(queries, live))
                .max_encoding_message_size(self.max_message_bytes),
            consumer.clone(),
        );
        let reflection_v1 = InterceptedService::new(reflection_v1, consumer.clone());
        let reflection_v1alpha = InterceptedService::new(reflection_v1alpha, consumer);
        // Keepalive pings find a daemon connection that died without a FIN (a host that
        // rebooted or lost power) within 20 s, so its stream releases the host (see ingest.rs).
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ingest)
            .add_service(twin);
        let stopped = async {
            shutdown.await;
            let _ = stop_http.send(());
        };
        let served = serve_grpc(router, self.listener, tls, self.limits, stopped).await;
        if let Some(task) = http_task {
            // The shutdown future above signalled it, or gRPC failed and its drop does.
            let _ = task.await;
        }
        if let Some(task) = relay_task {
            task.abort();
        }
        served?;
        if let Some(task) = applier_task {
            // An apply in progress finishes on its blocking thread; the store records it.
            task.abort();
        }
        if let Some(applier) = self.applier {
            // A graceful stop: the other workers (a shared store) take its twins at once.
            match tokio::task::spawn_blocking(move || applier.release()).await {
                Ok(Err(e)) => tracing::warn!("cannot give up the twins' leases: {e}"),
                Err(e) => tracing::warn!("cannot give up the twins' leases: {e}"),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }
}

/// Serves `router` on `listener` within `limits`, over TLS with `tls` (the services read the
/// client certificate from the stream's connect info, which [`listener::Held`] passes on).
async fn serve_grpc(
    router: Router,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            let incoming = listener::accept(listener, limits, listener::tls(tls));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            let incoming = listener::accept(listener, limits, listener::first_bytes);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// Checks the consumer's `authorization: Bearer <token>` (when a token is configured), for the
/// `Twin` service and server reflection alike.
#[derive(Clone)]
struct BearerToken(Option<String>);

impl Interceptor for BearerToken {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        check_bearer(given, token).map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(request)
    }
}

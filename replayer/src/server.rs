//! The replayer's gRPC server: ingest, the consumer service and server reflection, on one
//! listener.

use std::{net::SocketAddr, sync::Arc};

use safetytwin_proto::v1::{
    FILE_DESCRIPTOR_SET, ingest_server::IngestServer, twin_server::TwinServer,
};
use tokio::{net::TcpListener, sync::broadcast};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Identity, ServerTlsConfig},
};

use crate::{applier::Applier, ingest::IngestService, store::Store, twin::TwinService};

/// Batches a live subscriber may fall behind before it is told to resubscribe.
const LIVE_BACKLOG: usize = 1024;

/// The largest message accepted: the first batch of a host carries its whole state.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

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
    store: Arc<Store>,
    max_message_bytes: usize,
    security: Security,
    applier: Option<Arc<Applier>>,
}

impl Server {
    /// Binds `addr` (port 0 picks one) over `store`.
    pub async fn bind(addr: SocketAddr, store: Arc<Store>) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Server {
            listener,
            store,
            max_message_bytes: MAX_MESSAGE_BYTES,
            security: Security::Insecure,
            applier: None,
        })
    }

    /// Serves with `security` instead of plaintext.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// Keeps the hosts' twins with `applier` (follows every stored batch).
    pub fn twin(mut self, applier: Arc<Applier>) -> Self {
        self.applier = Some(applier);
        self
    }

    /// Refuses messages larger than `bytes` (RESOURCE_EXHAUSTED) instead of the default.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        let applier_task = self
            .applier
            .clone()
            .map(|a| tokio::spawn(a.run(live.subscribe())));
        let (tls, token, require_client_cert) = match self.security {
            Security::Insecure => (None, None, false),
            Security::Tls {
                cert,
                key,
                client_ca,
                token,
            } => (
                Some(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(cert, key))
                        .client_ca_root(Certificate::from_pem(client_ca))
                        .client_auth_optional(true),
                ),
                Some(token),
                true,
            ),
        };
        let ingest = IngestServer::new(IngestService::new(
            self.store.clone(),
            live.clone(),
            require_client_cert,
        ))
        .max_decoding_message_size(self.max_message_bytes);
        let twin = InterceptedService::new(
            TwinServer::new(TwinService::new(self.store, live, self.applier))
                .max_encoding_message_size(self.max_message_bytes),
            BearerToken(token),
        );
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        builder
            .add_service(reflection)
            .add_service(ingest)
            .add_service(twin)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await?;
        if let Some(task) = applier_task {
            // An apply in progress finishes on its blocking thread; the store records it.
            task.abort();
        }
        Ok(())
    }
}

/// Checks the consumer's `authorization: Bearer <token>` (when a token is configured).
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
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            // Compare every byte, so timing does not tell how much of a guess was right.
            Some(g)
                if g.len() == token.len()
                    && g.bytes()
                        .zip(token.bytes())
                        .fold(0, |acc, (a, b)| acc | (a ^ b))
                        == 0 =>
            {
                Ok(request)
            }
            Some(_) => Err(Status::unauthenticated("wrong bearer token")),
            None => Err(Status::unauthenticated(
                "missing authorization: Bearer <token>",
            )),
        }
    }
}

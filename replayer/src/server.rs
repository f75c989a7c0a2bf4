//! The replayer's gRPC server: ingest, the consumer service and server reflection, on one
//! listener.

use std::{net::SocketAddr, sync::Arc};

use safetytwin_proto::v1::{
    FILE_DESCRIPTOR_SET, ingest_server::IngestServer, twin_server::TwinServer,
};
use tokio::{net::TcpListener, sync::broadcast};
use tokio_stream::wrappers::TcpListenerStream;

use crate::{ingest::IngestService, store::Store, twin::TwinService};

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

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    store: Arc<Store>,
    max_message_bytes: usize,
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
        })
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
        let ingest = IngestServer::new(IngestService::new(self.store.clone(), live.clone()))
            .max_decoding_message_size(self.max_message_bytes);
        let twin = TwinServer::new(TwinService::new(self.store, live))
            .max_encoding_message_size(self.max_message_bytes);
        tonic::transport::Server::builder()
            .add_service(reflection)
            .add_service(ingest)
            .add_service(twin)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await?;
        Ok(())
    }
}

//! Accepting connections within limits, for both listeners (gRPC and HTTP): at most
//! [`Limits::max_connections`] connections are held at once (past it a new one is closed at
//! once), and each must finish its TLS handshake, or in plaintext send its first bytes, within
//! [`Limits::handshake_timeout`]. Without these, idle TCP connections that never handshake
//! pin a task and a file descriptor each until the replayer runs out.
//!
//! Handshakes run concurrently, each in a task of its own, so a slow one does not hold up the
//! accept loop. A connection's slot is held by the stream handed on ([`Held`]) and freed when
//! the connection is dropped.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// The defaults of `serve --max-connections`.
pub const MAX_CONNECTIONS: usize = 1024;

/// The default of `serve --handshake-timeout`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one listener allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once (handshaking or served).
    pub max_connections: usize,
    /// Longest from accept to a finished TLS handshake (plaintext: to the first bytes).
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// Why a listener's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate or key is not PEM the listener can use.
    #[error("TLS: cannot read the {what}: {source}")]
    Pem {
        /// "certificate", "private key" or "client CA".
        what: &'static str,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used to verify client certificates.
    #[error("TLS: client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
    /// The certificate's names cannot be read (the HTTP API answers only to them).
    #[error("TLS: cannot read the certificate's names: {0}")]
    Names(webpki::Error),
}

fn certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsSetupError::Pem { what, source })
}

/// A TLS acceptor for the certificate chain and key; with `client_ca`, clients may present a
/// certificate it signed (optional: the gRPC services decide who needs one), and it is
/// verified when they do. `alpn`: the protocols offered.
pub fn tls_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, TlsSetupError> {
    let chain = certs(cert_pem, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsSetupError::Pem {
        what: "private key",
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca, "client CA")? {
                roots.add(cert)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connection that holds one of its listener's slots while it lives.
pub struct Held<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The stream's own connect info, unchanged: `Request::peer_certs()` finds the client
/// certificate of a TLS stream under the type tonic gives it.
impl<S: Connected> Connected for Held<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The connections of one listener, handshaken, within its limits.
pub type Incoming<S> = ReceiverStream<io::Result<Held<S>>>;

/// Accepts on `listener` within `limits`, turning each TCP connection into an `S` with
/// `handshake` (within the timeout) before handing it on. Ends when the stream is dropped.
pub fn accept<S, F, Fut>(listener: TcpListener, limits: Limits, handshake: F) -> Incoming<S>
where
    S: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
{
    // Handshaken connections wait here only until the server takes them.
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refuse(tcp, peer, limits.max_connections);
                continue;
            };
            let (tx, handshake) = (tx.clone(), handshake(tcp));
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                    Ok(Ok(inner)) => {
                        let _ = tx.send(Ok(Held { inner, _slot: slot })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "no handshake within the timeout"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Closes a connection over the cap at once, with a reset rather than a FIN so that neither
/// side keeps it in TIME_WAIT.
fn refuse(tcp: TcpStream, peer: SocketAddr, max: usize) {
    tracing::warn!(%peer, "refused: {max} connections already open (--max-connections)");
    let _ = tcp.set_zero_linger();
}

/// The plaintext "handshake": the client's first bytes have arrived (they stay unread).
pub async fn first_bytes(tcp: TcpStream) -> io::Result<TcpStream> {
    let mut byte = [0u8; 1];
    match tcp.peek(&mut byte).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(tcp),
    }
}

/// The TLS handshake with `acceptor`.
pub fn tls(
    acceptor: TlsAcceptor,
) -> impl Fn(TcpStream) -> tokio_rustls::Accept<TcpStream> + Send + Sync + 'static {
    move |tcp| acceptor.accept(tcp)
}

/// A TLS stream over TCP, as tonic knows it (its connect info carries the peer certificates).
pub type Tls = TlsStream<TcpStream>;

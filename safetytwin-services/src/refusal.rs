//! What ingest refuses, and why: the errors of the `Ingest` service (`ingest.rs`) and of the
//! decode-cost check in front of it (`scan.rs`), with the bounds they cite. Kept apart from
//! both so that `status.rs`, the one place errors become gRPC codes, can name them while the
//! services use it: no import runs back up.

/// Decoding may cost at most this many times the message's size...
pub const DECODE_FACTOR: usize = 10;

/// ... plus this much, so that small messages are never refused for their ratio.
pub const DECODE_SLACK: usize = 16 << 20;

/// Why a message is refused before it is decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// It is not protobuf (prost would refuse it too).
    #[error("not a valid protobuf message: {0}")]
    Wire(String),
    /// An entry that can never be valid.
    #[error("an empty {0} entry")]
    Empty(&'static str),
    /// Decoding would allocate too much for its size.
    #[error(
        "decoding {bytes} bytes would allocate about {cost} bytes (at most {DECODE_FACTOR}x \
         the message plus {} MiB): too many tiny entries",
        DECODE_SLACK >> 20
    )]
    TooCostly {
        /// The message's size.
        bytes: usize,
        /// What decoding it would allocate.
        cost: usize,
    },
}

/// Why a stream was refused or ended, apart from the store's reasons.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The client certificate does not name the host the Hello claims.
    #[error(
        "the client certificate is not valid for host {host:?} (it names {named:?}); \
         issue one with `gen-certs --host {host}`"
    )]
    NotThisHost {
        /// The host the Hello claims.
        host: String,
        /// The hosts the certificate names.
        named: Vec<String>,
    },
    /// The client certificate could not be read.
    #[error("the client certificate: {0}")]
    BadCertificate(String),
    /// Another boot streams for this host id.
    #[error(
        "host {host:?} is already streaming from boot {live_boot:?}, so this stream from boot \
         {boot:?} is refused: two machines share the host id (a cloned machine-id?), or the \
         host rebooted and its old connection is not yet known dead (a retry then succeeds)"
    )]
    OtherBoot {
        /// The host.
        host: String,
        /// The boot of the stream refused.
        boot: String,
        /// The boot of the live stream.
        live_boot: String,
    },
    /// A newer stream of the same host and boot took over.
    #[error("replaced by a newer stream of host {host:?} from the same boot")]
    Replaced {
        /// The host.
        host: String,
    },
}

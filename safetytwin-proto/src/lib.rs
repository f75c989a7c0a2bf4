//! The `safetytwin.v1` protocol: generated types and services; `convert`, the one place that
//! maps them to and from the model's domain types; and the client half of the exactly-once
//! `Ingest.Sync` stream (`spool`, `sender`), which the daemon runs; `contract`, what each error
//! code tells a client to do; `private`, how both binaries create the files only their owner
//! may read; `wire`, the messages as bytes, and `cost`, what decoding an ingest message
//! allocates, so that no other crate needs prost; `parts`, how a message over the limit is
//! split by the replayer and joined by its clients.

pub mod contract;
pub mod convert;
pub mod cost;
pub mod json;
pub mod parts;
pub mod private;
pub mod sender;
pub mod spool;
pub mod wire;

/// The largest gRPC message either side accepts: the first batch of a host carries its whole
/// state; a larger answer goes in parts (`parts`).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Generated from `proto/safetytwin/v1/`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("safetytwin.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("safetytwin_v1");
}

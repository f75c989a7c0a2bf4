//! The `safetytwin.v1` protocol: generated types and services, and `convert`, the one place that
//! maps them to and from the model's domain types.

pub mod convert;

/// Generated from `proto/safetytwin/v1/`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("safetytwin.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("safetytwin_v1");
}

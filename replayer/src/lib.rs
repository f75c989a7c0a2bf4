//! The safetytwin replayer: the event-sourced history of every host's batches and the gRPC
//! services that feed and query it (the KVM twin comes with issue 5). The binary (`main.rs`) is
//! glue over these modules.

pub mod certs;
pub mod ingest;
pub mod server;
pub mod status;
pub mod store;
pub mod twin;
pub mod vm;

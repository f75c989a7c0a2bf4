//! The safetytwin replayer: the event-sourced history of every host's batches, the gRPC
//! services that feed and query it, the applier that keeps a twin VM per host at the latest
//! state, the operator's HTTP API and metrics, and the operator's client. The binary
//! (`main.rs`) is glue over these modules.

pub mod applier;
pub mod certs;
pub mod client;
pub mod export;
pub mod http;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod parts;
pub mod refusal;
pub mod scan;
pub mod server;
pub mod status;
pub mod store;
pub mod token;
pub mod twin;
pub mod vm;

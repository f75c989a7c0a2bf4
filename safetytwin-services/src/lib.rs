//! The replayer's services: `Ingest` (daemons' batch streams into the history store) and
//! `Twin` (queries, live deltas, snapshots) over gRPC, the operator's HTTP API and metrics,
//! the listener's TLS and connection limits, and the per-host certificates that bind a daemon
//! to its host id. `status` is the one place errors become gRPC codes. The twin itself
//! (`safetytwin-twin`) and the store (`safetytwin-store`) know nothing of these protocols.

pub mod certs;
pub mod http;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod refusal;
mod relay;
pub mod scan;
pub mod server;
pub mod status;
pub mod token;
pub mod twin;
pub mod views;
pub mod web;

//! The twin: a VM per host kept at the host's latest stored state. The applier
//! ([`applier::Applier`]) loads what changed from the history store, `vm::plan` decides the
//! guest steps, a [`vm::TwinBackend`] (libvirt, or the fake one the tests use) runs them and
//! snapshots the twin, `verify` proves what it holds against the model, and `metrics`
//! counts it. Nothing here speaks gRPC or HTTP: the services crate serves what this one does.

pub mod applier;
pub mod metrics;
pub mod pool;
pub mod verify;
pub mod vm;

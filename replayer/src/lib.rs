//! The safetytwin replayer: the event-sourced history of every host's batches, and (to come)
//! the gRPC services and the KVM twin. The binary (`main.rs`) is glue over these modules.

pub mod store;

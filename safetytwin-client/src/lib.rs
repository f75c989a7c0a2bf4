//! The operator's side of the replayer: [`Client`], the `Twin` and `Ingest` queries over gRPC
//! (answers in parts joined back, errors classified by `safetytwin_proto::contract`), and
//! `export`, which writes a host's state beneath a directory without following a link it did
//! not create.

mod client;

pub mod export;

pub use client::{Client, ClientError, Token};

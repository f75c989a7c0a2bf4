//! Types shared by the kernel side (`safetytwin-ebpf`) and userspace (`safetytwin-daemon`).
//!
//! Everything here is `#[repr(C)]`, free of `bool` and implicit padding, and size-asserted, so
//! the bytes the kernel writes into the ring buffer decode to the same layout in userspace.
//! Architecture invariant: this crate never depends on `std`; userspace-only impls
//! (`aya::Pod`) sit behind the `user` feature.
#![no_std]

pub mod counters;
pub mod events;
pub mod offsets;

/// Length of `task_struct.comm` (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

//! The safetytwin daemon: loads the probes, seeds its model of the host from /proc and folds
//! kernel events into it. The binary (`main.rs`) is glue over these modules.

pub mod btf;
pub mod cgroups;
pub mod changes;
pub mod clock;
pub mod dirs;
pub mod drain;
pub mod events;
pub mod held;
pub mod inventory;
pub mod json;
pub mod metrics;
pub mod observe;
pub mod offsets;
pub mod poll;
pub mod procfs;
pub mod run;
pub mod sink;
pub mod syscalls;
pub mod tracer;
pub mod watch;

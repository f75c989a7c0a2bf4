//! One probe module per event kind, named as in `safetytwin_common::events`.

pub mod cgroup;
pub mod exec;
pub mod exit;
pub mod file;
pub mod fork;

//! `cargo fuzz run config`: see [`safetytwin_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safetytwin_fuzz::config(data));

//! `cargo fuzz run plan`: see [`safetytwin_fuzz::plan`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safetytwin_fuzz::plan(data));

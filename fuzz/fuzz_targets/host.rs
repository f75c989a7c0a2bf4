//! `cargo fuzz run host`: see [`safetytwin_fuzz::host`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safetytwin_fuzz::host(data));

//! `cargo fuzz run wire`: see [`safetytwin_fuzz::wire`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safetytwin_fuzz::wire(data));

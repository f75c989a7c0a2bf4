//! `cargo fuzz run btf`: see [`safetytwin_fuzz::btf`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safetytwin_fuzz::btf(data));

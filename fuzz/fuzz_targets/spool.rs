//! `cargo fuzz run spool`: see [`safetytwin_fuzz::spool`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| safetytwin_fuzz::spool(data));

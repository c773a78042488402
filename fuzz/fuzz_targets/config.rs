//! `cargo +nightly fuzz run config`: see `mesh_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::config(data));

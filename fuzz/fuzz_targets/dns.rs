//! `cargo +nightly fuzz run dns`: see `mesh_fuzz::dns`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::dns(data));

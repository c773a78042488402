//! `cargo +nightly fuzz run kernel_record`: see `mesh_fuzz::kernel_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_fuzz::kernel_record(data));

//! Fuzz targets of the mesh agent, as plain functions: each `fuzz_targets/<name>.rs`
//! hands libFuzzer's input to the function of the same name, and the tests
//! below replay the committed seeds (`corpus/<name>/seed-*`) and the inputs
//! that once failed (`regressions/<name>/*`) through the same functions, so
//! `cargo test --lib` keeps every fixed bug fixed without nightly.
//!
//! A target panics when the agent breaks one of its invariants (each module
//! says which); everything else is an ordinary refusal of bad input.
#![forbid(unsafe_code)]

mod certificate;
mod client_hello;
mod config;
mod dns;
mod kernel_record;
mod mesh;

/// Config text: parse + validate, then the intention editor on valid configs.
pub fn config(data: &[u8]) {
    config::check(data);
}

/// The first bytes of an inbound connection: ClientHello and SNI checks.
pub fn client_hello(data: &[u8]) {
    client_hello::check(data);
}

/// A UDP datagram to the agent's DNS responder.
pub fn dns(data: &[u8]) {
    dns::check(data);
}

/// A DER certificate presented by a peer.
pub fn certificate(data: &[u8]) {
    certificate::check(data);
}

/// A record read from a kernel map, as its bytes.
pub fn kernel_record(data: &[u8]) {
    kernel_record::check(data);
}

/// A target's body: panics when the input breaks an invariant.
pub type Target = fn(&[u8]);

/// Every target by name, as `cargo fuzz` and the corpus directories name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("client_hello", client_hello),
    ("dns", dns),
    ("certificate", certificate),
    ("kernel_record", kernel_record),
];

#[cfg(test)]
mod tests;

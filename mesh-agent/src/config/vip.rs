//! Default virtual IPs for services.

use std::net::Ipv4Addr;

/// Usable hosts in each /24: `.1 ..= .254`.
const HOSTS_PER_24: u64 = 254;
/// Number of /24s in 240.0.0.0/4.
const BLOCKS: u64 = 1 << 20;

/// The default VIP of a service: a stable address in 240.0.0.0/4 derived
/// only from its name, so every node computes the same one whatever else
/// the config holds.
///
/// The 64-bit FNV-1a hash of the name's bytes picks one of the addresses
/// `240.0.0.1 ..= 255.255.255.254` that is not the `.0` or `.255` of its /24.
pub fn default_vip(service_name: &str) -> Ipv4Addr {
    // Lossless: the modulus is below 2^28.
    let index = (fnv1a_64(service_name.as_bytes()) % (BLOCKS * HOSTS_PER_24)) as u32;
    let block = index / HOSTS_PER_24 as u32; // < 2^20
    let host = index % HOSTS_PER_24 as u32 + 1; // 1..=254
    Ipv4Addr::from_bits(0xf000_0000 | (block << 8) | host)
}

/// 64-bit FNV-1a (http://www.isthe.com/chongo/tech/comp/fnv/).
pub(super) fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(PRIME)
    })
}

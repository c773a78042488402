//! What the agent writes into the maps and reads from them: the
//! config-derived maps, `CONNS` records, denials and refusals.

use std::{net::SocketAddr, sync::Arc};

use aya::maps::{HashMap, MapData, RingBuf};
use mesh_common::{
    ConnKey, DenialEvent, DenialKey, MAX_RECORD_AGE_NS, OrigDst, PairKey, ServiceId, ServiceName,
    SockAddr, names,
};
use tokio::io::unix::AsyncFd;

use super::{EbpfError, Kernel, pins};

/// What the agent puts into the maps for its node.
#[derive(Debug, Default, Clone)]
pub struct MapContents {
    /// Every service id given so far and its name (`SERVICE_NAMES`).
    pub names: Vec<(ServiceId, String)>,
    /// Mesh destinations: VIP:port and node-address:port of every meshed service.
    pub services: Vec<(SocketAddr, ServiceId)>,
    /// cgroup id -> local service.
    pub cgroups: Vec<(u64, ServiceId)>,
    /// Port -> local non-public service: the loopback guard, and what
    /// sk_lookup steers to the inbound listener.
    pub local_ports: Vec<(u16, ServiceId)>,
    /// (source, destination) -> `RULE_ALLOW` or `RULE_DENY`, 0 for `*`
    /// (`mesh_common::rules_deny`).
    pub rules: std::collections::HashMap<(ServiceId, ServiceId), u32>,
    /// Addresses of the mesh's nodes: who may connect to a service port.
    pub peers: Vec<std::net::IpAddr>,
}

/// The maps whose contents come from the config.
pub(super) struct ConfigMaps {
    pub(super) names: Synced<ServiceId, ServiceName>,
    pub(super) services: Synced<SockAddr, ServiceId>,
    pub(super) cgroups: Synced<u64, ServiceId>,
    pub(super) local_ports: Synced<u32, ServiceId>,
    pub(super) rules: Synced<PairKey, u32>,
    pub(super) peers: Synced<SockAddr, u32>,
    /// What was last asked for.
    pub(super) last: MapContents,
}

/// A config-derived map and what this agent last wrote to it, when it
/// knows (after a first sync that read the map, until another agent may
/// have written it): a change then costs a write per changed entry, not a
/// lookup per entry (110,000 at the catalog bench's 10x).
pub(super) struct Synced<K, V> {
    map: HashMap<MapData, K, V>,
    name: &'static str,
    known: Option<std::collections::HashMap<K, V>>,
}

impl<K, V> Synced<K, V>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    pub(super) fn new(map: HashMap<MapData, K, V>, name: &'static str) -> Self {
        Self {
            map,
            name,
            known: None,
        }
    }

    /// Makes the map hold exactly `want`, writing keys in the order of
    /// their `rank` and removing them in the reverse order.
    fn sync(
        &mut self,
        want: std::collections::HashMap<K, V>,
        rank: impl Fn(&K) -> u8,
    ) -> Result<(), EbpfError> {
        let known = self.known.take();
        let name = self.name;
        let err = |source| EbpfError::Map { name, source };
        let map = &mut self.map;
        let writes: Vec<(K, V)> = match &known {
            Some(known) => writes_in_order(&want, |k| known.get(k).copied(), &rank),
            None => writes_in_order(&want, |k| map.get(k, 0).ok(), &rank),
        }
        .into_iter()
        .map(|(k, v)| (*k, *v))
        .collect();
        for (k, v) in &writes {
            map.insert(k, v, 0).map_err(err)?;
        }
        let stale: Vec<K> = match &known {
            Some(known) => known
                .keys()
                .filter(|k| !want.contains_key(k))
                .copied()
                .collect(),
            None => map
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !want.contains_key(k))
                .collect(),
        };
        for k in &removals_in_order(stale, &rank) {
            map.remove(k).map_err(err)?;
        }
        self.known = Some(want);
        Ok(())
    }

    /// Another agent may write the map from now on: the next sync reads it.
    fn forget(&mut self) {
        self.known = None;
    }

    /// Entries in the map.
    fn len(&self) -> usize {
        match &self.known {
            Some(known) => known.len(),
            None => self.map.keys().count(),
        }
    }
}

impl Kernel {
    /// Connections to service ports that sk_lookup refused because their
    /// source is not a mesh node, since the programs were loaded.
    pub fn refused(&self) -> u64 {
        self.refused
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Every EPERM connect4/6 returned so far, per (source, destination,
    /// reason). The least recently refused keys may have been evicted.
    pub fn denials(&self) -> Vec<(DenialKey, u64)> {
        let denials = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        denials
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (k, per_cpu.iter().map(|v| v.count).sum()))
            .collect()
    }

    /// The programs' reports of refused connects; `None` after the first call.
    pub fn denial_events(&self) -> Result<Option<DenialEvents>, EbpfError> {
        let Some(ring) = self
            .denial_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Ok(None);
        };
        // SAFETY: the AsyncFd owns the ring buffer, which owns its fd, so
        // the fd stays open for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| EbpfError::Poll {
                name: names::DENIAL_EVENTS,
                source: e.into(),
            })?;
        Ok(Some(DenialEvents {
            ring: fd,
            paused: self.paused.clone(),
        }))
    }

    /// Takes (looks up and deletes) the record sock_ops left for a connection
    /// accepted on an outbound listener in the network namespace `netns`
    /// (its cookie). A record older than `MAX_RECORD_AGE_NS` is dropped, not
    /// returned: its 4-tuple may since have been reused by someone else.
    pub fn take_orig(&self, peer: SocketAddr, local: SocketAddr, netns: u64) -> Option<OrigDst> {
        let key = ConnKey {
            peer: sock_addr(peer),
            local: sock_addr(local),
            netns,
        };
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let orig = conns.get(&key, 0).ok()?;
        let _ = conns.remove(&key);
        fresh(&orig, monotonic_ns()).then_some(orig)
    }

    /// Makes the config-derived maps hold exactly `contents`. New entries go
    /// in before stale ones come out, so nothing that stays is ever briefly
    /// missing; `RULES` changes most specific first (`rule_rank`).
    pub fn update(&self, contents: &MapContents) -> Result<(), EbpfError> {
        let mut maps = self.config_maps.lock().unwrap_or_else(|e| e.into_inner());
        if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            maps.last = contents.clone();
            return Ok(());
        }
        maps.sync(contents)
    }

    /// Stops writing the maps (the next agent of the node is taking over
    /// and writes them); `thaw` writes what was last asked for.
    pub fn freeze(&self) {
        let mut maps = self.config_maps.lock().unwrap_or_else(|e| e.into_inner());
        maps.forget();
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes the maps again (a handover failed): what this agent last
    /// asked for, over whatever the other agent wrote.
    pub fn thaw(&self) -> Result<(), EbpfError> {
        let mut maps = self.config_maps.lock().unwrap_or_else(|e| e.into_inner());
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let last = maps.last.clone();
        maps.sync(&last)
    }

    /// Entries in the maps the agent holds, for metrics.
    pub fn map_entries(&self) -> Vec<(&'static str, i64)> {
        let conns = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .count();
        let denials = self
            .denials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .count();
        let maps = self.config_maps.lock().unwrap_or_else(|e| e.into_inner());
        [
            (names::CONNS, conns),
            (names::DENIALS, denials),
            (names::PEERS, maps.peers.len()),
            (names::RULES, maps.rules.len()),
            (names::SERVICES, maps.services.len()),
            (names::CGROUPS, maps.cgroups.len()),
            (names::LOCAL_PORTS, maps.local_ports.len()),
        ]
        .into_iter()
        .map(|(name, n)| (name, i64::try_from(n).unwrap_or(i64::MAX)))
        .collect()
    }

    /// Removes `CONNS` records too old to be claimed (their connection died
    /// before accept()). Returns how many.
    pub fn sweep_stale(&self) -> usize {
        let now = monotonic_ns();
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<ConnKey> = conns
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, orig)| !fresh(orig, now))
            .map(|(key, _)| key)
            .collect();
        for key in &stale {
            let _ = conns.remove(key);
        }
        stale.len()
    }
}

impl super::OrigDstAddr for Kernel {
    fn take(&self, peer: SocketAddr, local: SocketAddr, netns: u64) -> Option<OrigDst> {
        self.take_orig(peer, local, netns)
    }
}

/// The `DENIAL_EVENTS` ring buffer, readable from async code.
pub struct DenialEvents {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Set while frozen for a handover: the ring is pinned and the next
    /// agent reads it then (two readers would share one read position).
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl DenialEvents {
    /// Waits for the next batch of reports and returns it (records that do
    /// not decode are skipped).
    pub async fn next_batch(&mut self) -> Result<Vec<DenialEvent>, EbpfError> {
        loop {
            if self.paused.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .map_err(|source| EbpfError::Poll {
                    name: names::DENIAL_EVENTS,
                    source,
                })?;
            if self.paused.load(std::sync::atomic::Ordering::SeqCst) {
                // Frozen while this reader waited: leave the records (and
                // the readiness) to whoever reads next.
                drop(guard);
                continue;
            }
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                batch.extend(DenialEvent::from_bytes(&item));
            }
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

/// Whether a record filed at `orig.created_ns` may still be claimed at `now`
/// (CLOCK_MONOTONIC nanoseconds).
pub fn fresh(orig: &OrigDst, now: u64) -> bool {
    now.saturating_sub(orig.created_ns) <= MAX_RECORD_AGE_NS
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(u64::MAX)
}

/// A kernel `SockAddr` as a socket address (IPv4-mapped back to IPv4): the
/// inverse of `sock_addr`.
pub fn socket_addr(addr: &SockAddr) -> SocketAddr {
    let mut octets = [0u8; 16];
    for (i, word) in addr.addr.iter().enumerate() {
        octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    SocketAddr::new(std::net::Ipv6Addr::from(octets).to_canonical(), addr.port)
}

/// `addr` as the kernel programs see it (IPv4 mapped into IPv6).
pub fn sock_addr(addr: SocketAddr) -> SockAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let o = ip.octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    SockAddr {
        addr: [word(0), word(4), word(8), word(12)],
        port: addr.port(),
        _pad: 0,
    }
}

/// The service ids the last agent of the node gave (its pinned
/// `SERVICE_NAMES`), so this one keeps them; none if nothing is pinned.
pub fn pinned_service_names(pins: &pins::Pins) -> Vec<(ServiceId, String)> {
    let path = pins.dir.join(names::SERVICE_NAMES);
    let Ok(data) = MapData::from_pin(&path) else {
        return Vec::new();
    };
    let Ok(map) = HashMap::<_, ServiceId, ServiceName>::try_from(aya::maps::Map::HashMap(data))
    else {
        return Vec::new();
    };
    map.iter()
        .filter_map(Result::ok)
        .filter_map(|(id, name)| {
            let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            let name = std::str::from_utf8(&name[..end]).ok()?;
            (!name.is_empty()).then(|| (id, name.to_owned()))
        })
        .collect()
}

/// `name` as `SERVICE_NAMES` holds it (zero-padded; longer names, which
/// the config refuses, are cut).
fn service_name(name: &str) -> ServiceName {
    let mut out = [0u8; 64];
    let n = name.len().min(out.len() - 1);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

impl ConfigMaps {
    pub(super) fn sync(&mut self, c: &MapContents) -> Result<(), EbpfError> {
        self.last = c.clone();
        let names = c
            .names
            .iter()
            .map(|(id, name)| (*id, service_name(name)))
            .collect();
        self.names.sync(names, |_| 0)?;
        let services = c
            .services
            .iter()
            .map(|(a, id)| (sock_addr(*a), *id))
            .collect();
        self.services.sync(services, |_| 0)?;
        let cgroups = c.cgroups.iter().copied().collect();
        self.cgroups.sync(cgroups, |_| 0)?;
        let ports = c
            .local_ports
            .iter()
            .map(|(p, id)| (u32::from(*p), *id))
            .collect();
        self.local_ports.sync(ports, |_| 0)?;
        let rules = c
            .rules
            .iter()
            .map(|(&(src, dst), &rule)| (PairKey { src, dst }, rule))
            .collect();
        self.rules.sync(rules, rule_rank)?;
        let peers = c
            .peers
            .iter()
            .map(|ip| (sock_addr(SocketAddr::new(*ip, 0)), 1))
            .collect();
        self.peers.sync(peers, |_| 0)
    }

    /// Another agent may write the maps from now on.
    fn forget(&mut self) {
        self.names.forget();
        self.services.forget();
        self.cgroups.forget();
        self.local_ports.forget();
        self.rules.forget();
        self.peers.forget();
    }
}

/// The entries of `want` that `held` does not hold as wanted, in the
/// order of their `rank`.
fn writes_in_order<K, V: PartialEq>(
    want: &std::collections::HashMap<K, V>,
    held: impl Fn(&K) -> Option<V>,
    rank: impl Fn(&K) -> u8,
) -> Vec<(&K, &V)> {
    let mut writes: Vec<(&K, &V)> = want
        .iter()
        .filter(|(k, v)| held(k).as_ref() != Some(*v))
        .collect();
    writes.sort_by_key(|(k, _)| rank(k));
    writes
}

/// `stale` keys in the reverse order of their `rank`.
fn removals_in_order<K>(mut stale: Vec<K>, rank: impl Fn(&K) -> u8) -> Vec<K> {
    stale.sort_by_key(|k| std::cmp::Reverse(rank(k)));
    stale
}

/// The order `RULES` changes in: `src -> dst` (0) before `src -> *` and
/// `* -> dst` (1) before `* -> *` (2) as they are written, the reverse as
/// they are removed. A pair that both the old and the new intentions allow
/// is then never refused in between: a new entry that decides it goes in
/// before any less specific one, and an old one that decided it goes out
/// after every less specific one. (One the old and new intentions both
/// deny may be let through in between when two entries of one rank swap
/// actions; the agent refuses it on the snapshot in force, which a reload
/// publishes before it writes the maps.)
fn rule_rank(key: &PairKey) -> u8 {
    u8::from(key.src == 0) + u8::from(key.dst == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `RULES` going from any rule set to any other, one write or
        /// removal at a time in `rule_rank`'s order: a pair that both
        /// allow is never refused on the way.
        #[test]
        fn a_pair_both_rule_sets_allow_is_never_refused_in_between(
            old in proptest::collection::hash_map((0u32..3, 0u32..3), proptest::bool::ANY, 0..9),
            new in proptest::collection::hash_map((0u32..3, 0u32..3), proptest::bool::ANY, 0..9),
        ) {
            // Sources 1 and 2, destinations 3 and 4 (0 is `*`); (0, 0)
            // always held, as the agent writes it.
            let rules = |m: &std::collections::HashMap<(u32, u32), bool>| {
                let mut r: std::collections::HashMap<PairKey, u32> = m
                    .iter()
                    .map(|(&(s, d), &allow)| {
                        let key = PairKey { src: s, dst: if d == 0 { 0 } else { d + 2 } };
                        (key, if allow { mesh_common::RULE_ALLOW } else { mesh_common::RULE_DENY })
                    })
                    .collect();
                r.entry(PairKey { src: 0, dst: 0 }).or_insert(mesh_common::RULE_ALLOW);
                r
            };
            let (old, new) = (rules(&old), rules(&new));
            let denies = |m: &std::collections::HashMap<PairKey, u32>, s, d| {
                mesh_common::rules_deny(|k| m.get(&k).copied(), s, d)
            };
            let allowed_by_both: Vec<(u32, u32)> = [(1, 3), (1, 4), (2, 3), (2, 4)]
                .into_iter()
                .filter(|&(s, d)| !denies(&old, s, d) && !denies(&new, s, d))
                .collect();
            let mut held = old.clone();
            let check = |held: &std::collections::HashMap<PairKey, u32>| {
                allowed_by_both.iter().all(|&(s, d)| !denies(held, s, d))
            };
            let writes: Vec<(PairKey, u32)> = writes_in_order(&new, |k| held.get(k).copied(), rule_rank)
                .into_iter()
                .map(|(k, v)| (*k, *v))
                .collect();
            for (k, v) in writes {
                held.insert(k, v);
                proptest::prop_assert!(check(&held), "refused after writing {:?}", k);
            }
            let stale: Vec<PairKey> = held.keys().filter(|k| !new.contains_key(k)).copied().collect();
            for k in removals_in_order(stale, rule_rank) {
                held.remove(&k);
                proptest::prop_assert!(check(&held), "refused after removing {:?}", k);
            }
            proptest::prop_assert_eq!(held, new);
        }
    }

    #[test]
    fn sock_addr_maps_ipv4_like_the_kernel() {
        let a = sock_addr("10.77.0.2:5001".parse().unwrap());
        assert_eq!(
            a,
            SockAddr::from_v4(u32::from_ne_bytes([10, 77, 0, 2]), 5001)
        );
        let b = sock_addr("[::1]:80".parse().unwrap());
        assert!(b.reaches_loopback() && !b.is_v4());
    }

    #[test]
    fn socket_addr_inverts_sock_addr() {
        for text in ["10.77.0.2:5001", "[fd77::2]:443", "[::1]:80", "240.0.0.2:1"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(socket_addr(&sock_addr(addr)), addr, "{text}");
        }
    }

    #[test]
    fn old_records_are_not_fresh() {
        let orig = |created_ns| OrigDst {
            dst: sock_addr("10.0.0.1:1".parse().unwrap()),
            src_service: 1,
            dst_service: 2,
            uid: 0,
            created_ns,
        };
        let now = 10 * MAX_RECORD_AGE_NS;
        assert!(fresh(&orig(now - 1000), now));
        assert!(!fresh(&orig(now - MAX_RECORD_AGE_NS - 1), now));
        // The monotonic clock is the kernel's: a record made now is fresh.
        assert!(fresh(&orig(monotonic_ns()), monotonic_ns()));
    }
}

//! Loading, attaching and feeding the kernel programs of `mesh-ebpf`.
//!
//! Programs are attached with bpf links pinned in bpffs with the maps
//! (`pins`): they stay when the agent dies, so the node stays closed (the
//! loopback guard refuses, apps' calls to mesh destinations are redirected
//! to a closed port). A starting agent adopts what it finds: it reuses the
//! pinned maps and swaps its freshly loaded programs into the pinned links
//! (`BPF_LINK_UPDATE`, atomic: no moment without the guard). A deliberate
//! stop ([`Kernel::unpin`]) or `mesh-agent down` removes the pins.

pub mod pins;

use std::{
    collections::HashSet,
    fs::File,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf, SockMap},
    programs::ProgramError,
};
use mesh_common::{
    ConnKey, DenialCount, DenialEvent, DenialKey, LISTENER_V4, LISTENER_V6, MAX_RECORD_AGE_NS,
    OrigDst, PairKey, ServiceId, ServiceName, SockAddr, names,
};
use tokio::io::unix::AsyncFd;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("failed to load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("failed to open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("eBPF program {name}: failed to attach it with a link pinned at {path}: {source}")]
    Link {
        name: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("bpffs at {path}: {source}")]
    Pins {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to watch the ring buffer {name}: {source}")]
    Poll {
        name: &'static str,
        source: std::io::Error,
    },
}

/// The object file built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh"));

/// What the programs need to know at load time.
pub struct LoadParams {
    pub netns_cookie: u64,
    pub agent_cgroup: u64,
    pub outbound_port: u16,
    /// Whether sk_lookup refuses sources that are not mesh nodes (`PEERS`).
    pub check_peers: bool,
    /// The admin endpoint's port (bind4/6 keep it for root).
    pub admin_port: u16,
}

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
    /// (source, destination) pairs the intentions deny.
    pub denied: HashSet<(ServiceId, ServiceId)>,
    /// Addresses of the mesh's nodes: who may connect to a service port.
    pub peers: Vec<std::net::IpAddr>,
}

/// The loaded programs and the maps the agent writes at run time.
pub struct Kernel {
    ebpf: Ebpf,
    conns: Mutex<HashMap<MapData, ConnKey, OrigDst>>,
    refused: PerCpuArray<MapData, u64>,
    denials: Mutex<PerCpuHashMap<MapData, DenialKey, DenialCount>>,
    /// Taken once by `denial_events`.
    denial_events: Mutex<Option<RingBuf<MapData>>>,
    /// The maps derived from the config, rewritten on every change.
    config_maps: Mutex<ConfigMaps>,
    /// While set, `update` only remembers what to write (a handover is
    /// under way: the next agent writes the maps).
    frozen: std::sync::atomic::AtomicBool,
    /// The same for reading `DENIAL_EVENTS`.
    paused: Arc<std::sync::atomic::AtomicBool>,
    /// Where the links and maps are pinned.
    pins: pins::Pins,
    /// This agent's programs' ids, by name.
    programs: Vec<(&'static str, u32)>,
    /// The links, held while the agent runs (pinned too).
    _links: Vec<OwnedFd>,
}

/// The maps whose contents come from the config.
struct ConfigMaps {
    names: HashMap<MapData, ServiceId, ServiceName>,
    services: HashMap<MapData, SockAddr, ServiceId>,
    cgroups: HashMap<MapData, u64, ServiceId>,
    local_ports: HashMap<MapData, u32, ServiceId>,
    denied: HashMap<MapData, PairKey, u32>,
    peers: HashMap<MapData, SockAddr, u32>,
    /// What was last asked for.
    last: MapContents,
}

impl Kernel {
    /// Registers `mesh_ebpf_map_entries`, and folds sk_lookup's refusals
    /// into `telemetry` before each scrape.
    pub fn register_metrics(
        self: &Arc<Self>,
        reg: &mut crate::telemetry::Registry,
        telemetry: Arc<crate::telemetry::Telemetry>,
    ) {
        let this = self.clone();
        reg.before_scrape(move || telemetry.kernel_refused(this.refused()));
        let this = self.clone();
        reg.collect(move |e| {
            crate::telemetry::registry::gauges(
                e,
                "mesh_ebpf_map_entries",
                "Entries in the agent's eBPF maps",
                this.map_entries()
                    .into_iter()
                    .map(|(map, n)| (crate::telemetry::MapLabels { map }, n)),
            )
        });
    }

    /// Loads the object with `params` (reusing the maps pinned in `pins`),
    /// fills the maps from `contents`, puts the inbound listeners into
    /// `LISTENERS`, then attaches connect4/6 and sock_ops to the cgroup2
    /// root and sk_lookup to this netns, each through the link pinned in
    /// `pins` (its program swapped for the new one) or a new pinned link.
    pub fn start(
        params: &LoadParams,
        contents: &MapContents,
        inbound_v4: &impl AsRawFd,
        inbound_v6: Option<&impl AsRawFd>,
        cgroup_root: &Path,
        pins: &pins::Pins,
    ) -> Result<Self, EbpfError> {
        std::fs::create_dir_all(&pins.dir).map_err(|source| EbpfError::Pins {
            path: pins.dir.display().to_string(),
            source,
        })?;
        let adopting = pins.link("mesh_connect4").exists();
        let mut ebpf = EbpfLoader::new()
            .override_global(names::NETNS_COOKIE, &params.netns_cookie, true)
            .override_global(names::AGENT_CGROUP, &params.agent_cgroup, true)
            .override_global(names::OUTBOUND_PORT, &params.outbound_port, true)
            .override_global(names::CHECK_PEERS, &u8::from(params.check_peers), true)
            .override_global(names::ADMIN_PORT, &params.admin_port, true)
            .default_map_pin_directory(&pins.dir)
            .load(OBJECT)?;
        start_logger(&mut ebpf);

        let mut config_maps = ConfigMaps {
            names: take_map(&mut ebpf, names::SERVICE_NAMES)?,
            services: take_map(&mut ebpf, names::SERVICES)?,
            cgroups: take_map(&mut ebpf, names::CGROUPS)?,
            local_ports: take_map(&mut ebpf, names::LOCAL_PORTS)?,
            denied: take_map(&mut ebpf, names::DENIED)?,
            peers: take_map(&mut ebpf, names::PEERS)?,
            last: MapContents::default(),
        };
        config_maps.sync(contents)?;
        let mut listeners: SockMap<_> = map(&mut ebpf, names::LISTENERS)?;
        listeners
            .set(LISTENER_V4, inbound_v4, 0)
            .map_err(|source| EbpfError::Map {
                name: names::LISTENERS,
                source,
            })?;
        if let Some(v6) = inbound_v6 {
            listeners
                .set(LISTENER_V6, v6, 0)
                .map_err(|source| EbpfError::Map {
                    name: names::LISTENERS,
                    source,
                })?;
        }

        let cgroup = open(cgroup_root)?;
        let netns = open(Path::new("/proc/self/ns/net"))?;
        // Every program loaded (verified) first: one the kernel refuses
        // leaves the pinned ones, and a running agent, untouched.
        let load = |ebpf: &mut Ebpf, name: &'static str| -> Result<(), EbpfError> {
            let prog = ebpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram(name))?;
            let loaded = match prog {
                aya::programs::Program::SockOps(p) => p.load(),
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::SkLookup(p) => p.load(),
                _ => return Err(EbpfError::MissingProgram(name)),
            };
            loaded.map_err(|source| EbpfError::Program { name, source })
        };
        // sock_ops first: a connect redirected before it is attached would
        // reach the agent without a record.
        let plan = [
            ("mesh_sock_ops", cgroup.as_fd(), pins::BPF_CGROUP_SOCK_OPS),
            (
                "mesh_connect4",
                cgroup.as_fd(),
                pins::BPF_CGROUP_INET4_CONNECT,
            ),
            (
                "mesh_connect6",
                cgroup.as_fd(),
                pins::BPF_CGROUP_INET6_CONNECT,
            ),
            ("mesh_sk_lookup", netns.as_fd(), pins::BPF_SK_LOOKUP),
            ("mesh_bind4", cgroup.as_fd(), pins::BPF_CGROUP_INET4_BIND),
            ("mesh_bind6", cgroup.as_fd(), pins::BPF_CGROUP_INET6_BIND),
        ];
        for (name, _, _) in &plan {
            load(&mut ebpf, name)?;
        }
        let mut links = Vec::new();
        let mut programs = Vec::new();
        for (name, target, attach_type) in plan {
            let prog = ebpf.program(name).ok_or(EbpfError::MissingProgram(name))?;
            let fail = |source| EbpfError::Program { name, source };
            let id = prog.info().map_err(fail)?.id();
            let fd = prog.fd().map_err(fail)?;
            links.push(attach(pins, name, fd.as_fd(), target, attach_type)?);
            programs.push((name, id));
        }
        if adopting {
            tracing::info!(pins = %pins.dir.display(), "adopted the pinned programs and maps");
        }

        let conns = Mutex::new(take_map(&mut ebpf, names::CONNS)?);
        Ok(Self {
            conns,
            refused: take_map(&mut ebpf, names::REFUSED)?,
            denials: Mutex::new(take_map(&mut ebpf, names::DENIALS)?),
            denial_events: Mutex::new(Some(take_map(&mut ebpf, names::DENIAL_EVENTS)?)),
            config_maps: Mutex::new(config_maps),
            frozen: std::sync::atomic::AtomicBool::new(false),
            paused: Arc::default(),
            pins: pins.clone(),
            programs,
            _links: links,
            ebpf,
        })
    }

    /// Whether the pinned links still run this agent's programs (another
    /// agent of the node may have adopted them since).
    pub fn owns_pins(&self) -> bool {
        self.programs.iter().all(|(name, id)| {
            pins::get(&self.pins.link(name))
                .and_then(|link| pins::link_program(link.as_fd()))
                .is_ok_and(|running| running == *id)
        })
    }

    /// Removes the pins (a deliberate stop) if they are still this
    /// agent's: the programs are detached when this process lets go of
    /// their links, at the latest when it exits. Returns whether it did.
    pub fn unpin(&self) -> Result<bool, EbpfError> {
        if !self.owns_pins() {
            return Ok(false);
        }
        self.pins.remove().map(|_| true)
    }

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
    /// accepted on the outbound listener. A record older than
    /// `MAX_RECORD_AGE_NS` is dropped, not returned: its 4-tuple may since
    /// have been reused by someone else.
    pub fn take_orig(&self, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst> {
        let key = ConnKey {
            peer: sock_addr(peer),
            local: sock_addr(local),
        };
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let orig = conns.get(&key, 0).ok()?;
        let _ = conns.remove(&key);
        fresh(&orig, monotonic_ns()).then_some(orig)
    }

    /// Makes the config-derived maps hold exactly `contents`. New entries go
    /// in before stale ones come out, so nothing that stays is ever briefly
    /// missing (a denied pair is never briefly allowed).
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
        let _maps = self.config_maps.lock().unwrap_or_else(|e| e.into_inner());
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
            (names::PEERS, maps.peers.keys().count()),
            (names::DENIED, maps.denied.keys().count()),
            (names::SERVICES, maps.services.keys().count()),
            (names::CGROUPS, maps.cgroups.keys().count()),
            (names::LOCAL_PORTS, maps.local_ports.keys().count()),
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

    /// Detaches every program (by dropping the links) and closes the maps.
    pub fn stop(self) {
        drop(self.conns);
        drop(self.denials);
        drop(self.denial_events);
        drop(self.config_maps);
        drop(self.ebpf);
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
    fn sync(&mut self, c: &MapContents) -> Result<(), EbpfError> {
        self.last = c.clone();
        let names = c
            .names
            .iter()
            .map(|(id, name)| (*id, service_name(name)))
            .collect();
        sync_map(&mut self.names, names::SERVICE_NAMES, &names)?;
        let services = c
            .services
            .iter()
            .map(|(a, id)| (sock_addr(*a), *id))
            .collect();
        sync_map(&mut self.services, names::SERVICES, &services)?;
        let cgroups = c.cgroups.iter().copied().collect();
        sync_map(&mut self.cgroups, names::CGROUPS, &cgroups)?;
        let ports = c
            .local_ports
            .iter()
            .map(|(p, id)| (u32::from(*p), *id))
            .collect();
        sync_map(&mut self.local_ports, names::LOCAL_PORTS, &ports)?;
        let denied = c
            .denied
            .iter()
            .map(|&(src, dst)| (PairKey { src, dst }, 1))
            .collect();
        sync_map(&mut self.denied, names::DENIED, &denied)?;
        let peers = c
            .peers
            .iter()
            .map(|ip| (sock_addr(SocketAddr::new(*ip, 0)), 1))
            .collect();
        sync_map(&mut self.peers, names::PEERS, &peers)
    }
}

/// Makes `map` hold exactly `want`: inserts (or overwrites) first, then
/// removes keys not wanted.
fn sync_map<K, V>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    want: &std::collections::HashMap<K, V>,
) -> Result<(), EbpfError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    let err = |source| EbpfError::Map { name, source };
    for (k, v) in want {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(k, v, 0).map_err(err)?;
        }
    }
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(k))
        .collect();
    for k in &stale {
        map.remove(k).map_err(err)?;
    }
    Ok(())
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let m = ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
    T::try_from(m).map_err(|source| EbpfError::Map { name, source })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let m = ebpf.take_map(name).ok_or(EbpfError::MissingMap(name))?;
    T::try_from(m).map_err(|source| EbpfError::Map { name, source })
}

/// Runs `prog` through the link pinned for `name`: the pinned link with
/// its program swapped for `prog` if there is one that takes it, else a new
/// link to `target`, pinned. Returns the link.
fn attach(
    pins: &pins::Pins,
    name: &'static str,
    prog: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
) -> Result<OwnedFd, EbpfError> {
    let path = pins.link(name);
    let fail = |source| EbpfError::Link {
        name,
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        let adopted =
            pins::get(&path).and_then(|link| pins::link_update(link.as_fd(), prog).map(|()| link));
        match adopted {
            Ok(link) => return Ok(link),
            // A link whose netns is gone: replace it. Anything else fails
            // the start, the pinned link left as it is.
            Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
                tracing::info!(
                    program = name,
                    "replacing a pinned link whose network namespace is gone"
                );
                std::fs::remove_file(&path).map_err(fail)?;
            }
            Err(e) => return Err(fail(e)),
        }
    }
    let link = pins::link_create(prog, target, attach_type).map_err(fail)?;
    pins::pin(link.as_fd(), &path).map_err(fail)?;
    Ok(link)
}

fn open(path: &Path) -> Result<File, EbpfError> {
    File::open(path).map_err(|source| EbpfError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Forwards the programs' aya-log records to `log`, which tracing-subscriber
/// turns into tracing events. The logger must live as long as the programs.
fn start_logger(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF logs unavailable");
            return;
        }
    };
    // SAFETY: the AsyncFd owns the logger, which owns the ring buffer's fd,
    // so the fd stays open for as long as it is registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF logs unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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

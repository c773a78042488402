//! Loading the object, attaching its programs through pinned links, and
//! adopting the links and maps a previous agent of the node left pinned.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapError, SockMap},
};
use mesh_common::{LISTENER_V4, LISTENER_V6, names};
use tokio::io::unix::AsyncFd;

use super::{
    EbpfError, Kernel,
    maps::{ConfigMaps, MapContents, Synced},
    pins,
};

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

impl Kernel {
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
        // Pinned again if the start fails (`?` below drops it).
        let aside = SetAside::changed(pins)?;
        let adopting = pins.link(names::PROG_CONNECT4).exists();
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
            names: synced(&mut ebpf, names::SERVICE_NAMES)?,
            services: synced(&mut ebpf, names::SERVICES)?,
            cgroups: synced(&mut ebpf, names::CGROUPS)?,
            local_ports: synced(&mut ebpf, names::LOCAL_PORTS)?,
            rules: synced(&mut ebpf, names::RULES)?,
            peers: synced(&mut ebpf, names::PEERS)?,
            last: MapContents::default(),
        };
        config_maps.sync(contents)?;
        set_listeners(&mut ebpf, inbound_v4, inbound_v6)?;
        let (links, programs) = load_and_attach(&mut ebpf, cgroup_root, pins)?;
        if adopting {
            tracing::info!(pins = %pins.dir.display(), "adopted the pinned programs and maps");
        }

        let conns = Mutex::new(take_map(&mut ebpf, names::CONNS)?);
        let refused = take_map(&mut ebpf, names::REFUSED)?;
        let denials = Mutex::new(take_map(&mut ebpf, names::DENIALS)?);
        let denial_events = Mutex::new(Some(take_map(&mut ebpf, names::DENIAL_EVENTS)?));
        // Started: the old maps go with their last reference.
        aside.keep_unpinned();
        Ok(Self {
            conns,
            refused,
            denials,
            denial_events,
            config_maps: Mutex::new(config_maps),
            frozen: std::sync::atomic::AtomicBool::new(false),
            paused: Arc::default(),
            pins: pins.clone(),
            netns_cookie: params.netns_cookie,
            programs,
            _links: links,
            ebpf,
        })
    }
}

/// The maps of the node's pins this start set aside (see
/// [`SetAside::changed`]): gone once it succeeded
/// ([`SetAside::keep_unpinned`]), pinned again when dropped before, so a
/// start that fails (a program the kernel refuses, say) leaves the pins as
/// it found them.
struct SetAside {
    /// Each map's pin, and the map, held open.
    unpinned: Vec<(PathBuf, OwnedFd)>,
}

impl SetAside {
    /// Unpins what the loader must not adopt (holding each map open):
    /// maps an earlier agent pinned that this object no longer has
    /// (`names::RETIRED`), and maps whose definition (type, key and value
    /// sizes, entries, flags) this object changed. The loader then makes
    /// them anew and the agent fills them before any of this object's
    /// programs runs; an earlier agent's programs keep the old ones until
    /// their links are updated. (The id table in `SERVICE_NAMES` was read
    /// before: `pinned_service_names`.)
    fn changed(pins: &pins::Pins) -> Result<Self, EbpfError> {
        let object = aya_obj::Object::parse(OBJECT).map_err(aya::EbpfError::from)?;
        let mut aside = Self {
            unpinned: Vec::new(),
        };
        for name in names::RETIRED {
            aside.set(pins, name, "a map this agent no longer uses")?;
        }
        for (name, map) in &object.maps {
            // Not pinned, or not a map this agent can read: the loader decides.
            let Ok(pinned) = aya::maps::MapInfo::from_pin(pins.dir.join(name)) else {
                continue;
            };
            let same = pinned.map_type().is_ok_and(|t| t as u32 == map.map_type())
                && (pinned.key_size(), pinned.value_size()) == (map.key_size(), map.value_size())
                && (pinned.max_entries(), pinned.map_flags())
                    == (map.max_entries(), map.map_flags());
            if !same {
                aside.set(pins, name, "a map whose definition this agent changed")?;
            }
        }
        Ok(aside)
    }

    /// Unpins the map `name`, if pinned, holding it open.
    fn set(&mut self, pins: &pins::Pins, name: &str, what: &str) -> Result<(), EbpfError> {
        let pin = pins.dir.join(name);
        let fail = |source| EbpfError::Pins {
            path: pin.display().to_string(),
            source,
        };
        let map = match pins::get(&pin) {
            Ok(map) => map,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fail(e)),
        };
        std::fs::remove_file(&pin).map_err(fail)?;
        tracing::info!(map = name, "unpinned {what}");
        self.unpinned.push((pin, map));
        Ok(())
    }

    /// The start succeeded: the maps stay unpinned.
    fn keep_unpinned(mut self) {
        self.unpinned.clear();
    }
}

impl Drop for SetAside {
    /// The start failed: each map pinned again where it was (in place of
    /// any the loader made).
    fn drop(&mut self) {
        for (pin, map) in self.unpinned.drain(..) {
            let _ = std::fs::remove_file(&pin);
            if let Err(e) = pins::pin(map.as_fd(), &pin) {
                tracing::warn!(path = %pin.display(), error = %e, "could not pin an old map again");
            }
        }
    }
}

/// Puts the inbound listeners into `LISTENERS` (sk_lookup steers to them).
fn set_listeners(
    ebpf: &mut Ebpf,
    inbound_v4: &impl AsRawFd,
    inbound_v6: Option<&impl AsRawFd>,
) -> Result<(), EbpfError> {
    let mut listeners: SockMap<_> = map(ebpf, names::LISTENERS)?;
    let fail = |source| EbpfError::Map {
        name: names::LISTENERS,
        source,
    };
    listeners.set(LISTENER_V4, inbound_v4, 0).map_err(fail)?;
    if let Some(v6) = inbound_v6 {
        listeners.set(LISTENER_V6, v6, 0).map_err(fail)?;
    }
    Ok(())
}

/// The programs attached: their links, and each one's name and id.
type Attached = (Vec<OwnedFd>, Vec<(&'static str, u32)>);

/// Loads (verifies) every program, then attaches each through its pinned
/// link (swapping the program) or a new one.
fn load_and_attach(
    ebpf: &mut Ebpf,
    cgroup_root: &Path,
    pins: &pins::Pins,
) -> Result<Attached, EbpfError> {
    let cgroup = open(cgroup_root)?;
    let netns = open(Path::new("/proc/self/ns/net"))?;
    // sock_ops first: a connect redirected before it is attached would
    // reach the agent without a record.
    let plan = [
        (
            names::PROG_SOCK_OPS,
            cgroup.as_fd(),
            pins::BPF_CGROUP_SOCK_OPS,
        ),
        (
            names::PROG_CONNECT4,
            cgroup.as_fd(),
            pins::BPF_CGROUP_INET4_CONNECT,
        ),
        (
            names::PROG_CONNECT6,
            cgroup.as_fd(),
            pins::BPF_CGROUP_INET6_CONNECT,
        ),
        (names::PROG_SK_LOOKUP, netns.as_fd(), pins::BPF_SK_LOOKUP),
        (
            names::PROG_BIND4,
            cgroup.as_fd(),
            pins::BPF_CGROUP_INET4_BIND,
        ),
        (
            names::PROG_BIND6,
            cgroup.as_fd(),
            pins::BPF_CGROUP_INET6_BIND,
        ),
    ];
    // Every program loaded (verified) first: one the kernel refuses
    // leaves the pinned ones, and a running agent, untouched.
    for (name, _, _) in &plan {
        load(ebpf, name)?;
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
    Ok((links, programs))
}

impl Kernel {
    /// Runs this agent's sk_lookup program in the network namespace
    /// `netns` (a container's, nsfs inode `inode`) too, through a link
    /// pinned beside the node's (`pins::Pins::guard`; adopted, its program
    /// swapped, if pinned already): like the node's, it stays while no
    /// agent runs. There it refuses connections to a local service's port
    /// on any address but loopback, so a service that binds `0.0.0.0` in
    /// its container is not reachable on the container's own addresses.
    pub fn guard_netns(&self, netns: BorrowedFd<'_>, inode: u64) -> Result<(), EbpfError> {
        let name = names::PROG_SK_LOOKUP;
        let prog = self
            .ebpf
            .program(name)
            .ok_or(EbpfError::MissingProgram(name))?;
        let fd = prog
            .fd()
            .map_err(|source| EbpfError::Program { name, source })?;
        let path = self.pins.guard(inode);
        attach_at(&path, name, fd.as_fd(), netns, pins::BPF_SK_LOOKUP).map(drop)
    }

    /// Unpins the guard of the container namespace `inode` (it is gone, or
    /// no longer a container of this node): its link is detached once no
    /// process holds it.
    pub fn unguard_netns(&self, inode: u64) {
        let path = self.pins.guard(inode);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not unpin a container's guard");
        }
    }

    /// The container namespaces (inodes) with a guard pinned.
    pub fn guarded_netns(&self) -> Vec<u64> {
        self.pins.guards()
    }
}

/// Loads (verifies) the program `name`.
fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), EbpfError> {
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
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let m = ebpf.map_mut(name).ok_or(EbpfError::MissingMap(name))?;
    T::try_from(m).map_err(|source| EbpfError::Map { name, source })
}

/// The config-derived map `name`, taken from `ebpf`.
fn synced<K, V>(ebpf: &mut Ebpf, name: &'static str) -> Result<Synced<K, V>, EbpfError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    take_map(ebpf, name).map(|map| Synced::new(map, name))
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
    attach_at(&pins.link(name), name, prog, target, attach_type)
}

/// [`attach`] through the link pinned at `path`.
fn attach_at(
    path: &Path,
    name: &'static str,
    prog: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
) -> Result<OwnedFd, EbpfError> {
    let fail = |source| EbpfError::Link {
        name,
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        match adopt(path, prog, target, attach_type) {
            Ok(Ok(link)) => return Ok(link),
            // Attached elsewhere: the node's cgroup or netns was made anew
            // (the old one may live on, held by something else). This
            // agent serves the one it runs in: replace the link.
            Ok(Err(found)) => {
                tracing::info!(
                    program = name,
                    ?found,
                    "replacing a pinned link attached to another cgroup or network namespace"
                );
                std::fs::remove_file(path).map_err(fail)?;
            }
            // A link whose netns or cgroup is gone: replace it. Anything
            // else fails the start, the pinned link left as it is.
            Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
                tracing::info!(
                    program = name,
                    "replacing a pinned link whose network namespace is gone"
                );
                std::fs::remove_file(path).map_err(fail)?;
            }
            Err(e) => return Err(fail(e)),
        }
    }
    let link = pins::link_create(prog, target, attach_type).map_err(fail)?;
    pins::pin(link.as_fd(), path).map_err(fail)?;
    Ok(link)
}

/// The link pinned at `path`, now running `prog`, if it is attached to
/// `target`; else what it is attached to (the link left as it is).
fn adopt(
    path: &Path,
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> std::io::Result<Result<OwnedFd, pins::Target>> {
    let link = pins::get(path)?;
    let found = pins::link_target(link.as_fd())?;
    if found != pins::Target::of(target, attach_type)? {
        return Ok(Err(found));
    }
    pins::link_update(link.as_fd(), prog)?;
    Ok(Ok(link))
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
    fn the_program_names_are_the_objects() {
        let object = aya_obj::Object::parse(OBJECT).unwrap();
        let mut found: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        let mut named = names::PROGRAMS.to_vec();
        found.sort_unstable();
        named.sort_unstable();
        assert_eq!(found, named);
    }
}

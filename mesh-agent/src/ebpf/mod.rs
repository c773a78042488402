//! Loading, attaching and feeding the kernel programs of `mesh-ebpf`.
//!
//! Programs are attached with bpf links pinned in bpffs with the maps
//! (`pins`): they stay when the agent dies, so the node stays closed (the
//! loopback guard refuses, apps' calls to mesh destinations are redirected
//! to a closed port). A starting agent adopts what it finds: it reuses the
//! pinned maps and swaps its freshly loaded programs into the pinned links
//! (`BPF_LINK_UPDATE`, atomic: no moment without the guard). A deliberate
//! stop ([`Kernel::unpin`]) or `mesh-agent down` removes the pins.

mod loader;
mod maps;
pub mod pins;

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::ProgramError,
};
use mesh_common::{ConnKey, DenialCount, DenialKey, OrigDst};

pub use loader::LoadParams;
use maps::ConfigMaps;
pub use maps::{DenialEvents, MapContents, fresh, pinned_service_names, sock_addr, socket_addr};

/// Where redirected app connections were going: the outbound listener's
/// one view of the kernel ([`Kernel`] reads the records sock_ops left in
/// `CONNS`), so the data path has tests without one.
pub trait OrigDstAddr: Send + Sync + 'static {
    /// Takes the record of the connection from `peer` accepted on `local`
    /// in the network namespace with cookie `netns`: `None` if there is
    /// none, or none fresh; a record is taken once.
    fn take(
        &self,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
        netns: u64,
    ) -> Option<mesh_common::OrigDst>;
}

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
    /// The node's network namespace (its cookie).
    netns_cookie: u64,
    /// This agent's programs' ids, by name.
    programs: Vec<(&'static str, u32)>,
    /// The links, held while the agent runs (pinned too).
    _links: Vec<OwnedFd>,
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

    /// The cookie of the node's network namespace (its listeners').
    pub fn netns_cookie(&self) -> u64 {
        self.netns_cookie
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

    /// Detaches every program (by dropping the links) and closes the maps.
    pub fn stop(self) {
        drop(self.conns);
        drop(self.denials);
        drop(self.denial_events);
        drop(self.config_maps);
        drop(self.ebpf);
    }
}

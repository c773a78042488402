//! The kernel side of start-up: the programs, loaded (or adopted from the
//! node's pins) with the maps the config derives.

use std::{sync::Arc, time::Duration};

use super::{AppError, RunOptions, cgroups, listeners::Sockets, maps};
use crate::{
    cgroup::Cgroup2,
    ebpf::{Kernel, LoadParams, MapContents, pins::Pins},
    proxy::ServiceIds,
    snapshot::Snapshot,
};

/// The kernel side, started.
pub(super) struct Started {
    pub kernel: Arc<Kernel>,
    /// Service ids, seeded from the pins the last agent of the node left.
    pub ids: Arc<ServiceIds>,
    /// What the maps were filled with.
    pub contents: MapContents,
}

/// Loads and attaches (or adopts) the programs, with the maps filled for
/// `snapshot`; the inbound listeners go in the sk_lookup socket map.
pub(super) fn start(
    opts: &RunOptions,
    snapshot: &Snapshot,
    cg: &Cgroup2,
    cgroups: &cgroups::Shared,
    sockets: &Sockets,
) -> Result<Started, AppError> {
    // The ids the last agent of this node gave, if it left them pinned.
    let pins = Pins::open(&opts.bpffs, &opts.node)?;
    let ids = Arc::new(ServiceIds::seeded(crate::ebpf::pinned_service_names(&pins)));
    let (contents, agent_cgroup) = {
        let cgroups = cgroups.lock();
        let contents = maps::contents(
            &snapshot.config,
            &opts.node,
            &ids,
            &cgroups.services,
            &snapshot.policy,
        );
        (contents, cgroups.agent_id)
    };
    let params = LoadParams {
        netns_cookie: crate::netns::cookie(&sockets.in4)?,
        agent_cgroup,
        outbound_port: opts.outbound_port,
        check_peers: opts.only_mesh_sources,
        admin_port: opts.admin.port(),
    };
    let kernel = Kernel::start(
        &params,
        &contents,
        &sockets.in4,
        sockets.in6.as_ref(),
        cg.root(),
        &pins,
    )?;
    Ok(Started {
        kernel: Arc::new(kernel),
        ids,
        contents,
    })
}

/// Drops stale `CONNS` records now and then (see `Kernel::sweep_stale`).
pub(super) async fn sweep(kernel: Arc<Kernel>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let n = kernel.sweep_stale();
        if n > 0 {
            tracing::debug!(records = n, "dropped stale connection records");
        }
    }
}

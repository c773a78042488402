//! What the config-derived kernel maps hold for one node.

use std::{collections::BTreeMap, net::SocketAddr};

use super::cgroups::ServiceCgroup;
use crate::{
    config::Config,
    ebpf::MapContents,
    names::{NodeName, ServiceName},
    policy::Policy,
    proxy::ServiceIds,
};

/// Everything the config-derived kernel maps hold for `node`: mesh
/// destinations, local callers by cgroup, local ports, the pairs the
/// intentions deny (every local caller x every meshed service), and the
/// nodes' addresses. `cgroups`: the local services' cgroups, by name.
pub(super) fn contents(
    config: &Config,
    node: &NodeName,
    ids: &ServiceIds,
    cgroups: &BTreeMap<ServiceName, ServiceCgroup>,
    policy: &Policy,
) -> MapContents {
    let mut c = MapContents {
        peers: config.nodes.iter().map(|n| n.address).collect(),
        ..MapContents::default()
    };
    for s in &config.services {
        let id = ids.id(&s.name);
        // Public services are reached directly, not through the mesh.
        if s.public {
            continue;
        }
        c.services.push((SocketAddr::new(s.vip, s.port), id));
        // The catalog address of every instance names the service.
        for host in config.instances(s) {
            c.services.push((SocketAddr::new(host.address, s.port), id));
        }
        if s.hosted_on(node) {
            c.local_ports.push((s.port, id));
        }
    }
    for (name, cgroup) in cgroups {
        c.cgroups.push((cgroup.id, ids.id(name)));
    }
    for src in config.services_on(node) {
        for dst in config.services.iter().filter(|d| !d.public) {
            if !policy.decide(&src.name, &dst.name).allowed() {
                c.denied.insert((ids.id(&src.name), ids.id(&dst.name)));
            }
        }
    }
    c.names = ids.all();
    c
}

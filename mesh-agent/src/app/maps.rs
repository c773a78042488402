//! What the config-derived kernel maps hold for one node.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
};

use super::cgroups::ServiceCgroup;
use crate::{
    config::{Action, Config},
    ebpf::MapContents,
    names::{NodeName, ServiceName},
    policy::Policy,
    proxy::ServiceIds,
};

/// Everything the config-derived kernel maps hold for `node`: mesh
/// destinations, local callers by cgroup, local ports, the intentions that
/// can decide a local caller's connect (`Policy::kernel_rules`), and the
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
    let local: HashSet<&ServiceName> = config.services_on(node).map(|s| &s.name).collect();
    let id = |name: Option<&ServiceName>| name.map_or(0, |n| ids.id(n));
    for (src, dst, action) in policy.kernel_rules(|s| local.contains(s)) {
        let rule = match action {
            Action::Allow => mesh_common::RULE_ALLOW,
            Action::Deny => mesh_common::RULE_DENY,
        };
        c.rules.insert((id(src), id(dst)), rule);
    }
    c.names = ids.all();
    c
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::testing::{NODES, config, intention, service};

    fn name(s: &str) -> ServiceName {
        s.parse().unwrap()
    }

    /// Node a hosts web and cron; b hosts api (VIP 240.0.0.9) and the
    /// public docs; only web may call api.
    fn mesh() -> Config {
        config(&format!(
            "[mesh]\ndefault_policy = \"deny\"\n{NODES}{}{}{}vip = \"240.0.0.9\"\n{}public = true\n{}",
            service("web", &["a"], 80),
            service("cron", &["a"], 81),
            service("api", &["b"], 5001),
            service("docs", &["b"], 8000),
            intention("web", "api", "allow"),
        ))
    }

    /// Whether connect4/6 refuse `src -> dst` with the rules of `c`.
    fn denies(c: &MapContents, src: u32, dst: u32) -> bool {
        mesh_common::rules_deny(|k| c.rules.get(&(k.src, k.dst)).copied(), src, dst)
    }

    fn cgroup(id: u64) -> ServiceCgroup {
        ServiceCgroup {
            path: PathBuf::from(format!("/mesh/a/{id}")),
            id,
            ours: true,
        }
    }

    #[test]
    fn the_maps_of_node_a() {
        let config = mesh();
        let ids = ServiceIds::default();
        let local = BTreeMap::from([(name("web"), cgroup(7)), (name("cron"), cgroup(8))]);
        let a: NodeName = "a".parse().unwrap();
        let c = contents(&config, &a, &ids, &local, &Policy::new(&config));
        let id = |s: &str| ids.id(&name(s));
        // Every meshed service by VIP and by its instances' addresses; the
        // public one by neither.
        let api_vip: SocketAddr = "240.0.0.9:5001".parse().unwrap();
        let api_on_b: SocketAddr = "10.0.0.2:5001".parse().unwrap();
        assert!(c.services.contains(&(api_vip, id("api"))));
        assert!(c.services.contains(&(api_on_b, id("api"))));
        assert!(!c.services.iter().any(|(_, s)| *s == id("docs")));
        // Local callers by cgroup; local ports of a only.
        assert_eq!(c.cgroups, [(8, id("cron")), (7, id("web"))]);
        let mut ports = c.local_ports.clone();
        ports.sort_unstable();
        assert_eq!(ports, [(80, id("web")), (81, id("cron"))]);
        // The intention and the default policy: web -> api only.
        assert!(!denies(&c, id("web"), id("api")));
        assert!(denies(&c, id("cron"), id("api")));
        assert!(denies(&c, id("web"), id("cron")));
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.names, ids.all());
    }

    /// Every local caller and meshed destination, under exact and wildcard
    /// intentions and either default: the kernel's rules decide as the
    /// policy does; rules of callers on other nodes are left out.
    #[test]
    fn the_kernel_rules_decide_as_the_policy() {
        for default in ["allow", "deny"] {
            let config = config(&format!(
                "[mesh]\ndefault_policy = \"{default}\"\n{NODES}{}{}{}{}{}{}{}{}{}{}",
                service("web", &["a"], 80),
                service("cron", &["a"], 81),
                service("api", &["b"], 5001),
                service("db", &["a", "b"], 5432),
                service("far", &["b"], 90),
                intention("web", "*", "allow"),
                intention("*", "api", "deny"),
                intention("cron", "api", "allow"),
                intention("far", "db", "deny"),
                intention("db", "*", "deny"),
            ));
            let ids = ServiceIds::default();
            let a: NodeName = "a".parse().unwrap();
            let policy = Policy::new(&config);
            let c = contents(&config, &a, &ids, &BTreeMap::new(), &policy);
            let id = |s: &str| ids.id(&name(s));
            for src in ["web", "cron", "db"] {
                for dst in ["web", "cron", "api", "db", "far"] {
                    let kernel = denies(&c, id(src), id(dst));
                    let decided = !policy.decide(src, dst).allowed();
                    assert_eq!(kernel, decided, "{src} -> {dst}, default {default}");
                }
            }
            assert!(!c.rules.contains_key(&(id("far"), id("db"))), "far is on b");
        }
    }

    #[test]
    fn node_b_has_no_local_callers_without_cgroups() {
        let config = mesh();
        let ids = ServiceIds::default();
        let b: NodeName = "b".parse().unwrap();
        let c = contents(&config, &b, &ids, &BTreeMap::new(), &Policy::new(&config));
        assert!(c.cgroups.is_empty());
        // api's port, not the public docs' (the loopback guard skips it).
        assert_eq!(c.local_ports, [(5001, ids.id(&name("api")))]);
    }
}

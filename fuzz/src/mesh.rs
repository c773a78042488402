//! The mesh every target runs against: a fixed config, the agent's kernel
//! ids for it, and its PKI, read from the committed certificate seeds so
//! that a run is deterministic and the seed leaf passes the full check.

use std::{path::Path, sync::OnceLock, time::Duration};

use mesh_agent::{
    config::Config,
    proxy::ServiceIds,
    testing::{intention, node, service},
    tls::verify::{FixedRoots, PeerRules},
};
use rustls_pki_types::{CertificateDer, UnixTime};

pub const TRUST_DOMAIN: &str = "mesh.local";
pub const PATH: &str = "/fuzz/mesh.toml";

/// Services on both nodes, IPv4 and IPv6 VIPs, a public one.
pub fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "[mesh]\ntrust_domain = \"mesh.local\"\nleaf_ttl = \"1h\"\n{}{}{}vip = \"240.0.0.1\"\n\
             {}vip = \"fd77::100\"\n{}public = true\n{}",
            node("a", "10.0.0.1"),
            node("b", "fd77::2"),
            service("web", &["a"], 80),
            service("api", &["b"], 81),
            service("site", &["a"], 443),
            intention("web", "api", "allow")
        )
    })
}

/// The root, node a's CA and a leaf for `web` it signed (`tests::write_seeds`).
pub const ROOT_DER: &[u8] = include_bytes!("../corpus/certificate/seed-root.der");
pub const NODE_A_DER: &[u8] = include_bytes!("../corpus/certificate/seed-node-a.der");
pub const WEB_LEAF_DER: &[u8] = include_bytes!("../corpus/certificate/seed-leaf-web.der");

/// The parsed [`text`].
pub fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::parse(text(), Path::new(PATH)).unwrap())
}

/// Kernel ids as the agent gives them: one per service, from 1.
pub fn ids() -> &'static ServiceIds {
    static IDS: OnceLock<ServiceIds> = OnceLock::new();
    IDS.get_or_init(|| {
        let ids = ServiceIds::default();
        for service in &config().services {
            ids.id(&service.name);
        }
        ids
    })
}

/// What the verifier needs: the rules of [`config`] under the seed root.
pub struct Pki {
    pub rules: PeerRules,
    pub node_a: CertificateDer<'static>,
    /// A moment within the seed leaf's validity.
    pub now: UnixTime,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let hosts: std::collections::HashMap<String, std::collections::BTreeSet<String>> = config()
            .services
            .iter()
            .map(|s| {
                let nodes = s.nodes.iter().map(ToString::to_string).collect();
                (s.name.to_string(), nodes)
            })
            .collect();
        let root = CertificateDer::from(ROOT_DER);
        let roots = FixedRoots::new(std::slice::from_ref(&root)).unwrap();
        let rules = PeerRules::new(
            TRUST_DOMAIN,
            std::sync::Arc::new(roots),
            std::sync::Arc::new(hosts),
        );
        let (_, leaf) = x509_parser::parse_x509_certificate(WEB_LEAF_DER).unwrap();
        let not_before = u64::try_from(leaf.validity().not_before.timestamp()).unwrap();
        Pki {
            rules,
            node_a: CertificateDer::from(NODE_A_DER.to_vec()),
            now: UnixTime::since_unix_epoch(Duration::from_secs(not_before + 60)),
        }
    })
}

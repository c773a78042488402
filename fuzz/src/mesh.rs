//! The mesh every target runs against: a fixed config, the agent's kernel
//! ids for it, and its PKI, read from the committed certificate seeds so
//! that a run is deterministic and the seed leaf passes the full check.

use std::{path::Path, sync::OnceLock, time::Duration};

use mesh_agent::{config::Config, proxy::ServiceIds, tls::verify::PeerRules};
use rustls_pki_types::{CertificateDer, UnixTime};

pub const TRUST_DOMAIN: &str = "mesh.local";
pub const PATH: &str = "/fuzz/mesh.toml";

/// Services on both nodes, IPv4 and IPv6 VIPs, a public one.
pub const TEXT: &str = r#"[mesh]
trust_domain = "mesh.local"
leaf_ttl = "1h"

[[node]]
name = "a"
address = "10.0.0.1"

[[node]]
name = "b"
address = "fd77::2"

[[service]]
name = "web"
node = "a"
port = 80
vip = "240.0.0.1"

[[service]]
name = "api"
node = "b"
port = 81
vip = "fd77::100"

[[service]]
name = "site"
node = "a"
port = 443
public = true

[[intention]]
source = "web"
destination = "api"
action = "allow"
"#;

/// The root, node a's CA and a leaf for `web` it signed (`tests::write_seeds`).
pub const ROOT_DER: &[u8] = include_bytes!("../corpus/certificate/seed-root.der");
pub const NODE_A_DER: &[u8] = include_bytes!("../corpus/certificate/seed-node-a.der");
pub const WEB_LEAF_DER: &[u8] = include_bytes!("../corpus/certificate/seed-leaf-web.der");

/// The parsed [`TEXT`].
pub fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::parse(TEXT, Path::new(PATH)).unwrap())
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
            .map(|s| (s.name.clone(), s.nodes.iter().cloned().collect()))
            .collect();
        let root = CertificateDer::from(ROOT_DER);
        let rules = PeerRules::new(TRUST_DOMAIN, &root, std::sync::Arc::new(hosts)).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(WEB_LEAF_DER).unwrap();
        let not_before = u64::try_from(leaf.validity().not_before.timestamp()).unwrap();
        Pki {
            rules,
            node_a: CertificateDer::from(NODE_A_DER.to_vec()),
            now: UnixTime::since_unix_epoch(Duration::from_secs(not_before + 60)),
        }
    })
}

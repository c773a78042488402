//! The `/status` document, served by the agent and read back by
//! `mesh-agent status` (one type for both), and its table.

use std::{sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::rfc3339;
use crate::{
    denials::Denials,
    health::State,
    identity::{Identities, ca::CaKind, spiffe::SpiffeId},
    names::{NodeName, ServiceName},
    snapshot::Watch,
    table::table,
    telemetry::Telemetry,
};

/// What the `/status` document is made of.
pub struct Status {
    pub node: String,
    /// Local leaves and the node CA.
    pub identities: Arc<Identities>,
    /// Folded into `telemetry` before each document.
    pub denials: Denials,
    /// The pairs' verdicts.
    pub telemetry: Arc<Telemetry>,
    /// Every instance's health as this agent knows it.
    pub snapshots: Watch,
    /// Whether the catalog's store is reachable.
    pub catalog: Arc<crate::catalog::Reach>,
    /// The containers served.
    pub containers: Arc<crate::containers::Containers>,
}

impl Status {
    /// The document now.
    pub fn document(&self) -> StatusDoc {
        let now = SystemTime::now();
        let expiry = |not_after: SystemTime| Expiry {
            not_after: rfc3339(not_after),
            expires_in_secs: not_after.duration_since(now).unwrap_or_default().as_secs(),
        };
        let services = self
            .identities
            .all()
            .into_iter()
            .map(|(name, leaf)| LeafDoc {
                name,
                spiffe_id: leaf.spiffe_id.clone(),
                serial: leaf.serial.clone(),
                expiry: expiry(leaf.not_after),
            })
            .collect();
        self.denials.harvest();
        let connections = self
            .telemetry
            .pairs()
            .into_iter()
            .map(|((source, destination), s)| PairDoc {
                source,
                destination,
                allowed: s.allowed,
                denied: s.denied,
                denied_at_source: s.denied_at_source,
                cut: s.cut,
            })
            .collect();
        let snapshot = self.snapshots.borrow().clone();
        let instances = snapshot
            .config
            .meshed_instances()
            .map(|(s, node)| snapshot.health.instance(s, node))
            .map(|i| InstanceDoc {
                service: i.service,
                node: i.node,
                state: i.state,
                reason: i.reason,
            })
            .collect();
        let reach = self.catalog.state();
        let containers = self
            .containers
            .all()
            .iter()
            .map(|c| ContainerDoc {
                service: c.service.clone(),
                cgroup: c.cgroup.display().to_string(),
                netns: c.netns.inode,
                pid: c.pid,
                since: rfc3339(c.since),
                dns: c.dns,
                connections_from: c.connections_from(),
                connections_into: c.connections_into(),
            })
            .collect();
        let cas = self
            .identities
            .ca()
            .certs()
            .iter()
            .map(|c| CaDoc {
                kind: c.kind,
                subject: c.subject.clone(),
                fingerprint: c.fingerprint.clone(),
                expiry: expiry(c.not_after),
            })
            .collect();
        let agent = self.identities.agent();
        StatusDoc {
            node: self.node.clone(),
            trust_domain: self.identities.trust_domain().to_owned(),
            node_ca: expiry(self.identities.ca().not_after()),
            cas,
            agent: Some(AgentLeafDoc {
                spiffe_id: agent.spiffe_id.clone(),
                serial: agent.serial.clone(),
                expiry: expiry(agent.not_after),
            }),
            services,
            instances,
            connections,
            catalog: Some(StoreDoc {
                store: self.catalog.store.clone(),
                connected: reach.connected,
                since: rfc3339(reach.since),
                error: reach.error,
            }),
            containers,
        }
    }
}

/// `GET /status`: what the agent holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDoc {
    pub node: String,
    pub trust_domain: String,
    pub node_ca: Expiry,
    /// The roots it trusts, its node CA and any CA presented above it.
    #[serde(default)]
    pub cas: Vec<CaDoc>,
    /// The agent's own leaf (agent links).
    #[serde(default)]
    pub agent: Option<AgentLeafDoc>,
    /// Per local service: its current leaf.
    pub services: Vec<LeafDoc>,
    /// Per instance of every meshed service: its health as this agent
    /// knows it.
    pub instances: Vec<InstanceDoc>,
    /// Per (source, destination) pair seen: the verdicts.
    pub connections: Vec<PairDoc>,
    /// Where the catalog comes from, and whether it is reachable.
    #[serde(default)]
    pub catalog: Option<StoreDoc>,
    /// The local services' containers this agent serves.
    #[serde(default)]
    pub containers: Vec<ContainerDoc>,
}

/// A container served: one network namespace of a local service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDoc {
    pub service: ServiceName,
    /// Its cgroup, below the cgroup2 root.
    pub cgroup: String,
    /// Its network namespace (nsfs inode, as `ls -L -i /proc/<pid>/ns/net`).
    pub netns: u64,
    /// The process it was found through.
    pub pid: u32,
    /// RFC 3339: since when it is served.
    pub since: String,
    /// Whether the agent answers DNS in it.
    pub dns: bool,
    pub connections_from: u64,
    pub connections_into: u64,
}

/// The catalog's store as the agent last found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreDoc {
    /// `file <path>` or `etcd <members><prefix>`.
    pub store: String,
    /// False while etcd cannot be reached: the agent runs on its last good
    /// catalog.
    pub connected: bool,
    /// RFC 3339: since when `connected` holds.
    pub since: String,
    pub error: Option<String>,
}

/// When a certificate expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiry {
    /// RFC 3339.
    pub not_after: String,
    pub expires_in_secs: u64,
}

/// A CA certificate of the agent's trust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaDoc {
    pub kind: CaKind,
    pub subject: String,
    /// SHA-256 of its DER, lowercase hex.
    pub fingerprint: String,
    #[serde(flatten)]
    pub expiry: Expiry,
}

/// The agent's own leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLeafDoc {
    pub spiffe_id: SpiffeId,
    pub serial: String,
    #[serde(flatten)]
    pub expiry: Expiry,
}

/// A local service's leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafDoc {
    pub name: ServiceName,
    pub spiffe_id: SpiffeId,
    pub serial: String,
    #[serde(flatten)]
    pub expiry: Expiry,
}

/// An instance's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDoc {
    pub service: ServiceName,
    pub node: NodeName,
    pub state: State,
    /// Why, when no check says it (unreachable agent, no result yet).
    pub reason: Option<String>,
}

/// The verdicts on one (source, destination) pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairDoc {
    pub source: String,
    pub destination: String,
    pub allowed: u64,
    /// Refused here, as the destination's agent.
    pub denied: u64,
    /// Refused on the caller's node.
    pub denied_at_source: u64,
    /// Closed because the intentions changed.
    pub cut: u64,
}

impl StatusDoc {
    /// `mesh-agent status`: the document as tables.
    pub fn render(&self) -> String {
        let mut out = format!("node {} (trust domain {})\n", self.node, self.trust_domain);
        if let Some(c) = &self.catalog {
            match (&c.error, c.connected) {
                (_, true) => out.push_str(&format!(
                    "catalog {} (reachable since {})\n",
                    c.store, c.since
                )),
                (error, false) => out.push_str(&format!(
                    "catalog {} UNREACHABLE since {}, running on the last good catalog: {}\n",
                    c.store,
                    c.since,
                    error.as_deref().unwrap_or("unknown error")
                )),
            }
        }
        if !self.cas.is_empty() {
            let rows = self.cas.iter().map(|c| {
                vec![
                    c.kind.to_string(),
                    c.subject.clone(),
                    c.fingerprint.chars().take(16).collect(),
                    expires(&c.expiry),
                ]
            });
            out.push_str(&table(&["CA", "SUBJECT", "SHA-256", "EXPIRES"], rows));
            out.push('\n');
        }
        let agent = self.agent.iter().map(|leaf| {
            vec![
                "(this agent)".to_owned(),
                leaf.spiffe_id.to_string(),
                leaf.serial.clone(),
                expires(&leaf.expiry),
            ]
        });
        let rows = self.services.iter().map(|leaf| {
            vec![
                leaf.name.to_string(),
                leaf.spiffe_id.to_string(),
                leaf.serial.clone(),
                expires(&leaf.expiry),
            ]
        });
        out.push_str(&table(
            &["SERVICE", "SPIFFE ID", "SERIAL", "EXPIRES"],
            rows.chain(agent),
        ));
        if !self.connections.is_empty() {
            out.push_str(
                "\nCONNECTIONS (source -> destination: allowed / denied here / denied at the source / cut by a change)\n",
            );
            for p in &self.connections {
                out.push_str(&format!(
                    "{} -> {}: {} / {} / {} / {}\n",
                    p.source, p.destination, p.allowed, p.denied, p.denied_at_source, p.cut
                ));
            }
        }
        if !self.containers.is_empty() {
            out.push('\n');
            let rows = self.containers.iter().map(|c| {
                vec![
                    c.service.to_string(),
                    c.cgroup.clone(),
                    c.netns.to_string(),
                    if c.dns { "yes" } else { "no" }.to_owned(),
                    c.connections_from.to_string(),
                    c.connections_into.to_string(),
                ]
            });
            out.push_str(&table(
                &[
                    "CONTAINER OF",
                    "CGROUP",
                    "NETNS",
                    "DNS",
                    "CONNS FROM",
                    "CONNS INTO",
                ],
                rows,
            ));
        }
        if !self.instances.is_empty() {
            out.push_str("\nINSTANCES (service on node: health as this agent knows it)\n");
            for i in &self.instances {
                let reason = i
                    .reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{} on {}: {}{reason}\n",
                    i.service, i.node, i.state
                ));
            }
        }
        out
    }
}

/// `<RFC 3339> (in <how long>)`; `EXPIRED` once past.
fn expires(e: &Expiry) -> String {
    if e.expires_in_secs == 0 {
        format!("{} (EXPIRED)", e.not_after)
    } else {
        format!("{} (in {})", e.not_after, human(e.expires_in_secs))
    }
}

fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..172_800 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

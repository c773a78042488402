//! `GET /ui/api/mesh`: everything the web UI shows, as one document.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Ui;
use crate::{
    config::Action,
    endpoint::Caller,
    health::doc::CatalogDoc,
    names::{NodeName, ServiceName},
    peers::unix,
    telemetry::traffic::{self, Counts, Edge},
};

/// The whole mesh as the agent that answers sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeshDoc {
    /// The node of the agent that answered.
    pub node: NodeName,
    pub version: String,
    /// Unix time of this document.
    pub generated: u64,
    /// The catalog's store ("file mesh.toml", "etcd 10.0.0.1:2379/mesh").
    pub store: String,
    pub store_connected: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub store_error: Option<String>,
    /// Who asked, and whether they may write.
    pub you: You,
    /// Every service with its instances' health and checks.
    pub catalog: CatalogDoc,
    pub nodes: Vec<NodeView>,
    pub default_policy: Action,
    /// Most specific first: the first that matches a pair decides it.
    pub intentions: Vec<IntentionView>,
    /// Every pair that has traffic (anywhere in the mesh, since its agents
    /// started) or is named by an intention of two names, with the
    /// verdict of the intentions in force.
    pub pairs: Vec<PairView>,
    /// Of `pairs`, per the window of `minute`.
    pub window_secs: u64,
}

/// The caller of `GET /ui/api/mesh`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct You {
    pub uid: Option<u32>,
    pub may_write: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub why_not: Option<String>,
}

/// A node and its agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    pub name: NodeName,
    pub address: std::net::IpAddr,
    /// The node of the agent that answered.
    pub this: bool,
    /// Its agent can be reached (over the health link).
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub why: Option<String>,
    /// With the catalog in etcd: whether its agent holds a live
    /// registration. `None` with a file.
    pub registered: Option<bool>,
    /// Unix time its agent was last heard (now for this node).
    pub last_heard: Option<u64>,
    pub version: Option<String>,
    pub pid: Option<u32>,
    /// Unix time its agent started.
    pub started: Option<u64>,
    pub services: Vec<ServiceName>,
}

/// An intention, with its precedence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntentionView {
    pub source: String,
    pub destination: String,
    pub action: Action,
    /// Its line in the file (0 in etcd).
    pub line: usize,
    /// 4: two names, 3: a name and `*`, 2: `*` to `*`.
    pub precedence: u8,
}

/// A caller -> callee pair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairView {
    pub source: String,
    pub destination: String,
    /// The verdict of the intentions in force.
    pub action: Action,
    /// The rule that decides it, as `mesh-agent explain` names it.
    pub rule: String,
    /// Over the last `window_secs`, summed over every agent heard.
    pub minute: Counts,
    pub total: Counts,
    /// Connections open now.
    pub active: u64,
}

impl MeshDoc {
    /// The document now, for `caller`.
    pub fn new(ui: &Ui, caller: Option<&Caller>) -> Self {
        let snapshot = ui.snapshots.borrow().clone();
        let config = &snapshot.config;
        let health = &snapshot.health;
        let peers = ui.peers.all();
        let now = std::time::SystemTime::now();

        let nodes =
            config
                .nodes
                .iter()
                .map(|n| {
                    let this = n.name == ui.node;
                    let peer = peers.get(&n.name);
                    let news = if this {
                        Some(ui.peers.news())
                    } else {
                        peer.and_then(|p| p.news.clone())
                    };
                    NodeView {
                        name: n.name.clone(),
                        address: n.address,
                        this,
                        reachable: this
                            || (peer.is_some() && !health.unreachable.contains_key(&n.name)),
                        why: health.unreachable.get(&n.name).cloned().or_else(|| {
                            (!this && peer.is_none()).then(|| "not heard yet".to_owned())
                        }),
                        registered: health
                            .registered
                            .as_ref()
                            .map(|r| this || r.contains(n.name.as_str())),
                        last_heard: if this {
                            Some(unix(now))
                        } else {
                            peer.map(|p| unix(p.last_heard))
                        },
                        version: news.as_ref().map(|n| n.version.clone()),
                        pid: news.as_ref().map(|n| n.pid),
                        started: news.as_ref().map(|n| n.started),
                        services: config
                            .services
                            .iter()
                            .filter(|s| s.hosted_on(&n.name))
                            .map(|s| s.name.clone())
                            .collect(),
                    }
                })
                .collect();

        // Every agent's traffic: this one's, and the news of the others
        // that are reachable now.
        let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
        traffic::merge(&mut edges, &ui.telemetry.traffic());
        for (node, peer) in &peers {
            if *node == ui.node || health.unreachable.contains_key(node) {
                continue;
            }
            if let Some(news) = &peer.news {
                traffic::merge(&mut edges, &news.traffic);
            }
        }
        let mut named: BTreeSet<(String, String)> = edges.keys().cloned().collect();
        for i in &config.intentions {
            if let (crate::config::Match::Name(s), crate::config::Match::Name(d)) =
                (&i.source, &i.destination)
            {
                named.insert((s.to_string(), d.to_string()));
            }
        }
        let policy = &snapshot.policy;
        let pairs = named
            .into_iter()
            .map(|(source, destination)| {
                let decision = policy.decide(&source, &destination);
                let edge = edges.get(&(source.clone(), destination.clone()));
                PairView {
                    action: decision.action,
                    rule: policy.rule_text(&decision.rule),
                    minute: edge.map(|e| e.minute).unwrap_or_default(),
                    total: edge.map(|e| e.total).unwrap_or_default(),
                    active: edge.map_or(0, |e| e.active),
                    source,
                    destination,
                }
            })
            .collect();

        let reach = ui.reach.state();
        let allowed = ui.guard.may_write(caller);
        Self {
            node: ui.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            generated: unix(now),
            store: ui.reach.store.clone(),
            store_connected: reach.connected,
            store_error: reach.error,
            you: You {
                uid: caller.map(|c| c.uid),
                may_write: allowed.is_ok(),
                why_not: allowed.err(),
            },
            catalog: CatalogDoc::new(&snapshot, ui.node.as_str()),
            nodes,
            default_policy: config.mesh.default_policy,
            intentions: policy
                .in_precedence()
                .into_iter()
                .map(|(i, precedence)| IntentionView {
                    source: i.source,
                    destination: i.destination,
                    action: i.action,
                    line: i.line,
                    precedence,
                })
                .collect(),
            pairs,
            window_secs: traffic::WINDOW_SECS,
        }
    }
}

//! `GET /ca`: what every agent of the mesh trusts and presents, as this
//! one knows it (its own report, and the others' from the health links'
//! news). `mesh-agent ca retire-old` reads it to name who is behind.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    endpoint::{Reply, Routes},
    identity::{Identities, TrustReport},
    names::NodeName,
    peers::Peers,
    snapshot::Watch,
};

/// `GET /ca`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustDoc {
    /// The agent that answered.
    pub node: NodeName,
    /// Every node of the catalog.
    pub nodes: Vec<NodeTrust>,
}

/// One node's agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTrust {
    pub node: NodeName,
    /// Heard over its health link now (always, for the agent answering).
    pub reachable: bool,
    /// Why not, when not.
    pub why: Option<String>,
    /// Its last report (`None`: never heard, or an agent too old to send
    /// one).
    pub trust: Option<TrustReport>,
}

/// Serves `GET /ca`.
pub fn routes(
    routes: &mut Routes,
    node: NodeName,
    identities: Arc<Identities>,
    peers: Arc<Peers>,
    snapshots: Watch,
) {
    routes.any("/ca", move |_| {
        let snapshot = snapshots.borrow().clone();
        let heard = peers.all();
        let nodes = snapshot
            .config
            .nodes
            .iter()
            .map(|n| {
                if n.name == node {
                    return NodeTrust {
                        node: n.name.clone(),
                        reachable: true,
                        why: None,
                        trust: Some(identities.ca().report()),
                    };
                }
                let peer = heard.get(&n.name);
                let unreachable = snapshot.health.unreachable.get(&n.name);
                NodeTrust {
                    node: n.name.clone(),
                    reachable: peer.is_some() && unreachable.is_none(),
                    why: unreachable
                        .cloned()
                        .or_else(|| peer.is_none().then(|| "not heard yet".to_owned())),
                    trust: peer.and_then(|p| p.news.as_ref()?.trust.clone()),
                }
            })
            .collect();
        Reply::document(&TrustDoc {
            node: node.clone(),
            nodes,
        })
    });
}

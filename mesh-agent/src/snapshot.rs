//! Everything the agent derives from the catalog, as one immutable value.
//!
//! A reload builds a new [`Snapshot`] from the new config and publishes it
//! once, through one `tokio::sync::watch` channel: every reader sees either
//! the old snapshot or the new one, never a mix. Readers hold a [`Watch`]
//! and take `borrow().clone()` of the `Arc` (never a borrow held across an
//! `.await`); connection tasks wait on `changed()` to re-decide their pair.
//! Kernel maps, cgroups and leaves are side effects of a reload, done by
//! `app::reload::Reload::apply` around the swap, not part of the snapshot.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use tokio::sync::watch;

use crate::{
    config::Config,
    health_view,
    names::{NodeName, ServiceName},
    policy::Policy,
    tls::verify::Hosting,
    zone::Zone,
};

/// The catalog as this agent applies it, and the health of its instances.
/// Cheap to clone: a health change publishes a new snapshot that shares
/// everything else with the old one.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The config in force.
    pub config: Arc<Config>,
    /// Its intentions, ready to decide.
    pub policy: Arc<Policy>,
    /// Its `.mesh` names.
    pub zone: Arc<Zone>,
    /// Service -> the nodes hosting an instance of it, for the TLS verifier.
    pub hosts: Arc<HashMap<ServiceName, BTreeSet<NodeName>>>,
    /// What this agent knows of every instance's health.
    pub health: Arc<health_view::View>,
}

/// The reading end of the snapshot channel.
pub type Watch = watch::Receiver<Arc<Snapshot>>;

/// The writing end: held by whoever applies reloads.
pub type Publisher = watch::Sender<Arc<Snapshot>>;

impl Snapshot {
    /// Everything derived from `config`, with no health known yet.
    pub fn new(config: Config) -> Self {
        Self {
            policy: Arc::new(Policy::new(&config)),
            zone: Arc::new(Zone::new(&config)),
            hosts: Arc::new(hosts(&config)),
            config: Arc::new(config),
            health: Arc::default(),
        }
    }

    /// Everything derived from `config`, with the health of `self`.
    pub fn reloaded(&self, config: Config) -> Self {
        Self {
            health: self.health.clone(),
            ..Self::new(config)
        }
    }

    /// `self` with the health `health`.
    pub fn with_health(&self, health: Arc<health_view::View>) -> Self {
        Self {
            health,
            ..self.clone()
        }
    }

    /// A channel holding `self` as its first value.
    pub fn publish(self) -> (Publisher, Watch) {
        watch::channel(Arc::new(self))
    }
}

/// The verifier reads who hosts a service, and which nodes there are, from
/// the snapshot in force.
impl Hosting for Watch {
    fn hosts(&self, service: &str) -> Option<BTreeSet<String>> {
        let snapshot = self.borrow().clone();
        let nodes = snapshot.hosts.get(service)?;
        Some(nodes.iter().map(ToString::to_string).collect())
    }

    fn is_node(&self, node: &str) -> bool {
        let snapshot = self.borrow().clone();
        snapshot.config.node(node).is_some()
    }

    fn revoked(&self, node: &str, node_ca: &str) -> bool {
        let snapshot = self.borrow().clone();
        snapshot.config.is_banned(node) || snapshot.config.is_revoked_ca(node_ca)
    }
}

/// Service -> nodes of every service: public services are never
/// destinations, but they can call others, so their leaves are valid
/// client identities.
fn hosts(config: &Config) -> HashMap<ServiceName, BTreeSet<NodeName>> {
    config
        .services
        .iter()
        .map(|s| (s.name.clone(), s.nodes.iter().cloned().collect()))
        .collect()
}

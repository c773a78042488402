//! Applying the catalog's changes to a running agent.

use std::sync::Arc;

use tracing::{info, warn};

use super::{AppError, cgroups, maps};
use crate::{
    catalog::Catalog,
    cgroup::Cgroup2,
    config::Config,
    ebpf::Kernel,
    health::{Board, link::Links},
    identity::Identities,
    names::{NodeName, ServiceName},
    proxy::ServiceIds,
    snapshot::Publisher,
};

/// Applies every valid change of the catalog without a restart (see
/// [`Reload::apply`]); a change that cannot be applied is logged and the
/// last good config stays in force.
pub(super) async fn follow(mut catalog: Box<dyn Catalog>, reload: Reload) {
    loop {
        let new = catalog.changed().await;
        if let Err(e) = reload.apply(new) {
            warn!(error = %e, "config change not applied, keeping the last good config");
        }
    }
}

/// What a reload changes: the snapshot, and its side effects (cgroups,
/// leaves, kernel maps).
pub(super) struct Reload {
    pub node: NodeName,
    /// The writer of the snapshot channel's config (the board writes its
    /// health).
    pub publisher: Arc<Publisher>,
    /// Restarts the checks that changed.
    pub board: Arc<Board>,
    /// Follows the agents of the nodes that came, stops following those
    /// that went.
    pub links: Arc<Links>,
    /// No local service may take it (sk_lookup would steer it away).
    pub link_port: u16,
    pub cg: Arc<Cgroup2>,
    pub cgroups: cgroups::Shared,
    pub identities: Arc<Identities>,
    pub ids: Arc<ServiceIds>,
    pub kernel: Arc<Kernel>,
}

impl Reload {
    /// Makes a new config the one in force: cgroups and leaves for services
    /// that came, dropped for those that went; then one new snapshot
    /// (config, intentions, names, hosts) is published; then the kernel
    /// maps (adds before removes). Handlers see the new snapshot before the
    /// kernel sends them connections for new services.
    pub fn apply(&self, new: Config) -> Result<(), AppError> {
        let node = &self.node;
        check_node(&new, node)?;
        check_link_port(&new, node, self.link_port)?;
        let changed = self
            .publisher
            .borrow()
            .config
            .mesh
            .restart_needed(&new.mesh);
        if !changed.is_empty() {
            return Err(AppError::NeedsRestart(changed));
        }
        let local: Vec<ServiceName> = new.services_on(node).map(|s| s.name.clone()).collect();
        let mut cgroups = self.cgroups.lock();
        cgroups.sync(&self.cg, &new, node)?;
        self.identities.sync(&local)?;
        // The one swap (keeping the health in force: the health board
        // publishes through the same channel). Live connections re-decide
        // their pair on this.
        self.publisher
            .send_modify(|current| *current = Arc::new(current.reloaded(new)));
        // Only health can have changed since, never the config.
        let snapshot = self.publisher.borrow().clone();
        let contents = maps::contents(
            &snapshot.config,
            node,
            &self.ids,
            &cgroups.services,
            &snapshot.policy,
        );
        self.kernel.update(&contents)?;
        self.board.sync(&snapshot.config);
        self.links.sync(&snapshot.config);
        info!(
            services = snapshot.config.services.len(),
            intentions = snapshot.config.intentions.len(),
            local_services = local.len(),
            kernel_rules = contents.rules.len(),
            "config applied"
        );
        Ok(())
    }
}

/// Fails unless `config` declares `node`.
pub(super) fn check_node(config: &Config, node: &NodeName) -> Result<(), AppError> {
    match config.node(node) {
        Some(_) => Ok(()),
        None => Err(AppError::UnknownNode {
            node: node.to_owned(),
            path: config.path.clone(),
        }),
    }
}

/// Fails if a service of `node` listens on `port`, the link port: sk_lookup
/// would steer other agents' links to it to the inbound listener.
pub(super) fn check_link_port(config: &Config, node: &NodeName, port: u16) -> Result<(), AppError> {
    match config.services_on(node).find(|s| s.port == port) {
        Some(s) => Err(AppError::LinkPort {
            service: s.name.clone(),
            node: node.clone(),
            port,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NODES, config, service};

    #[test]
    fn a_local_service_on_the_link_port_is_refused() {
        let config = config(&format!(
            "{NODES}{}{}",
            service("web", &["a"], 15002),
            service("api", &["b"], 80)
        ));
        let (a, b): (NodeName, NodeName) = ("a".parse().unwrap(), "b".parse().unwrap());
        let err = check_link_port(&config, &a, 15002).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("service \"web\" listens on port 15002 of node \"a\""),
            "{err}"
        );
        // Another node's service may use it: its agent is elsewhere.
        assert!(check_link_port(&config, &b, 15002).is_ok());
        assert!(check_link_port(&config, &a, 15003).is_ok());
    }

    #[test]
    fn an_undeclared_node_is_refused() {
        let config = config(NODES);
        assert!(check_node(&config, &"a".parse().unwrap()).is_ok());
        let err = check_node(&config, &"c".parse().unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "node \"c\" is not declared in /m.toml");
    }
}

//! Follows the node's CA files (`ca_dir`: the roots, the node CA and its
//! key): when they change, the agent loads them, checks them as at start
//! and puts them in force without a restart (`Identities::set_ca`). A root
//! rotation (`identity::rotation`) reaches running agents this way. Files
//! that cannot be used are reported once and the ones in force stay.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tracing::{info, warn};

use crate::{config::Config, identity::Identities, identity::ca::CaDir, names::NodeName};

/// How often the files are read.
pub const EVERY: Duration = Duration::from_millis(500);

/// Watches `config`'s `ca_dir` for `identities`' node, forever.
pub(super) async fn follow(config: Config, identities: Arc<Identities>) {
    let node = identities.node();
    let files = files(&config, &node);
    let mut seen = read(&files);
    let mut every = tokio::time::interval(EVERY);
    loop {
        every.tick().await;
        let now = read(&files);
        if now == seen {
            continue;
        }
        seen = now;
        match super::node_ca(&config, &node, false).map(|ca| identities.set_ca(ca)) {
            Ok(Ok(())) => {
                let ca = identities.ca();
                let report = ca.report();
                info!(
                    roots = ?report.roots,
                    node_ca = %report.node_ca,
                    issuer_key = %report.issuer_key,
                    "the CA files changed: new roots and node CA in force, every leaf issued again"
                );
            }
            Ok(Err(e)) => warn!(error = %e, "the CA files changed but issuing leaves failed"),
            Err(e) => warn!(
                error = %e,
                "the CA files changed but cannot be used; the ones in force stay"
            ),
        }
    }
}

/// The files the node's CA is made of.
fn files(config: &Config, node: &NodeName) -> Vec<PathBuf> {
    let dir = CaDir::of(config);
    vec![
        dir.trust(),
        dir.root_cert(),
        dir.node_cert(node),
        dir.node_key(node),
    ]
}

/// Their contents (`None`: missing or unreadable).
fn read(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

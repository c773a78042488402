//! Revoking and readmitting a node in the catalog's store, the file
//! (`config::edit`, comments kept) or etcd: `mesh-agent node revoke` and
//! `node readmit`.

use super::{CatalogError, Source, edits};
use crate::config::edit::{self, Revoking};

/// Revokes node `node`'s CA with SHA-256 `node_ca` in `store`: agents
/// refuse that CA for ever and the node until readmitted. Returns what was
/// done, as one line for the user.
pub async fn revoke(store: &Source, node: &str, node_ca: &str) -> Result<String, CatalogError> {
    let done = match store {
        Source::File(path) => edit::revoke(path, node, node_ca)?,
        Source::Etcd(options) => edits::revoke(options, node, node_ca).await?,
    };
    Ok(match done {
        Revoking::Added => format!("revoked node {node} (its CA {node_ca}) in {store}"),
        Revoking::Again => format!("revoked node {node} again (its CA {node_ca}) in {store}"),
        Revoking::Unchanged => {
            format!("unchanged: node {node} (CA {node_ca}) is revoked in {store}")
        }
    })
}

/// Readmits node `node` in `store` (its revoked CAs stay refused).
pub async fn readmit(store: &Source, node: &str) -> Result<String, CatalogError> {
    let n = match store {
        Source::File(path) => edit::readmit(path, node)?,
        Source::Etcd(options) => edits::readmit(options, node).await?,
    };
    Ok(format!(
        "readmitted node {node} in {store} ({n} revocation(s) lifted; its revoked CAs stay refused)"
    ))
}

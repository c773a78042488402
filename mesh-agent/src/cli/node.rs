//! `node revoke|readmit`: shut a node out of the mesh, and let it back in
//! once it has a new node CA.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use mesh_agent::{
    admin, catalog,
    config::Config,
    identity::ca::{self, CaDir},
};

use super::Store;

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Shut node N out: every agent refuses its node CA for ever, and any
    /// certificate of N until it is readmitted, and cuts its connections
    /// within a second. The CA revoked is N's in ca_dir (nodes/N.crt), or
    /// the one N's agent reports (asked of the agent at --admin), or
    /// --node-ca.
    Revoke {
        node: String,
        /// SHA-256 of the node CA to revoke (64 hex digits).
        #[arg(long)]
        node_ca: Option<String>,
        /// The admin address of a running agent of this mesh.
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: SocketAddr,
        #[command(flatten)]
        store: Store,
    },
    /// Let node N back in. Refused while N's node CA (in ca_dir, or as its
    /// agent reports it) is one that was revoked: issue a new one first.
    Readmit {
        node: String,
        /// The admin address of a running agent of this mesh.
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: SocketAddr,
        #[command(flatten)]
        store: Store,
    },
}

/// Runs a `node` command.
pub fn run(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Revoke {
            node,
            node_ca,
            admin,
            store,
        } => {
            let (config, _) = super::config::load(&store)?;
            let node_ca = match node_ca {
                Some(fp) => fp.to_ascii_lowercase().replace(':', ""),
                None => current_ca(&config, &node, admin)?.0,
            };
            let done = super::block_on(catalog::revocations::revoke(
                &store.source()?,
                &node,
                &node_ca,
            ))??;
            println!("{done}");
        }
        NodeCommand::Readmit { node, admin, store } => {
            let (config, _) = super::config::load(&store)?;
            let (node_ca, from) = current_ca(&config, &node, admin)?;
            if config.is_revoked_ca(&node_ca) {
                anyhow::bail!(
                    "node {node}'s CA {node_ca} ({from}) is revoked: issue it a new one first \
                     (move {dir}/nodes/{node}.crt and .key away, run `mesh-agent ca issue-node \
                     --node {node}`, install them on {node} and restart its agent)",
                    dir = CaDir::of(&config)
                        .nodes()
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                );
            }
            let done = super::block_on(catalog::revocations::readmit(&store.source()?, &node))??;
            println!("{done}");
        }
    }
    Ok(())
}

/// The SHA-256 of `node`'s CA, and where it was read: `nodes/<node>.crt`
/// in ca_dir, else what its agent reports to the agent at `admin`.
fn current_ca(config: &Config, node: &str, admin: SocketAddr) -> anyhow::Result<(String, String)> {
    let file: PathBuf = CaDir::of(config).node_cert(node);
    if let Ok(pem) = std::fs::read(&file) {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .next()
            .with_context(|| format!("no certificate in {}", file.display()))??;
        return Ok((ca::fingerprint(&der), file.display().to_string()));
    }
    let doc = super::block_on(admin::fetch_trust(admin))?.with_context(|| {
        format!(
            "no {} here and no agent at {admin} to ask: give the CA with --node-ca",
            file.display()
        )
    })?;
    doc.nodes
        .into_iter()
        .find(|n| n.node == node)
        .and_then(|n| n.trust)
        .map(|t| (t.node_ca, format!("as node {node}'s agent reports it")))
        .with_context(|| {
            format!(
                "no {} here and node {node}'s agent has not reported its CA to the agent at {admin}: \
                 give it with --node-ca",
                file.display()
            )
        })
}

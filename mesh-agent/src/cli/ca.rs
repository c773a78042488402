//! `ca`: the mesh's built-in CA.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Subcommand;
use mesh_agent::{
    admin::{self, trust::TrustDoc},
    config::Config,
    identity::{self, rotation},
};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the root CA (root.crt, root.key); refuses to overwrite one.
    Init {
        #[arg(long)]
        config: PathBuf,
        /// Days the root is valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue node N's intermediate CA (nodes/N.crt, nodes/N.key) with the
    /// root key; copy both files to node N's `ca_dir/nodes/`.
    IssueNode {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: String,
        /// Days the node CA is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Make an organization's intermediate CA the mesh's CA: node CAs are
    /// issued under it and agents trust the organization's root. Checked
    /// first (a CA with room for node CAs below it, name constraints that
    /// allow the trust domain, valid, the key its own, chaining to the
    /// root given) and proven by issuing and verifying a node CA and a leaf;
    /// nothing changes otherwise. Before any node CA is issued.
    Import {
        /// The intermediate's certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PKCS#8 PEM: RSA 2048/4096, ECDSA P-256/P-384).
        #[arg(long)]
        key: PathBuf,
        /// The certificates from its issuer up to the organization's root,
        /// root last (PEM).
        #[arg(long)]
        chain: PathBuf,
        #[command(flatten)]
        store: super::Store,
    },
    /// Start a root rotation: a new root, trusted beside the old one
    /// (trust.crt); every node CA in nodes/ re-issued under it for the same
    /// key, with the new root cross-signed by the old. Agents reading these
    /// files put them in force within a second; copy trust.crt and
    /// nodes/N.crt to hosts that do not share them.
    Rotate {
        #[command(flatten)]
        store: super::Store,
    },
    /// End a rotation: trust only the new root. Refused, naming who is
    /// behind, until every node's agent reports that it trusts the new root
    /// and presents a node CA signed by it (asked of the agent at --admin,
    /// which hears every other over the health links).
    RetireOld {
        #[command(flatten)]
        store: super::Store,
        /// The admin address of a running agent of this mesh.
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: SocketAddr,
    },
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 24 * 3600)
}

/// Writes the CA's files and prints their paths.
pub fn run(command: CaCommand) -> anyhow::Result<()> {
    let written = match command {
        CaCommand::Init { config, days: d } => {
            identity::ca::init(&Config::load(&config)?, days(d))?
        }
        CaCommand::IssueNode {
            config,
            node,
            days: d,
        } => {
            let config = Config::load(&config)?;
            if config.node(&node).is_none() {
                anyhow::bail!("node {node:?} is not declared in {}", config.path.display());
            }
            identity::ca::issue_node(&config, &node, days(d))?
        }
        CaCommand::Import {
            cert,
            key,
            chain,
            store,
        } => {
            let (config, _) = super::config::load(&store)?;
            let staged = identity::import::stage(&config, &cert, &key, &chain)?;
            prove(&staged)?;
            println!(
                "imported {} (root {}): node CAs are issued under it from now on",
                staged.subject, staged.root
            );
            staged.install()?
        }
        CaCommand::Rotate { store } => {
            let (config, _) = super::config::load(&store)?;
            let rotated = rotation::rotate(&config)?;
            println!(
                "new root {} (SHA-256 {}); node CAs re-issued under it: {}",
                rotated.subject,
                rotated.fingerprint,
                rotated.nodes.join(", ")
            );
            println!(
                "agents that read these files trust both roots and present the new chain within a \
                 second; then run `mesh-agent ca retire-old`"
            );
            rotated.written
        }
        CaCommand::RetireOld { store, admin } => {
            let (config, _) = super::config::load(&store)?;
            if !rotation::in_progress(&config) {
                anyhow::bail!("no rotation in progress: start one with `mesh-agent ca rotate`");
            }
            let doc = super::block_on(admin::fetch_trust(admin))??;
            let behind = behind(&config, &doc)?;
            if !behind.is_empty() {
                anyhow::bail!(
                    "refusing to retire the old root: {} of {} agents are not on the new chain \
                     (nothing changed):\n{}",
                    behind.len(),
                    doc.nodes.len(),
                    behind.join("\n")
                );
            }
            let written = rotation::retire_old(&config)?;
            println!(
                "every agent is on the new chain: the old root is retired (agents trust only the \
                 new one within a second)"
            );
            written
        }
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Issues a node CA and a leaf from the staged files and verifies them as
/// an agent does: what is imported works end to end, or nothing changes.
fn prove(staged: &identity::import::Staged) -> anyhow::Result<()> {
    let config = &staged.config;
    let node = config
        .nodes
        .first()
        .map(|n| n.name.clone())
        .ok_or_else(|| anyhow::anyhow!("the catalog has no node"))?;
    let td = &config.mesh.trust_domain;
    let checked = identity::NodeCa::load_or_issue(config, &node)
        .map_err(|e| e.to_string())
        .and_then(|ca| mesh_agent::tls::verify::self_check(&ca, td, &node));
    checked.map_err(|why| {
        anyhow::anyhow!(
            "refusing to import: a node CA issued under it does not verify as agents verify              ({why}); nothing changed"
        )
    })
}

/// One line per node of `doc` whose agent is not on the new root of
/// `config`'s `ca_dir`, saying why.
fn behind(config: &Config, doc: &TrustDoc) -> anyhow::Result<Vec<String>> {
    let (root, root_key) = rotation::root_key_fingerprint(config)?;
    Ok(doc
        .nodes
        .iter()
        .filter_map(|n| {
            let why = match (&n.trust, n.reachable) {
                (_, false) => format!(
                    "unreachable from {}'s agent ({})",
                    doc.node,
                    n.why.as_deref().unwrap_or("not heard")
                ),
                (None, true) => "sends no trust report (an older agent?)".to_owned(),
                (Some(t), true) if !t.roots.contains(&root) => {
                    "does not trust the new root yet".to_owned()
                }
                (Some(t), true) if t.issuer_key != root_key => {
                    "presents a node CA not signed by the new root yet".to_owned()
                }
                _ => return None,
            };
            Some(format!("  {}: {why}", n.node))
        })
        .collect())
}

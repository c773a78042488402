//! `ca`: the mesh's built-in CA.

use std::path::PathBuf;

use clap::Subcommand;
use mesh_agent::{config::Config, identity};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the root CA (root.crt, root.key); refuses to overwrite one.
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// Issue node N's intermediate CA (nodes/N.crt, nodes/N.key) with the
    /// root key; copy both files to node N's `ca_dir/nodes/`.
    IssueNode {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: String,
    },
}

/// Writes the CA's files and prints their paths.
pub fn run(command: CaCommand) -> anyhow::Result<()> {
    let written = match command {
        CaCommand::Init { config } => identity::ca::init(&Config::load(&config)?)?,
        CaCommand::IssueNode { config, node } => {
            let config = Config::load(&config)?;
            if config.node(&node).is_none() {
                anyhow::bail!("node {node:?} is not declared in {}", config.path.display());
            }
            identity::ca::issue_node(&config, &node)?
        }
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

//! `ca`: the mesh's built-in CA.

use std::{path::PathBuf, time::Duration};

use clap::Subcommand;
use mesh_agent::{config::Config, identity};

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
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

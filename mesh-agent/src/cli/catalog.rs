//! `catalog`: import into etcd, and the services and instances with their
//! health.

use std::{net::SocketAddr, path::PathBuf};

use clap::Subcommand;
use mesh_agent::{admin, catalog};

use super::Etcd;

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Make the catalog in etcd hold what FILE holds (mesh settings,
    /// nodes, services with their checks, intentions): writes only what
    /// differs, removes what FILE no longer has, and prints each change.
    Import {
        file: PathBuf,
        #[command(flatten)]
        etcd: Etcd,
    },
    /// One line per service: its address and how many instances are
    /// passing, warning and critical.
    Services {
        #[command(flatten)]
        from: Lookup,
    },
    /// One line per instance: node, address, state and the last output of
    /// each check.
    Instances {
        /// Only this service's instances.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        from: Lookup,
    },
}

/// Where `catalog services` and `instances` read, and how they print.
#[derive(Debug, clap::Args)]
pub struct Lookup {
    #[arg(long, default_value = admin::DEFAULT_ADDR)]
    admin: SocketAddr,
    /// Print the raw JSON document.
    #[arg(long)]
    json: bool,
    /// Read the catalog and the agents' registrations in etcd instead
    /// of asking the local agent.
    #[command(flatten)]
    etcd: Etcd,
}

/// Runs a `catalog` command.
pub fn run(command: CatalogCommand) -> anyhow::Result<()> {
    let (etcd, addr, json) = match &command {
        CatalogCommand::Import { file, etcd } => {
            let options = etcd
                .options()?
                .ok_or_else(|| anyhow::anyhow!("catalog import needs --catalog etcd://..."))?;
            let report = super::block_on(catalog::import::from_file(&options, file))??;
            print!("{report}");
            return Ok(());
        }
        CatalogCommand::Services { from } | CatalogCommand::Instances { from, .. } => {
            (from.etcd.options()?, from.admin, from.json)
        }
    };
    let doc = match etcd {
        Some(options) => super::block_on(catalog::registry::catalog_doc(&options))??,
        None => super::block_on(admin::fetch_catalog(addr))??,
    };
    for problem in &doc.problems {
        eprintln!("warning: {problem}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    match command {
        CatalogCommand::Import { .. } => {}
        CatalogCommand::Services { .. } => print!("{}", doc.render_services()),
        CatalogCommand::Instances { service, .. } => {
            let table = doc.render_instances(service.as_deref()).ok_or_else(|| {
                anyhow::anyhow!(
                    "no service {:?} in the catalog of node {:?}",
                    service.unwrap_or_default(),
                    doc.node
                )
            })?;
            print!("{table}");
        }
    }
    Ok(())
}

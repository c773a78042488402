//! The command line: `Cli` and its commands, one module per family; each
//! module's `run` is the command's handler.

mod ca;
mod catalog;
mod check;
mod config;
#[cfg(test)]
mod docs_commands;
mod exec;
mod intention;
mod node;
mod run;
mod status;

use std::{future::Future, path::PathBuf};

use clap::{Parser, Subcommand};
use mesh_agent::catalog::{EtcdOptions, EtcdTls, Source};

#[derive(Debug, Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "Node agent of a transparent mTLS service mesh"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent for one node of the mesh (needs root).
    Run(run::Run),
    /// Remove what a stopped agent of node N left in the kernel (its
    /// pinned programs and maps) and its empty cgroups: the node is open
    /// again. SIGTERM to a running agent does the same.
    Down(run::Down),
    /// Show what a running agent holds (from its admin endpoint).
    Status(status::Status),
    /// Report the state of a ttl check of a service's instance on this
    /// node (Consul's TTL check update): it holds until the check's ttl
    /// passes without another report, then the check is critical.
    Check(check::Check),
    /// List services and instances with their health, as the local agent
    /// knows them.
    Catalog {
        #[command(subcommand)]
        command: catalog::CatalogCommand,
    },
    /// Check a config file (or the catalog in etcd); print every problem
    /// and exit non-zero if any.
    Validate {
        #[command(flatten)]
        store: Store,
    },
    /// Manage the mesh's built-in CA (files in `ca_dir`).
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// Edit or list the intentions in the config file (comments are kept;
    /// running agents apply the change within a second).
    Intention {
        #[command(subcommand)]
        command: intention::IntentionCommand,
    },
    /// The verdict for SOURCE -> DESTINATION and the rule that decides it.
    Explain(intention::Explain),
    /// Revoke or readmit a node (in the config file or in etcd).
    Node {
        #[command(subcommand)]
        command: node::NodeCommand,
    },
    /// Run CMD as service S of node N (in the service's cgroup). If the
    /// config file is broken, uses the running agent's last good config.
    Exec(exec::Exec),
}

impl Command {
    /// Whether log lines are JSON (`run --log-format json`).
    pub fn json_logs(&self) -> bool {
        matches!(self, Command::Run(run) if run.log_format == run::LogFormat::Json)
    }

    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Run(args) => run::run(args),
            Command::Down(args) => run::down(&args),
            Command::Status(args) => status::run(args),
            Command::Check(args) => check::run(args),
            Command::Catalog { command } => catalog::run(command),
            Command::Validate { store } => config::validate(&store),
            Command::Ca { command } => ca::run(command),
            Command::Intention { command } => intention::run(command),
            Command::Explain(args) => intention::explain(&args),
            Command::Node { command } => node::run(command),
            Command::Exec(args) => exec::run(&args),
        }
    }
}

/// Where the catalog is: a file (`--config`) or etcd (`--catalog`).
#[derive(Debug, clap::Args)]
pub struct Store {
    /// The mesh's config file.
    #[arg(long, conflicts_with = "catalog")]
    config: Option<PathBuf>,
    #[command(flatten)]
    etcd: Etcd,
}

/// The catalog in etcd.
#[derive(Debug, clap::Args)]
pub struct Etcd {
    /// The catalog in etcd: etcd://HOST:PORT[,HOST:PORT...][/PREFIX]
    /// (prefix /mesh by default).
    #[arg(long)]
    catalog: Option<String>,
    /// CA certificate of the etcd members (TLS to etcd).
    #[arg(long, requires_all = ["catalog", "etcd_cert", "etcd_key"])]
    etcd_cacert: Option<PathBuf>,
    /// This client's certificate for etcd (its CN is its etcd user).
    #[arg(long, requires_all = ["catalog", "etcd_cacert", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert.
    #[arg(long, requires_all = ["catalog", "etcd_cacert", "etcd_cert"])]
    etcd_key: Option<PathBuf>,
}

impl Etcd {
    /// The etcd catalog named, if any.
    fn options(&self) -> anyhow::Result<Option<EtcdOptions>> {
        let Some(url) = &self.catalog else {
            return Ok(None);
        };
        let tls = match (&self.etcd_cacert, &self.etcd_cert, &self.etcd_key) {
            (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        Ok(Some(EtcdOptions::parse(url, tls)?))
    }
}

impl Store {
    /// The catalog named: exactly one of `--config` and `--catalog`.
    fn source(&self) -> anyhow::Result<Source> {
        match (&self.config, self.etcd.options()?) {
            (Some(path), None) => Ok(Source::File(path.clone())),
            (None, Some(etcd)) => Ok(Source::Etcd(etcd)),
            _ => anyhow::bail!("give the catalog: --config FILE or --catalog etcd://..."),
        }
    }
}

/// Runs `future` on a new current-thread runtime: the commands that are
/// clients of an agent or of etcd (`run` has its own multi-thread one).
fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

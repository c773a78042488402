//! `mesh-agent`: the node agent of the mesh and its command line.
//! See ARCHITECTURE.md for how the pieces fit together.

mod admin;
mod agent;
mod cgroup;
mod config;
mod ebpf;
mod exec;
mod identity;
mod proxy;
mod tls;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "Node agent of a transparent mTLS service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent for one node of the mesh (needs root).
    Run {
        /// The mesh's config file.
        #[arg(long)]
        config: PathBuf,
        /// Which node of the config this agent is.
        #[arg(long)]
        node: String,
        /// Port of the outbound listener on 127.0.0.1 and ::1.
        #[arg(long, default_value_t = 15001)]
        outbound_port: u16,
        /// Address of the admin endpoint (loopback only).
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: std::net::SocketAddr,
    },
    /// Show what a running agent holds (from its admin endpoint).
    Status {
        /// The agent's admin address.
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: std::net::SocketAddr,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file; print every problem and exit non-zero if any.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage the mesh's built-in CA (files in `ca_dir`).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Run CMD as service S of node N (in the service's cgroup).
    Exec {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        service: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Run {
            config,
            node,
            outbound_port,
            admin,
        } => run(agent::RunOptions {
            config,
            node,
            outbound_port,
            admin,
        }),
        Command::Status { admin, json } => status(admin, json),
        Command::Validate { config } => validate(&config),
        Command::Ca { command } => ca(command),
        Command::Exec {
            config,
            node,
            service,
            command,
        } => exec::exec(&config, &node, &service, &command)
            .map(|never| match never {})
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: agent::RunOptions) -> anyhow::Result<()> {
    let prepared = agent::prepare(&opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(agent::run(opts, prepared))?;
    Ok(())
}

fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    match config::Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} nodes, {} services, {} intentions)",
                path.display(),
                config.nodes.len(),
                config.services.len(),
                config.intentions.len()
            );
            Ok(())
        }
        Err(e) if !e.problems().is_empty() => {
            for p in e.problems() {
                eprintln!("{p}");
            }
            anyhow::bail!("{} problem(s) in {}", e.problems().len(), path.display())
        }
        Err(e) => Err(e.into()),
    }
}

fn status(addr: std::net::SocketAddr, json: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(admin::fetch_status(addr))?;
    if json {
        println!("{status}");
    } else {
        print!("{}", admin::render_status(&status));
    }
    Ok(())
}

fn ca(command: CaCommand) -> anyhow::Result<()> {
    let written = match command {
        CaCommand::Init { config } => identity::ca::init(&config::Config::load(&config)?)?,
        CaCommand::IssueNode { config, node } => {
            let config = config::Config::load(&config)?;
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

/// Logs go to stderr; `RUST_LOG` filters (default `info`). eBPF-side logs
/// arrive through the `log` bridge under the target `mesh`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

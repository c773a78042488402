//! `exec`: a command as a service of a node.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf};

use mesh_agent::{admin, exec};

/// `mesh-agent exec`.
#[derive(Debug, clap::Args)]
pub struct Exec {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    node: String,
    #[arg(long)]
    service: String,
    /// The admin address of node N's agent, asked for its config when
    /// the file is broken.
    #[arg(long, default_value = admin::DEFAULT_ADDR)]
    admin: SocketAddr,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// Finds the service (in the file, else in the running agent's config,
/// with a warning) and becomes the command in its cgroup.
pub fn run(args: &Exec) -> anyhow::Result<()> {
    let node = &args.node;
    let (target, origin) = exec::find(&args.config, node, &args.service, args.admin)?;
    if let exec::Origin::Agent { addr, broken } = &origin {
        let problems = broken.problems();
        let first = problems
            .first()
            .map_or_else(|| broken.to_string(), ToString::to_string);
        let more = match problems.len() {
            0 | 1 => String::new(),
            n => format!(" (and {} more problems)", n - 1),
        };
        eprintln!("warning: the config file is broken: {first}{more}");
        eprintln!(
            "warning: using the running agent's last good config instead (node {node}, admin {addr})"
        );
    }
    match exec::exec(&target, &args.command)? {}
}

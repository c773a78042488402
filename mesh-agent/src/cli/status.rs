//! `status`: what a running agent holds.

use std::net::SocketAddr;

use mesh_agent::admin;

/// `mesh-agent status`.
#[derive(Debug, clap::Args)]
pub struct Status {
    /// The agent's admin address.
    #[arg(long, default_value = admin::DEFAULT_ADDR)]
    admin: SocketAddr,
    /// Print the raw JSON document.
    #[arg(long)]
    json: bool,
}

/// Prints the agent's `/status`, rendered or as JSON.
pub fn run(args: Status) -> anyhow::Result<()> {
    let status = super::block_on(admin::fetch_status(args.admin))??;
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

//! `check`: a ttl check's report to the local agent.

use std::net::SocketAddr;

use clap::ValueEnum;

use mesh_agent::{admin, health};

/// `mesh-agent check`.
#[derive(Debug, clap::Args)]
pub struct Check {
    /// `pass`, `warn` or `fail`.
    #[arg(value_enum)]
    state: TtlState,
    /// The service whose local instance the check is of.
    #[arg(long)]
    service: String,
    /// Which ttl check, when the service has several.
    #[arg(long)]
    check: Option<String>,
    /// Shown as the check's output.
    #[arg(long)]
    note: Option<String>,
    /// The local agent's admin address.
    #[arg(long, default_value = admin::DEFAULT_ADDR)]
    admin: SocketAddr,
}

/// The state a ttl check is reported in: passing, warning or critical.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum TtlState {
    Pass,
    Warn,
    Fail,
}

/// Sends the report (`POST /check`) and prints the check's new state.
pub fn run(args: Check) -> anyhow::Result<()> {
    let state = match args.state {
        TtlState::Pass => health::State::Passing,
        TtlState::Warn => health::State::Warning,
        TtlState::Fail => health::State::Critical,
    };
    let update = health::doc::TtlUpdate {
        service: args.service,
        check: args.check,
        state,
        note: args.note,
    };
    super::block_on(admin::send_ttl(args.admin, &update))??;
    println!("{}: ttl check now {state}", update.service);
    Ok(())
}

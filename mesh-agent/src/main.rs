//! `mesh-agent`: the command line of the node agent (`cli`); the agent
//! itself is the library (`lib.rs`).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Consul spells the actions with one dash: `intention create -deny a b`.
    let args = std::env::args_os().map(|a| match a.to_str() {
        Some("-allow") => "--allow".into(),
        Some("-deny") => "--deny".into(),
        _ => a,
    });
    let cli = cli::Cli::parse_from(args);
    init_tracing(cli.command.json_logs());
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` filters (default `info`). eBPF-side logs
/// arrive through the `log` bridge under the target `mesh`; the access log
/// (one line per connection) has the target `access`.
fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

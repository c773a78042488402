//! `intention create|delete|list` (in the file or in etcd) and `explain`.

use mesh_agent::{
    catalog::{self, Source},
    config::Action,
    policy,
};

use super::Store;

#[derive(Debug, clap::Subcommand)]
pub enum IntentionCommand {
    /// Allow or deny SOURCE -> DESTINATION (`*` for any); replaces the
    /// action of an existing intention for the same pair.
    #[command(group = clap::ArgGroup::new("action").required(true))]
    Create {
        /// Allow the pair (also `-allow`, as in Consul).
        #[arg(long, group = "action")]
        allow: bool,
        /// Deny the pair (also `-deny`).
        #[arg(long, group = "action")]
        deny: bool,
        source: String,
        destination: String,
        #[command(flatten)]
        store: Store,
    },
    /// Remove the intention for SOURCE -> DESTINATION.
    Delete {
        source: String,
        destination: String,
        #[command(flatten)]
        store: Store,
    },
    /// List the intentions and the default policy.
    List {
        #[command(flatten)]
        store: Store,
    },
}

/// `mesh-agent explain`.
#[derive(Debug, clap::Args)]
pub struct Explain {
    source: String,
    destination: String,
    #[command(flatten)]
    store: Store,
}

/// Runs an `intention` command on the file (comments kept) or in etcd,
/// writing through `catalog::intentions` as the web UI does.
pub fn run(command: IntentionCommand) -> anyhow::Result<()> {
    let (source, destination, action, store) = match command {
        IntentionCommand::Create {
            allow,
            deny: _,
            source,
            destination,
            store,
        } => {
            let action = if allow { Action::Allow } else { Action::Deny };
            (source, destination, Some(action), store)
        }
        IntentionCommand::Delete {
            source,
            destination,
            store,
        } => (source, destination, None, store),
        IntentionCommand::List { store } => return list(&store),
    };
    let store = store.source()?;
    let done = super::block_on(catalog::intentions::write(
        &store,
        &source,
        &destination,
        action,
    ))??;
    println!("{done}");
    Ok(())
}

/// `intention list`: the intentions in file order and the default policy.
fn list(store: &Store) -> anyhow::Result<()> {
    let config = match store.source()? {
        Source::Etcd(options) => {
            let config = super::block_on(catalog::etcd::load(&options))??;
            for i in &config.intentions {
                println!("{} -> {}: {}", i.source, i.destination, i.action);
            }
            config
        }
        Source::File(path) => {
            let config = mesh_agent::config::Config::load(&path)?;
            for i in &config.intentions {
                println!(
                    "{} -> {}: {} (line {})",
                    i.source, i.destination, i.action, i.line
                );
            }
            config
        }
    };
    println!("default: {}", config.mesh.default_policy);
    Ok(())
}

/// Prints the verdict for SOURCE -> DESTINATION and the deciding rule.
pub fn explain(args: &Explain) -> anyhow::Result<()> {
    let (config, name) = super::config::load(&args.store)?;
    match policy::explain(&config, &args.source, &args.destination) {
        Ok(line) => println!("{line}"),
        Err(policy::PolicyError::UnknownService(service)) => {
            anyhow::bail!("{service:?} is not a service in {name}")
        }
    }
    Ok(())
}

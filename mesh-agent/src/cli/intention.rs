//! `intention create|delete|list` (in the file or in etcd) and `explain`.

use mesh_agent::{
    catalog::{self, EtcdOptions, Source},
    config::{Action, edit},
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

/// Runs an `intention` command on the file (comments kept) or in etcd.
pub fn run(command: IntentionCommand) -> anyhow::Result<()> {
    let store = match &command {
        IntentionCommand::Create { store, .. }
        | IntentionCommand::Delete { store, .. }
        | IntentionCommand::List { store } => store.source()?,
    };
    let config = match store {
        Source::Etcd(options) => return in_etcd(command, &options),
        Source::File(config) => config,
    };
    match command {
        IntentionCommand::Create {
            allow,
            deny: _,
            source,
            destination,
            ..
        } => {
            let action = if allow { Action::Allow } else { Action::Deny };
            let done = edit::create(&config, &source, &destination, action)?;
            let what = match done {
                edit::Created::Added => "created".to_owned(),
                edit::Created::Updated { from } => format!("changed from {from} to"),
                edit::Created::Unchanged => "unchanged:".to_owned(),
            };
            println!(
                "{what} {action} {source} -> {destination} in {}",
                config.display()
            );
        }
        IntentionCommand::Delete {
            source,
            destination,
            ..
        } => {
            edit::delete(&config, &source, &destination)?;
            println!(
                "deleted {source} -> {destination} from {}",
                config.display()
            );
        }
        IntentionCommand::List { .. } => {
            let config = mesh_agent::config::Config::load(&config)?;
            for i in &config.intentions {
                println!(
                    "{} -> {}: {} (line {})",
                    i.source, i.destination, i.action, i.line
                );
            }
            println!("default: {}", config.mesh.default_policy);
        }
    }
    Ok(())
}

/// `intention create|delete|list` against the catalog in etcd.
fn in_etcd(command: IntentionCommand, options: &EtcdOptions) -> anyhow::Result<()> {
    let (source, destination, action) = match command {
        IntentionCommand::Create {
            allow,
            source,
            destination,
            ..
        } => {
            let action = if allow { Action::Allow } else { Action::Deny };
            (source, destination, Some(action))
        }
        IntentionCommand::Delete {
            source,
            destination,
            ..
        } => (source, destination, None),
        IntentionCommand::List { .. } => {
            let config = super::block_on(catalog::etcd::load(options))??;
            for i in &config.intentions {
                println!("{} -> {}: {}", i.source, i.destination, i.action);
            }
            println!("default: {}", config.mesh.default_policy);
            return Ok(());
        }
    };
    let before = super::block_on(catalog::etcd::set_intention(
        options,
        &source,
        &destination,
        action,
    ))??;
    let what = match (action, before) {
        (Some(a), Some(b)) if a == b => format!("unchanged: {a}"),
        (Some(a), Some(b)) => format!("changed from {b} to {a}"),
        (Some(a), None) => format!("created {a}"),
        (None, Some(_)) => "deleted".to_owned(),
        (None, None) => anyhow::bail!("no intention from {source:?} to {destination:?} in etcd"),
    };
    println!(
        "{what} {source} -> {destination} in etcd {}",
        options.prefix
    );
    Ok(())
}

/// Prints the verdict for SOURCE -> DESTINATION and the deciding rule.
pub fn explain(args: &Explain) -> anyhow::Result<()> {
    let (source, destination) = (args.source.as_str(), args.destination.as_str());
    let (config, name) = super::config::load(&args.store)?;
    for service in [source, destination] {
        if config.service(service).is_none() {
            anyhow::bail!("{service:?} is not a service in {name}");
        }
    }
    let decision = policy::Policy::new(&config).decide(source, destination);
    let rule = match decision.rule {
        policy::Rule::DefaultPolicy => format!("default policy ({})", config.mesh.default_policy),
        rule => rule.to_string(),
    };
    println!("{}: {source} -> {destination} by {rule}", decision.action);
    Ok(())
}

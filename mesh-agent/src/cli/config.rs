//! `validate`, and loading the catalog a command names.

use mesh_agent::{
    catalog::{self, EtcdOptions, Source},
    config::Config,
};

use super::Store;

/// The catalog at `store`, judged, and how to name it.
pub fn load(store: &Store) -> anyhow::Result<(Config, String)> {
    match store.source()? {
        Source::File(path) => {
            let config = Config::load(&path)?;
            Ok((config, path.display().to_string()))
        }
        Source::Etcd(options) => load_etcd(&options),
    }
}

/// The catalog in etcd, judged, and how to name it.
fn load_etcd(options: &EtcdOptions) -> anyhow::Result<(Config, String)> {
    let config = super::block_on(catalog::etcd::load(options))??;
    Ok((config, format!("etcd {}", options.prefix)))
}

/// Prints every problem of the catalog (an error if any), else a summary.
pub fn validate(store: &Store) -> anyhow::Result<()> {
    let (config, name) = match store.source()? {
        Source::Etcd(options) => load_etcd(&options)?,
        Source::File(path) => match Config::load(&path) {
            Ok(config) => (config, path.display().to_string()),
            Err(e) if !e.problems().is_empty() => {
                for p in e.problems() {
                    eprintln!("{p}");
                }
                anyhow::bail!("{} problem(s) in {}", e.problems().len(), path.display())
            }
            Err(e) => return Err(e.into()),
        },
    };
    println!(
        "{name}: ok ({} nodes, {} services, {} intentions)",
        config.nodes.len(),
        config.services.len(),
        config.intentions.len()
    );
    Ok(())
}

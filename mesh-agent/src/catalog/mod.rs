//! Where the agent reads the catalog (mesh settings, nodes, services,
//! intentions) from. The agent talks only to [`Catalog`]; the first source
//! is the TOML file ([`FileCatalog`]), a second (etcd) comes later.
//!
//! A source judges what it reads with [`Config::from_bytes`] or its
//! equivalent, so every source accepts exactly what `validate` accepts.

pub mod file;

use std::{future::Future, pin::Pin};

pub use file::FileCatalog;

use crate::config::{Config, ConfigError};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What [`Catalog::changed`] returns: a future of the next valid config.
pub type Change<'a> = Pin<Box<dyn Future<Output = Config> + Send + 'a>>;

/// A source of the catalog.
pub trait Catalog: Send {
    /// The catalog as it is now, the agent's first config; `changed` reports
    /// changes from here on. Fails if the source cannot be read or holds an
    /// invalid config.
    fn load(&mut self) -> Result<Config, CatalogError>;

    /// Waits for the next valid change since the last config returned and
    /// returns it. A source that turns broken or unreachable meanwhile logs
    /// it and keeps waiting: the caller keeps its last good config.
    fn changed(&mut self) -> Change<'_>;
}

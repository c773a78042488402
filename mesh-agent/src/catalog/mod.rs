//! Where the agent reads the catalog (mesh settings, nodes, services,
//! intentions) from. The agent talks only to [`Catalog`]; the sources are
//! the TOML file ([`FileCatalog`]) and etcd ([`EtcdCatalog`], one key per
//! object: `layout`). With etcd, agents also register their nodes and
//! their instances' health there (`registry`).
//!
//! A source judges what it reads with [`Config::from_bytes`] or its
//! equivalent, so every source accepts exactly what `validate` accepts.

pub mod edits;
pub mod etcd;
pub mod file;
pub mod import;
pub mod intentions;
pub mod layout;
pub mod registry;
pub mod revocations;

use std::{future::Future, pin::Pin};

pub use etcd::{EtcdCatalog, EtcdOptions, EtcdTls};
pub use file::FileCatalog;

use crate::config::{Config, ConfigError};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error(transparent)]
    Edit(#[from] crate::config::edit::EditError),
    // Not `source`: thiserror takes a field of that name for the cause.
    #[error("no intention from {src:?} to {dst:?} in {store}")]
    NoIntention {
        src: String,
        dst: String,
        store: String,
    },
    #[error("catalog URL {url:?}: {why} (e.g. etcd://10.0.0.1:2379,10.0.0.2:2379/mesh)")]
    Url { url: String, why: String },
    #[error("failed to read {}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error(
        "no catalog in etcd under {prefix} (seed it: mesh-agent catalog import mesh.toml --catalog ...)"
    )]
    Empty { prefix: String },
    #[error("the catalog in etcd is not valid:\n{0}")]
    Rejected(String),
    #[error("the catalog watch ended")]
    WatchEnded,
    #[error("etcd canceled the catalog watch: {reason}")]
    WatchCanceled { reason: String },
    #[error("etcd did not answer a keepalive of this node's lease")]
    LeaseUnanswered,
    #[error("{key} kept changing under this edit; try again")]
    Busy { key: String },
    #[error(
        "a catalog import began at revision {since} and has not ended, and the catalog before it cannot be read ({why}); run the import again to finish it"
    )]
    ImportUnreadable { since: i64, why: String },
    #[error(
        "another catalog import is under way (since revision {since}{}); try again when it ends",
        by.as_ref().map(|b| format!(", by {b}")).unwrap_or_default()
    )]
    ImportRunning { since: i64, by: Option<String> },
    #[error("node {node:?} is not revoked in etcd")]
    NotRevoked { node: String },
    #[error("failed to start a runtime to read the catalog: {0}")]
    Runtime(std::io::Error),
    #[error("etcd at {endpoints}: no member answered within {within:?}{}", last.as_ref().map(|e| format!(" (last: {e})")).unwrap_or_default())]
    NoMember {
        endpoints: String,
        within: std::time::Duration,
        /// What the last member tried said, if it said anything.
        last: Option<String>,
    },
}

impl CatalogError {
    /// Whether etcd could not be reached or could not answer now (member
    /// down or partitioned, no leader, timeout): another member, or the
    /// same one later, may answer. A refusal (permission, bad request) is
    /// not.
    pub fn is_unreachable(&self) -> bool {
        use etcd_client::Error as E;
        use tonic::Code;
        let Self::Etcd { source, .. } = self else {
            return false;
        };
        match source {
            E::TransportError(_) | E::IoError(_) => true,
            E::GRpcStatus(status) => matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            ),
            _ => false,
        }
    }
}

/// Runs `judge` (a judgment of the catalog: tens of milliseconds for a
/// large one) off the runtime's workers when it has several (the
/// agent's), so the tasks that share this one (lease keepalives,
/// connections, the data path) move on meanwhile.
fn off_workers<T>(judge: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(judge)
    } else {
        judge()
    }
}

/// A task aborted when this is dropped (a lease's keepalive, which ends
/// with what holds the lease).
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where to read the catalog from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(std::path::PathBuf),
    Etcd(EtcdOptions),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Etcd(o) => std::fmt::Display::fmt(o, f),
        }
    }
}

impl Source {
    /// The catalog at this source.
    pub fn open(&self) -> Box<dyn Catalog> {
        match self {
            Self::File(path) => Box::new(FileCatalog::new(path.clone())),
            Self::Etcd(options) => Box::new(EtcdCatalog::new(options.clone())),
        }
    }
}

/// What [`Catalog::changed`] returns: a future of the next valid config.
pub type Change<'a> = Pin<Box<dyn Future<Output = Config> + Send + 'a>>;

/// Whether the catalog's store is reachable, as its source last found it
/// (a file always is: a broken or missing file is a rejected change, not
/// an outage). Shared with `/status` and `/metrics`.
#[derive(Debug)]
pub struct Reach {
    /// `file <path>` or `etcd <members><prefix>`.
    pub store: String,
    state: std::sync::Mutex<ReachState>,
}

/// See [`Reach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReachState {
    pub connected: bool,
    /// When `connected` last changed (or the agent started).
    pub since: std::time::SystemTime,
    /// Why it is not connected.
    pub error: Option<String>,
}

impl Reach {
    /// Registers `mesh_catalog_connected`.
    pub fn register_metrics(self: &std::sync::Arc<Self>, reg: &mut crate::telemetry::Registry) {
        let this = self.clone();
        reg.collect(move |e| {
            crate::telemetry::registry::gauge(
                e,
                "mesh_catalog_connected",
                "1 while the catalog's store is reachable, 0 while running on the last good catalog",
                i64::from(this.state().connected),
            )
        });
    }

    pub fn new(store: String) -> Self {
        Self {
            store,
            state: std::sync::Mutex::new(ReachState {
                connected: true,
                since: std::time::SystemTime::now(),
                error: None,
            }),
        }
    }

    pub fn state(&self) -> ReachState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records an outage (`Some(why)`) or its end (`None`); returns whether
    /// that changed the state.
    pub fn set(&self, error: Option<String>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let connected = error.is_none();
        let changed = state.connected != connected;
        if changed {
            state.since = std::time::SystemTime::now();
        }
        state.connected = connected;
        state.error = error;
        changed
    }
}

/// A source of the catalog.
pub trait Catalog: Send {
    /// Whether its store is reachable now.
    fn reach(&self) -> std::sync::Arc<Reach>;

    /// The catalog as it is now, the agent's first config; `changed` reports
    /// changes from here on. Fails if the source cannot be read or holds an
    /// invalid config.
    fn load(&mut self) -> Result<Config, CatalogError>;

    /// Waits for the next valid change since the last config returned and
    /// returns it. A source that turns broken or unreachable meanwhile logs
    /// it and keeps waiting: the caller keeps its last good config.
    fn changed(&mut self) -> Change<'_>;
}

//! The catalog as one TOML file, reread every [`POLL_INTERVAL`].
//!
//! A change is any difference from the bytes last judged. A broken file is
//! logged once per change ("config change rejected") with file:line:column
//! and skipped; a file that cannot be read (deleted, say) is logged once
//! per outage ("config file unreadable"), and "config file readable again"
//! when it is back. Either way the caller keeps its last good config.

use std::{path::PathBuf, time::Duration};

use tokio::time::Interval;
use tracing::{info, warn};

use super::{Catalog, CatalogError, Change};
use crate::config::{Config, ConfigError};

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The catalog in a TOML file.
#[derive(Debug)]
pub struct FileCatalog {
    path: PathBuf,
    /// The bytes last judged, valid or not: the file has changed when it
    /// holds other bytes.
    last: Vec<u8>,
    /// The read error last logged: an outage is logged once (again only if
    /// its error changes).
    unreadable: Option<String>,
    /// Made on the first `changed`, inside the runtime.
    poll: Option<Interval>,
    reach: std::sync::Arc<super::Reach>,
}

impl FileCatalog {
    /// The catalog in the file at `path` (relative paths in it are relative
    /// to its directory).
    pub fn new(path: PathBuf) -> Self {
        let reach = super::Reach::new(format!("file {}", path.display()));
        Self {
            path,
            last: Vec::new(),
            unreadable: None,
            reach: std::sync::Arc::new(reach),
            poll: None,
        }
    }

    /// Polls the file until it holds a valid change.
    async fn next_change(&mut self) -> Config {
        let mut poll = self
            .poll
            .take()
            .unwrap_or_else(|| tokio::time::interval(POLL_INTERVAL));
        let config = loop {
            poll.tick().await;
            if let Some(config) = self.check().await {
                break config;
            }
        };
        self.poll = Some(poll);
        config
    }

    /// One look at the file: the new config if it changed and is valid.
    async fn check(&mut self) -> Option<Config> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(source) => {
                let e = ConfigError::Io {
                    path: self.path.clone(),
                    source,
                };
                let message = e.to_string();
                if self.unreadable.as_ref() != Some(&message) {
                    warn!(error = %message, "config file unreadable, keeping the last good config");
                    self.unreadable = Some(message);
                }
                return None;
            }
        };
        if self.unreadable.take().is_some() {
            info!(path = %self.path.display(), "config file readable again");
        }
        if bytes == self.last {
            return None;
        }
        let judged = super::off_workers(|| Config::from_bytes(&bytes, &self.path));
        self.last = bytes;
        match judged {
            Ok(config) => Some(config),
            Err(e) => {
                warn!("config change rejected, keeping the last good config:\n{e}");
                None
            }
        }
    }
}

impl Catalog for FileCatalog {
    fn reach(&self) -> std::sync::Arc<super::Reach> {
        self.reach.clone()
    }

    fn load(&mut self) -> Result<Config, CatalogError> {
        let bytes = Config::read(&self.path)?;
        let config = Config::from_bytes(&bytes, &self.path)?;
        self.last = bytes;
        Ok(config)
    }

    fn changed(&mut self) -> Change<'_> {
        Box::pin(self.next_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Scratch, node};

    fn good() -> String {
        node("a", "10.0.0.1")
    }

    async fn next(catalog: &mut FileCatalog) -> Option<Config> {
        tokio::time::timeout(Duration::from_secs(1), catalog.changed())
            .await
            .ok()
    }

    #[test]
    fn load_fails_like_the_file() {
        let dir = Scratch::new();
        let mut catalog = FileCatalog::new(dir.file());
        assert!(matches!(
            catalog.load(),
            Err(CatalogError::Config(ConfigError::Io { .. }))
        ));
        dir.write("[[node]]\nname = 1\n");
        let e = catalog.load().unwrap_err();
        assert!(e.to_string().contains("mesh.toml:2:8"), "{e}");
        dir.write(good());
        assert_eq!(catalog.load().unwrap().nodes[0].name, "a");
    }

    #[tokio::test]
    async fn reports_valid_changes_only() {
        let dir = Scratch::new();
        dir.write(good());
        let mut catalog = FileCatalog::new(dir.file());
        catalog.load().unwrap();
        // Nothing changed.
        assert!(next(&mut catalog).await.is_none());
        // A broken file is skipped; so is a missing one.
        dir.write("[[node]]\nname = \"a\"\n");
        assert!(next(&mut catalog).await.is_none());
        std::fs::remove_file(dir.file()).unwrap();
        assert!(next(&mut catalog).await.is_none());
        // The next valid file is the change.
        dir.write(good().replace("10.0.0.1", "10.0.0.2"));
        let config = next(&mut catalog).await.expect("a change");
        assert_eq!(config.nodes[0].address.to_string(), "10.0.0.2");
        // Reported once.
        assert!(next(&mut catalog).await.is_none());
    }
}

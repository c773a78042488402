//! The cgroups an agent uses: its own, and one per local service.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tracing::warn;

use crate::{
    cgroup::{self, Cgroup2, CgroupError},
    config::Config,
    names::{NodeName, ServiceName},
};

/// The cgroup of one local service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServiceCgroup {
    pub path: PathBuf,
    /// Its cgroup id (the kernel's `CGROUPS` map key).
    pub id: u64,
    /// Whether it is ours (the default path under the mesh's root cgroup),
    /// to remove when done.
    pub ours: bool,
}

/// The cgroups this agent uses: its own, and one per local service.
pub(super) struct Cgroups {
    /// The agent's own cgroup (`<mesh root>/<node>/_agent`).
    agent: PathBuf,
    /// Its id: the programs let the agent's own sockets through.
    pub agent_id: u64,
    /// Where the agent came from; it moves back there on exit.
    origin: Option<PathBuf>,
    /// Per local service, by name.
    pub services: BTreeMap<ServiceName, ServiceCgroup>,
    /// Our cgroups of services that left the config, to remove at exit if
    /// they were still busy then.
    gone: Vec<PathBuf>,
}

impl Cgroups {
    /// Creates the agent's cgroup and moves this process into it, then
    /// creates those of `node`'s services.
    pub fn enter(cg: &Cgroup2, config: &Config, node: &NodeName) -> Result<Self, CgroupError> {
        let origin = cgroup::current();
        let agent = cgroup::agent_path(node);
        let agent_id = cg.create(&agent)?;
        cg.join(&agent, std::process::id())?;
        let mut this = Self {
            agent,
            agent_id,
            origin,
            services: BTreeMap::new(),
            gone: Vec::new(),
        };
        this.sync(cg, config, node)?;
        Ok(this)
    }

    /// Creates the cgroups of `node`'s services that are missing and lets go
    /// of those of services no longer there (removing ours, where empty).
    pub fn sync(
        &mut self,
        cg: &Cgroup2,
        config: &Config,
        node: &NodeName,
    ) -> Result<(), CgroupError> {
        let mut want = BTreeMap::new();
        for s in config.services_on(node) {
            let (path, ours) = cgroup::service_path(s, node);
            let id = cg.create(&path)?;
            want.insert(s.name.clone(), ServiceCgroup { path, id, ours });
        }
        for (name, old) in &self.services {
            if old.ours && want.get(name).is_none_or(|new| new.path != old.path) {
                cg.remove_empty(&old.path, Path::new("/"));
                self.gone.push(old.path.clone());
            }
        }
        self.services = want;
        Ok(())
    }

    /// Moves the agent back to where it came from and removes the cgroups it
    /// created, where empty.
    pub fn leave(&self, cg: &Cgroup2) {
        let back = self.origin.clone().unwrap_or_else(|| PathBuf::from("/"));
        if let Err(e) = cg.join(&back, std::process::id()) {
            warn!(error = %e, "could not leave the agent cgroup");
        }
        cg.remove_empty(&self.agent, Path::new("/"));
        for s in self.services.values().filter(|s| s.ours) {
            cg.remove_empty(&s.path, Path::new("/"));
        }
        for path in &self.gone {
            cg.remove_empty(path, Path::new("/"));
        }
    }
}

/// [`Cgroups`] shared by start-up, reloads and stop.
#[derive(Clone)]
pub(super) struct Shared(Arc<Mutex<Cgroups>>);

impl Shared {
    pub fn new(cgroups: Cgroups) -> Self {
        Self(Arc::new(Mutex::new(cgroups)))
    }

    /// The cgroups; a panic while another held them leaves them as they
    /// were (every change is a whole `sync`).
    pub fn lock(&self) -> MutexGuard<'_, Cgroups> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

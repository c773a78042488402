//! The cgroup2 hierarchy: finding (or mounting) it, service cgroups, and
//! moving processes into them.
//!
//! `ip netns exec` gives its command a fresh `/sys`, so inside a node's netns
//! the cgroup2 mount is usually missing. We then move this process into a
//! mount namespace of its own and mount cgroup2 on `/sys/fs/cgroup` there:
//! nothing is created on the host's file systems, and the mount goes away
//! with the process, even on SIGKILL. A cgroup's id (what
//! `bpf_get_current_cgroup_id()` returns) is its directory's inode number.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::{mount::MsFlags, sched::CloneFlags};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    #[error("failed to make a private mount namespace for cgroup2: {0}")]
    Unshare(nix::Error),
    #[error("failed to mount cgroup2 on {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("failed to create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("failed to move pid {pid} into cgroup {path}: {source}")]
    Join {
        path: PathBuf,
        pid: u32,
        source: io::Error,
    },
    #[error("failed to read cgroup {path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
    #[error("cgroup path {0} must be absolute and must not contain '..'")]
    BadPath(PathBuf),
}

/// The cgroup2 hierarchy, as mounted somewhere in this mount namespace.
#[derive(Debug)]
pub struct Cgroup2 {
    root: PathBuf,
}

impl Cgroup2 {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo`; when there is none,
    /// mounts cgroup2 in a private mount namespace (see the module docs).
    /// Must run before the process starts threads (`unshare` requires it).
    pub fn find_or_mount() -> Result<Self, CgroupError> {
        let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
        if let Some(root) = find_cgroup2(&info) {
            return Ok(Self { root });
        }
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(CgroupError::Unshare)?;
        // Keep our mounts from propagating back to the parent namespace.
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(CgroupError::Unshare)?;
        let root = PathBuf::from("/sys/fs/cgroup");
        nix::mount::mount(
            Some("cgroup2"),
            &root,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|source| CgroupError::Mount {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `rel`, a path inside the hierarchy such as
    /// `/mesh/node-a/web`.
    pub fn dir(&self, rel: &Path) -> Result<PathBuf, CgroupError> {
        let clean = rel.is_absolute()
            && !rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if !clean {
            return Err(CgroupError::BadPath(rel.to_owned()));
        }
        Ok(self.root.join(rel.strip_prefix("/").unwrap_or(rel)))
    }

    /// Creates `rel` (and its parents) if missing; returns its cgroup id.
    pub fn create(&self, rel: &Path) -> Result<u64, CgroupError> {
        let dir = self.dir(rel)?;
        fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        id_of(&dir)
    }

    /// Moves process `pid` into `rel`.
    pub fn join(&self, rel: &Path, pid: u32) -> Result<(), CgroupError> {
        let dir = self.dir(rel)?;
        fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|source| CgroupError::Join {
            path: dir,
            pid,
            source,
        })
    }

    /// Removes `rel` and then its parents up to (not including) `stop`, each
    /// only if empty. Busy or non-empty cgroups are left alone.
    pub fn remove_empty(&self, rel: &Path, stop: &Path) {
        let Ok(mut dir) = self.dir(rel) else { return };
        let Ok(stop) = self.dir(stop) else { return };
        while dir.starts_with(&stop) && dir != stop {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::debug!(path = %dir.display(), error = %e, "cgroup left in place");
                    return;
                }
            }
            if !dir.pop() {
                return;
            }
        }
    }
}

impl Cgroup2 {
    /// Removes `rel` and every cgroup below it that is empty (deepest
    /// first); returns how many went.
    pub fn remove_empty_tree(&self, rel: &Path) -> usize {
        fn walk(dir: &Path) -> usize {
            let mut removed = 0;
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        removed += walk(&entry.path());
                    }
                }
            }
            removed + usize::from(fs::remove_dir(dir).is_ok())
        }
        self.dir(rel).map_or(0, |dir| walk(&dir))
    }
}

pub use crate::config::MESH_ROOT;

/// The agent's own cgroup on `node`: `/mesh/<node>/_agent`. Service names
/// cannot contain `_`, so it never collides with a service's.
pub fn agent_path(node: &crate::names::NodeName) -> PathBuf {
    Path::new(MESH_ROOT).join(node.as_str()).join("_agent")
}

/// The cgroup of `service`'s instance on `node`, and whether it is the
/// mesh's own (the default `/mesh/<node>/<service>`, created and removed by
/// the agent) rather than one the config names (e.g. a systemd unit's, the
/// same on every node hosting it).
pub fn service_path(service: &crate::config::Service, node: &str) -> (PathBuf, bool) {
    match &service.cgroup {
        Some(p) => (p.clone(), false),
        None => (
            Path::new(MESH_ROOT).join(node).join(service.name.as_str()),
            true,
        ),
    }
}

/// The cgroup2 path of this process (`/proc/self/cgroup`, the `0::` line).
pub fn current() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(PathBuf::from)
}

/// The cgroup id of the cgroup directory `dir`.
pub fn id_of(dir: &Path) -> Result<u64, CgroupError> {
    fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Stat {
            path: dir.to_owned(),
            source,
        })
}

/// The mount point of the first cgroup2 file system in a mountinfo text.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [tags] - <fstype> <source> <opts>"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let root = left.split_whitespace().nth(3)?;
        if fstype != "cgroup2" || root != "/" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_point() {
        let info = "\
25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
40 25 0:35 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
";
        assert_eq!(
            find_cgroup2(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_cgroup2("25 30 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn the_mesh_layout() {
        assert_eq!(
            agent_path(&"b".parse().unwrap()),
            PathBuf::from("/mesh/b/_agent")
        );
        let mut api = crate::config::Service {
            name: "api".parse().unwrap(),
            nodes: vec!["b".parse().unwrap(), "c".parse().unwrap()],
            port: 5001,
            vip: "240.0.0.2".parse().unwrap(),
            public: false,
            cgroup: None,
            lb: Default::default(),
            checks: Vec::new(),
        };
        assert_eq!(
            service_path(&api, "b"),
            (PathBuf::from("/mesh/b/api"), true)
        );
        assert_eq!(
            service_path(&api, "c"),
            (PathBuf::from("/mesh/c/api"), true)
        );
        api.cgroup = Some(PathBuf::from("/system.slice/api.service"));
        assert_eq!(
            service_path(&api, "c"),
            (PathBuf::from("/system.slice/api.service"), false)
        );
    }

    #[test]
    fn rejects_escaping_paths() {
        let cg = Cgroup2 {
            root: PathBuf::from("/cg"),
        };
        assert_eq!(
            cg.dir(Path::new("/mesh/a/web")).ok(),
            Some(PathBuf::from("/cg/mesh/a/web"))
        );
        assert!(cg.dir(Path::new("/mesh/../etc")).is_err());
        assert!(cg.dir(Path::new("mesh/a")).is_err());
    }
}

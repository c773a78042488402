//! The cgroup2 hierarchy: finding (or mounting) it, service cgroups, and
//! moving processes into them.
//!
//! `ip netns exec` gives its command a fresh `/sys`, so inside a node's netns
//! the cgroup2 mount is usually missing; we then mount cgroup2 on a private
//! temporary directory and remove it again when done. A cgroup's id (what
//! `bpf_get_current_cgroup_id()` returns) is its directory's inode number.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::mount::{MntFlags, MsFlags};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
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
    /// Set when we mounted it ourselves: unmounted and removed on drop.
    own_mount: bool,
}

impl Cgroup2 {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo`, or mounts cgroup2
    /// on a new private directory when there is none.
    pub fn find_or_mount() -> Result<Self, CgroupError> {
        let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
        if let Some(root) = find_cgroup2(&info) {
            return Ok(Self {
                root,
                own_mount: false,
            });
        }
        let root = std::env::temp_dir().join(format!("mesh-cgroup2-{}", std::process::id()));
        fs::create_dir_all(&root).map_err(|source| CgroupError::Create {
            path: root.clone(),
            source,
        })?;
        nix::mount::mount(
            Some("cgroup2"),
            &root,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|source| {
            let _ = fs::remove_dir(&root);
            CgroupError::Mount {
                path: root.clone(),
                source,
            }
        })?;
        Ok(Self {
            root,
            own_mount: true,
        })
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

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        if self.own_mount {
            let _ = nix::mount::umount2(&self.root, MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(&self.root);
        }
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
    fn rejects_escaping_paths() {
        let cg = Cgroup2 {
            root: PathBuf::from("/cg"),
            own_mount: false,
        };
        assert_eq!(
            cg.dir(Path::new("/mesh/a/web")).ok(),
            Some(PathBuf::from("/cg/mesh/a/web"))
        );
        assert!(cg.dir(Path::new("/mesh/../etc")).is_err());
        assert!(cg.dir(Path::new("mesh/a")).is_err());
    }
}

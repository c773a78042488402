//! Finding containers: the network namespaces of the processes in local
//! services' cgroup subtrees, other than the node's own.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use crate::names::ServiceName;

/// How deep below a service's cgroup the scan looks (podman puts a
/// container one level down, `<service>/libpod-<id>`; systemd and pods a
/// few more).
pub const MAX_DEPTH: usize = 8;

/// A network namespace seen in a service's cgroup subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub service: ServiceName,
    /// Its nsfs inode.
    pub inode: u64,
    /// A process in it (the first seen), to open it through.
    pub pid: u32,
    /// The cgroup (below the cgroup2 root) that process is in.
    pub cgroup: PathBuf,
}

/// What one scan found: each namespace once, by inode; the namespaces
/// found under more than one service (each is left to the service it was
/// seen under first, in `services` order); and the cgroups holding
/// processes in more than one namespace other than the host's (each
/// namespace is served on its own), with how many.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub netns: BTreeMap<u64, Sighting>,
    pub shared: Vec<(u64, ServiceName, ServiceName)>,
    pub mixed: Vec<(PathBuf, usize)>,
}

/// Scans the cgroups of `services` (name, path below `root`) for
/// processes whose network namespace (`netns_of(pid)`, `None` if the
/// process is gone) is not `host`. A service cgroup nested in another's is
/// scanned as its own (a process belongs to its deepest service).
pub fn scan(
    root: &Path,
    services: &[(ServiceName, PathBuf)],
    host: u64,
    netns_of: impl Fn(u32) -> Option<u64>,
) -> Found {
    let own: Vec<&Path> = services.iter().map(|(_, p)| p.as_path()).collect();
    let mut found = Found::default();
    for (service, path) in services {
        let mut pids = Vec::new();
        walk(root, path, &own, 0, &mut pids);
        let mut per_cgroup: BTreeMap<PathBuf, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for (cgroup, pid) in pids {
            let Some(inode) = netns_of(pid).filter(|&i| i != host) else {
                continue;
            };
            per_cgroup.entry(cgroup.clone()).or_default().insert(inode);
            match found.netns.get(&inode) {
                None => {
                    found.netns.insert(
                        inode,
                        Sighting {
                            service: service.clone(),
                            inode,
                            pid,
                            cgroup,
                        },
                    );
                }
                Some(first) if first.service != *service => {
                    let pair = (inode, first.service.clone(), service.clone());
                    if !found.shared.contains(&pair) {
                        found.shared.push(pair);
                    }
                }
                Some(_) => {}
            }
        }
        found.mixed.extend(
            per_cgroup
                .into_iter()
                .filter(|(_, inodes)| inodes.len() > 1)
                .map(|(cgroup, inodes)| (cgroup, inodes.len())),
        );
    }
    found
}

/// Collects (cgroup, pid) of every process in `rel` (below `root`) and the
/// cgroups below it, down to [`MAX_DEPTH`], leaving out the subtrees of
/// other service cgroups (`own`).
fn walk(root: &Path, rel: &Path, own: &[&Path], depth: usize, out: &mut Vec<(PathBuf, u32)>) {
    let dir = root.join(rel.strip_prefix("/").unwrap_or(rel));
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .map(|pid| (rel.to_owned(), pid)),
        );
    }
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let child = rel.join(entry.file_name());
        if own.contains(&child.as_path()) {
            continue;
        }
        walk(root, &child, own, depth + 1, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Scratch;

    /// A cgroup tree in a temporary directory: (path, pids).
    fn tree(cgroups: &[(&str, &[u32])]) -> Scratch {
        let dir = Scratch::new();
        for (path, pids) in cgroups {
            let d = dir.dir().join(path.trim_start_matches('/'));
            fs::create_dir_all(&d).unwrap();
            let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
            fs::write(d.join("cgroup.procs"), text).unwrap();
        }
        dir
    }

    fn services(list: &[(&str, &str)]) -> Vec<(ServiceName, PathBuf)> {
        list.iter()
            .map(|(s, p)| (s.parse().unwrap(), PathBuf::from(p)))
            .collect()
    }

    /// pid p lives in netns p / 10 (1: the host's).
    fn netns_of(pid: u32) -> Option<u64> {
        (pid != 0).then_some(u64::from(pid / 10))
    }

    #[test]
    fn finds_each_container_namespace_once_and_skips_the_host() {
        let root = tree(&[
            ("/mesh/b/api", &[10, 11]),
            ("/mesh/b/api/libpod-1", &[20, 21]),
            ("/mesh/b/api/libpod-2/inner", &[30]),
            ("/mesh/b/web", &[]),
        ]);
        let found = scan(
            root.dir(),
            &services(&[("api", "/mesh/b/api"), ("web", "/mesh/b/web")]),
            1,
            netns_of,
        );
        let seen: Vec<_> = found
            .netns
            .values()
            .map(|s| {
                (
                    s.inode,
                    s.service.as_str(),
                    s.pid,
                    s.cgroup.to_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (2, "api", 20, "/mesh/b/api/libpod-1"),
                (3, "api", 30, "/mesh/b/api/libpod-2/inner")
            ]
        );
        assert!(found.shared.is_empty());
        assert!(found.mixed.is_empty());
    }

    #[test]
    fn a_cgroup_with_processes_in_two_namespaces_serves_both_and_says_so() {
        let root = tree(&[("/mesh/b/api/odd", &[20, 30, 11])]);
        let found = scan(
            root.dir(),
            &services(&[("api", "/mesh/b/api")]),
            1,
            netns_of,
        );
        assert_eq!(found.netns.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(found.mixed, [(PathBuf::from("/mesh/b/api/odd"), 2)]);
    }

    #[test]
    fn a_nested_service_cgroup_is_its_own_and_a_shared_namespace_is_reported() {
        let root = tree(&[
            ("/mesh/b/api", &[]),
            ("/mesh/b/api/sidecar", &[40]),
            ("/mesh/b/web", &[41, 0]),
        ]);
        let found = scan(
            root.dir(),
            &services(&[
                ("api", "/mesh/b/api"),
                ("side", "/mesh/b/api/sidecar"),
                ("web", "/mesh/b/web"),
            ]),
            1,
            netns_of,
        );
        // 40 is side's, not api's; 41 shares its namespace: left to side.
        assert_eq!(found.netns.len(), 1);
        assert_eq!(found.netns[&4].service.as_str(), "side");
        assert_eq!(
            found.shared,
            [(4, "side".parse().unwrap(), "web".parse().unwrap())]
        );
    }

    #[test]
    fn a_missing_cgroup_finds_nothing() {
        let root = tree(&[]);
        let found = scan(
            root.dir(),
            &services(&[("api", "/mesh/b/api")]),
            1,
            netns_of,
        );
        assert_eq!(found, Found::default());
    }
}

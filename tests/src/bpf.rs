//! The kernel's view of the mesh's eBPF programs: the tests' bpffs, and
//! what `bpftool` lists.

use std::{fs, path::PathBuf, process::Command};

/// Where the tests' agents pin their programs (`run --bpffs`): a bpffs
/// mounted on the host outside `/sys` (which `ip netns exec` replaces), so
/// pins outlive an agent killed in a test. Mounted on first use, and left
/// mounted (like the host's own `/sys/fs/bpf`).
pub fn bpffs() -> PathBuf {
    let dir = PathBuf::from("/run/mesh-tests/bpffs");
    static MOUNT: std::sync::Once = std::sync::Once::new();
    MOUNT.call_once(|| {
        let mounted = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/run/mesh-tests/bpffs"));
        if !mounted {
            fs::create_dir_all(&dir).expect("create the tests' bpffs directory");
            let status = Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&dir)
                .status()
                .expect("run mount");
            assert!(status.success(), "mount -t bpf bpf {}", dir.display());
        }
    });
    dir
}

/// Ids of the bpf links of the mesh's programs right now (from `bpftool
/// -j link show`: links whose program is named `mesh_*`).
pub fn loaded_mesh_links() -> Vec<u64> {
    let programs: Vec<u64> = mesh_programs()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    bpftool(&["link", "show"])
        .into_iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|p| programs.contains(&p)))
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

/// Names of the mesh's eBPF programs loaded in the kernel right now
/// (from `bpftool -j prog show`).
pub fn loaded_mesh_programs() -> Vec<String> {
    mesh_programs()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// `bpftool -j prog show` entries of programs named `mesh_*`.
fn mesh_programs() -> Vec<serde_json::Value> {
    bpftool(&["prog", "show"])
        .into_iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("mesh_")))
        .collect()
}

/// The entries `bpftool -j ARGS` lists.
fn bpftool(args: &[&str]) -> Vec<serde_json::Value> {
    match bpftool_json(args) {
        serde_json::Value::Array(entries) => entries,
        _ => Vec::new(),
    }
}

/// What `bpftool -j <args>` prints (`null` for a command with no output);
/// fails the test if it fails.
pub fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool json")
}

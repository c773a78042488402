//! Fixtures shared by the unit tests and the fuzz crate (feature
//! `testing`): config texts and the tables they are made of, their parsed
//! [`Config`], a snapshot channel, a scratch directory.
//!
//! Every table function starts with a blank line, so tables append to any
//! text; keys such as `vip` or `public` may follow a [`service`].

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    config::Config,
    snapshot::{Publisher, Snapshot, Watch},
};

/// The path [`config`] parses its text as read from.
pub const PATH: &str = "/m.toml";

/// Nodes `a` (10.0.0.1) and `b` (10.0.0.2) on lines 1 to 7: text appended
/// to it starts on line 8.
pub const NODES: &str = r#"[[node]]
name = "a"
address = "10.0.0.1"

[[node]]
name = "b"
address = "10.0.0.2"
"#;

/// Every field of the file, set: a comment, the `[mesh]` table, an IPv4
/// and an IPv6 node, services with IPv4 and IPv6 VIPs, a cgroup, public
/// or not, and intentions.
pub const FULL: &str = r#"# the whole mesh
[mesh]
trust_domain = "prod.example"
default_policy = "allow"
ca_dir = "pki/root"
leaf_ttl = "1h30m"

[[node]]
name = "data-api"
address = "10.77.0.2"

[[node]]
name = "edge-1"
address = "fd00:77::3"

[[service]]
name = "data-api"
node = "data-api"
port = 5001
vip = "240.0.0.2"
cgroup = "/system.slice/data-api.service"

[[service]]
name = "frontend"
node = "edge-1"
port = 8080
public = true

[[service]]
name = "metrics"
node = "edge-1"
port = 9090
vip = "fd00:240::9"
public = false

[[intention]]
source = "frontend"
destination = "data-api"
action = "allow"

[[intention]]
source = "*"
destination = "data-api"
action = "deny"
"#;

/// A `[[node]]` table.
pub fn node(name: &str, address: &str) -> String {
    format!("\n[[node]]\nname = \"{name}\"\naddress = \"{address}\"\n")
}

/// A `[[service]]` table with an instance on each of `nodes` (`node = `
/// for one, `nodes = [...]` for several).
pub fn service(name: &str, nodes: &[&str], port: u16) -> String {
    let placed = match nodes {
        [one] => format!("node = \"{one}\""),
        many => {
            let quoted: Vec<String> = many.iter().map(|n| format!("\"{n}\"")).collect();
            format!("nodes = [{}]", quoted.join(", "))
        }
    };
    format!("\n[[service]]\nname = \"{name}\"\n{placed}\nport = {port}\n")
}

/// An `[[intention]]` table.
pub fn intention(source: &str, destination: &str, action: &str) -> String {
    format!(
        "\n[[intention]]\nsource = \"{source}\"\ndestination = \"{destination}\"\naction = \"{action}\"\n"
    )
}

/// Trust domain `mesh.local`, leaves of 1 h; node a hosts `web` (port
/// 80), node b `api` on `api_port`.
pub fn mesh_text(api_port: u16) -> String {
    format!(
        "[mesh]\ntrust_domain = \"mesh.local\"\nleaf_ttl = \"1h\"\n\n{NODES}{}{}",
        service("web", &["a"], 80),
        service("api", &["b"], api_port)
    )
}

/// `text` parsed as read from [`PATH`]; panics on a problem.
pub fn config(text: &str) -> Config {
    Config::parse(text, Path::new(PATH)).unwrap_or_else(|e| panic!("invalid fixture:\n{e}"))
}

/// The snapshot channel of `config`, with no health known.
pub fn snapshots(config: Config) -> (Publisher, Watch) {
    Snapshot::new(config).publish()
}

/// A fresh directory under the system's temp dir, removed on drop.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// An empty directory, unique to this call.
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mesh-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self { dir }
    }

    /// A directory holding `bytes` as its [`Scratch::file`].
    pub fn with_config(bytes: impl AsRef<[u8]>) -> Self {
        let scratch = Self::new();
        scratch.write(bytes);
        scratch
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `mesh.toml` in the directory.
    pub fn file(&self) -> PathBuf {
        self.dir.join("mesh.toml")
    }

    /// Replaces [`Scratch::file`] with `bytes` at once (written beside it,
    /// then renamed), as editors do.
    pub fn write(&self, bytes: impl AsRef<[u8]>) {
        let tmp = self.dir.join("mesh.toml.tmp");
        std::fs::write(&tmp, bytes)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, self.file())
            .unwrap_or_else(|e| panic!("cannot rename {}: {e}", tmp.display()));
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_make_a_valid_config() {
        let text = format!(
            "{NODES}{}{}vip = \"240.0.0.2\"\n{}",
            node("c", "10.0.0.3"),
            service("api", &["b", "c"], 5001),
            intention("*", "api", "deny")
        );
        let config = config(&text);
        assert_eq!(config.nodes.len(), 3);
        assert_eq!(config.services[0].nodes, ["b", "c"]);
        assert_eq!(config.intentions.len(), 1);
        assert_eq!(config.mesh.trust_domain, "mesh.local");
    }

    #[test]
    fn a_scratch_file_is_replaced_and_the_directory_removed() {
        let scratch = Scratch::with_config("a");
        scratch.write("b");
        assert_eq!(std::fs::read_to_string(scratch.file()).unwrap(), "b");
        let dir = scratch.dir().to_owned();
        drop(scratch);
        assert!(!dir.exists());
    }
}

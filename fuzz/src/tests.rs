//! Replays the committed seeds and regression inputs through the targets,
//! and (ignored) writes the seeds.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mesh_agent::testing::{FULL, NODES, intention, service};

use crate::{TARGETS, mesh};

/// `<fuzz crate>/<kind>/<target>`.
fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target)
}

/// The files in `dir` whose names start with `prefix`, sorted; none if
/// there is no such directory.
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    files.sort();
    files
}

/// Runs `target` on each file; fails naming every file that panicked.
fn replay(target: &str, run: crate::Target, files: &[PathBuf]) {
    let failed: Vec<_> = files
        .iter()
        .filter(|file| {
            let data = fs::read(file).unwrap();
            std::panic::catch_unwind(|| run(&data)).is_err()
        })
        .collect();
    assert!(failed.is_empty(), "{target} fails on {failed:?}");
}

#[test]
fn every_regression_input_passes_its_target() {
    for &(target, run) in TARGETS {
        replay(target, run, &files(&dir("regressions", target), ""));
    }
}

#[test]
fn every_target_has_seeds_and_passes_them() {
    for &(target, run) in TARGETS {
        let seeds = files(&dir("corpus", target), "seed-");
        assert!(!seeds.is_empty(), "no seeds for {target}");
        replay(target, run, &seeds);
    }
}

#[test]
fn the_seed_leaf_passes_the_full_check() {
    let pki = mesh::pki();
    let leaf = rustls_pki_types::CertificateDer::from(mesh::WEB_LEAF_DER);
    let service = pki.rules.verify(
        &leaf,
        std::slice::from_ref(&pki.node_a),
        pki.now,
        webpki::KeyUsage::client_auth(),
        None,
    );
    assert_eq!(service.unwrap(), "web");
}

#[test]
fn the_config_seeds_are_the_fixtures() {
    config_seeds(|name, data| {
        let committed = fs::read(dir("corpus", "config").join(format!("seed-{name}"))).unwrap();
        assert_eq!(committed, data, "{name}");
    });
}

/// Writes the seeds: `cargo test --lib -- --ignored write_seeds`. The
/// certificate seeds are the fixture of `mesh` (compiled in): on a fresh
/// checkout without them, create them empty, run this, and build again.
#[test]
#[ignore = "rewrites the committed seed corpus"]
fn write_seeds() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = dir("corpus", target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    };
    config_seeds(|name, data| write("config", name, data));
    hello_seeds(|name, data| write("client_hello", name, data));
    dns_seeds(|name, data| write("dns", name, data));
    certificate_seeds(|name, data| write("certificate", name, data));
    record_seeds(|name, data| write("kernel_record", name, data));
}

fn config_seeds(mut write: impl FnMut(&str, &[u8])) {
    write("mesh.toml", mesh::text().as_bytes());
    write("comments.toml", commented().as_bytes());
    write("checks.toml", checks().as_bytes());
}

/// A service on two nodes with one check of each kind, defaults and not.
fn checks() -> String {
    format!(
        "{NODES}{}lb = \"round_robin\"\n{CHECKS}{}{}",
        service("api", &["a", "b"], 5001),
        service("web", &["a"], 80),
        intention("web", "api", "allow")
    )
}

/// The checks of [`checks`]' `api`.
const CHECKS: &str = r#"
[[service.check]]
name = "api health"
http = "/health?full=1"
interval = "1s500ms"
timeout = "500ms"
success_before_passing = 2
failures_before_critical = 3

[[service.check]]
tcp = true
interval = "100ms"

[[service.check]]
ttl = "30s"   # mesh-agent check pass --service api
"#;

/// [`FULL`] without its `metrics` service, with comments everywhere the
/// editor must keep them.
fn commented() -> String {
    let metrics = "[[service]]\nname = \"metrics\"\nnode = \"edge-1\"\nport = 9090\n\
                   vip = \"fd00:240::9\"\npublic = false\n\n";
    let text = FULL
        .replace(
            "trust_domain = \"prod.example\"\n",
            "trust_domain = \"prod.example\"   # lowercase\n",
        )
        .replace(metrics, "# intentions\n\n# the app may call its data\n")
        .replace("action = \"allow\"\n", "action = \"allow\"  # for now\n");
    format!("{text}# the end\n")
}

/// ClientHellos as an agent sends them (TLS 1.3, ALPN mesh/1), and one
/// without SNI.
fn hello_seeds(mut write: impl FnMut(&str, &[u8])) {
    use rustls::{ClientConfig, ClientConnection, RootCertStore, pki_types::ServerName};
    for (name, server) in [
        ("web.bin", "web.svc.mesh.local"),
        ("api.bin", "api.svc.mesh.local"),
        ("no-sni.bin", "10.0.0.1"),
    ] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![mesh_agent::tls::ALPN.to_vec()];
        let name_ = ServerName::try_from(server.to_owned()).unwrap();
        let mut conn = ClientConnection::new(Arc::new(config), name_).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        write(name, &hello);
    }
}

/// Queries for the zone (A, AAAA, SRV, a node, unknown) and for another
/// zone.
fn dns_seeds(mut write: impl FnMut(&str, &[u8])) {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };
    for (file, name, kind) in [
        ("web-a.bin", "web.mesh.", RecordType::A),
        ("api-aaaa.bin", "api.mesh.", RecordType::AAAA),
        ("web-srv.bin", "web.mesh.", RecordType::SRV),
        ("node-b-aaaa.bin", "b.node.mesh.", RecordType::AAAA),
        ("nope.bin", "nope.mesh.", RecordType::A),
        ("other-zone.bin", "example.com.", RecordType::A),
    ] {
        let mut query = Message::query();
        query.metadata.id = 7;
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        write(file, &query.to_vec().unwrap());
    }
}

/// A root, node a's CA and a leaf for `web`, made by the agent's own CA
/// code (`identity::ca`) for the mesh of `mesh::text`.
fn certificate_seeds(mut write: impl FnMut(&str, &[u8])) {
    use mesh_agent::{
        config::Config,
        identity::{NodeCa, ca},
        testing::Scratch,
    };
    let tmp = Scratch::new();
    let config = Config::parse(mesh::text(), &tmp.file()).unwrap();
    ca::init(&config, ca::ROOT_VALIDITY).unwrap();
    let node = NodeCa::load_or_issue(&config, &"a".parse().unwrap()).unwrap();
    let leaf = node
        .issue_leaf(&"web".parse().unwrap(), Duration::from_secs(3600))
        .unwrap();
    write("root.der", &node.roots()[0]);
    write("node-a.der", &leaf.chain[1]);
    write("leaf-web.der", &leaf.chain[0]);
}

/// One record of each type (`kernel_record::RECORDS`), as the kernel
/// writes them: the type's index, then its bytes.
fn record_seeds(mut write: impl FnMut(&str, &[u8])) {
    use mesh_agent::ebpf::sock_addr;
    let addr = |text: &str| {
        let a = sock_addr(text.parse().unwrap());
        let mut bytes: Vec<u8> = a.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        bytes.extend(a.port.to_ne_bytes());
        bytes.extend(a._pad.to_ne_bytes());
        bytes
    };
    let ids = mesh::ids();
    let id = |name: &str| {
        (1..=3)
            .find(|&i| ids.name(i).as_deref() == Some(name))
            .unwrap()
    };
    let mut orig = vec![0];
    orig.extend(addr("[fd77::100]:81"));
    for word in [id("web"), id("api"), 0] {
        orig.extend(word.to_ne_bytes());
    }
    orig.extend(1_000_000_000u64.to_ne_bytes());
    write("orig-dst.bin", &orig);
    let mut key = vec![1];
    key.extend(addr("127.0.0.1:40000"));
    key.extend(addr("127.0.0.1:15001"));
    write("conn-key.bin", &key);
    let mut v6 = vec![2];
    v6.extend(addr("[::1]:15001"));
    write("sock-addr.bin", &v6);
}

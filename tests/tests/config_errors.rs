//! A bad config file gives `file:line:column: what is wrong` and a non-zero
//! exit, from `validate`, `run` and `exec` alike; never a panic. `validate`
//! refuses what no agent could run. Needs no root: everything fails before
//! anything privileged.
use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use mesh_tests::agent_bin;

/// (file bytes, expected `line:column: message` fragments)
const CASES: &[(&[u8], &[&str])] = &[
    (b"[mesh\n", &[":1:6: invalid table header"]),
    (
        b"[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\ncolour = \"red\"\n",
        &[":4:1: unknown field `colour`"],
    ),
    (
        b"[[node]]\nname = \"a\"\n",
        &[":1:1:", "missing field `address`"],
    ),
    (
        b"[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[node]]\nname = \"a\"\naddress = \"10.0.0.300\"\n",
        &[":5:8:", "duplicate node", ":6:11:", "address"],
    ),
    (
        b"[[node]]\nname = \"a\"\naddress = \"fd00::1\"\n[[service]]\nname = \"api\"\nnode = \"b\"\nport = 0\n",
        &[":6:8:", "unknown node", ":7:8:", "port"],
    ),
    (
        b"[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n\
         [[service]]\nname = \"x\"\nnode = \"a\"\nport = 1\nvip = \"240.1.1.1\"\n\
         [[service]]\nname = \"y\"\nnode = \"a\"\nport = 1\nvip = \"240.1.1.1\"\n",
        &[
            ":12:8: port 1 on node \"a\" is already used",
            ":13:7:",
            "vip",
        ],
    ),
    // One Latin-1 byte (é) in a comment: the agents refuse it too.
    (
        b"[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n# caf\xe9\n",
        &[":4:6: invalid UTF-8"],
    ),
    // No agent could run these: it must be one of the nodes.
    (b"", &[":1:1: empty file"]),
    (b"[mesh]\n", &[":1:1: no [[node]]"]),
    // Health checks: one without a kind, one too frequent; both reported.
    (
        b"[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n\
         [[service]]\nname = \"x\"\nnode = \"a\"\nport = 5001\n\
         [[service.check]]\nname = \"up\"\n\
         [[service.check]]\ntcp = true\ninterval = \"50ms\"\n",
        &[
            ":8:1: a check of service \"x\" has no kind: expected exactly one of http, tcp or ttl",
            ":12:12: interval \"50ms\" is too short: expected at least 100ms",
        ],
    ),
];

/// A fresh directory holding `text` as mesh.toml.
fn write_config(text: &[u8]) -> (PathBuf, PathBuf) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("mesh-config-test-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("mesh.toml");
    fs::write(&path, text).expect("write");
    (dir, path)
}

/// A loopback address nothing listens on (a port just given back).
fn unused_admin_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

fn check(args: &[&str], text: &[u8], expected: &[&str]) {
    let (dir, path) = write_config(text);
    let out = Command::new(agent_bin())
        .args(args)
        .arg("--config")
        .arg(&path)
        .args(if args[0] == "validate" {
            &[][..]
        } else {
            &["--node", "a"][..]
        })
        .args(if args[0] == "exec" {
            vec!["--admin".to_owned(), unused_admin_addr()]
        } else {
            vec![]
        })
        .args(if args[0] == "exec" {
            &["--service", "x", "--", "true"][..]
        } else {
            &[][..]
        })
        .output()
        .expect("run mesh-agent");
    let _ = fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(text);
    assert_eq!(out.status.code(), Some(1), "{args:?} on {text:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let prefix = format!("{}:", path.display());
    assert!(stderr.contains(&prefix), "no file name in: {stderr}");
    for fragment in expected {
        assert!(
            stderr.contains(fragment),
            "{args:?}: missing {fragment:?} in:\n{stderr}"
        );
    }
}

#[test]
fn validate_names_file_line_column_and_problem() {
    for (text, expected) in CASES {
        check(&["validate"], text, expected);
    }
}

#[test]
fn run_and_exec_refuse_a_bad_config_the_same_way() {
    for (text, expected) in CASES {
        check(&["run"], text, expected);
        // No agent answers on an unused admin port: exec has nothing to
        // fall back on, and says so.
        let no_agent = [*expected, &["no agent answered"]].concat();
        check(&["exec"], text, &no_agent);
    }
}

#[test]
fn a_good_config_validates_with_or_without_a_byte_order_mark() {
    let text = "[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[service]]\nname = \"x\"\nnode = \"a\"\nport = 1\n";
    for text in [text.to_owned(), format!("\u{feff}{text}")] {
        let (dir, path) = write_config(text.as_bytes());
        let out = Command::new(agent_bin())
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        let _ = fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ok (1 nodes, 1 services, 0 intentions)")
        );
    }
}

#[test]
fn run_refuses_a_local_service_on_the_link_port() {
    let text = "[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[service]]\nname = \"x\"\nnode = \"a\"\nport = 15002\n";
    let (dir, path) = write_config(text.as_bytes());
    let out = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&path)
        .args(["--node", "a"])
        .output()
        .expect("run mesh-agent");
    let _ = fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("service \"x\" listens on port 15002 of node \"a\", the agents' link port"),
        "{stderr}"
    );
}

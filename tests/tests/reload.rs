//! A running agent judges a changed file as `validate` does: a file that is
//! not UTF-8 is rejected and logged, a deleted file is logged once, the
//! last good config stays in force meanwhile, and `mesh-agent exec` starts
//! services from the running agent's config. Needs root.
use std::{fs, time::Duration};

use mesh_tests::{Mesh, output_with_timeout, wait_until};

const VIP: &str = "240.0.0.51";
const NODES: [&str; 2] = ["rla", "rlb"];
const DENY: &str = "\n[[intention]]\nsource = \"web\"\ndestination = \"api\"\naction = \"deny\"\n";

/// How many lines of `node`'s agent log contain every one of `needles`.
fn log_lines(mesh: &Mesh, node: &str, needles: &[&str]) -> usize {
    fs::read_to_string(mesh.agent_log(node))
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// The intentions in force on `node`, from its admin endpoint.
fn intentions(mesh: &Mesh, node: &str) -> Vec<serde_json::Value> {
    let config = mesh.admin_json(node, "/config");
    config["intentions"]["intentions"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no intentions in {config}"))
}

#[test]
fn a_broken_or_deleted_file_keeps_the_last_good_config() {
    let mesh = Mesh::nodes(&NODES)
        .default_policy("allow")
        .service("web", "rla", 8080)
        .service_with("api", "rlb", 5001, |s| s.vip(VIP))
        .start();
    // The file as written; the edits below extend it as text.
    let base = fs::read_to_string(mesh.config()).expect("config");
    mesh.start_transfer_server("rlb", "api", 5001, 100);
    let out = mesh.transfer("rla", Some("web"), VIP, 5001, 100);
    assert!(out.starts_with("OK "), "before: {out}");

    // The deny, with a Latin-1 "é" (byte 0xe9) in a comment above it.
    let comment_line = base.lines().count() + 2;
    let latin1 = [base.as_bytes(), b"\n# caf\xe9\n", DENY.as_bytes()].concat();
    mesh.replace_config(&latin1);
    let at = format!("mesh.toml:{comment_line}:6: invalid UTF-8");
    for node in NODES {
        assert!(
            wait_until(Duration::from_secs(3), || log_lines(
                &mesh,
                node,
                &["config change rejected"]
            ) == 1
                && log_lines(&mesh, node, &[&at]) == 1),
            "agent {node} did not reject the file with {at:?}"
        );
        assert!(intentions(&mesh, node).is_empty(), "{node} took the deny");
    }
    // Not enforced, and exec starts `web` from the running agent's config.
    let mut cmd = mesh.cmd_as("rla", "web", "true");
    let exec = output_with_timeout(&mut cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert!(exec.status.success(), "exec with a broken file: {stderr}");
    for needle in [
        "warning: the config file is broken: ",
        &at,
        "using the running agent's last good config",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    let out = mesh.transfer("rla", Some("web"), VIP, 5001, 100);
    assert!(out.starts_with("OK "), "with the broken file: {out}");

    // Deleted: one line per agent, within two seconds and still one after
    // another second (four more checks of the file); the agents go on.
    fs::remove_file(mesh.config()).expect("delete the config");
    let gone = ["config file unreadable", "keeping the last good config"];
    for node in NODES {
        assert!(
            wait_until(Duration::from_secs(2), || log_lines(&mesh, node, &gone)
                == 1),
            "agent {node} did not log the deleted file"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let path = mesh.config().display().to_string();
    for node in NODES {
        assert_eq!(log_lines(&mesh, node, &gone), 1, "agent {node}");
        assert_eq!(log_lines(&mesh, node, &[gone[0], &path]), 1, "{node}");
        assert_eq!(log_lines(&mesh, node, &["config change rejected"]), 1);
    }
    let out = mesh.transfer("rla", Some("web"), VIP, 5001, 100);
    assert!(out.starts_with("OK "), "with the file deleted: {out}");

    // Restored and valid: applied, and the deny is enforced at the source.
    mesh.replace_config(format!("{base}{DENY}").as_bytes());
    for node in NODES {
        assert!(
            wait_until(Duration::from_secs(3), || intentions(&mesh, node).len()
                == 1),
            "agent {node} did not apply the restored file"
        );
        assert_eq!(intentions(&mesh, node)[0]["action"], "deny");
        assert_eq!(log_lines(&mesh, node, &["config file readable again"]), 1);
    }
    let out = mesh.transfer("rla", Some("web"), VIP, 5001, 100);
    assert!(out.starts_with("ERRNO 1 "), "after the deny: {out}");
}

#[test]
fn a_change_that_needs_a_restart_is_refused_and_the_last_good_config_stays() {
    let nodes = ["rra", "rrb"];
    let mesh = Mesh::nodes(&nodes)
        .default_policy("allow")
        .service("web", "rra", 8080)
        .service_with("api", "rrb", 5001, |s| s.vip("240.0.0.52"))
        .start();
    let base = fs::read_to_string(mesh.config()).expect("config");
    // A new leaf lifetime (set up at start) beside a deny (applied live):
    // neither is taken, and the log says what to do.
    let changed = format!(
        "[mesh]\nleaf_ttl = \"1h\"\n{}{DENY}",
        base.replace("[mesh]\n", "")
    );
    mesh.replace_config(changed.as_bytes());
    for node in nodes {
        assert!(
            wait_until(Duration::from_secs(3), || log_lines(
                &mesh,
                node,
                &["leaf_ttl 86400s -> 3600s changed: restart the agent to apply it"]
            ) == 1),
            "agent {node} did not refuse the change: {}",
            fs::read_to_string(mesh.agent_log(node)).unwrap_or_default()
        );
        assert!(intentions(&mesh, node).is_empty(), "{node} took the deny");
    }
}

//! The harness itself: `Mesh::start_agent` waits for the agent's own
//! `/ready` (on the `--admin` address it was given) and fails at once, with
//! the agent's log, when the agent exits instead. Needs root.
use std::{
    net::SocketAddr,
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use mesh_tests::Mesh;

#[test]
fn start_agent_waits_for_this_agents_ready_and_fails_fast_if_it_exits() {
    let mesh = Mesh::nodes(&["rdya"])
        .default_policy("allow")
        .service("web", "rdya", 8080)
        .agent_args("rdya", &["--admin", "127.0.0.1:15099"])
        .start();
    let admin: SocketAddr = "127.0.0.1:15099".parse().expect("addr");
    let pid = mesh.agent_pid("rdya").expect("running");
    let ready = mesh.admin_get_at("rdya", admin, "/ready", Duration::from_secs(5));
    let Some((200, body)) = &ready else {
        panic!("/ready of a started agent: {ready:?}");
    };
    assert_eq!(
        (&body["ready"], &body["phase"], &body["node"], &body["pid"]),
        (&true.into(), &"ready".into(), &"rdya".into(), &pid.into()),
        "{body}"
    );
    // Nothing on the default address: the harness asked the right one.
    assert_eq!(mesh.admin_get("rdya", "/ready"), None);

    // A second agent for the node that would move the admin endpoint
    // cannot take over from the first and exits. The first one's /ready
    // does not fool the harness, which fails at once with the second
    // one's error.
    let started = Instant::now();
    let second = catch_unwind(AssertUnwindSafe(|| {
        mesh.start_agent_with("rdya", &["--admin", "127.0.0.1:15098"]);
    }));
    let elapsed = started.elapsed();
    let message = match &second {
        Ok(()) => panic!("a second agent for node rdya was taken for ready"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(
        message.contains("agent rdya exited") && message.contains("stop it first to change that"),
        "{message}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "failed after {elapsed:?}"
    );
    // The first agent is still the one that answers.
    let ready = mesh.admin_get_at("rdya", admin, "/ready", Duration::from_secs(5));
    assert!(
        matches!(&ready, Some((200, body)) if body["pid"] == pid),
        "{ready:?}"
    );
}

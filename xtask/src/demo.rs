//! The demo `cargo xtask run` starts when given no agent arguments: the
//! Consul Connect playground (see `mesh_tests::playground`) on this machine.
//! Prints what to try, runs until Ctrl-C, then removes everything.

use std::{io::Write as _, path::Path, sync::mpsc};

use anyhow::{Context as _, bail};
use mesh_tests::playground::Playground;

/// Runs the demo with the agent binary at `agent` until Ctrl-C, its
/// catalog in etcd if `etcd`.
pub fn run(agent: &Path, etcd: bool) -> anyhow::Result<()> {
    if !mesh_tests::is_root() {
        bail!("the demo needs root (network namespaces, eBPF); try: sudo -E cargo xtask run");
    }
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("failed to install the Ctrl-C handler")?;

    if etcd {
        eprintln!(
            "demo: starting a 3-member etcd cluster (TLS, RBAC), nodes frontend and data-api, their agents and apps"
        );
    } else {
        eprintln!("demo: starting nodes frontend and data-api, their agents and apps");
    }
    let pg = Playground::start(agent.to_owned(), etcd);
    let mesh = &pg.mesh;
    let (fe, api) = (&mesh.node("frontend").netns, &mesh.node("data-api").netns);
    let cfg = pg.catalog_args().join(" ");
    let bin = mesh.agent.display();
    let fleet = if etcd {
        format!(
            "

  # 7. the catalog and the agents' registrations (leases, health) in etcd
  {bin} catalog instances {cfg}
  ETCDCTL_API=3 etcdctl --endpoints {endpoints} {certs} get --prefix --keys-only /mesh
  # kill an etcd member (or all three): the mesh keeps serving
  ip netns pids {member} | xargs kill",
            endpoints = mesh.etcd_endpoints(),
            certs = mesh.etcdctl_certs("admin").join(" "),
            member = mesh.node("etcd1").netns,
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        std::io::stdout(),
        "
The playground is up: frontend (public, port 5000) calls data-api by name,
data-api.mesh, over mTLS. data-api listens on 127.0.0.1 only. Default deny,
plus frontend -> data-api allow. Try, as root, in another terminal:

  # 1. open the frontend, register and log in (or use a browser on this machine):
  curl -s {url}
  curl -s -c /tmp/jar -d 'username=alice&password=secret' {url}register -o /dev/null
  curl -s -c /tmp/jar -d 'username=alice&password=secret' {url}login -o /dev/null
  curl -s -b /tmp/jar {url}

  # 2. try data-api directly: it is not reachable except through the mesh
  curl -sS -m 3 {direct}

  # 3. deny frontend -> data-api and watch the app fail (allow it again with -allow)
  {bin} intention create -deny frontend data-api {cfg}
  curl -s -b /tmp/jar {url}
  {bin} explain frontend data-api {cfg}

  # 4. capture the traffic between the nodes: TLS 1.3 only, no names or passwords
  ip netns exec {fe} tcpdump -i eth0 -A -c 30 port 5001

  # 5. the web UI of frontend's agent, in a browser on this machine:
  #    services and health, nodes, intentions (create, delete, explain),
  #    the topology, live (in this demo anyone here may change intentions;
  #    a real agent lets only root and --ui-writers)
  {ui}

  # 6. what the agents hold: certificates, verdicts per pair
  ip netns exec {api} {bin} status
  tail -f {logs}/agent-*.log{fleet}

Ctrl-C stops the demo and removes everything it created.",
        url = pg.frontend_url(),
        ui = pg.ui_url(),
        direct = pg.data_api_url(),
        logs = mesh.dir.display(),
    );
    let _ = rx.recv();
    // Ctrl-C may have closed the terminal's pipe: write without panicking,
    // so the namespaces are always removed.
    let _ = writeln!(std::io::stderr(), "\ndemo: stopping");
    drop(pg);
    let _ = writeln!(std::io::stderr(), "demo: done, nothing left behind");
    Ok(())
}

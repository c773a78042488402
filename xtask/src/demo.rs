//! The demo `cargo xtask run` starts when given no agent arguments: two
//! nodes as network namespaces on this machine, an agent on each, a
//! `data-api` service bound to 127.0.0.1 on one and a `frontend` identity on
//! the other. Prints what to try, runs until Ctrl-C, then tears it all down.

use std::{fs, io::Write as _, path::Path, sync::mpsc, time::Duration};

use anyhow::{Context as _, bail};
use mesh_tests::{Mesh, output_with_timeout};

const API_PORT: u16 = 5001;
const VIP: &str = "240.0.0.2";

/// Runs the demo with the agent binary at `agent` until Ctrl-C.
pub fn run(agent: &Path) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo needs root (network namespaces, eBPF); try: sudo -E cargo xtask run");
    }
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("failed to install the Ctrl-C handler")?;

    eprintln!("demo: creating nodes frontend and data-api (network namespaces)");
    let mesh = Mesh::with_agent(&["frontend", "data-api"], agent.to_owned());
    mesh.write_config(&format!(
        "[mesh]\ndefault_policy = \"allow\"\n\n{}\
         [[service]]\nname = \"frontend\"\nnode = \"frontend\"\nport = 5000\n\n\
         [[service]]\nname = \"data-api\"\nnode = \"data-api\"\nport = {API_PORT}\nvip = \"{VIP}\"\n",
        mesh.node_tables(false)
    ));
    eprintln!("demo: starting the agents");
    mesh.start_agent("frontend");
    mesh.start_agent("data-api");

    let www = mesh.dir.join("www");
    fs::create_dir_all(&www)?;
    fs::write(
        www.join("index.html"),
        "hello from data-api, through the mesh\n",
    )?;
    let mut server = mesh.cmd_as("data-api", "data-api", "python3");
    server
        .args([
            "-m",
            "http.server",
            &API_PORT.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&www);
    mesh.spawn_app(server, "data-api");
    mesh.wait_listening("data-api", API_PORT);

    let mut curl = mesh.cmd_as("frontend", "frontend", "curl");
    curl.args(["-sS", "-m", "5", &format!("http://{VIP}:{API_PORT}/")]);
    let out = output_with_timeout(&mut curl, Duration::from_secs(10));
    eprintln!(
        "demo: frontend -> http://{VIP}:{API_PORT}/ said: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );

    let fe = &mesh.node("frontend").netns;
    let api = mesh.node("data-api");
    let (cfg, bin) = (mesh.config(), mesh.agent.clone());
    let (cfg, bin) = (cfg.display(), bin.display());
    let _ = writeln!(
        std::io::stdout(),
        "
The mesh is up. In another terminal (as root), try:

  # frontend calls data-api by its VIP or its catalog address, with no code change:
  ip netns exec {fe} {bin} exec --config {cfg} --node frontend --service frontend -- curl -s http://{VIP}:{API_PORT}/
  ip netns exec {fe} {bin} exec --config {cfg} --node frontend --service frontend -- curl -s http://{a}:{API_PORT}/

  # a process without a mesh identity does not reach data-api:
  ip netns exec {fe} curl -sS -m 3 http://{a}:{API_PORT}/

  # on data-api's node, only data-api itself may use its loopback port (EPERM):
  ip netns exec {ans} curl -sS -m 3 http://127.0.0.1:{API_PORT}/

  # what crosses the wire between the nodes is TLS 1.3 only (run a call meanwhile):
  ip netns exec {fe} tcpdump -i eth0 -A -c 20 port {API_PORT}

  # each service's SPIFFE ID, certificate serial and expiry:
  ip netns exec {ans} {bin} status

  # the programs and the agents' logs:
  bpftool cgroup tree; bpftool net
  tail -f {logs}/agent-*.log

Ctrl-C stops the demo and removes everything it created.",
        a = api.v4,
        ans = api.netns,
        logs = mesh.dir.display(),
    );
    let _ = rx.recv();
    // Ctrl-C may have closed the terminal's pipe: write without panicking,
    // so the namespaces are always removed.
    let _ = writeln!(std::io::stderr(), "\ndemo: stopping");
    drop(mesh);
    let _ = writeln!(std::io::stderr(), "demo: done, nothing left behind");
    Ok(())
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                == Some("0")
        })
        .unwrap_or(false)
}

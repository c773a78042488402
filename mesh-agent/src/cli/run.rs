//! `run` and `down`: the agent of a node, and what a stopped one left.

use std::{net::SocketAddr, path::PathBuf, str::FromStr};

use clap::ValueEnum;

use mesh_agent::{
    admin, app,
    cgroup::{Cgroup2, MESH_ROOT},
    ebpf::pins::{LINK_PREFIX, Pins},
    handover,
    names::NodeName,
};

use super::Store;

/// `mesh-agent run`.
#[derive(Debug, clap::Args)]
pub struct Run {
    #[command(flatten)]
    store: Store,
    /// Which node of the config this agent is.
    #[arg(long)]
    node: NodeName,
    /// Port of the outbound listener on 127.0.0.1 and ::1.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Address of the admin endpoint (loopback only).
    #[arg(long, default_value = admin::DEFAULT_ADDR)]
    admin: SocketAddr,
    /// Answer DNS for `<service>.mesh` here (UDP and TCP), or `off`.
    #[arg(long, default_value = "127.0.0.1:53")]
    dns: Dns,
    /// On SIGTERM or SIGINT, stop accepting and give open connections
    /// this many seconds before closing them.
    #[arg(long, default_value_t = 10.0)]
    drain_seconds: f64,
    /// Log lines (the access log included) as `text` or `json`.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Where to send names outside `.mesh` (default: the first
    /// nameserver of /etc/resolv.conf, unless that is this agent; else
    /// they are refused).
    #[arg(long)]
    dns_upstream: Option<SocketAddr>,
    /// Most inbound TLS handshakes in progress at once; connections
    /// beyond are closed at once (a peer that stalls holds one for 2 s
    /// before its ClientHello, 5 s in all).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_handshakes: u32,
    /// Once half of --max-handshakes are in progress, most from any one
    /// source address.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_handshakes_per_source: u32,
    /// Who may connect to this node's service ports: `nodes` (the
    /// addresses of the config's nodes; others are refused in the
    /// kernel) or `any` (for nodes behind NAT).
    #[arg(long, value_enum, default_value = "nodes")]
    inbound_sources: InboundSources,
    /// The port agents exchange instance health on, at each node's
    /// address; the same for every agent of the mesh.
    #[arg(long, default_value_t = 15002)]
    link_port: u16,
    /// Speak only `mesh/1` to other agents: one TCP and TLS connection
    /// per app connection, as agents did before `mesh/2` (pooled
    /// HTTP/2 streams). For comparison and for tests of mixed versions.
    #[arg(long)]
    no_multiplex: bool,
    /// Where bpffs is mounted (mounted there if it is not): the kernel
    /// programs and maps are pinned under DIR/mesh/NODE, so the node
    /// stays closed while its agent is down.
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// The web UI at http://<admin address>/ui/: `on` or `off`.
    #[arg(long, value_enum, default_value = "on")]
    ui: Switch,
    /// Uids besides root that may change intentions from the web UI
    /// (comma-separated); everyone who can reach the admin endpoint may
    /// read it.
    #[arg(long, value_delimiter = ',')]
    ui_writers: Vec<u32>,
    /// With the catalog in etcd over TLS: the certificate of the etcd user
    /// the web UI writes intentions as (the agent's own user, which RBAC
    /// lets only read, otherwise).
    #[arg(long, requires_all = ["catalog", "etcd_cacert", "ui_etcd_key"])]
    ui_etcd_cert: Option<PathBuf>,
    /// The key of --ui-etcd-cert.
    #[arg(long, requires_all = ["ui_etcd_cert"])]
    ui_etcd_key: Option<PathBuf>,
}

/// `--ui`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

/// `mesh-agent down`.
#[derive(Debug, clap::Args)]
pub struct Down {
    #[arg(long)]
    node: NodeName,
    /// As given to `run --bpffs`.
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
}

/// `--log-format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--inbound-sources`: `nodes` refuses in the kernel sources that are not
/// the config's nodes; `any` lets every source in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum InboundSources {
    Nodes,
    Any,
}

/// `--dns`: the address to answer DNS at, or `off`.
#[derive(Debug, Clone, Copy)]
enum Dns {
    Off,
    At(SocketAddr),
}

impl FromStr for Dns {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Dns::Off);
        }
        text.parse()
            .map(Dns::At)
            .map_err(|_| "expected an address like 127.0.0.1:53, or off".to_owned())
    }
}

/// Runs the agent on a multi-thread runtime until it stops.
pub fn run(args: Run) -> anyhow::Result<()> {
    let drain_seconds = args.drain_seconds;
    let drain = std::time::Duration::try_from_secs_f64(drain_seconds)
        .map_err(|_| anyhow::anyhow!("--drain-seconds {drain_seconds}: expected seconds >= 0"))?;
    let opts = app::RunOptions {
        catalog: args.store.source()?,
        node: args.node,
        outbound_port: args.outbound_port,
        admin: args.admin,
        dns: match args.dns {
            Dns::Off => None,
            Dns::At(addr) => Some(addr),
        },
        dns_upstream: args.dns_upstream,
        drain,
        max_handshakes: args.max_handshakes as usize,
        max_handshakes_per_source: args.max_handshakes_per_source as usize,
        only_mesh_sources: args.inbound_sources == InboundSources::Nodes,
        link_port: args.link_port,
        multiplex: !args.no_multiplex,
        bpffs: args.bpffs,
        ui: (args.ui == Switch::On).then(|| mesh_agent::ui::UiOptions {
            writers: args.ui_writers,
            etcd_writer: args.ui_etcd_cert.zip(args.ui_etcd_key),
        }),
    };
    let app = app::App::build(opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(app.run())?;
    Ok(())
}

/// Unpins node `node`'s programs and maps and removes its empty cgroups,
/// unless its agent is running.
pub fn down(args: &Down) -> anyhow::Result<()> {
    let node = &args.node;
    if handover::running(node) {
        anyhow::bail!(
            "the agent of node {node} is running here: stop it with SIGTERM, which removes everything"
        );
    }
    let pins = Pins::at(&args.bpffs, node);
    let removed = pins.remove()?;
    if removed.is_empty() {
        println!(
            "nothing pinned for node {node} under {}",
            pins.dir.display()
        );
    } else {
        let links = removed
            .iter()
            .filter(|n| n.starts_with(LINK_PREFIX))
            .count();
        println!(
            "removed {links} program links and {} maps pinned for node {node} under {}",
            removed.len() - links,
            pins.dir.display()
        );
    }
    let cg = Cgroup2::find_or_mount()?;
    let gone = cg.remove_empty_tree(&std::path::Path::new(MESH_ROOT).join(node.as_str()));
    println!("removed {gone} empty cgroups of node {node}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Dns, InboundSources, LogFormat, Switch};
    use crate::cli::{Cli, Command};

    fn run(args: &[&str]) -> super::Run {
        let words = ["mesh-agent", "run", "--config", "m.toml", "--node", "a"];
        let cli = Cli::try_parse_from(words.iter().chain(args)).expect("parses");
        match cli.command {
            Command::Run(run) => run,
            other => panic!("not run: {other:?}"),
        }
    }

    /// The defaults and each accepted spelling of the typed flags.
    #[test]
    fn typed_flags() {
        let default = run(&[]);
        assert_eq!(default.log_format, LogFormat::Text);
        assert_eq!(default.inbound_sources, InboundSources::Nodes);
        assert!(matches!(default.dns, Dns::At(a) if a.to_string() == "127.0.0.1:53"));
        let set = run(&[
            "--log-format",
            "json",
            "--inbound-sources",
            "any",
            "--dns",
            "off",
        ]);
        assert_eq!(set.log_format, LogFormat::Json);
        assert_eq!(set.inbound_sources, InboundSources::Any);
        assert!(matches!(set.dns, Dns::Off));
        assert!(matches!(run(&["--dns", "[::1]:5353"]).dns, Dns::At(a) if a.port() == 5353));
        assert_eq!(default.ui, Switch::On);
        assert!(default.ui_writers.is_empty());
        let ui = run(&["--ui", "off", "--ui-writers", "1000,1001"]);
        assert_eq!((ui.ui, ui.ui_writers), (Switch::Off, vec![1000, 1001]));
        // The UI's etcd writer only with a catalog in etcd over TLS.
        let words = ["mesh-agent", "run", "--config", "m.toml", "--node", "a"];
        let writer = ["--ui-etcd-cert", "w.pem", "--ui-etcd-key", "w.key"];
        assert!(Cli::try_parse_from(words.iter().chain(&writer)).is_err());
        let etcd = [
            "mesh-agent",
            "run",
            "--node",
            "a",
            "--catalog",
            "etcd://10.0.0.1:2379",
            "--etcd-cacert",
            "ca.pem",
            "--etcd-cert",
            "a.pem",
            "--etcd-key",
            "a.key",
        ];
        assert!(Cli::try_parse_from(etcd.iter().chain(&writer)).is_ok());
        assert!(Cli::try_parse_from(etcd.iter().chain(&writer[..2])).is_err());
    }

    /// `--node` is a node name: it becomes part of the pin and cgroup
    /// paths `down` removes, so a path is refused before anything runs.
    #[test]
    fn node_is_a_name_not_a_path() {
        for node in ["../etc", "a/b", "", "A"] {
            for command in ["run", "down"] {
                let words = ["mesh-agent", command, "--config", "m.toml", "--node", node];
                let words = if command == "down" {
                    vec!["mesh-agent", "down", "--node", node]
                } else {
                    words.to_vec()
                };
                assert!(
                    Cli::try_parse_from(words).is_err(),
                    "{command} --node {node:?}"
                );
            }
        }
        assert_eq!(run(&[]).node.as_str(), "a");
    }
}

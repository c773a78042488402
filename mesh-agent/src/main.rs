//! `mesh-agent`: the command line of the node agent; the agent itself is
//! the library (`lib.rs`).

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use mesh_agent::{admin, app, catalog, config, exec, health, identity, policy};

#[derive(Debug, Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "Node agent of a transparent mTLS service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent for one node of the mesh (needs root).
    Run {
        #[command(flatten)]
        store: Store,
        /// Which node of the config this agent is.
        #[arg(long)]
        node: String,
        /// Port of the outbound listener on 127.0.0.1 and ::1.
        #[arg(long, default_value_t = 15001)]
        outbound_port: u16,
        /// Address of the admin endpoint (loopback only).
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: std::net::SocketAddr,
        /// Answer DNS for `<service>.mesh` here (UDP), or `off`.
        #[arg(long, default_value = "127.0.0.1:53")]
        dns: String,
        /// On SIGTERM or SIGINT, stop accepting and give open connections
        /// this many seconds before closing them.
        #[arg(long, default_value_t = 10.0)]
        drain_seconds: f64,
        /// Log lines (the access log included) as `text` or `json`.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Where to send names outside `.mesh` (default: the first
        /// nameserver of /etc/resolv.conf, unless that is this agent; else
        /// they are refused).
        #[arg(long)]
        dns_upstream: Option<std::net::SocketAddr>,
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
        #[arg(long, default_value = "nodes", value_parser = ["nodes", "any"])]
        inbound_sources: String,
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
    },
    /// Remove what a stopped agent of node N left in the kernel (its
    /// pinned programs and maps) and its empty cgroups: the node is open
    /// again. SIGTERM to a running agent does the same.
    Down {
        #[arg(long)]
        node: String,
        /// As given to `run --bpffs`.
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: PathBuf,
    },
    /// Show what a running agent holds (from its admin endpoint).
    Status {
        /// The agent's admin address.
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: std::net::SocketAddr,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Report the state of a ttl check of a service's instance on this
    /// node (Consul's TTL check update): it holds until the check's ttl
    /// passes without another report, then the check is critical.
    Check {
        /// `pass`, `warn` or `fail`.
        #[arg(value_parser = ["pass", "warn", "fail"])]
        state: String,
        /// The service whose local instance the check is of.
        #[arg(long)]
        service: String,
        /// Which ttl check, when the service has several.
        #[arg(long)]
        check: Option<String>,
        /// Shown as the check's output.
        #[arg(long)]
        note: Option<String>,
        /// The local agent's admin address.
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: std::net::SocketAddr,
    },
    /// List services and instances with their health, as the local agent
    /// knows them.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Check a config file (or the catalog in etcd); print every problem
    /// and exit non-zero if any.
    Validate {
        #[command(flatten)]
        store: Store,
    },
    /// Manage the mesh's built-in CA (files in `ca_dir`).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Edit or list the intentions in the config file (comments are kept;
    /// running agents apply the change within a second).
    Intention {
        #[command(subcommand)]
        command: IntentionCommand,
    },
    /// The verdict for SOURCE -> DESTINATION and the rule that decides it.
    Explain {
        source: String,
        destination: String,
        #[command(flatten)]
        store: Store,
    },
    /// Run CMD as service S of node N (in the service's cgroup). If the
    /// config file is broken, uses the running agent's last good config.
    Exec {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        service: String,
        /// The admin address of node N's agent, asked for its config when
        /// the file is broken.
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: std::net::SocketAddr,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
}

/// Where the catalog is: a file (`--config`) or etcd (`--catalog`).
#[derive(Debug, clap::Args)]
struct Store {
    /// The mesh's config file.
    #[arg(long, conflicts_with = "catalog")]
    config: Option<PathBuf>,
    #[command(flatten)]
    etcd: Etcd,
}

/// The catalog in etcd.
#[derive(Debug, clap::Args)]
struct Etcd {
    /// The catalog in etcd: etcd://HOST:PORT[,HOST:PORT...][/PREFIX]
    /// (prefix /mesh by default).
    #[arg(long)]
    catalog: Option<String>,
    /// CA certificate of the etcd members (TLS to etcd).
    #[arg(long, requires_all = ["catalog", "etcd_cert", "etcd_key"])]
    etcd_cacert: Option<PathBuf>,
    /// This client's certificate for etcd (its CN is its etcd user).
    #[arg(long, requires_all = ["catalog", "etcd_cacert", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert.
    #[arg(long, requires_all = ["catalog", "etcd_cacert", "etcd_cert"])]
    etcd_key: Option<PathBuf>,
}

impl Etcd {
    /// The etcd catalog named, if any.
    fn options(&self) -> anyhow::Result<Option<catalog::EtcdOptions>> {
        let Some(url) = &self.catalog else {
            return Ok(None);
        };
        let tls = match (&self.etcd_cacert, &self.etcd_cert, &self.etcd_key) {
            (Some(ca), Some(cert), Some(key)) => Some(catalog::EtcdTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        Ok(Some(catalog::EtcdOptions::parse(url, tls)?))
    }
}

impl Store {
    fn source(&self) -> anyhow::Result<catalog::Source> {
        match (&self.config, self.etcd.options()?) {
            (Some(path), None) => Ok(catalog::Source::File(path.clone())),
            (None, Some(etcd)) => Ok(catalog::Source::Etcd(etcd)),
            _ => anyhow::bail!("give the catalog: --config FILE or --catalog etcd://..."),
        }
    }
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Make the catalog in etcd hold what FILE holds (mesh settings,
    /// nodes, services with their checks, intentions): writes only what
    /// differs, removes what FILE no longer has, and prints each change.
    Import {
        file: PathBuf,
        #[command(flatten)]
        etcd: Etcd,
    },
    /// Measure the catalog in etcd at scale (`cargo xtask bench
    /// --catalog`): load time, memory, propagation to WATCHERS watchers in
    /// this process. Writes CHANGES changes to one intention. Prints JSON.
    #[command(hide = true)]
    Bench {
        #[arg(long, default_value_t = 50)]
        watchers: usize,
        #[arg(long, default_value_t = 20)]
        changes: usize,
        #[command(flatten)]
        etcd: Etcd,
    },
    /// One line per service: its address and how many instances are
    /// passing, warning and critical.
    Services {
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: std::net::SocketAddr,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
        /// Read the catalog and the agents' registrations in etcd instead
        /// of asking the local agent.
        #[command(flatten)]
        etcd: Etcd,
    },
    /// One line per instance: node, address, state and the last output of
    /// each check.
    Instances {
        /// Only this service's instances.
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value = admin::DEFAULT_ADDR)]
        admin: std::net::SocketAddr,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
        /// Read the catalog and the agents' registrations in etcd instead
        /// of asking the local agent.
        #[command(flatten)]
        etcd: Etcd,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the root CA (root.crt, root.key); refuses to overwrite one.
    Init {
        #[arg(long)]
        config: PathBuf,
    },
    /// Issue node N's intermediate CA (nodes/N.crt, nodes/N.key) with the
    /// root key; copy both files to node N's `ca_dir/nodes/`.
    IssueNode {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum IntentionCommand {
    /// Allow or deny SOURCE -> DESTINATION (`*` for any); replaces the
    /// action of an existing intention for the same pair.
    #[command(group = clap::ArgGroup::new("action").required(true))]
    Create {
        /// Allow the pair (also `-allow`, as in Consul).
        #[arg(long, group = "action")]
        allow: bool,
        /// Deny the pair (also `-deny`).
        #[arg(long, group = "action")]
        deny: bool,
        source: String,
        destination: String,
        #[command(flatten)]
        store: Store,
    },
    /// Remove the intention for SOURCE -> DESTINATION.
    Delete {
        source: String,
        destination: String,
        #[command(flatten)]
        store: Store,
    },
    /// List the intentions and the default policy.
    List {
        #[command(flatten)]
        store: Store,
    },
}

fn main() -> ExitCode {
    // Consul spells the actions with one dash: `intention create -deny a b`.
    let args = std::env::args_os().map(|a| match a.to_str() {
        Some("-allow") => "--allow".into(),
        Some("-deny") => "--deny".into(),
        _ => a,
    });
    let cli = Cli::parse_from(args);
    init_tracing(matches!(&cli.command, Command::Run { log_format, .. } if log_format == "json"));
    let result = match cli.command {
        Command::Run {
            store,
            node,
            outbound_port,
            admin,
            dns,
            dns_upstream,
            log_format: _,
            drain_seconds,
            max_handshakes,
            max_handshakes_per_source,
            inbound_sources,
            link_port,
            no_multiplex,
            bpffs,
        } => parse_dns(&dns).and_then(|dns| {
            let drain = std::time::Duration::try_from_secs_f64(drain_seconds).map_err(|_| {
                anyhow::anyhow!("--drain-seconds {drain_seconds}: expected seconds >= 0")
            })?;
            run(app::RunOptions {
                catalog: store.source()?,
                node,
                outbound_port,
                admin,
                dns,
                dns_upstream,
                drain,
                max_handshakes: max_handshakes as usize,
                max_handshakes_per_source: max_handshakes_per_source as usize,
                only_mesh_sources: inbound_sources == "nodes",
                link_port,
                multiplex: !no_multiplex,
                bpffs,
            })
        }),
        Command::Down { node, bpffs } => down(&node, &bpffs),
        Command::Status { admin, json } => status(admin, json),
        Command::Check {
            state,
            service,
            check,
            note,
            admin,
        } => ttl_check(admin, &state, service, check, note),
        Command::Catalog { command } => catalog(command),
        Command::Validate { store } => validate(&store),
        Command::Ca { command } => ca(command),
        Command::Intention { command } => intention(command),
        Command::Explain {
            source,
            destination,
            store,
        } => explain(&store, &source, &destination),
        Command::Exec {
            config,
            node,
            service,
            admin,
            command,
        } => exec_as(&config, &node, &service, admin, &command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--dns`: an address, or `off`.
fn parse_dns(text: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        anyhow::anyhow!("--dns {text:?}: expected an address like 127.0.0.1:53, or off")
    })
}

fn run(opts: app::RunOptions) -> anyhow::Result<()> {
    let app = app::App::build(opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(app.run())?;
    Ok(())
}

/// `intention create|delete|list` against the catalog in etcd.
fn intention_in_etcd(
    command: IntentionCommand,
    options: &catalog::EtcdOptions,
) -> anyhow::Result<()> {
    use config::Action;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (source, destination, action) = match command {
        IntentionCommand::Create {
            allow,
            source,
            destination,
            ..
        } => {
            let action = if allow { Action::Allow } else { Action::Deny };
            (source, destination, Some(action))
        }
        IntentionCommand::Delete {
            source,
            destination,
            ..
        } => (source, destination, None),
        IntentionCommand::List { .. } => {
            let config = rt.block_on(catalog::etcd::load(options))?;
            for i in &config.intentions {
                println!("{} -> {}: {}", i.source, i.destination, i.action);
            }
            println!("default: {}", config.mesh.default_policy);
            return Ok(());
        }
    };
    let before = rt.block_on(catalog::etcd::set_intention(
        options,
        &source,
        &destination,
        action,
    ))?;
    let what = match (action, before) {
        (Some(a), Some(b)) if a == b => format!("unchanged: {a}"),
        (Some(a), Some(b)) => format!("changed from {b} to {a}"),
        (Some(a), None) => format!("created {a}"),
        (None, Some(_)) => "deleted".to_owned(),
        (None, None) => anyhow::bail!("no intention from {source:?} to {destination:?} in etcd"),
    };
    println!(
        "{what} {source} -> {destination} in etcd {}",
        options.prefix
    );
    Ok(())
}

/// The catalog at `store`, judged, and how to name it.
fn load(store: &Store) -> anyhow::Result<(config::Config, String)> {
    match store.source()? {
        catalog::Source::File(path) => {
            let config = config::Config::load(&path)?;
            Ok((config, path.display().to_string()))
        }
        catalog::Source::Etcd(options) => load_etcd(&options),
    }
}

/// The catalog in etcd, judged, and how to name it.
fn load_etcd(options: &catalog::EtcdOptions) -> anyhow::Result<(config::Config, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = rt.block_on(catalog::etcd::load(options))?;
    Ok((config, format!("etcd {}", options.prefix)))
}

/// `mesh-agent down`: see `Command::Down`.
fn down(node: &str, bpffs: &std::path::Path) -> anyhow::Result<()> {
    if mesh_agent::handover::running(node) {
        anyhow::bail!(
            "the agent of node {node} is running here: stop it with SIGTERM, which removes everything"
        );
    }
    let pins = mesh_agent::ebpf::pins::Pins::at(bpffs, node);
    let removed = pins.remove()?;
    if removed.is_empty() {
        println!(
            "nothing pinned for node {node} under {}",
            pins.dir.display()
        );
    } else {
        let links = removed.iter().filter(|n| n.starts_with("link_")).count();
        println!(
            "removed {links} program links and {} maps pinned for node {node} under {}",
            removed.len() - links,
            pins.dir.display()
        );
    }
    let cg = mesh_agent::cgroup::Cgroup2::find_or_mount()?;
    let gone = cg.remove_empty_tree(&std::path::Path::new("/mesh").join(node));
    println!("removed {gone} empty cgroups of node {node}");
    Ok(())
}

fn validate(store: &Store) -> anyhow::Result<()> {
    let (config, name) = match store.source()? {
        catalog::Source::Etcd(options) => load_etcd(&options)?,
        catalog::Source::File(path) => match config::Config::load(&path) {
            Ok(config) => (config, path.display().to_string()),
            Err(e) if !e.problems().is_empty() => {
                for p in e.problems() {
                    eprintln!("{p}");
                }
                anyhow::bail!("{} problem(s) in {}", e.problems().len(), path.display())
            }
            Err(e) => return Err(e.into()),
        },
    };
    println!(
        "{name}: ok ({} nodes, {} services, {} intentions)",
        config.nodes.len(),
        config.services.len(),
        config.intentions.len()
    );
    Ok(())
}

/// `exec`: finds the service (in the file, else in the running agent's
/// config, with a warning) and becomes `command` in its cgroup.
fn exec_as(
    config: &std::path::Path,
    node: &str,
    service: &str,
    admin: std::net::SocketAddr,
    command: &[OsString],
) -> anyhow::Result<()> {
    let (target, origin) = exec::find(config, node, service, admin)?;
    if let exec::Origin::Agent { addr, broken } = &origin {
        let problems = broken.problems();
        let first = problems
            .first()
            .map_or_else(|| broken.to_string(), ToString::to_string);
        let more = match problems.len() {
            0 | 1 => String::new(),
            n => format!(" (and {} more problems)", n - 1),
        };
        eprintln!("warning: the config file is broken: {first}{more}");
        eprintln!(
            "warning: using the running agent's last good config instead (node {node}, admin {addr})"
        );
    }
    match exec::exec(&target, command)? {}
}

fn status(addr: std::net::SocketAddr, json: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(admin::fetch_status(addr))?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

fn ttl_check(
    addr: std::net::SocketAddr,
    state: &str,
    service: String,
    check: Option<String>,
    note: Option<String>,
) -> anyhow::Result<()> {
    let state = match state {
        "pass" => health::State::Passing,
        "warn" => health::State::Warning,
        _ => health::State::Critical,
    };
    let update = health::doc::TtlUpdate {
        service,
        check,
        state,
        note,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(admin::send_ttl(addr, &update))?;
    println!("{}: ttl check now {state}", update.service);
    Ok(())
}

fn catalog(command: CatalogCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (etcd, addr, json) = match &command {
        CatalogCommand::Bench {
            watchers,
            changes,
            etcd,
        } => {
            let options = etcd
                .options()?
                .ok_or_else(|| anyhow::anyhow!("catalog bench needs --catalog etcd://..."))?;
            drop(rt);
            let report = catalog::scale::measure(&options, *watchers, *changes)?;
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
        CatalogCommand::Import { file, etcd } => {
            let options = etcd
                .options()?
                .ok_or_else(|| anyhow::anyhow!("catalog import needs --catalog etcd://..."))?;
            let report = rt.block_on(catalog::etcd::import(&options, file))?;
            print!("{report}");
            return Ok(());
        }
        CatalogCommand::Services { admin, json, etcd }
        | CatalogCommand::Instances {
            admin, json, etcd, ..
        } => (etcd.options()?, *admin, *json),
    };
    let doc = match etcd {
        Some(options) => rt.block_on(catalog::registry::catalog_doc(&options))?,
        None => rt.block_on(admin::fetch_catalog(addr))?,
    };
    for problem in &doc.problems {
        eprintln!("warning: {problem}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    match command {
        CatalogCommand::Import { .. } | CatalogCommand::Bench { .. } => {}
        CatalogCommand::Services { .. } => print!("{}", doc.render_services()),
        CatalogCommand::Instances { service, .. } => {
            let table = doc.render_instances(service.as_deref()).ok_or_else(|| {
                anyhow::anyhow!(
                    "no service {:?} in the catalog of node {:?}",
                    service.unwrap_or_default(),
                    doc.node
                )
            })?;
            print!("{table}");
        }
    }
    Ok(())
}

fn intention(command: IntentionCommand) -> anyhow::Result<()> {
    use config::{Action, edit};
    let store = match &command {
        IntentionCommand::Create { store, .. }
        | IntentionCommand::Delete { store, .. }
        | IntentionCommand::List { store } => store.source()?,
    };
    if let catalog::Source::Etcd(options) = store {
        return intention_in_etcd(command, &options);
    }
    let catalog::Source::File(config) = store else {
        unreachable!("etcd returned above")
    };
    match command {
        IntentionCommand::Create {
            allow,
            deny: _,
            source,
            destination,
            ..
        } => {
            let action = if allow { Action::Allow } else { Action::Deny };
            let done = edit::create(&config, &source, &destination, action)?;
            let what = match done {
                edit::Created::Added => "created".to_owned(),
                edit::Created::Updated { from } => format!("changed from {from} to"),
                edit::Created::Unchanged => "unchanged:".to_owned(),
            };
            println!(
                "{what} {action} {source} -> {destination} in {}",
                config.display()
            );
        }
        IntentionCommand::Delete {
            source,
            destination,
            ..
        } => {
            edit::delete(&config, &source, &destination)?;
            println!(
                "deleted {source} -> {destination} from {}",
                config.display()
            );
        }
        IntentionCommand::List { .. } => {
            let config = config::Config::load(&config)?;
            for i in &config.intentions {
                println!(
                    "{} -> {}: {} (line {})",
                    i.source, i.destination, i.action, i.line
                );
            }
            println!("default: {}", config.mesh.default_policy);
        }
    }
    Ok(())
}

fn explain(store: &Store, source: &str, destination: &str) -> anyhow::Result<()> {
    let (config, name) = load(store)?;
    for service in [source, destination] {
        if config.service(service).is_none() {
            anyhow::bail!("{service:?} is not a service in {name}");
        }
    }
    let decision = policy::Policy::new(&config).decide(source, destination);
    let rule = match decision.rule {
        policy::Rule::DefaultPolicy => format!("default policy ({})", config.mesh.default_policy),
        rule => rule.to_string(),
    };
    println!("{}: {source} -> {destination} by {rule}", decision.action);
    Ok(())
}

fn ca(command: CaCommand) -> anyhow::Result<()> {
    let written = match command {
        CaCommand::Init { config } => identity::ca::init(&config::Config::load(&config)?)?,
        CaCommand::IssueNode { config, node } => {
            let config = config::Config::load(&config)?;
            if config.node(&node).is_none() {
                anyhow::bail!("node {node:?} is not declared in {}", config.path.display());
            }
            identity::ca::issue_node(&config, &node)?
        }
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Logs go to stderr; `RUST_LOG` filters (default `info`). eBPF-side logs
/// arrive through the `log` bridge under the target `mesh`; the access log
/// (one line per connection) has the target `access`.
fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Every `mesh-agent ...` line of a code block in README.md and docs/
/// parses with this command line: a renamed or missing flag in the docs
/// fails the suite.
#[cfg(test)]
mod docs_commands {
    use std::path::{Path, PathBuf};

    use clap::Parser as _;

    use super::Cli;

    /// The workspace's README and every markdown file under docs/.
    fn documents() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the crate is in the workspace");
        let mut files = vec![root.join("README.md")];
        let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
        for entry in docs {
            let path = entry.expect("docs entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
        files.sort();
        files
    }

    /// (line number, command line) of each `mesh-agent` command in a code
    /// block of `text`: a prompt (`$ `, `# `) and `sudo [-E]` before it and
    /// a `# comment` after it are not part of it.
    fn commands(text: &str) -> Vec<(usize, String)> {
        let mut in_block = false;
        let mut found = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.starts_with("```") {
                in_block = !in_block;
                continue;
            }
            if !in_block {
                continue;
            }
            let mut rest = trimmed;
            for prefix in ["$ ", "# ", "sudo -E ", "sudo "] {
                rest = rest.strip_prefix(prefix).unwrap_or(rest).trim_start();
            }
            if !rest.starts_with("mesh-agent ") {
                continue;
            }
            let command = match rest.find(" #") {
                Some(at) => &rest[..at],
                None => rest,
            };
            found.push((i + 1, command.trim().to_owned()));
        }
        found
    }

    /// Why `line` does not parse as a `mesh-agent` command, if it does not.
    fn check(line: &str) -> Result<(), String> {
        let words = shell_words::split(line).map_err(|e| format!("cannot split: {e}"))?;
        Cli::try_parse_from(&words).map(drop).map_err(|e| {
            // The error without clap's usage and tips: its first
            // paragraph, on one line.
            let text = e.to_string();
            let first: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
            first.join(" ")
        })
    }

    #[test]
    fn every_command_in_the_docs_parses() {
        let mut seen = 0;
        let mut wrong = Vec::new();
        for file in documents() {
            let text = std::fs::read_to_string(&file).expect("read a doc");
            for (line, command) in commands(&text) {
                seen += 1;
                if let Err(why) = check(&command) {
                    wrong.push(format!("{}:{line}: {command}\n    {why}", file.display()));
                }
            }
        }
        assert!(seen >= 10, "only {seen} commands found in the docs");
        assert!(
            wrong.is_empty(),
            "commands in the docs that do not parse:\n{}",
            wrong.join("\n")
        );
    }

    /// The check itself: a wrong or missing flag in a doc's code block is
    /// caught, a right one passes.
    #[test]
    fn a_wrong_flag_in_a_doc_is_caught() {
        let doc = "Try:\n\n```sh\n$ sudo mesh-agent run --config mesh.toml --node a   # as root\n\
                   mesh-agent run --config mesh.toml --nod a\n\
                   mesh-agent exec --node a --service web -- curl http://api.mesh/\n```\n\
                   mesh-agent outside a block --is-not-read\n";
        let found = commands(doc);
        assert_eq!(
            found.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert_eq!(found[0].1, "mesh-agent run --config mesh.toml --node a");
        assert_eq!(check(&found[0].1), Ok(()));
        let renamed = check(&found[1].1).unwrap_err();
        assert!(renamed.contains("--nod"), "{renamed}");
        let missing = check(&found[2].1).unwrap_err();
        assert!(missing.contains("--config"), "{missing}");
    }
}

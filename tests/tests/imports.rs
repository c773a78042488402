//! `mesh-agent catalog import` into etcd while other clients write, and
//! while agents watch: no write the CLI reported done is lost, and no agent
//! acts on a catalog that is half the old one and half the new one. A real
//! 3-member etcd with TLS and RBAC; needs root.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use mesh_tests::{
    API_PORT, Mesh, Signal, VIP,
    etcd::{MEMBERS, PREFIX},
    vip, wait_until,
};

/// Services (on nodes without agents) in the two files the runs import in
/// turn: `SMALL` in one, `LARGE` in the other, so going from one to the
/// other writes services across several transactions.
const SMALL: usize = 150;
const LARGE: usize = 400;
/// Intentions in each file, each service to the next four; the two files
/// give them opposite actions.
const RULES: usize = 400;
/// Runs, and `intention create`s per run.
const RUNS: usize = 10;
const CREATES: usize = 100;

/// The mesh's own file with ten more nodes, `x0` to `x9`, that run no
/// agent.
fn with_other_nodes(mesh: &Mesh) -> String {
    let mut text = fs::read_to_string(mesh.config()).expect("config");
    for n in 0..10 {
        let _ = writeln!(
            text,
            "\n[[node]]\nname = \"x{n}\"\naddress = \"10.201.0.{}\"",
            n + 1
        );
    }
    text
}

/// The mesh's own file with `services` more services and [`RULES`]
/// intentions whose action is `action`.
fn catalog_file(mesh: &Mesh, services: usize, action: &str) -> PathBuf {
    let mut text = with_other_nodes(mesh);
    for s in 0..services {
        let _ = writeln!(
            text,
            "\n[[service]]\nname = \"s{s}\"\nnodes = [\"x{}\"]\nport = {}",
            s % 10,
            20_000 + s
        );
    }
    for (source, destination) in rules() {
        let _ = writeln!(
            text,
            "\n[[intention]]\nsource = \"s{source}\"\ndestination = \"s{destination}\"\naction = \"{action}\""
        );
    }
    let path = mesh.dir.join(format!("catalog-{services}-{action}.toml"));
    fs::write(&path, text).expect("write catalog");
    path
}

/// The files' intentions: each of the first services to the next four.
fn rules() -> impl Iterator<Item = (usize, usize)> {
    (0..RULES).map(|i| (i / 4, (i / 4 + 1 + i % 4) % SMALL))
}

/// `catalog import FILE` started as etcd user `admin`; its output goes to
/// `log`.
fn spawn_import(mesh: &Mesh, file: &Path, log: &Path) -> Child {
    let out = fs::File::create(log).expect("import log");
    mesh.cmd(MEMBERS[0], &mesh.agent)
        .args(["catalog", "import"])
        .arg(file)
        .args(["--catalog", &mesh.etcd_url()])
        .args(mesh.etcd_client_args("admin"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn catalog import")
}

/// The `services` count of every "config applied" line in `node`'s log.
fn applied_services(mesh: &Mesh, node: &str) -> Vec<usize> {
    fs::read_to_string(mesh.agent_log(node))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("config applied"))
        .filter_map(|l| {
            let at = l.find(" services=")? + " services=".len();
            l[at..].split(' ').next()?.parse().ok()
        })
        .collect()
}

/// Ten imports, each with 100 `intention create`s run alongside it (four
/// at a time, from the moment the import has read the catalog to well
/// after it ends): every create the CLI reported done is in etcd at the
/// end with the action it set, whether its key is one the file sets
/// otherwise or one the file does not have (the import reports them as
/// kept). The imports alternate between two files whose services differ
/// by 250 (three transactions), both agents only ever apply the catalog
/// of one file or the other, never one in between, and a call after each
/// import goes through.
#[test]
fn an_import_loses_no_concurrent_write_and_agents_see_whole_catalogs() {
    let mesh = Mesh::nodes(&["ia", "ib"])
        .etcd_auth()
        .default_policy("allow")
        .service("web", "ia", 8080)
        .service_with("api", "ib", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_echo_server("ib", "api", API_PORT);
    let own = 2;
    let files = [
        (catalog_file(&mesh, SMALL, "allow"), "deny", own + SMALL),
        (catalog_file(&mesh, LARGE, "deny"), "allow", own + LARGE),
    ];
    let file_rules: Vec<(usize, usize)> = rules().collect();
    for run in 0..RUNS {
        let (file, other_action, _) = &files[run % 2];
        let log = mesh.dir.join(format!("import-{run}.log"));
        let started = Instant::now();
        let mut import = spawn_import(&mesh, file, &log);
        let read = wait_until(Duration::from_secs(60), || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("catalog read")
        });
        assert!(
            read,
            "run {run}: the import never read the catalog: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        // Half on keys the file sets to the other action, half on keys
        // it does not have; all between services both files hold.
        let creates: Vec<(String, String, &str)> = (0..CREATES)
            .map(|i| {
                let k = run * CREATES + i;
                if i % 2 == 0 {
                    let (s, d) = file_rules[(k * 7) % file_rules.len()];
                    (format!("s{s}"), format!("s{d}"), *other_action)
                } else {
                    (
                        format!("s{}", k % SMALL),
                        format!("s{}", (k * 3 + 75) % SMALL),
                        "deny",
                    )
                }
            })
            .filter(|(s, d, _)| s != d)
            // One create per key, so each has one outcome to check.
            .filter({
                let mut seen = std::collections::BTreeSet::new();
                move |(s, d, _)| seen.insert((s.clone(), d.clone()))
            })
            .collect();
        let told: Vec<(String, String, &str)> = std::thread::scope(|scope| {
            let workers: Vec<_> = creates
                .chunks(creates.len().div_ceil(4))
                .map(|chunk| {
                    let mesh = &mesh;
                    scope.spawn(move || {
                        let mut done = Vec::new();
                        for (s, d, action) in chunk {
                            let flag = format!("--{action}");
                            let (ok, out) = mesh.cli_etcd(&["intention", "create", &flag, s, d]);
                            if ok {
                                assert!(out.contains(&format!("{s} -> {d}")), "{out}");
                                done.push((s.clone(), d.clone(), *action));
                            } else {
                                // A refusal must say why; none is expected.
                                panic!("run {run}: create {s} -> {d} refused: {out}");
                            }
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker"))
                .collect()
        });
        let status = mesh_tests::wait_exit(&mut import, Duration::from_secs(120));
        let report = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "run {run}: the import failed ({status:?}): {report}"
        );
        // Every create reported done is there, as it set it.
        let mut lost = Vec::new();
        for (s, d, action) in &told {
            let key = format!("{PREFIX}/v1/intentions/{s}/{d}");
            let (ok, value) = mesh.etcdctl(&["get", &key, "--print-value-only"]);
            if !ok || !value.contains(&format!("action = \"{action}\"")) {
                lost.push(format!("{s} -> {d} {action}: {value:?}"));
            }
        }
        assert_eq!(told.len(), creates.len(), "run {run}");
        assert!(
            told.len() > CREATES * 9 / 10,
            "run {run}: {} creates",
            told.len()
        );
        assert!(
            lost.is_empty(),
            "run {run}: lost writes: {lost:?}\nimport: {report}"
        );
        assert!(report.contains("kept"), "run {run}: nothing kept? {report}");
        // Calls go on across imports.
        assert_eq!(
            mesh.echo("ia", "web", vip(), API_PORT, "still"),
            "still",
            "run {run}"
        );
        eprintln!(
            "run {run}: import and {} creates in {:?}",
            told.len(),
            started.elapsed()
        );
    }
    // The agents applied only whole catalogs: one file's or the other's.
    let whole = [own, files[0].2, files[1].2];
    for node in ["ia", "ib"] {
        let seen = applied_services(&mesh, node);
        assert!(
            seen.iter().filter(|n| **n != own).count() >= 2,
            "{node} applied too few imports: {seen:?}"
        );
        assert!(
            seen.iter().all(|n| whole.contains(n)),
            "{node} applied a catalog between two files: {seen:?}"
        );
    }
}

/// An import that died half-way leaves its marker: agents keep the catalog
/// from before it (a deny the dead import wrote does not apply), and an
/// agent started meanwhile runs on that catalog too. While the marker's
/// importer lives, another import is refused, naming it; once its lease is
/// gone, the next import takes over, finishes, and agents apply its
/// catalog.
#[test]
fn an_unfinished_import_holds_agents_on_the_catalog_before_it() {
    let mesh = Mesh::nodes(&["ua", "ub"])
        .etcd_auth()
        .default_policy("allow")
        .service("web", "ua", 8080)
        .service_with("api", "ub", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_echo_server("ub", "api", API_PORT);
    assert_eq!(mesh.echo("ua", "web", vip(), API_PORT, "before"), "before");

    // An importer that lives: a lease of its own, named in the marker.
    let (ok, out) = mesh.etcdctl(&["lease", "grant", "60"]);
    assert!(ok, "{out}");
    let hex = out.split_whitespace().nth(1).expect("lease id");
    let lease = i64::from_str_radix(hex, 16).expect("hex lease");
    let marker = format!("{PREFIX}/v1/import");
    let deny = format!("{PREFIX}/v1/intentions/web/api");
    let deny_value = "[[intention]]\nsource = \"web\"\ndestination = \"api\"\naction = \"deny\"\n";
    let value = format!("token = \"dead\"\nlease = {lease}\nby = \"elsewhere pid 1\"\n");
    mesh.etcdctl_ok(&["put", &marker, &value]);
    // Its partial write: a deny.
    mesh.etcdctl_ok(&["put", &deny, deny_value]);
    for node in ["ua", "ub"] {
        let log = mesh.agent_log(node);
        let held = wait_until(Duration::from_secs(5), || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("catalog import under way")
        });
        assert!(held, "{node} did not see the import");
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mesh.echo("ua", "web", vip(), API_PORT, "held"), "held");

    // An agent started now runs on the catalog from before the import.
    mesh.stop_agent("ua", Signal::SIGTERM);
    mesh.start_agent("ua");
    let log = fs::read_to_string(mesh.agent_log("ua")).unwrap_or_default();
    assert!(
        log.contains("running on the catalog from before it"),
        "{log}"
    );
    assert_eq!(
        mesh.echo("ua", "web", vip(), API_PORT, "restarted"),
        "restarted"
    );

    // Another import is refused while the importer's lease lives.
    let file = mesh.dir.join("with-deny.toml");
    let mut text = fs::read_to_string(mesh.config()).expect("config");
    text.push_str("\n[[intention]]\nsource = \"web\"\ndestination = \"api\"\naction = \"deny\"\n");
    fs::write(&file, text).expect("write");
    let file = file.to_string_lossy();
    let (ok, out) = mesh.cli_etcd(&["catalog", "import", &file]);
    assert!(
        !ok && out.contains("another catalog import is under way")
            && out.contains("elsewhere pid 1"),
        "{out}"
    );

    // The importer is gone: the next import takes over and finishes.
    let (ok, out) = mesh.etcdctl(&["lease", "revoke", hex]);
    assert!(ok, "{out}");
    let (ok, out) = mesh.cli_etcd(&["catalog", "import", &file]);
    assert!(ok, "{out}");
    let (ok, out) = mesh.etcdctl(&["get", &marker]);
    assert!(ok && out.trim().is_empty(), "the marker stayed: {out}");
    let refused = wait_until(Duration::from_secs(3), || {
        mesh.transfer("ua", Some("web"), vip(), API_PORT, 10)
            .starts_with("ERRNO 1 ")
    });
    assert!(refused, "the deny did not apply once the import ended");
    for node in ["ua", "ub"] {
        let log = fs::read_to_string(mesh.agent_log(node)).unwrap_or_default();
        assert!(log.contains("catalog import ended"), "{node}: {log}");
    }
}

/// Services in [`a_catalog_larger_than_one_grpc_message_imports_and_loads`],
/// each with a comment of [`PADDING`] bytes: about 5.5 MB of values, over
/// the 4 MiB a single gRPC response may carry into the etcd client.
const BIG: usize = 2_600;
const PADDING: usize = 2_000;

/// A catalog larger than one gRPC message imports, and is listed (in
/// pages, at one revision) wherever it is read: the running agents apply
/// it, an agent started anew loads it, the CLI reads it, and a call goes
/// through. The import keeps a revocation that its file lacks (an import
/// never lifts one), again on a second import; it deletes one the catalog
/// would reject.
#[test]
fn a_catalog_larger_than_one_grpc_message_imports_and_loads() {
    let mesh = Mesh::nodes(&["ga", "gb"])
        .etcd_auth()
        .default_policy("allow")
        .service("web", "ga", 8080)
        .service_with("api", "gb", API_PORT, |s| s.vip(VIP))
        .start();
    mesh.start_echo_server("gb", "api", API_PORT);
    let ca = "ab".repeat(32);
    let revoked = format!("{PREFIX}/v1/revoked/x0/{ca}");
    mesh.etcdctl_ok(&[
        "put",
        &revoked,
        &format!("[[revoked]]\nnode = \"x0\"\nnode_ca = \"{ca}\"\n"),
    ]);
    // One the catalog rejects (written past the CLI): the import deletes
    // it, or it could never succeed.
    let bad = format!("{PREFIX}/v1/revoked/x1/zz");
    mesh.etcdctl_ok(&[
        "put",
        &bad,
        "[[revoked]]\nnode = \"x1\"\nnode_ca = \"zz\"\n",
    ]);

    let mut text = with_other_nodes(&mesh);
    let padding = format!("# {}", "p".repeat(PADDING));
    for s in 0..BIG {
        let _ = writeln!(
            text,
            "\n[[service]]\nname = \"s{s}\"\n{padding}\nnodes = [\"x{}\"]\nport = {}",
            s % 10,
            20_000 + s
        );
    }
    assert!(text.len() > 5 << 20, "{} bytes", text.len());
    let file = mesh.dir.join("big.toml");
    fs::write(&file, text).expect("write catalog");
    let total = BIG + 2;

    for round in 0..2 {
        let log = mesh.dir.join(format!("big-import-{round}.log"));
        let mut import = spawn_import(&mesh, &file, &log);
        let status = mesh_tests::wait_exit(&mut import, Duration::from_secs(120));
        let report = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "import {round} failed ({status:?}): {report}"
        );
        assert!(
            report.contains(&format!(
                "kept {revoked} (a revocation the file lacks: an import never lifts one)"
            )) && report.contains("1 revocations kept"),
            "import {round}: {report}"
        );
        if round == 0 {
            assert!(report.contains(&format!("removed {bad}")), "{report}");
        } else {
            assert!(report.contains("0 added, 0 changed, 0 removed"), "{report}");
        }
        let (ok, value) = mesh.etcdctl(&["get", &revoked, "--print-value-only"]);
        assert!(
            ok && value.contains(&ca),
            "import {round} lifted it: {value:?}"
        );
    }
    for node in ["ga", "gb"] {
        let applied = wait_until(Duration::from_secs(30), || {
            applied_services(&mesh, node).last() == Some(&total)
        });
        assert!(
            applied,
            "{node} applied {:?}",
            applied_services(&mesh, node).last()
        );
    }

    // Started anew, an agent lists it whole (it does not start without
    // its catalog).
    let readies = || {
        fs::read_to_string(mesh.agent_log("ga"))
            .unwrap_or_default()
            .matches("agent ready")
            .count()
    };
    let before = readies();
    mesh.stop_agent("ga", Signal::SIGTERM);
    mesh.start_agent("ga");
    assert!(readies() > before, "ga did not start anew");
    assert_eq!(mesh.echo("ga", "web", vip(), API_PORT, "big"), "big");

    let (ok, out) = mesh.cli_etcd(&["validate"]);
    assert!(ok, "{out}");
    let (ok, out) = mesh.cli_etcd(&["catalog", "services"]);
    assert!(ok && out.contains(&format!("s{}", BIG - 1)), "{out}");
}

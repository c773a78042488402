use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::testing::{self, NODES, Scratch};

const PATH: &str = "/etc/mesh/mesh.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(PATH))
}

fn parse_ok(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(config) => panic!("expected problems, parsed {config:#?}"),
        Err(e) => e.problems().to_vec(),
    }
}

/// The single problem of `text`, checked to be at `line`:`column` and to
/// contain every one of `needles`.
#[track_caller]
fn one_problem(text: &str, line: usize, column: usize, needles: &[&str]) -> Problem {
    let problems = problems(text);
    assert_eq!(problems.len(), 1, "{text}\n{problems:#?}");
    let problem = problems.into_iter().next().unwrap();
    assert_at(&problem, line, column, needles);
    problem
}

#[track_caller]
fn assert_at(problem: &Problem, line: usize, column: usize, needles: &[&str]) {
    assert_eq!(
        (problem.line, problem.column),
        (line, column),
        "wrong position for {problem}"
    );
    assert_eq!(problem.path, Path::new(PATH));
    for needle in needles {
        assert!(
            problem.message.contains(needle),
            "{problem:?} lacks {needle:?}"
        );
    }
    assert!(!problem.message.contains('\n'), "{problem:?}");
    let first = problem.message.chars().next().unwrap();
    assert!(!first.is_uppercase(), "{problem:?}");
}

/// NODES plus one service `s` on node `a`: its entry is on line 9, `name`
/// on 10, `node` on 11, `port` on 12 and `extra` starts on line 13.
fn with_service(extra: &str) -> String {
    format!("{NODES}{}{extra}", testing::service("s", &["a"], 80))
}

#[test]
fn full_config_parses_every_field() {
    let text = testing::FULL;
    let config = parse_ok(text);
    let expected = Config {
        path: PathBuf::from(PATH),
        mesh: Mesh {
            trust_domain: "prod.example".to_owned(),
            default_policy: Action::Allow,
            ca_dir: PathBuf::from("/etc/mesh/pki/root"),
            leaf_ttl: Duration::from_secs(5400),
        },
        nodes: vec![
            Node {
                name: "data-api".parse().unwrap(),
                address: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)),
            },
            Node {
                name: "edge-1".parse().unwrap(),
                address: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 3)),
            },
        ],
        services: vec![
            Service {
                name: "data-api".parse().unwrap(),
                nodes: vec!["data-api".parse().unwrap()],
                port: 5001,
                vip: IpAddr::V4(Ipv4Addr::new(240, 0, 0, 2)),
                public: false,
                cgroup: Some(PathBuf::from("/system.slice/data-api.service")),
                lb: Balance::LeastRequest,
                checks: Vec::new(),
            },
            Service {
                name: "frontend".parse().unwrap(),
                nodes: vec!["edge-1".parse().unwrap()],
                port: 8080,
                vip: IpAddr::V4(default_vip("frontend")),
                public: true,
                cgroup: None,
                lb: Balance::LeastRequest,
                checks: Vec::new(),
            },
            Service {
                name: "metrics".parse().unwrap(),
                nodes: vec!["edge-1".parse().unwrap()],
                port: 9090,
                vip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x240, 0, 0, 0, 0, 0, 9)),
                public: false,
                cgroup: None,
                lb: Balance::LeastRequest,
                checks: Vec::new(),
            },
        ],
        intentions: vec![
            Intention {
                source: Match::Name("frontend".parse().unwrap()),
                destination: Match::Name("data-api".parse().unwrap()),
                action: Action::Allow,
                line: 36,
            },
            Intention {
                source: Match::Any,
                destination: Match::Name("data-api".parse().unwrap()),
                action: Action::Deny,
                line: 41,
            },
        ],
        revoked: Vec::new(),
    };
    assert_eq!(config, expected);

    assert_eq!(config.node("edge-1"), Some(&expected.nodes[1]));
    assert_eq!(config.node("nope"), None);
    assert_eq!(config.service("metrics"), Some(&expected.services[2]));
    assert_eq!(config.service("*"), None);
    let on_edge: Vec<&str> = config
        .services_on("edge-1")
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(on_edge, ["frontend", "metrics"]);
    assert_eq!(config.services_on("nope").count(), 0);
}

#[test]
fn defaults() {
    let config = parse_ok(&with_service(""));
    assert_eq!(
        config.mesh,
        Mesh {
            trust_domain: "mesh.local".to_owned(),
            default_policy: Action::Deny,
            ca_dir: PathBuf::from("/etc/mesh/ca"),
            leaf_ttl: Duration::from_secs(24 * 3600),
        }
    );
    let service = &config.services[0];
    assert_eq!(service.vip, IpAddr::V4(default_vip("s")));
    assert!(!service.public);
    assert_eq!(service.cgroup, None);

    // An empty [mesh] is fine too; so are nodes alone.
    assert_eq!(parse_ok(&format!("[mesh]\n{NODES}")).mesh, config.mesh);
    let bare = parse_ok(NODES);
    assert!(bare.services.is_empty() && bare.intentions.is_empty());
}

#[test]
fn ipv6_addresses_and_vips() {
    let text = r#"[[node]]
name = "v6"
address = "2001:db8::1"

[[service]]
name = "s"
node = "v6"
port = 443
vip = "fd00::10"
"#;
    let config = parse_ok(text);
    assert_eq!(
        config.nodes[0].address,
        "2001:db8::1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        config.services[0].vip,
        "fd00::10".parse::<IpAddr>().unwrap()
    );

    for bad in ["::1", "::", "ff02::1", "::ffff:127.0.0.1"] {
        let text = text.replace("fd00::10", bad);
        one_problem(&text, 9, 7, &["vip", bad]);
    }
}

#[test]
fn ca_dir_is_resolved_against_the_file_directory() {
    let ca = |text: &str, path: &str| {
        let text = format!("{text}{NODES}");
        Config::parse(&text, Path::new(path)).unwrap().mesh.ca_dir
    };
    let relative = "[mesh]\nca_dir = \"pki/root\"\n";
    assert_eq!(
        ca(relative, "/etc/mesh/mesh.toml"),
        Path::new("/etc/mesh/pki/root")
    );
    assert_eq!(ca(relative, "conf/mesh.toml"), Path::new("conf/pki/root"));
    assert_eq!(ca(relative, "mesh.toml"), Path::new("pki/root"));
    assert_eq!(ca("", "mesh.toml"), Path::new("ca"));
    let absolute = "[mesh]\nca_dir = \"/var/lib/mesh/ca\"\n";
    assert_eq!(
        ca(absolute, "/etc/mesh/mesh.toml"),
        Path::new("/var/lib/mesh/ca")
    );
    one_problem(
        &format!("[mesh]\nca_dir = \"\"\n{NODES}"),
        2,
        10,
        &["ca_dir", "empty"],
    );
}

#[test]
fn load_reads_the_file_and_reports_io_errors() {
    let scratch = Scratch::new();
    let dir = scratch.dir().to_owned();
    let path = scratch.file();
    std::fs::write(&path, with_service("")).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.path, path);
    assert_eq!(config.mesh.ca_dir, dir.join("ca"));
    assert_eq!(config.services.len(), 1);

    std::fs::write(&path, format!("[mesh]\nleaf_ttl = \"soon\"\n{NODES}")).unwrap();
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.problems()[0].path, path);
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2:12: ", path.display()))
    );
    drop(scratch);

    let err = Config::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.problems().is_empty());
    assert!(
        err.to_string()
            .starts_with(&format!("failed to read {}: ", path.display())),
        "{err}"
    );
}

#[test]
fn toml_syntax_errors_have_a_position() {
    one_problem(
        "[mesh]\ntrust_domain = \"x\n",
        2,
        18,
        &["invalid basic string"],
    );
    // A multi-line toml message becomes one line.
    one_problem("[[node]]\nname = a\n", 2, 8, &["invalid string: expected"]);
    one_problem("[[node]]\nname 'a'\n", 2, 6, &["expected"]);
    one_problem("[mesh]\n[mesh]\n", 2, 1, &["duplicate key `mesh`"]);
    one_problem(
        "[[node]]\nname = \"a\"\nname = \"b\"\n",
        3,
        1,
        &["duplicate key `name`"],
    );
    // Columns count characters, not bytes.
    one_problem("# é\n[mesh] = é\n", 2, 8, &[]);
    // toml has no message for a control character in a comment.
    one_problem(
        "# th\u{13}e mesh\n",
        1,
        5,
        &["unexpected character '\\u{13}'"],
    );
}

#[test]
fn unknown_keys_point_at_the_key() {
    one_problem(
        "[mesh]\nleaf_ttl = \"1h\"\ncolour = \"blue\"\n",
        3,
        1,
        &["unknown field `colour`"],
    );
    one_problem("[meshh]\n", 1, 2, &["unknown field `meshh`"]);
    one_problem(
        &format!("{NODES}zone = \"x\"\n"),
        8,
        1,
        &["unknown field `zone`"],
    );
    one_problem(
        &with_service("  replicas = 3\n"),
        13,
        3,
        &["unknown field `replicas`"],
    );
    one_problem(
        "[[intention]]\nsource = \"*\"\ndestination = \"*\"\naction = \"allow\"\nlog = true\n",
        5,
        1,
        &["unknown field `log`"],
    );
}

#[test]
fn missing_fields_point_at_the_table() {
    one_problem(
        &format!("{NODES}\n[[node]]\nname = \"c\"\n"),
        9,
        1,
        &["missing field `address`"],
    );
    one_problem(
        "[[node]]\naddress = \"10.0.0.1\"\n",
        1,
        1,
        &["missing field `name`"],
    );
    for (field, line) in [("name", "name = \"s\""), ("port", "port = 80")] {
        let text = with_service("").replace(line, "");
        one_problem(&text, 9, 1, &[&format!("missing field `{field}`")]);
    }
    for field in ["source", "destination", "action"] {
        let text = format!(
            "{}\n[[intention]]\nsource = \"*\"\ndestination = \"*\"\naction = \"deny\"\n",
            with_service("")
        )
        .replace(&format!("\n{field} = "), "\n# ");
        one_problem(&text, 14, 1, &[&format!("missing field `{field}`")]);
    }
}

#[test]
fn bad_names() {
    let long = "a".repeat(64);
    let cases: &[(&str, &[&str])] = &[
        ("", &["must not be empty"]),
        ("Data", &["\"Data\"", "lowercase"]),
        ("data_api", &["\"data_api\"", "lowercase"]),
        ("data.api", &["\"data.api\""]),
        ("-data", &["start or end with '-'"]),
        ("data-", &["start or end with '-'"]),
        (&long, &["64 characters", "at most 63"]),
    ];
    for (name, needles) in cases {
        let nodes = NODES.replace("name = \"b\"", &format!("name = {name:?}"));
        let mut node_needles = vec!["node name"];
        node_needles.extend_from_slice(needles);
        one_problem(&nodes, 6, 8, &node_needles);

        let service = with_service("").replace("name = \"s\"", &format!("name = {name:?}"));
        let mut service_needles = vec!["service name"];
        service_needles.extend_from_slice(needles);
        one_problem(&service, 10, 8, &service_needles);
    }
    let star = with_service("").replace("name = \"s\"", "name = \"*\"");
    one_problem(&star, 10, 8, &["service name must not be \"*\""]);
    // 63 characters is fine; digits and inner dashes too.
    let ok = NODES.replace("name = \"b\"", &format!("name = \"{}\"", "b".repeat(63)));
    parse_ok(&ok);
    parse_ok(&NODES.replace("name = \"b\"", "name = \"9-b-2\""));
}

#[test]
fn duplicate_names_point_at_the_second() {
    let nodes = NODES.replace("name = \"b\"", "name = \"a\"");
    one_problem(&nodes, 6, 8, &["duplicate node name \"a\"", "line 2"]);

    let text = with_service("\n[[service]]\nname = \"s\"\nnode = \"b\"\nport = 81\n");
    one_problem(&text, 15, 8, &["duplicate service name \"s\"", "line 10"]);
}

#[test]
fn service_on_unknown_node() {
    let text = with_service("").replace("node = \"a\"", "node = \"c\"");
    one_problem(&text, 11, 8, &["unknown node \"c\""]);
    // A node whose own name is invalid is still "declared": one problem only.
    let text = with_service("").replace("\"a\"", "\"A\"");
    one_problem(&text, 2, 8, &["invalid node name \"A\""]);
}

#[test]
fn same_port_on_one_node() {
    let text = with_service("\n[[service]]\nname = \"t\"\nnode = \"a\"\nport = 80\n");
    one_problem(
        &text,
        17,
        8,
        &["port 80 on node \"a\"", "service \"s\" (line 12)"],
    );
    // The same port on another node is fine.
    parse_ok(&with_service(
        "\n[[service]]\nname = \"t\"\nnode = \"b\"\nport = 80\n",
    ));
}

/// `with_service` with `nodes = <list>` (on line 11) instead of `node`.
fn with_instances(list: &str, extra: &str) -> String {
    with_service(extra).replace("node = \"a\"", &format!("nodes = {list}"))
}

#[test]
fn nodes_gives_one_instance_on_each_node_in_file_order() {
    let config = parse_ok(&with_instances(r#"["b", "a"]"#, ""));
    let s = config.service("s").unwrap();
    assert_eq!(s.nodes, ["b", "a"]);
    assert!(s.hosted_on("a") && s.hosted_on("b") && !s.hosted_on("c"));
    let hosts: Vec<&str> = config.instances(s).map(|n| n.name.as_str()).collect();
    assert_eq!(hosts, ["b", "a"]);
    for node in ["a", "b"] {
        assert_eq!(config.services_on(node).count(), 1, "{node}");
    }
    // The one-instance forms are the same service.
    let one = parse_ok(&with_service(""));
    assert_eq!(one.service("s").unwrap().nodes, ["a"]);
    assert_eq!(parse_ok(&with_instances(r#"["a"]"#, "")), one);
}

#[test]
fn bad_nodes_lists() {
    one_problem(
        &with_instances(r#"["a", "c"]"#, ""),
        11,
        15,
        &["service \"s\" is on unknown node \"c\""],
    );
    one_problem(
        &with_instances(r#"["a", "b", "a"]"#, ""),
        11,
        20,
        &["node \"a\" is listed twice", "service \"s\""],
    );
    one_problem(
        &with_instances("[]", ""),
        11,
        9,
        &["service \"s\" has an empty `nodes`"],
    );
    // Both forms: at `nodes`.
    let both = with_service("").replace("node = \"a\"", "node = \"a\"\nnodes = [\"a\", \"b\"]");
    one_problem(&both, 12, 9, &["has both `node` and `nodes`"]);
    // Neither: at the `[[service]]` entry.
    let neither = with_service("").replace("node = \"a\"\n", "");
    one_problem(&neither, 9, 1, &["has neither `node` nor `nodes`"]);
    // Every problem of a list is reported.
    let problems = problems(&with_instances(r#"["x", "a", "a"]"#, ""));
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_at(&problems[0], 11, 10, &["unknown node \"x\""]);
    assert_at(&problems[1], 11, 20, &["listed twice"]);
}

#[test]
fn a_port_is_distinct_on_every_node_hosting_an_instance() {
    // t on b clashes with the instance of s on b.
    let text = with_instances(
        r#"["a", "b"]"#,
        "\n[[service]]\nname = \"t\"\nnode = \"b\"\nport = 80\n",
    );
    one_problem(
        &text,
        17,
        8,
        &["port 80 on node \"b\"", "service \"s\" (line 12)"],
    );
    // The other way round: the second service's instances are checked too.
    let text = with_service("\n[[service]]\nname = \"t\"\nnodes = [\"b\", \"a\"]\nport = 80\n");
    one_problem(
        &text,
        17,
        8,
        &["port 80 on node \"a\"", "service \"s\" (line 12)"],
    );
    // A clash is reported with the list's other problems.
    let text = with_instances(
        r#"["x", "a"]"#,
        "\n[[service]]\nname = \"t\"\nnodes = [\"a\"]\nport = 80\n",
    );
    let problems = problems(&text);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_at(&problems[0], 11, 10, &["unknown node \"x\""]);
    assert_at(&problems[1], 17, 8, &["port 80 on node \"a\""]);
    // Instances of two services on disjoint nodes may share a port.
    parse_ok(&with_instances(
        r#"["a"]"#,
        "\n[[service]]\nname = \"t\"\nnodes = [\"b\"]\nport = 80\n",
    ));
}

#[test]
fn bad_ports() {
    for (port, needles) in [
        ("0", &["port 0", "1..=65535"][..]),
        ("65536", &["port 65536", "1..=65535"]),
        ("-1", &["port -1", "1..=65535"]),
        ("\"80\"", &["integer", "found a string"]),
        ("80.5", &["integer", "found a float"]),
    ] {
        let text = with_service("").replace("port = 80", &format!("port = {port}"));
        one_problem(&text, 12, 8, needles);
    }
    let max = parse_ok(&with_service("").replace("port = 80", "port = 65535"));
    assert_eq!(max.services[0].port, 65535);
}

#[test]
fn bad_node_addresses() {
    for (address, needles) in [
        (
            "10.0.0",
            &["invalid node address \"10.0.0\"", "IPv4 or IPv6"][..],
        ),
        ("node-a.example", &["invalid node address", "IPv4 or IPv6"]),
        ("10.0.0.1:80", &["invalid node address"]),
        ("", &["invalid node address"]),
        ("127.0.0.1", &["loopback"]),
        ("0.0.0.0", &["unspecified"]),
        ("224.0.0.1", &["multicast"]),
        ("255.255.255.255", &["broadcast"]),
        ("::1", &["loopback"]),
        ("::", &["unspecified"]),
    ] {
        let text = NODES.replace("10.0.0.2", address);
        one_problem(&text, 7, 11, needles);
    }
}

#[test]
fn duplicate_node_addresses() {
    let text = NODES.replace("10.0.0.2", "10.0.0.1");
    one_problem(
        &text,
        7,
        11,
        &["same address 10.0.0.1", "node \"a\" (line 3)"],
    );
    // Also when one is written as an IPv4-mapped IPv6 address.
    let text = NODES.replace("10.0.0.2", "::ffff:10.0.0.1");
    one_problem(&text, 7, 11, &["node \"a\" (line 3)"]);
}

#[test]
fn vip_collisions() {
    let second = |vip: &str| {
        with_service(&format!(
            "vip = \"240.0.0.9\"\n\n[[service]]\nname = \"t\"\nnode = \"b\"\nport = 81\n{vip}"
        ))
    };
    // Two explicit VIPs.
    one_problem(
        &second("vip = \"240.0.0.9\"\n"),
        19,
        7,
        &["vip 240.0.0.9", "service \"s\" (line 13)", "distinct vip"],
    );
    // An explicit VIP on a node's address.
    one_problem(
        &with_service("vip = \"10.0.0.2\"\n"),
        13,
        7,
        &["vip 10.0.0.2", "address of node \"b\" (line 7)"],
    );
    // A default VIP on a node's address points at the service entry.
    let taken = default_vip("s").to_string();
    let text = with_service("").replace("10.0.0.2", &taken);
    one_problem(
        &text,
        9,
        1,
        &[
            &format!("default vip {taken}"),
            "node \"b\"",
            "set `vip` explicitly",
        ],
    );
    // An explicit VIP equal to an earlier service's default VIP.
    let text = format!(
        "{}\n[[service]]\nname = \"t\"\nnode = \"b\"\nport = 81\nvip = \"{taken}\"\n",
        with_service("")
    );
    one_problem(
        &text,
        18,
        7,
        &[
            "default vip of service \"s\" (line 9)",
            "set `vip` explicitly",
        ],
    );
    // A default VIP equal to an earlier explicit VIP.
    let text = format!(
        "{NODES}\n[[service]]\nname = \"t\"\nnode = \"b\"\nport = 81\nvip = \"{taken}\"\n{}",
        with_service("").trim_start_matches(NODES)
    );
    one_problem(
        &text,
        15,
        1,
        &[
            &format!("default vip {taken} of service \"s\""),
            "set `vip` explicitly",
        ],
    );
}

#[test]
fn bad_vips() {
    for (vip, needles) in [
        ("127.0.0.2", &["vip 127.0.0.2", "loopback"][..]),
        ("0.0.0.0", &["unspecified"]),
        ("239.1.2.3", &["multicast"]),
        ("240.0.0", &["invalid vip \"240.0.0\"", "IPv4 or IPv6"]),
    ] {
        one_problem(&with_service(&format!("vip = \"{vip}\"\n")), 13, 7, needles);
    }
}

#[test]
fn bad_cgroups() {
    let ok = parse_ok(&with_service("cgroup = \"/mesh/a/s\"\n"));
    assert_eq!(
        ok.services[0].cgroup.as_deref(),
        Some(Path::new("/mesh/a/s"))
    );
    one_problem(
        &with_service("cgroup = \"system.slice/s.service\"\n"),
        13,
        10,
        &["not absolute"],
    );
    one_problem(
        &with_service("cgroup = \"/mesh/../s\"\n"),
        13,
        10,
        &["\"..\""],
    );
    one_problem(&with_service("cgroup = \"\"\n"), 13, 10, &["not absolute"]);
    one_problem(&with_service("cgroup = \"/\"\n"), 13, 10, &["root cgroup"]);
    one_problem(
        &with_service("cgroup = \"/mesh/a/_agent\"\n"),
        13,
        10,
        &["agent's cgroup"],
    );
}

#[test]
fn lb_values() {
    assert_eq!(
        parse_ok(&with_service("")).services[0].lb,
        Balance::LeastRequest
    );
    for (text, lb) in [
        ("least_request", Balance::LeastRequest),
        ("random", Balance::Random),
        ("round_robin", Balance::RoundRobin),
    ] {
        let ok = parse_ok(&with_service(&format!("lb = \"{text}\"\n")));
        assert_eq!(ok.services[0].lb, lb, "{text}");
    }
    one_problem(
        &with_service("lb = \"fastest\"\n"),
        13,
        6,
        &["invalid lb \"fastest\"", "\"round_robin\""],
    );
}

#[test]
fn two_services_cannot_share_a_cgroup() {
    let text = with_service(
        "cgroup = \"/system.slice/x.service\"\n\
         [[service]]\nname = \"t\"\nnode = \"a\"\nport = 81\ncgroup = \"/system.slice/x.service\"\n",
    );
    one_problem(
        &text,
        18,
        10,
        &[
            "already the cgroup of service \"s\" (line 13)",
            "one cgroup per service",
        ],
    );
}

#[test]
fn mesh_values() {
    let mesh = |body: &str| format!("# mesh settings\n[mesh]\n{body}\n{NODES}");
    one_problem(
        &mesh("default_policy = \"permit\""),
        3,
        18,
        &["invalid default_policy \"permit\"", "\"allow\" or \"deny\""],
    );
    one_problem(
        &mesh("default_policy = \"Deny\""),
        3,
        18,
        &["default_policy"],
    );
    for domain in [
        "",
        "Mesh.Local",
        "mesh..local",
        ".mesh",
        "mesh.",
        "-mesh.local",
        "mesh_1",
    ] {
        one_problem(
            &mesh(&format!("trust_domain = {domain:?}")),
            3,
            16,
            &["trust_domain", "lowercase dns name"],
        );
    }
    for domain in ["local", "cluster-1.example.com", "a1.b2"] {
        let config = parse_ok(&mesh(&format!("trust_domain = {domain:?}")));
        assert_eq!(config.mesh.trust_domain, domain);
    }
}

#[test]
fn leaf_ttl() {
    let ttl = |text: &str| parse(&format!("[mesh]\nleaf_ttl = {text:?}\n{NODES}"));
    for (text, secs) in [
        ("30s", 30),
        ("5m", 300),
        ("24h", 86400),
        ("1h30m", 5400),
        ("90s", 90),
        ("1h0m5s", 3605),
        ("1s", 1),
        ("2160h", 2160 * 3600),
    ] {
        assert_eq!(
            ttl(text).unwrap().mesh.leaf_ttl,
            Duration::from_secs(secs),
            "{text}"
        );
    }
    for text in [
        "",
        "24",
        "h",
        "1x",
        "1d",
        "30m1h",
        "1h1h",
        "-5m",
        "1.5h",
        " 5m",
        "99999999999999999999h",
    ] {
        let err = ttl(text).unwrap_err();
        assert_eq!(err.problems().len(), 1, "{text}");
        assert_at(
            &err.problems()[0],
            2,
            12,
            &["invalid leaf_ttl", "\"1h30m\""],
        );
    }
    let err = ttl("2161h").unwrap_err();
    assert_at(&err.problems()[0], 2, 12, &["too long", "at most 2160h"]);
    let err = ttl("70000000h").unwrap_err();
    assert_at(&err.problems()[0], 2, 12, &["too long"]);
    let err = ttl("0s").unwrap_err();
    assert_at(&err.problems()[0], 2, 12, &["too short", "at least 1s"]);
    // Milliseconds parse, but a leaf lives at least 1s.
    for text in ["500ms", "999ms", "0h0m0s999ms"] {
        let err = ttl(text).unwrap_err();
        assert_eq!(err.problems().len(), 1, "{text}");
        assert_at(
            &err.problems()[0],
            2,
            12,
            &[&format!(
                "leaf_ttl {text:?} is too short: expected at least 1s"
            )],
        );
    }
    for (text, millis) in [("1s500ms", 1500), ("1000ms", 1000), ("1m1ms", 60_001)] {
        assert_eq!(
            ttl(text).unwrap().mesh.leaf_ttl,
            Duration::from_millis(millis),
            "{text}"
        );
    }
    for text in ["1ms1s", "1ms1ms", "5 ms", "5mss", "ms", "1s1s500ms"] {
        let err = ttl(text).unwrap_err();
        assert_at(&err.problems()[0], 2, 12, &["invalid leaf_ttl"]);
    }
}

#[test]
fn intentions() {
    let base = format!(
        "{}\n[[service]]\nname = \"t\"\nnode = \"b\"\nport = 81\n",
        with_service("")
    ); // lines 1-17
    let intention = |source: &str, destination: &str, action: &str| {
        format!(
            "\n[[intention]]\nsource = {source:?}\ndestination = {destination:?}\naction = {action:?}\n"
        )
    };
    let config = parse_ok(&format!(
        "{base}{}{}{}",
        intention("s", "t", "allow"),
        intention("*", "t", "deny"),
        intention("*", "*", "allow"),
    ));
    let lines: Vec<usize> = config.intentions.iter().map(|i| i.line).collect();
    assert_eq!(lines, [19, 24, 29]);
    assert_eq!(config.intentions[2].source, Match::Any);
    assert_eq!(config.intentions[2].destination, Match::Any);

    one_problem(
        &format!("{base}{}", intention("x", "t", "allow")),
        20,
        10,
        &["unknown service \"x\" in intention source", "\"*\""],
    );
    one_problem(
        &format!("{base}{}", intention("s", "a", "allow")),
        21,
        15,
        &["unknown service \"a\" in intention destination"],
    );
    one_problem(
        &format!("{base}{}", intention("s", "t", "permit")),
        22,
        10,
        &["invalid action \"permit\"", "\"allow\" or \"deny\""],
    );
    one_problem(
        &format!(
            "{base}{}{}",
            intention("s", "t", "allow"),
            intention("s", "t", "deny")
        ),
        24,
        1,
        &["duplicate intention from \"s\" to \"t\"", "line 19"],
    );
}

#[test]
fn all_problems_are_reported_together_in_file_order() {
    let text = r#"[mesh]
default_policy = "maybe"
leaf_ttl = "forever"

[[node]]
name = "Node-A"
address = "127.0.0.1"

[[service]]
name = "api"
node = "node-b"
port = 0

[[intention]]
source = "web"
destination = "api"
action = "allow"
"#;
    let err = parse(text).unwrap_err();
    let problems = err.problems();
    let positions: Vec<(usize, usize)> = problems.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(
        positions,
        [
            (2, 18),
            (3, 12),
            (6, 8),
            (7, 11),
            (11, 8),
            (12, 8),
            (15, 10)
        ],
        "{err}"
    );
    assert_at(&problems[4], 11, 8, &["unknown node \"node-b\""]);
    assert_at(&problems[6], 15, 10, &["unknown service \"web\""]);

    let display = err.to_string();
    let lines: Vec<&str> = display.lines().collect();
    assert_eq!(lines.len(), problems.len());
    assert_eq!(
        lines[0],
        "/etc/mesh/mesh.toml:2:18: invalid default_policy \"maybe\": expected \"allow\" or \"deny\""
    );
    for (line, problem) in lines.iter().zip(problems) {
        assert_eq!(*line, problem.to_string());
    }
}

#[test]
fn default_vip_is_stable_and_in_class_e() {
    assert_eq!(default_vip("data-api"), Ipv4Addr::new(247, 239, 158, 197));
    assert_eq!(default_vip("frontend"), Ipv4Addr::new(253, 1, 250, 114));
    for i in 0..10_000 {
        let vip = default_vip(&format!("svc-{i}")).octets();
        assert_eq!(vip[0] & 0xf0, 240, "{vip:?}");
        assert!(vip[3] != 0 && vip[3] != 255, "{vip:?}");
    }
    // It depends only on the name, not on the other services.
    let alone = parse_ok(&with_service(""));
    let crowded = parse_ok(&format!(
        "{NODES}\n[[service]]\nname = \"t\"\nnode = \"b\"\nport = 81\n{}",
        with_service("").trim_start_matches(NODES)
    ));
    assert_eq!(
        alone.service("s").unwrap().vip,
        crowded.service("s").unwrap().vip
    );
}

#[test]
fn fnv1a_64_test_vectors() {
    // From the FNV reference test suite.
    assert_eq!(super::vip::fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(super::vip::fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(super::vip::fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
}

// One acceptance rule: `Config::from_bytes` judges every file, for the
// agent's start and reload, every command and the intention editor.

fn from_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
    Config::from_bytes(bytes, Path::new(PATH))
}

#[test]
fn a_latin1_byte_is_rejected_at_its_line_and_column() {
    // "café" in Latin-1 in a comment on line 8: é is the byte 0xe9.
    let mut text = NODES.as_bytes().to_vec();
    text.extend_from_slice(b"# caf\xe9 au lait\n");
    let err = from_bytes(&text).unwrap_err();
    assert_eq!(err.problems().len(), 1, "{err}");
    assert_at(&err.problems()[0], 8, 6, &["invalid UTF-8", "0xe9"]);
    assert_eq!(
        err.to_string(),
        format!("{PATH}:8:6: invalid UTF-8 (byte 0xe9): expected a UTF-8 file")
    );

    // Columns count characters: a UTF-8 "é" before it is one column.
    let text = [NODES.as_bytes(), "# é ".as_bytes(), b"\xe9\n"].concat();
    let err = from_bytes(&text).unwrap_err();
    assert_at(&err.problems()[0], 8, 5, &["invalid UTF-8"]);
    // A truncated sequence at the end of the file, on line 1.
    let err = from_bytes(b"# \xc3").unwrap_err();
    assert_at(&err.problems()[0], 1, 3, &["invalid UTF-8", "0xc3"]);
    // The same text as UTF-8 is fine.
    parse_ok(&format!("{NODES}# café au lait\n"));
}

#[test]
fn a_file_without_nodes_is_rejected() {
    for empty in ["", "\n", "  \n\t\n", "\u{feff}"] {
        one_problem(empty, 1, 1, &["empty file", "at least one [[node]]"]);
    }
    for text in ["# nothing yet\n", "[mesh]\ndefault_policy = \"allow\"\n"] {
        one_problem(text, 1, 1, &["no [[node]]", "at least one"]);
    }
    // Reported with the other problems, first.
    let problems = problems("[[service]]\nname = \"s\"\nnode = \"a\"\nport = 80\n");
    let found: Vec<(usize, usize)> = problems.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(found, [(1, 1), (3, 8)], "{problems:#?}");
    assert_at(&problems[0], 1, 1, &["no [[node]]"]);
    assert_at(&problems[1], 3, 8, &["unknown node \"a\""]);
}

#[test]
fn a_byte_order_mark_is_skipped_everywhere() {
    // The TOML parser skips a leading BOM; it is not a column either.
    let with_bom = format!("\u{feff}{}", with_service(""));
    assert_eq!(parse_ok(&with_bom), parse_ok(&with_service("")));
    let bad = "[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n";
    one_problem(&format!("\u{feff}[meshh]\n{bad}"), 1, 2, &["`meshh`"]);
    one_problem(&format!("\u{feff}[mesh\n{bad}"), 1, 6, &[]);
    one_problem("\u{feff}[mesh\n", 1, 6, &[]);
    // Only at the start: elsewhere it is a character like any other.
    one_problem(&format!("{NODES}\u{feff}[mesh]\n"), 8, 1, &[]);
}

#[test]
fn load_and_the_editor_refuse_the_same_files() {
    let service = with_service("");
    let latin1 = [service.as_bytes(), b"# caf\xe9\n"].concat();
    let syntax = format!("{service}[mesh\n");
    let bom_syntax = format!("\u{feff}[mesh\n{service}");
    let cases: [(&str, &[u8], bool); 6] = [
        // (what, file, the problems the editor reports are the file's own)
        ("latin-1", &latin1, true),
        ("toml syntax", syntax.as_bytes(), true),
        ("bom and toml syntax", bom_syntax.as_bytes(), true),
        ("empty", b"", false),
        ("no nodes", b"[mesh]\n", false),
        ("unknown node", b"[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[service]]\nname = \"s\"\nnode = \"b\"\nport = 80\n", false),
    ];
    for (what, bytes, same) in cases {
        let file = Scratch::with_config(bytes);
        let loaded = Config::load(&file.file()).unwrap_err();
        let direct = Config::from_bytes(bytes, &file.file()).unwrap_err();
        assert_eq!(loaded.problems(), direct.problems(), "{what}");
        assert!(!loaded.problems().is_empty(), "{what}: {loaded}");

        let created = edit::create(&file.file(), "s", "s", Action::Deny);
        let Err(edit::EditError::Invalid(e)) = &created else {
            panic!("{what}: the editor did not refuse: {created:?}");
        };
        if same {
            assert_eq!(e.problems(), loaded.problems(), "{what}");
        }
        let deleted = edit::delete(&file.file(), "s", "s");
        match &deleted {
            Err(edit::EditError::Invalid(e)) if same => {
                assert_eq!(e.problems(), loaded.problems(), "{what}");
            }
            // No such intention, in a file that parses.
            Err(edit::EditError::NotFound { .. }) if !same => {}
            _ => panic!("{what}: {deleted:?}"),
        }
        assert_eq!(
            std::fs::read(file.file()).unwrap(),
            bytes,
            "{what}: the file changed"
        );
    }
}

#[test]
fn the_editor_keeps_a_byte_order_mark() {
    let text = format!("\u{feff}{}", with_service(""));
    let file = Scratch::with_config(&text);
    edit::create(&file.file(), "s", "s", Action::Deny).unwrap();
    let after = String::from_utf8(std::fs::read(file.file()).unwrap()).unwrap();
    assert!(after.starts_with(&text), "{after:?}");
    assert_eq!(after.matches('\u{feff}').count(), 1, "{after:?}");
    let config = Config::load(&file.file()).unwrap();
    assert_eq!(config.intentions.len(), 1);
    assert_eq!(config.intentions[0].line, 14);
}

// `[[service.check]]`: `with_service(extra)` puts them in service `s`
// (port 80); the first one's header is on line 13.

/// A check of service `s` on line 13 with `body` from line 14 on.
fn with_check(body: &str) -> String {
    with_service(&format!("[[service.check]]\n{body}"))
}

#[test]
fn checks_parse_with_their_defaults() {
    let text = with_service(
        r#"[[service.check]]
name = "api health"
http = "/health"
interval = "5s"
timeout = "1s"
success_before_passing = 2
failures_before_critical = 3

[[service.check]]
tcp = true
interval = "500ms"

[[service.check]]
ttl = "30s"

[[service.check]]
http = "/ready?full=1"
interval = "1s500ms"
timeout = "100ms"

[[service.check]]
name = "slow"
tcp = true
interval = "1m"
success_before_passing = 0
failures_before_critical = 1000

[[service]]
name = "t"
node = "b"
port = 81

[[service.check]]
name = "api health"
http = "/"
"#,
    );
    let config = parse_ok(&text);
    let secs = Duration::from_secs;
    let millis = Duration::from_millis;
    let check = |name: &str, kind: CheckKind, interval, timeout, s, f| Check {
        name: name.to_owned(),
        kind,
        interval,
        timeout,
        success_before_passing: s,
        failures_before_critical: f,
    };
    let http = |path: &str| CheckKind::Http {
        path: path.to_owned(),
    };
    assert_eq!(
        config.service("s").unwrap().checks,
        [
            check("api health", http("/health"), secs(5), secs(1), 2, 3),
            // The timeout defaults to the interval when that is below 10s.
            check("tcp", CheckKind::Tcp, millis(500), millis(500), 0, 0),
            check("ttl", CheckKind::Ttl(secs(30)), secs(10), secs(10), 0, 0),
            check(
                "http /ready?full=1",
                http("/ready?full=1"),
                millis(1500),
                millis(100),
                0,
                0
            ),
            check("slow", CheckKind::Tcp, secs(60), secs(10), 0, 1000),
        ]
    );
    // Names are unique within a service, not across services.
    assert_eq!(
        config.service("t").unwrap().checks,
        [check("api health", http("/"), secs(10), secs(10), 0, 0)]
    );
    // No [[service.check]]: no checks.
    assert!(parse_ok(&with_service("")).services[0].checks.is_empty());
}

#[test]
fn a_check_has_exactly_one_kind() {
    one_problem(
        &with_check("name = \"x\"\ninterval = \"5s\"\n"),
        13,
        1,
        &["a check of service \"s\" has no kind: expected exactly one of http, tcp or ttl"],
    );
    one_problem(&with_check(""), 13, 1, &["has no kind"]);
    // Two or more: at the second, naming them all.
    one_problem(
        &with_check("http = \"/health\"\ntcp = true\n"),
        15,
        7,
        &[
            "a check of service \"s\" has both http and tcp: expected exactly one of http, tcp or ttl",
        ],
    );
    one_problem(
        &with_check("ttl = \"30s\"\nhttp = \"/health\"\n"),
        15,
        8,
        &["has both http and ttl"],
    );
    one_problem(
        &with_check("tcp = true\nttl = \"30s\"\nhttp = \"/\"\n"),
        15,
        7,
        &["has http, tcp and ttl: expected exactly one"],
    );
    one_problem(
        &with_check("tcp = false\n"),
        14,
        7,
        &["tcp = false checks nothing: set tcp = true for a tcp check, or remove the check"],
    );
}

#[test]
fn interval_and_timeout_do_not_apply_to_a_ttl_check() {
    let problems = problems(&with_check(
        "ttl = \"30s\"\ninterval = \"5s\"\ntimeout = \"1s\"\n",
    ));
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_at(
        &problems[0],
        15,
        12,
        &[
            "interval does not apply to a ttl check",
            "`mesh-agent check pass|warn|fail --service s`",
            "remove interval",
        ],
    );
    assert_at(
        &problems[1],
        16,
        11,
        &["timeout does not apply to a ttl check", "remove timeout"],
    );
    // Counts do apply: they smooth what `mesh-agent check` reports.
    let config = parse_ok(&with_check("ttl = \"1m\"\nfailures_before_critical = 2\n"));
    assert_eq!(config.services[0].checks[0].failures_before_critical, 2);
}

#[test]
fn check_durations() {
    let tcp = |key: &str, value: &str| with_check(&format!("tcp = true\n{key} = {value:?}\n"));
    for (interval, millis) in [
        ("100ms", 100),
        ("500ms", 500),
        ("1s500ms", 1500),
        ("2m", 120_000),
        ("24h", 86_400_000),
    ] {
        let check = &parse_ok(&tcp("interval", interval)).services[0].checks[0];
        assert_eq!(check.interval, Duration::from_millis(millis), "{interval}");
    }
    let problem = one_problem(&tcp("interval", "50ms"), 15, 12, &[]);
    assert_eq!(
        problem.message,
        "interval \"50ms\" is too short: expected at least 100ms"
    );
    one_problem(&tcp("interval", "0s"), 15, 12, &["too short"]);
    one_problem(
        &tcp("interval", "24h1ms"),
        15,
        12,
        &["interval \"24h1ms\" is too long: expected at most 24h"],
    );
    for bad in ["10", "", "1d", "500 ms", "1ms1s", "-1s", "10S"] {
        one_problem(
            &tcp("interval", bad),
            15,
            12,
            &[&format!("invalid interval {bad:?}"), "\"500ms\""],
        );
    }
    for zero in ["0s", "0ms", "0h0m"] {
        one_problem(
            &tcp("timeout", zero),
            15,
            11,
            &[&format!("timeout {zero:?} is zero"), "positive duration"],
        );
    }
    one_problem(
        &tcp("timeout", "soon"),
        15,
        11,
        &["invalid timeout \"soon\""],
    );
    let check = &parse_ok(&tcp("timeout", "1ms")).services[0].checks[0];
    assert_eq!(check.timeout, Duration::from_millis(1));

    let ttl = |value: &str| with_check(&format!("ttl = {value:?}\n"));
    one_problem(
        &ttl("500ms"),
        14,
        7,
        &["ttl \"500ms\" is too short: expected at least 1s"],
    );
    one_problem(&ttl("25h"), 14, 7, &["ttl \"25h\" is too long"]);
    one_problem(&ttl("30"), 14, 7, &["invalid ttl \"30\""]);
    let check = &parse_ok(&ttl("1s500ms")).services[0].checks[0];
    assert_eq!(check.kind, CheckKind::Ttl(Duration::from_millis(1500)));
}

#[test]
fn check_counts() {
    for key in ["success_before_passing", "failures_before_critical"] {
        let text = |value: &str| with_check(&format!("tcp = true\n{key} = {value}\n"));
        let column = key.len() + 4;
        for (value, needles) in [
            ("-1", &[" -1 is out of range", "0..=1000"][..]),
            ("1001", &[" 1001 is out of range"]),
            ("9223372036854775807", &["is out of range"]),
            ("\"3\"", &["must be an integer in 0..=1000, found a string"]),
            ("2.5", &["found a float"]),
        ] {
            let problem = one_problem(&text(value), 15, column, needles);
            assert!(problem.message.starts_with(key), "{problem}");
        }
        parse_ok(&text("1000"));
    }
}

#[test]
fn http_check_paths() {
    // A TOML string: Rust's `{:?}` escapes are not all TOML's.
    let http = |path: &str| with_check(&format!("http = {}\n", toml::Value::from(path)));
    for path in ["/", "/health", "/health/live?verbose=1&x=%20", "/a-b_c.d~e"] {
        let check = &parse_ok(&http(path)).services[0].checks[0];
        assert_eq!(check.name, format!("http {path}"));
        assert_eq!(
            check.kind,
            CheckKind::Http {
                path: path.to_owned()
            }
        );
    }
    // A Consul-style URL: the path only, GET on the service's port.
    let problem = one_problem(&http("http://localhost:8080/health"), 14, 8, &[]);
    assert_eq!(
        problem.message,
        "http \"http://localhost:8080/health\" is a URL: this mesh takes the path only, \
         http = \"/health\"; the agent GETs it on 127.0.0.1:80, the service's port"
    );
    one_problem(
        &http("https://10.0.0.1/ready?x=1"),
        14,
        8,
        &["is a URL", "http = \"/ready?x=1\"", "127.0.0.1:80"],
    );
    one_problem(
        &http("localhost:8080/health"),
        14,
        8,
        &["is a URL", "http = \"/health\""],
    );
    one_problem(
        &http("http://localhost:8080"),
        14,
        8,
        &["is a URL", "http = \"/\""],
    );
    // With a bad port, the message says which port in words.
    let bad_port = http("http://x/health").replace("port = 80", "port = 0");
    let problems = problems(&bad_port);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_at(
        &problems[1],
        14,
        8,
        &["the agent GETs it on 127.0.0.1:<service port>"],
    );

    for (path, needles) in [
        ("", &["http path must not be empty", "\"/health\""][..]),
        ("health", &["http path \"health\" does not start with '/'"]),
        (
            "/he alth",
            &["contains whitespace or a control character", "%20"],
        ),
        ("/a\tb", &["contains whitespace or a control character"]),
        ("/a\u{7f}", &["control character"]),
        ("/health#top", &["fragment"]),
        ("/a<b>", &["not a valid request path", "percent-encoded"]),
        ("/a`b", &["not a valid request path"]),
        ("/?q=<x>", &["not a valid request path"]),
    ] {
        one_problem(&http(path), 14, 8, needles);
    }
    let long = format!("/{}", "a".repeat(1024));
    one_problem(&http(&long), 14, 8, &["1025 bytes long", "at most 1024"]);
}

#[test]
fn check_names_are_unique_within_a_service() {
    let two = |first: &str, second: &str| {
        with_service(&format!(
            "[[service.check]]\n{first}\n\n[[service.check]]\n{second}\n"
        ))
    };
    one_problem(
        &two("name = \"up\"\ntcp = true", "name = \"up\"\nhttp = \"/\""),
        18,
        8,
        &["duplicate check name \"up\" in service \"s\": already declared on line 14"],
    );
    // Two unnamed tcp checks share the default name.
    one_problem(
        &two("tcp = true", "tcp = true\ninterval = \"1s\""),
        16,
        1,
        &[
            "duplicate check name \"tcp\" in service \"s\"",
            "default name",
            "line 13",
            "set `name`",
        ],
    );
    one_problem(
        &two("http = \"/h\"", "http = \"/h\""),
        16,
        1,
        &["duplicate check name \"http /h\"", "set `name`"],
    );
    // A written name may collide with a default one.
    one_problem(
        &two("ttl = \"5s\"", "name = \"ttl\"\ntcp = true"),
        17,
        8,
        &["duplicate check name \"ttl\"", "line 13"],
    );
    let named = parse_ok(&two("tcp = true", "name = \"tcp 2\"\ntcp = true"));
    let names: Vec<&str> = named.services[0]
        .checks
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["tcp", "tcp 2"]);

    one_problem(
        &with_check("name = \"\"\ntcp = true\n"),
        14,
        8,
        &["check name must not be empty", "leave `name` out"],
    );
    one_problem(
        &with_check("name = \"a\\nb\"\ntcp = true\n"),
        14,
        8,
        &["control character"],
    );
}

#[test]
fn check_shape_errors_are_positioned() {
    one_problem(
        &with_check("tcp = true\nport = 81\n"),
        15,
        1,
        &["unknown field `port`"],
    );
    one_problem(&with_check("tcp = \"yes\"\n"), 14, 7, &["invalid type"]);
    one_problem(
        &with_check("interval = 10\ntcp = true\n"),
        14,
        12,
        &["invalid type"],
    );
}

#[test]
fn every_check_problem_is_reported_and_the_config_refused() {
    let text = with_service(
        r#"[[service.check]]
name = "none"

[[service.check]]
tcp = true
interval = "50ms"
failures_before_critical = -2

[[service.check]]
http = "http://localhost/health"
"#,
    );
    let problems = problems(&text);
    let found: Vec<(usize, usize)> = problems.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(
        found,
        [(13, 1), (18, 12), (19, 28), (22, 8)],
        "{problems:#?}"
    );
    assert_at(&problems[0], 13, 1, &["has no kind"]);
    assert_at(&problems[1], 18, 12, &["interval \"50ms\" is too short"]);
    assert_at(&problems[2], 19, 28, &["failures_before_critical -2"]);
    assert_at(&problems[3], 22, 8, &["is a URL"]);
}

#[test]
fn settings_set_up_at_start_need_a_restart() {
    let base = testing::node("a", "10.0.0.1");
    // Parsed as read from /m.toml: the default ca_dir is /ca.
    let parse = |mesh: &str| testing::config(&format!("{mesh}{base}"));
    let old = parse("");
    assert!(
        old.mesh
            .restart_needed(&parse("[mesh]\ndefault_policy = \"allow\"\n").mesh)
            .is_empty()
    );
    let new =
        parse("[mesh]\ntrust_domain = \"other.local\"\nleaf_ttl = \"1h\"\nca_dir = \"keys\"\n");
    assert_eq!(
        old.mesh.restart_needed(&new.mesh),
        [
            "trust_domain \"mesh.local\" -> \"other.local\"",
            "ca_dir \"/ca\" -> \"/keys\"",
            "leaf_ttl 86400s -> 3600s",
        ]
    );
}

const CA_B: &str = "ab0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd";

#[test]
fn revoked_nodes_and_their_cas_parse_and_bad_ones_are_pointed_at() {
    let text = format!(
        "{NODES}\n[[revoked]]\nnode = \"b\"\nnode_ca = \"{CA_B}\"\n\n[[revoked]]\nnode = \"gone\"\nnode_ca = \"{}\"\nreadmitted = true\n",
        CA_B.replace('a', "0")
    );
    let config = parse_ok(&text);
    assert_eq!(config.revoked.len(), 2);
    assert!(config.is_banned("b") && !config.is_banned("gone") && !config.is_banned("a"));
    assert!(config.is_revoked_ca(CA_B) && config.is_revoked_ca(&CA_B.replace('a', "0")));
    assert!(!config.is_revoked_ca(&CA_B.replace('b', "c")));

    let bad = format!(
        "{NODES}\n[[revoked]]\nnode = \"b\"\nnode_ca = \"AB:01\"\n\n[[revoked]]\nnode = \"b\"\nnode_ca = \"{CA_B}\"\n\n[[revoked]]\nnode = \"b\"\nnode_ca = \"{CA_B}\"\n"
    );
    let problems: Vec<String> = problems(&bad).iter().map(ToString::to_string).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("invalid node_ca \"AB:01\"")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("duplicate revocation of node \"b\"")),
        "{problems:?}"
    );
}

#[test]
fn revoke_and_readmit_edit_the_file_and_keep_its_comments() {
    use super::edit::{self, Revoking};
    let text = format!("# the mesh\n{NODES}# end\n");
    let path = Path::new(PATH);
    let (done, revoked) = edit::with_revocation(&text, path, "b", CA_B).unwrap();
    assert_eq!(done, Revoking::Added);
    assert!(revoked.starts_with("# the mesh\n") && revoked.contains("# end\n"));
    assert!(Config::parse(&revoked, path).unwrap().is_banned("b"));
    let (again, same) = edit::with_revocation(&revoked, path, "b", CA_B).unwrap();
    assert_eq!(
        (again, same.as_str()),
        (Revoking::Unchanged, revoked.as_str())
    );
    let (n, readmitted) = edit::with_readmission(&revoked, path, "b").unwrap();
    assert_eq!(n, 1);
    let config = Config::parse(&readmitted, path).unwrap();
    assert!(!config.is_banned("b") && config.is_revoked_ca(CA_B));
    let err = edit::with_readmission(&readmitted, path, "b").unwrap_err();
    assert!(
        err.to_string().contains("node \"b\" is not revoked"),
        "{err}"
    );
    let (done, rebanned) = edit::with_revocation(&readmitted, path, "b", CA_B).unwrap();
    assert_eq!(done, Revoking::Again);
    assert!(Config::parse(&rebanned, path).unwrap().is_banned("b"));
    // A bad fingerprint is refused before anything is written.
    let err = edit::with_revocation(&text, path, "b", "xyz").unwrap_err();
    assert!(err.to_string().contains("invalid node_ca"), "{err}");
}

//! The web UI in a real browser (Debian's Chromium, headless, through
//! ChromeDriver) against a real mesh: what it shows and how fast it follows
//! a change, intentions written from it (the same code and messages as the
//! CLI, enforced in the kernel), and what it refuses. A screenshot of each
//! page is saved under `target/ui/`.

use std::{
    fs,
    net::IpAddr,
    time::{Duration, Instant},
};

use mesh_tests::{
    API_PORT, Mesh, Signal, Topology, browser::Browser, output_with_timeout, wait_until,
};
use serde_json::{Value, json};

const VIP: &str = "240.0.0.81";
/// How soon a change the agent knows must show on the page.
const LIVE: Duration = Duration::from_secs(2);

fn vip() -> IpAddr {
    VIP.parse().expect("vip")
}

/// web on `wa` calls api on `wb` (an HTTP server with an http check every
/// 200 ms); default allow. The UI of `wa`'s agent is forwarded to this host
/// through a root process.
struct Ui {
    // Dropped first: the browser goes before the mesh it looks at.
    browser: Browser,
    mesh: Mesh,
    base: String,
    api: u32,
}

fn topology() -> Topology {
    Mesh::nodes(&["wa", "wb"])
        .default_policy("allow")
        .service("web", "wa", 8080)
        .service_with("api", "wb", API_PORT, |s| {
            s.vip(VIP).check(
                "name = \"http\"\nhttp = \"/health\"\ninterval = \"200ms\"\nfailures_before_critical = 1",
            )
        })
}

fn start(topology: Topology) -> Ui {
    let mesh = topology.start();
    let api = mesh.start_health_server("wb", "api", API_PORT);
    let port = mesh.forward_admin("wa", 0);
    Ui {
        browser: Browser::start(),
        mesh,
        base: format!("http://127.0.0.1:{port}/ui/"),
        api,
    }
}

impl Ui {
    fn open(&self, view: &str) {
        self.browser.goto(&format!("{}#/{view}", self.base));
        self.browser
            .wait_for(
                "return document.body.dataset.view === arguments[0];",
                vec![json!(view.split('/').next())],
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("view {view} not drawn"));
    }

    /// The data attributes of the rows of `table`.
    fn rows(&self, table: &str) -> Vec<Value> {
        self.browser
            .js(
                "return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(r => ({...r.dataset, text: r.textContent}));",
                vec![json!(table)],
            )
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for a row of `table` with every attribute of
    /// `want`; returns how long it took.
    fn wait_row(&self, table: &str, want: Value, timeout: Duration) -> Option<Duration> {
        self.browser.wait_for(
            "const want = arguments[1];
             return [...document.querySelectorAll(arguments[0] + ' tbody tr')]
               .some(r => Object.entries(want).every(([k, v]) => r.dataset[k] === v));",
            vec![json!(table), want],
            timeout,
        )
    }

    /// Creates `source -> destination` with `action` from the intentions
    /// page, as a user would.
    fn create(&self, source: &str, destination: &str, action: &str) {
        self.browser.fill("#create-source", source);
        self.browser.fill("#create-destination", destination);
        self.browser.select("#create-action", action);
        self.browser.click("#create-button");
    }

    /// Deletes `source -> destination` with its button on the intentions
    /// page.
    fn delete(&self, source: &str, destination: &str) {
        self.browser.click(&format!(
            "button[data-delete][data-source='{source}'][data-destination='{destination}']"
        ));
    }

    /// Waits until the result box `id` says something starting with
    /// `prefix`; panics with what it says.
    fn result(&self, id: &str, prefix: &str) {
        let said = self.browser.wait_for(
            "return document.getElementById(arguments[0]).textContent.startsWith(arguments[1]);",
            vec![json!(id), json!(prefix)],
            Duration::from_secs(10),
        );
        assert!(
            said.is_some(),
            "#{id} says {:?}, not {prefix:?}",
            self.browser.text(&format!("#{id}"))
        );
    }

    /// Waits until web's connect to api fails with EPERM in the kernel.
    fn refused(&self) {
        assert!(
            wait_until(Duration::from_secs(3), || self
                .mesh
                .transfer("wa", Some("web"), vip(), API_PORT, 10)
                .starts_with("ERRNO 1 ")),
            "web -> api not refused with EPERM after the deny"
        );
    }

    /// web's call to api: the HTTP status, or the error.
    fn call(&self) -> String {
        let mut cmd = self.mesh.cmd_as("wa", "web", "curl");
        cmd.args(["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{VIP}:{API_PORT}/health"));
        let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The state of api's instance on wb as the agent of wa knows it.
    fn agent_state(&self) -> String {
        let catalog = self.mesh.admin_json("wa", "/catalog");
        catalog["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "api"))
            .map(|s| s["instances"][0]["state"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    }
}

/// Polls the agent and the page together until both show `state` for api;
/// returns how long the page lagged behind the agent.
fn page_lag(ui: &Ui, state: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let (mut agent_at, mut page_at) = (None, None);
    let want = json!({"node": "wb", "state": state});
    while started.elapsed() < timeout && (agent_at.is_none() || page_at.is_none()) {
        if agent_at.is_none() && ui.agent_state() == state {
            agent_at = Some(Instant::now());
        }
        if page_at.is_none()
            && ui
                .wait_row("#instances", want.clone(), Duration::ZERO)
                .is_some()
        {
            page_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent_at = agent_at.unwrap_or_else(|| panic!("the agent never saw api {state}"));
    let page_at = page_at.unwrap_or_else(|| panic!("the page never showed api {state}"));
    page_at.saturating_duration_since(agent_at)
}

#[test]
fn the_pages_show_services_health_and_nodes_and_follow_changes_live() {
    let ui = start(topology());
    ui.open("services");
    for (service, passing) in [("web", "1"), ("api", "1")] {
        assert!(
            ui.wait_row(
                "#services",
                json!({"service": service, "passing": passing, "critical": "0"}),
                Duration::from_secs(10)
            )
            .is_some(),
            "{service} not passing on the services page: {:?}",
            ui.rows("#services")
        );
    }
    ui.browser.screenshot("services");

    // The service page: its instance, the check's status, output and since.
    ui.browser.click("a[href='#/service/api']");
    assert!(
        ui.wait_row(
            "#instances",
            json!({"node": "wb", "state": "passing"}),
            LIVE
        )
        .is_some()
    );
    let row = &ui.rows("#instances")[0];
    let text = row["text"].as_str().unwrap_or("");
    assert!(text.contains("http") && text.contains("since"), "{text}");
    ui.browser.screenshot("service-api");

    // Stop the instance: critical on the page within 2 s of the agent
    // knowing; back to passing the same way.
    ui.mesh.stop_app(ui.api);
    let lag = page_lag(&ui, "critical", Duration::from_secs(10));
    assert!(
        lag <= LIVE,
        "critical on the page {lag:?} after the agent knew"
    );
    // The check's output on the page: a probe made after the stop is
    // refused (one in flight as the app stopped may fail otherwise first).
    let output = || {
        ui.rows("#instances")[0]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        wait_until(Duration::from_secs(10), || output()
            .to_lowercase()
            .contains("refused")),
        "no check output: {}",
        output()
    );
    ui.browser.screenshot("service-api-critical");
    ui.open("services");
    assert!(
        ui.wait_row(
            "#services",
            json!({"service": "api", "critical": "1"}),
            LIVE
        )
        .is_some(),
        "{:?}",
        ui.rows("#services")
    );
    ui.mesh.start_health_server("wb", "api", API_PORT);
    ui.open("service/api");
    let lag = page_lag(&ui, "passing", Duration::from_secs(10));
    assert!(
        lag <= LIVE,
        "passing on the page {lag:?} after the agent knew"
    );

    // Nodes: both agents, their versions; wb's agent stopped turns it
    // unreachable on the page.
    ui.open("nodes");
    for node in ["wa", "wb"] {
        assert!(
            ui.wait_row("#nodes", json!({"node": node, "reachable": "true"}), LIVE)
                .is_some(),
            "{:?}",
            ui.rows("#nodes")
        );
    }
    let rows = ui.rows("#nodes");
    for row in &rows {
        let text = row["text"].as_str().unwrap_or("");
        assert!(
            text.contains(&format!("mesh-agent {}", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
    }
    ui.browser.screenshot("nodes");
    ui.mesh.stop_agent("wb", Signal::SIGKILL);
    assert!(
        ui.wait_row(
            "#nodes",
            json!({"node": "wb", "reachable": "false"}),
            Duration::from_secs(5)
        )
        .is_some(),
        "{:?}",
        ui.rows("#nodes")
    );
    ui.browser.screenshot("nodes-unreachable");
}

#[test]
fn a_deny_created_in_the_ui_is_enforced_drawn_denied_and_deleted_again() {
    let ui = start(topology());
    for _ in 0..3 {
        assert_eq!(ui.call(), "200");
    }
    ui.open("topology");
    let edge = |verdict: &str| {
        format!(
            "const e = document.querySelector('g.edge[data-source=\"web\"][data-destination=\"api\"]');
             return !!e && e.dataset.verdict === '{verdict}';"
        )
    };
    assert!(
        ui.browser
            .wait_for(&edge("allowed"), vec![], Duration::from_secs(5))
            .is_some(),
        "no allowed edge web -> api"
    );
    ui.browser.screenshot("topology");

    // Create the deny from the page, as a user would.
    ui.open("intentions");
    ui.create("web", "api", "deny");
    let config = ui.mesh.config().display().to_string();
    ui.result(
        "write-result",
        &format!("created deny web -> api in {config}"),
    );
    // In the file, where the CLI sees it.
    let (ok, list) = ui.mesh.cli(&["intention", "list"]);
    assert!(ok && list.contains("web -> api: deny"), "{list}");
    // web's next call fails with EPERM in the kernel.
    ui.refused();
    let denied_at = Instant::now();
    assert!(
        ui.wait_row(
            "#intentions",
            json!({"source": "web", "destination": "api", "action": "deny"}),
            LIVE
        )
        .is_some()
    );
    ui.browser.screenshot("intentions");

    // Explain, in the page and in the CLI: the same line.
    for (source, destination) in [("web", "api"), ("api", "web")] {
        ui.browser.fill("#explain-source", source);
        ui.browser.fill("#explain-destination", destination);
        ui.browser.click("#explain-button");
        let (ok, cli) = ui.mesh.cli(&["explain", source, destination]);
        assert!(ok, "{cli}");
        let cli = cli.trim().to_owned();
        assert!(
            ui.browser
                .wait_for(
                    "return document.getElementById('explain-result').textContent === arguments[0];",
                    vec![json!(cli)],
                    Duration::from_secs(5)
                )
                .is_some(),
            "UI explained {:?}, the CLI {cli:?}",
            ui.browser.text("#explain-result")
        );
    }

    // The topology draws the edge denied, with the denial counted, live.
    ui.open("topology");
    assert!(
        ui.browser.wait_for(&edge("denied"), vec![], LIVE).is_some(),
        "edge not drawn denied"
    );
    // A new denial shows within 2 s of the refused connect.
    let denials = || {
        ui.browser
            .js(
                "const r = document.querySelector('#edges-table tr[data-source=\"web\"][data-destination=\"api\"]');
                 return r ? Number(r.children[6].textContent) : -1;",
                vec![],
            )
            .as_f64()
            .unwrap_or(-1.0)
    };
    // The connects refused above reach the page with the caller's agent's
    // next harvest (500 ms) and the page's next poll (1 s).
    assert!(
        wait_until(LIVE, || denials() >= 1.0),
        "the refused connects not counted: {:?}",
        ui.rows("#edges-table")
    );
    let before = denials();
    assert!(
        ui.mesh
            .transfer("wa", Some("web"), vip(), API_PORT, 10)
            .starts_with("ERRNO 1 ")
    );
    let refused_at = Instant::now();
    assert!(
        wait_until(LIVE, || denials() > before),
        "a new denial not shown within {LIVE:?}: {:?}",
        ui.rows("#edges-table")
    );
    eprintln!(
        "a denial on the page {:?} after the refused connect",
        refused_at.elapsed()
    );
    assert!(denied_at.elapsed() <= Duration::from_secs(30));
    ui.browser.screenshot("topology-denied");
    // The destination's agent draws the same edge from what the caller's
    // agent tells it over their link: the whole mesh, not one node.
    let pair_on_wb = || {
        let doc = ui.mesh.admin_json("wb", "/ui/api/mesh");
        doc["pairs"]
            .as_array()
            .and_then(|p| {
                p.iter()
                    .find(|p| p["source"] == "web" && p["destination"] == "api")
            })
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert!(
        wait_until(LIVE, || {
            let p = pair_on_wb();
            p["action"] == "deny"
                && p["total"]["connections"].as_u64() >= Some(3)
                && p["minute"]["denied"].as_u64() >= Some(1)
        }),
        "wb's view of web -> api: {}",
        pair_on_wb()
    );

    // An intention made with the CLI shows on the page within 2 s.
    ui.open("intentions");
    let (ok, out) = ui.mesh.cli(&["intention", "create", "-deny", "api", "web"]);
    assert!(ok, "{out}");
    let made = json!({"source": "api", "destination": "web", "action": "deny"});
    let shown = ui.wait_row("#intentions", made, LIVE);
    assert!(shown.is_some(), "{:?}", ui.rows("#intentions"));
    eprintln!("an intention made with the CLI on the page after {shown:?}");
    let (ok, out) = ui.mesh.cli(&["intention", "delete", "api", "web"]);
    assert!(ok, "{out}");

    // Delete it from the page: the call works again.
    ui.delete("web", "api");
    ui.result("write-result", &format!("deleted web -> api from {config}"));
    assert!(
        wait_until(Duration::from_secs(3), || ui.call() == "200"),
        "web -> api not restored: {}",
        ui.call()
    );
    ui.open("topology");
    assert!(
        ui.browser
            .wait_for(&edge("allowed"), vec![], LIVE)
            .is_some()
    );

    // A bad write shows the CLI's error and changes nothing.
    ui.open("intentions");
    let before = fs::read(ui.mesh.config()).expect("config");
    ui.browser.fill("#create-source", "web");
    ui.browser.fill("#create-destination", "nosuch");
    ui.browser.click("#create-button");
    assert!(
        ui.browser
            .wait_for(
                "const r = document.getElementById('write-result');
                 return r.classList.contains('error') && r.textContent.includes('unknown service \"nosuch\"');",
                vec![],
                Duration::from_secs(5)
            )
            .is_some(),
        "{:?}",
        ui.browser.text("#write-result")
    );
    assert_eq!(fs::read(ui.mesh.config()).expect("config"), before);
}

/// The HTTP status of `GET path` of `node`'s admin endpoint, with curl's
/// `extra` arguments.
fn get_status(mesh: &Mesh, node: &str, path: &str, extra: &[&str]) -> String {
    let mut cmd = mesh.cmd(node, "curl");
    cmd.args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(extra)
        .arg(format!("http://127.0.0.1:15000{path}"));
    String::from_utf8_lossy(&output_with_timeout(&mut cmd, Duration::from_secs(10)).stdout)
        .into_owned()
}

/// The token in the page `node`'s agent serves at `/ui/`.
fn page_token(mesh: &Mesh, node: &str) -> String {
    let mut cmd = mesh.cmd(node, "curl");
    cmd.args(["-sS", "-m", "5", "http://127.0.0.1:15000/ui/"]);
    let page = output_with_timeout(&mut cmd, Duration::from_secs(10)).stdout;
    String::from_utf8_lossy(&page)
        .split("name=\"mesh-token\" content=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("a token in the page")
        .to_owned()
}

/// `curl` in `node`'s namespace as `uid`, POSTing `body` to the UI's
/// intention route with `headers`: (HTTP status, body).
fn post_as(mesh: &Mesh, node: &str, uid: u32, headers: &[String], body: &str) -> (String, String) {
    let mut cmd = mesh.cmd(node, "setpriv");
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        "curl",
        "-sS",
        "-m",
        "5",
        "-w",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg("http://127.0.0.1:15000/ui/api/intention");
    let out = output_with_timeout(&mut cmd, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), body.to_owned())
}

#[test]
fn writes_without_the_token_from_elsewhere_or_from_other_uids_are_refused() {
    let ui = start(
        topology()
            .agent_args("wa", &["--ui-writers", "1001"])
            .agent_args("wb", &["--ui", "off"]),
    );
    let mesh = &ui.mesh;
    let token = page_token(mesh, "wa");
    assert_eq!(token.len(), 64);
    let deny = r#"{"source":"web","destination":"api","action":"deny"}"#;
    let with_token = format!("X-Mesh-Token: {token}");
    let before = fs::read(mesh.config()).expect("config");
    for (uid, headers, why) in [
        (0, vec![], "needs the page's x-mesh-token"),
        (
            0,
            vec!["X-Mesh-Token: 0123".to_owned()],
            "wrong x-mesh-token",
        ),
        (
            0,
            vec![with_token.clone(), "Host: evil.example:15000".to_owned()],
            "not this admin endpoint",
        ),
        (
            0,
            vec![with_token.clone(), "Origin: http://evil.example".to_owned()],
            "another origin",
        ),
        (
            1000,
            vec![with_token.clone()],
            "uid 1000 may not change the mesh",
        ),
    ] {
        let (status, body) = post_as(mesh, "wa", uid, &headers, deny);
        assert_eq!(status, "403", "uid {uid} {headers:?}: {body}");
        assert!(body.contains(why), "uid {uid} {headers:?}: {body}");
        assert_eq!(
            fs::read(mesh.config()).expect("config"),
            before,
            "{why}: the file changed"
        );
    }
    // A foreign Host reads nothing either (DNS rebinding).
    assert_eq!(
        get_status(
            mesh,
            "wa",
            "/ui/api/mesh",
            &["-H", "Host: evil.example:15000"]
        ),
        "403"
    );
    let doc = mesh.admin_json("wa", "/ui/api/mesh");
    assert_eq!(doc["intentions"], json!([]), "{doc}");

    // A page opened by uid 1000 says it is read-only.
    let port = mesh.forward_admin("wa", 1000);
    ui.browser
        .goto(&format!("http://127.0.0.1:{port}/ui/#/intentions"));
    assert!(
        ui.browser
            .wait_for(
                "const r = document.getElementById('readonly');
                 return !!r && !r.hidden && r.textContent.includes('uid 1000 may not')
                   && document.getElementById('create-button').disabled;",
                vec![],
                Duration::from_secs(10)
            )
            .is_some(),
        "{:?}",
        ui.browser.text("#readonly")
    );
    ui.browser.screenshot("intentions-read-only");

    // A uid of --ui-writers may; root may.
    let (status, body) = post_as(mesh, "wa", 1001, std::slice::from_ref(&with_token), deny);
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("created deny web -> api"), "{body}");
    let delete = r#"{"source":"web","destination":"api","action":"delete"}"#;
    let (status, body) = post_as(mesh, "wa", 0, &[with_token], delete);
    assert_eq!(status, "200", "{body}");

    // --ui off: no UI on wb, the rest of the admin endpoint as before.
    assert_eq!(get_status(mesh, "wb", "/ui/", &[]), "404");
    assert_eq!(mesh.admin_json("wb", "/ready")["ready"], true);
}

#[test]
fn a_thousand_services_load_and_filter() {
    // 1,000 services on node tb, whose agent is not started; ta's agent
    // serves the UI.
    let mut topology = Mesh::nodes(&["ta", "tb"]).default_policy("allow");
    for i in 0..1000 {
        topology = topology.service(&format!("svc-{i:04}"), "tb", 20000 + i);
    }
    let mesh = topology.build();
    mesh.start_agent("ta");
    let port = mesh.forward_admin("ta", 0);
    let browser = Browser::start();
    let mut loads = Vec::new();
    for _ in 0..3 {
        // A new document each time (the same URL again would not reload).
        browser.goto("about:blank");
        browser.goto(&format!("http://127.0.0.1:{port}/ui/#/services"));
        assert!(
            browser
                .wait_for(
                    "return document.getElementById('count')?.textContent === '1000 of 1000 services';",
                    vec![],
                    Duration::from_secs(10)
                )
                .is_some(),
            "{:?}",
            browser.text("#count")
        );
        let ms = browser.js("return Number(document.body.dataset.firstDrawMs);", vec![]);
        loads.push(ms.as_f64().unwrap_or(f64::NAN));
    }
    browser.screenshot("services-1000");
    browser.fill("#filter", "svc-0999");
    assert!(
        browser
            .wait_for(
                "return document.querySelectorAll('#services tbody tr').length === 1;",
                vec![],
                Duration::from_secs(5)
            )
            .is_some()
    );
    // The figure itself is the bench's (`cargo xtask bench`); here it is
    // printed.
    eprintln!("first draw of the services page with 1,000 services: {loads:?} ms");
}

#[test]
fn with_the_catalog_in_etcd_the_ui_writes_as_its_etcd_writer() {
    // wa's UI writes as etcd's admin user; wb's as wb's own, which RBAC
    // lets only read.
    let ui = start(topology().etcd_auth().ui_etcd_writer("wa", "admin"));
    assert_eq!(ui.call(), "200");
    ui.open("intentions");
    ui.create("web", "api", "deny");
    ui.result("write-result", "created deny web -> api in etcd");
    ui.refused();
    // Both agents have it, and the CLI lists it from etcd.
    for node in ["wa", "wb"] {
        assert!(
            wait_until(
                LIVE,
                || ui.mesh.admin_json(node, "/ui/api/mesh")["intentions"][0]["action"] == "deny"
            ),
            "{node}"
        );
    }
    let (ok, list) = ui.mesh.cli_etcd(&["intention", "list"]);
    assert!(ok && list.contains("web -> api: deny"), "{list}");
    ui.browser.screenshot("intentions-etcd");
    // The nodes page shows each agent's registration in etcd.
    ui.open("nodes");
    for node in ["wa", "wb"] {
        let registered = json!({"node": node, "registered": "true"});
        assert!(
            ui.wait_row("#nodes", registered, LIVE).is_some(),
            "{:?}",
            ui.rows("#nodes")
        );
    }
    ui.browser.screenshot("nodes-etcd");

    // wb's UI, as wb's etcd user: refused by etcd, with etcd's words.
    let token = page_token(&ui.mesh, "wb");
    let (status, body) = post_as(
        &ui.mesh,
        "wb",
        0,
        &[format!("X-Mesh-Token: {token}")],
        r#"{"source":"web","destination":"api","action":"delete"}"#,
    );
    assert_eq!(status, "422", "{body}");
    assert!(body.to_lowercase().contains("permission denied"), "{body}");

    // Deleted from wa's page: the call works again.
    ui.open("intentions");
    ui.delete("web", "api");
    ui.result("write-result", "deleted web -> api in etcd");
    assert!(
        wait_until(Duration::from_secs(3), || ui.call() == "200"),
        "{}",
        ui.call()
    );
}

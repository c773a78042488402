//! The demo behind `cargo xtask run` (and `--catalog etcd`), driven as a
//! newcomer would: register and log in through the frontend with curl, flip
//! the intention, see the app fail and the pair drawn denied in the web UI
//! the demo prints, allow it again from the UI, stop it, nothing left
//! behind. Needs root (and etcd and Chromium, which `cargo xtask setup`
//! installs).
use std::{process::Command, time::Duration};

use mesh_tests::{browser::Browser, playground::Playground, run_to_string, wait_until};
use serde_json::json;

fn curl(args: &[&str]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "10", "-w", "\nHTTP %{http_code}\n"])
        .args(args);
    run_to_string(&mut cmd, Duration::from_secs(20))
}

#[test]
fn the_playground_works_and_the_mesh_decides() {
    drive(false);
}

/// The same on etcd (TLS, RBAC): the CLI writes the intention there as
/// the etcd admin.
#[test]
fn the_playground_runs_on_etcd() {
    drive(true);
}

fn drive(etcd: bool) {
    let baseline = mesh_tests::loaded_mesh_programs();
    let pg = Playground::start(mesh_tests::agent_bin(), etcd);
    let url = pg.frontend_url();
    let jar = pg.mesh.dir.join("cookies.txt");
    let jar = jar.to_str().expect("path");

    let page = curl(&[&url]);
    assert!(
        page.contains("Register") && page.ends_with("HTTP 200\n"),
        "{page}"
    );
    let reg = curl(&[
        "-d",
        "username=alice&password=secret",
        &format!("{url}register"),
    ]);
    assert!(reg.ends_with("HTTP 303\n"), "register: {reg}");
    let login = curl(&[
        "-c",
        jar,
        "-d",
        "username=alice&password=secret",
        &format!("{url}login"),
    ]);
    assert!(login.ends_with("HTTP 303\n"), "login: {login}");
    let home = curl(&["-b", jar, &url]);
    assert!(home.contains("Hello, alice!"), "{home}");

    // The web UI the demo prints: both services, passing.
    let browser = Browser::start();
    browser.goto(&format!("{}#/services", pg.ui_url()));
    for service in ["frontend", "data-api"] {
        assert!(
            browser
                .wait_for(
                    "return !!document.querySelector(`#services tr[data-service=\"${arguments[0]}\"][data-passing=\"1\"]`);",
                    vec![json!(service)],
                    Duration::from_secs(10)
                )
                .is_some(),
            "{service} not passing in the demo's UI"
        );
    }

    // data-api straight from here, not a mesh node: refused in the
    // kernel at once (curl's "couldn't connect", no HTTP status), not
    // left to time out.
    let started = std::time::Instant::now();
    let direct = curl(&[&pg.data_api_url()]);
    assert!(
        direct.contains("curl: (7)") && direct.contains("\nHTTP 000\n"),
        "data-api did not refuse an outsider: {direct}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused only after {:?}",
        started.elapsed()
    );

    // Flip the intention: the frontend's calls fail, live.
    let out = Command::new(&pg.mesh.agent)
        .args(["intention", "create", "-deny", "frontend", "data-api"])
        .args(pg.catalog_args())
        .output()
        .expect("intention create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Whichever agent notices first refuses; within the bound the source's
    // kernel does, with EPERM before any packet leaves.
    let mut last = String::new();
    let failed = wait_until(Duration::from_secs(3), || {
        last = curl(&["-b", jar, &url]);
        last.contains("data-api is unreachable: [Errno 1] Operation not permitted")
            && last.ends_with("HTTP 502\n")
    });
    assert!(failed, "the frontend is not refused at the source: {last}");

    // The UI draws the pair denied; allowing it again there (as the demo's
    // forwarder, which the demo lets write) makes the app work again.
    browser.goto(&format!("{}#/topology", pg.ui_url()));
    assert!(
        browser
            .wait_for(
                "const e = document.querySelector('g.edge[data-source=\"frontend\"][data-destination=\"data-api\"]');
                 return !!e && e.dataset.verdict === 'denied';",
                vec![],
                Duration::from_secs(5)
            )
            .is_some(),
        "frontend -> data-api not drawn denied"
    );
    browser.screenshot(if etcd {
        "playground-etcd-topology"
    } else {
        "playground-topology"
    });
    browser.goto(&format!("{}#/intentions", pg.ui_url()));
    browser
        .wait_for(
            "return document.body.dataset.view === 'intentions';",
            vec![],
            Duration::from_secs(10),
        )
        .expect("intentions page");
    browser.fill("#create-source", "frontend");
    browser.fill("#create-destination", "data-api");
    browser.select("#create-action", "allow");
    browser.click("#create-button");
    assert!(
        browser
            .wait_for(
                "return document.getElementById('write-result').textContent.startsWith('changed from deny to allow frontend -> data-api');",
                vec![],
                Duration::from_secs(10)
            )
            .is_some(),
        "{:?}",
        browser.text("#write-result")
    );
    let worked = wait_until(Duration::from_secs(3), || {
        last = curl(&["-b", jar, &url]);
        last.contains("Hello, alice!")
    });
    assert!(worked, "allowed again from the UI, still refused: {last}");
    drop(browser);

    drop(pg);
    assert!(
        wait_until(Duration::from_secs(5), || mesh_tests::loaded_mesh_programs(
        ) == baseline),
        "programs left behind"
    );
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains("-frontend") && !netns.contains("-data-api") && !netns.contains("-etcd"),
        "{netns}"
    );
    assert!(
        !mesh_tests::cgroup2_root().join("mesh/frontend").exists(),
        "cgroups left"
    );
}

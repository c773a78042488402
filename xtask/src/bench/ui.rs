//! The web UI with [`SERVICES`] services and as many intentions: how long
//! each page takes from navigation to its first view drawn, in headless
//! Chromium (`mesh_tests::browser`), and the document its script reads
//! (`GET /ui/api/mesh`): its size and how long the agent takes to serve it.
//!
//! Node `ui-a`'s agent serves the UI; the services are on `ui-b`, whose
//! agent is not started (their instances are critical: the pages show
//! every state's column all the same).

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use mesh_tests::{Mesh, browser::Browser, output_with_timeout};
use serde_json::json;

/// Services (and intentions) in the catalog.
pub(super) const SERVICES: u16 = 1000;
/// The pages measured: the view in the URL's hash, and its name in the
/// report.
pub(super) const PAGES: [(&str, &str); 5] = [
    ("services", "services"),
    ("service/svc-0500", "a service"),
    ("nodes", "nodes"),
    ("intentions", "intentions"),
    ("topology", "topology"),
];
/// The metric of a page's load.
pub(super) const FIRST_DRAW: &str = "first draw ms";

/// Measures each page `runs` times (after one load to warm up) into
/// `samples` as (metric, page), and the document as (metric, "document").
pub(super) fn measure(
    agent: &Path,
    runs: usize,
    samples: &mut BTreeMap<(String, &'static str), Vec<f64>>,
) -> anyhow::Result<()> {
    eprintln!("bench: the web UI with {SERVICES} services");
    let mut topology = Mesh::nodes(&["ui-a", "ui-b"])
        .agent(agent.to_owned())
        .default_policy("deny");
    for i in 0..SERVICES {
        topology = topology.service(&format!("svc-{i:04}"), "ui-b", 20000 + i);
    }
    for i in 0..SERVICES {
        let next = (i + 1) % SERVICES;
        topology = topology.intention(&format!("svc-{i:04}"), &format!("svc-{next:04}"), "allow");
    }
    let mesh = topology.build();
    mesh.start_agent("ui-a");
    let port = mesh.forward_admin("ui-a", 0);
    let browser = Browser::start();
    let base = format!("http://127.0.0.1:{port}/ui/");
    let _ = first_draw(&browser, &base, PAGES[0].0)?;
    for _ in 0..runs {
        for (view, page) in PAGES {
            let ms = first_draw(&browser, &base, view)?;
            samples
                .entry((FIRST_DRAW.to_owned(), page))
                .or_default()
                .push(ms);
        }
        let mut curl = mesh.cmd("ui-a", "curl");
        curl.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
        ])
        .arg("http://127.0.0.1:15000/ui/api/mesh");
        let out = output_with_timeout(&mut curl, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace().map(str::parse::<f64>);
        let (Some(Ok(bytes)), Some(Ok(secs))) = (words.next(), words.next()) else {
            bail!("GET /ui/api/mesh: {text:?}");
        };
        samples
            .entry(("document KiB".to_owned(), "document"))
            .or_default()
            .push(bytes / 1024.0);
        samples
            .entry(("document served ms".to_owned(), "document"))
            .or_default()
            .push(secs * 1000.0);
    }
    Ok(())
}

/// Opens `view` in a new document and returns how long after navigation
/// its first view was drawn (the page's own `performance.now()`).
fn first_draw(browser: &Browser, base: &str, view: &str) -> anyhow::Result<f64> {
    browser.goto("about:blank");
    browser.goto(&format!("{base}#/{view}"));
    let name = view.split('/').next().unwrap_or(view);
    browser
        .wait_for(
            "return document.body.dataset.view === arguments[0] && !!document.body.dataset.firstDrawMs;",
            vec![json!(name)],
            Duration::from_secs(10),
        )
        .with_context(|| format!("the UI's {view} page was not drawn within 10 s"))?;
    browser
        .js("return Number(document.body.dataset.firstDrawMs);", vec![])
        .as_f64()
        .context("firstDrawMs")
}

//! Unit-level costs of the agent, without namespaces or root:
//! `cargo bench -p mesh-agent --bench units [pick] [tunnel]` (all if
//! none named). `cargo xtask bench --only pick|tunnel` runs it and puts its
//! rows in the report.
//!
//! Output: one Markdown table row per figure, `| what | value | unit |`,
//! each the median of [`REPEATS`] measurements.

use std::time::{Duration, Instant};

use mesh_agent::{
    config::Balance,
    proxy::{balance::bench_ns_per_pick, tunnel},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Measurements of each figure; the median is printed.
const REPEATS: usize = 5;
/// Instances of the service a pick chooses among.
const INSTANCES: usize = 1000;
/// Picks per measurement.
const PICKS: u32 = 100_000;
/// Streams per measurement.
const STREAMS: usize = 1000;
const AUTHORITY: &str = "api.svc.mesh.test:5001";

fn main() -> Result<(), String> {
    // cargo bench passes `--bench`; names are the other arguments.
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |part: &str| names.is_empty() || names.iter().any(|n| n == part);
    if let Some(unknown) = names
        .iter()
        .find(|n| !["pick", "tunnel"].contains(&n.as_str()))
    {
        return Err(format!("no bench {unknown:?} (pick, tunnel)"));
    }
    if wants("pick") {
        for (lb, name) in [
            (Balance::LeastRequest, "least_request"),
            (Balance::Random, "random"),
            (Balance::RoundRobin, "round_robin"),
        ] {
            let runs = (0..REPEATS)
                .map(|_| bench_ns_per_pick(lb, INSTANCES, PICKS))
                .collect::<Result<Vec<f64>, _>>()
                .map_err(|e| format!("pick: {e}"))?;
            let ns = median(runs);
            println!("| pick among {INSTANCES} instances, lb {name} | {ns:.1} | ns per pick |");
        }
    }
    if wants("tunnel") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let mut medians = Vec::with_capacity(REPEATS);
        let mut p99s = Vec::with_capacity(REPEATS);
        for _ in 0..REPEATS {
            let mut costs = runtime.block_on(streams())?;
            costs.sort();
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            medians.push(us(costs[STREAMS / 2]));
            p99s.push(us(costs[STREAMS * 99 / 100]));
        }
        let what = "mesh/2 stream: open, 1 byte each way, close (one loopback TCP connection, one thread, no TLS)";
        println!("| {what}, p50 | {:.1} | us per stream |", median(medians));
        println!("| {what}, p99 | {:.1} | us per stream |", median(p99s));
    }
    Ok(())
}

/// The median of `values` (the upper one of an even count).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// [`STREAMS`] streams one after another over one `mesh/2` connection to an
/// echo server on the same thread; the time of each.
async fn streams() -> Result<Vec<Duration>, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(err("bind"))?;
    let addr = listener.local_addr().map_err(err("address"))?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(err("accept"))?;
        tcp.set_nodelay(true).map_err(err("nodelay"))?;
        tunnel::serve(tcp, echo)
            .await
            .map_err(|e| format!("serve: {e}"))
    });
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(err("connect"))?;
    tcp.set_nodelay(true).map_err(err("nodelay"))?;
    let (client, driver) = tunnel::handshake(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(driver);
    let mut costs = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let start = Instant::now();
        let mut stream = client
            .open(AUTHORITY)
            .await
            .map_err(|e| format!("stream {i}: open: {e}"))?;
        let mut one = [0; 1];
        stream.write_all(b"x").await.map_err(err("write"))?;
        stream.read_exact(&mut one).await.map_err(err("read"))?;
        stream.shutdown().await.map_err(err("shutdown"))?;
        if stream.read(&mut one).await.map_err(err("read"))? != 0 {
            return Err(format!("stream {i}: no end after the echo"));
        }
        costs.push(start.elapsed());
    }
    drop(client);
    server.abort();
    Ok(costs)
}

/// Turns an I/O error into one naming `what` failed.
fn err(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Accepts the stream and sends back everything, then ends its side.
async fn echo(connect: tunnel::Connect) {
    let Ok(stream) = connect.accept(None) else {
        return;
    };
    let (mut r, mut w) = tokio::io::split(stream);
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

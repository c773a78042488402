//! The report: Markdown tables on stdout, JSON in target/bench/, and
//! docs/benchmarks.md.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    Options, Samples,
    provenance::provenance,
    sections::{Section, sections},
};
use crate::cmd;

/// Prints the tables and the targets, writes the JSON, and from a full
/// run the whole report to docs/benchmarks.md.
pub(super) fn report(all: &Samples, runs: usize, opts: &Options) -> anyhow::Result<()> {
    let (sections, json) = sections(all, runs);
    let mut out = format!("Medians of {runs} run(s), (min-max); one machine.\n");
    for s in &sections {
        let _ = write!(out, "\n## {}\n\n{}", s.title, s.table);
    }
    println!("{out}");
    let dir = cmd::workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let path: &Path = &dir.join(format!("bench-{stamp}.json"));
    fs::write(path, serde_json::to_string_pretty(&Value::Object(json))?)?;
    eprintln!("bench: results in {}", path.display());
    if opts.writes() {
        let doc = cmd::workspace_root().join("docs/benchmarks.md");
        fs::write(&doc, document(&sections, runs)?)
            .with_context(|| format!("failed to write {}", doc.display()))?;
        eprintln!("bench: report in {}", doc.display());
    }
    Ok(())
}

/// The whole report: where and how it was made, then each section.
pub(super) fn document(sections: &[Section], runs: usize) -> anyhow::Result<String> {
    let mut doc = format!(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` (a full run: no `--only`, no `--smoke`); run it again \
         rather than edit this file. The catalog in etcd at scale is in \
         [catalog-scale.md](catalog-scale.md) (`cargo xtask bench --catalog`). Earlier hand-written \
         analyses (how the relay and multiplexing were tuned, and what did not help) are in this \
         file's history: `git log -p docs/benchmarks.md`.\n\n{}\n\
         It holds `/dev/cpu_dma_latency` at 0 while it runs (idle virtual CPUs otherwise inflate \
         latency) and turns on `kernel.bpf_stats_enabled` to time the eBPF programs. Nodes are \
         network namespaces on one bridge, each mesh node with its agent. JSON of every sample goes \
         to `target/bench/`.\n",
        provenance(
            runs,
            "each figure is the median of the runs, with (min-max) when there are several"
        )?
    );
    for s in sections {
        let _ = write!(doc, "\n## {}\n\n{}\n\n{}", s.title, s.prose, s.table);
    }
    Ok(doc)
}

//! The demo `cargo xtask run` starts when given no agent arguments.

use std::path::Path;

use anyhow::anyhow;

/// Runs the demo with the agent binary at `_agent`. Not built yet: always fails.
pub fn run(_agent: &Path) -> anyhow::Result<()> {
    Err(anyhow!(
        "the demo is not built yet; run with -- --config F --node N"
    ))
}

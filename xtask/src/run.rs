//! `cargo xtask run`: builds the release agent and runs it with the given
//! arguments, or runs the demo when there are none.

use std::{ffi::OsString, process::Command};

use crate::{build, cmd, demo, setup};

/// With `args`, replaces this process with `mesh-agent run ARGS` (so Ctrl-C
/// reaches the agent) and returns only on failure; without, runs the demo,
/// its catalog in etcd if `etcd`.
pub fn run(args: &[OsString], etcd: bool) -> anyhow::Result<()> {
    if etcd && !args.is_empty() {
        anyhow::bail!(
            "--catalog etcd runs the demo on etcd; to run an agent on etcd, pass -- run's own --catalog etcd://HOST:PORT,..."
        );
    }
    setup::ensure()?;
    let agent = build::agent(true)?;
    if args.is_empty() {
        return demo::run(&agent, etcd);
    }
    Err(cmd::exec(Command::new(&agent).arg("run").args(args)))
}

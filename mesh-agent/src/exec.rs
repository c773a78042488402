//! `mesh-agent exec`: runs a command as a local service, i.e. inside the
//! service's cgroup, so the kernel programs know who is calling.

use std::{
    convert::Infallible,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
};

use crate::{
    cgroup::{Cgroup2, CgroupError},
    config::{Config, ConfigError},
};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("service {service:?} is not declared in {path}")]
    UnknownService { service: String, path: PathBuf },
    #[error("service {service:?} runs on node {actual:?}, not {asked:?}")]
    WrongNode {
        service: String,
        actual: String,
        asked: String,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("no command given")]
    NoCommand,
    #[error("failed to run {command:?}: {source}")]
    Exec {
        command: OsString,
        source: std::io::Error,
    },
}

/// Moves this process into the cgroup of `service` on `node` and replaces it
/// with `command`. Returns only on error.
pub fn exec(
    config_path: &Path,
    node: &str,
    service: &str,
    command: &[OsString],
) -> Result<Infallible, ExecError> {
    let config = Config::load(config_path)?;
    let svc = config
        .service(service)
        .ok_or_else(|| ExecError::UnknownService {
            service: service.to_owned(),
            path: config_path.to_owned(),
        })?;
    if svc.node != node {
        return Err(ExecError::WrongNode {
            service: service.to_owned(),
            actual: svc.node.clone(),
            asked: node.to_owned(),
        });
    }
    let (program, args) = command.split_first().ok_or(ExecError::NoCommand)?;
    let (path, _) = crate::cgroup::service_path(svc);
    let cg = Cgroup2::find_or_mount()?;
    cg.create(&path)?;
    cg.join(&path, std::process::id())?;
    let source = std::process::Command::new(program).args(args).exec();
    Err(ExecError::Exec {
        command: program.clone(),
        source,
    })
}

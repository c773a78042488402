//! `mesh-agent exec`: runs a command as a local service, i.e. inside the
//! service's cgroup, so the kernel programs know who is calling.
//!
//! The service is looked up in the config file; when the file is broken
//! (or gone), in the config of the node's running agent (its last good
//! one, from the admin endpoint), so services still start while the
//! agents run on their last good config.

use std::{
    convert::Infallible,
    ffi::OsString,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
};

use crate::{
    admin::{self, AdminError, ConfigDoc},
    cgroup::{Cgroup2, CgroupError},
    config::{Config, ConfigError},
    names::NodeName,
};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The file is broken and no agent gave its config instead.
    #[error("{file}\nno agent answered with its config instead: {agent}")]
    NoConfig {
        file: ConfigError,
        agent: AdminError,
    },
    #[error("service {service:?} is not declared in {within}")]
    UnknownService { service: String, within: String },
    #[error("service {service:?} runs on nodes {actual:?}, not on {asked:?}")]
    WrongNode {
        service: String,
        actual: Vec<NodeName>,
        asked: String,
    },
    #[error("the agent at {addr} runs node {actual:?}, not {asked:?}")]
    OtherAgent {
        addr: SocketAddr,
        actual: NodeName,
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

/// Where a command runs as a service: the service's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub node: String,
    /// The service's cgroup path, inside the cgroup2 hierarchy.
    pub cgroup: PathBuf,
}

/// Which config [`find`] took the [`Target`] from.
#[derive(Debug)]
pub enum Origin {
    /// The config file.
    File,
    /// The running agent's at `addr`, because the file is `broken`.
    Agent {
        addr: SocketAddr,
        broken: ConfigError,
    },
}

/// Finds `service` of `node` in the config file at `config_path`, or, if the
/// file cannot be loaded, in the config of the agent whose admin endpoint
/// is `admin`. Fails with [`ExecError::NoConfig`] (the file's problems) if
/// neither works.
pub fn find(
    config_path: &Path,
    node: &str,
    service: &str,
    admin: SocketAddr,
) -> Result<(Target, Origin), ExecError> {
    let broken = match Config::load(config_path) {
        Ok(config) => {
            let svc = config
                .service(service)
                .ok_or_else(|| ExecError::UnknownService {
                    service: service.to_owned(),
                    within: config_path.display().to_string(),
                })?;
            let cgroup = crate::cgroup::service_path(svc, node).0;
            let target = target(service, &svc.nodes, node, cgroup)?;
            return Ok((target, Origin::File));
        }
        Err(broken) => broken,
    };
    let doc = match admin::fetch_config(admin) {
        Ok(doc) => doc,
        Err(agent) => {
            return Err(ExecError::NoConfig {
                file: broken,
                agent,
            });
        }
    };
    let target = in_agent_config(&doc, admin, node, service)?;
    Ok((
        target,
        Origin::Agent {
            addr: admin,
            broken,
        },
    ))
}

/// Moves this process into `target`'s cgroup and replaces it with
/// `command`. Returns only on error.
pub fn exec(target: &Target, command: &[OsString]) -> Result<Infallible, ExecError> {
    let (program, args) = command.split_first().ok_or(ExecError::NoCommand)?;
    let cg = Cgroup2::find_or_mount()?;
    cg.create(&target.cgroup)?;
    cg.join(&target.cgroup, std::process::id())?;
    let source = std::process::Command::new(program).args(args).exec();
    Err(ExecError::Exec {
        command: program.clone(),
        source,
    })
}

/// `service` in the config of the agent at `addr`, which must run `node`.
fn in_agent_config(
    doc: &ConfigDoc,
    addr: SocketAddr,
    node: &str,
    service: &str,
) -> Result<Target, ExecError> {
    if doc.node != node {
        return Err(ExecError::OtherAgent {
            addr,
            actual: doc.node.clone(),
            asked: node.to_owned(),
        });
    }
    let svc = doc
        .service(service)
        .ok_or_else(|| ExecError::UnknownService {
            service: service.to_owned(),
            within: format!("the config of the agent at {addr}"),
        })?;
    match &svc.cgroup {
        Some(cgroup) => target(service, &svc.nodes, node, cgroup.clone()),
        // No cgroup here: the agent's node hosts no instance.
        None => Err(ExecError::WrongNode {
            service: service.to_owned(),
            actual: svc.nodes.clone(),
            asked: node.to_owned(),
        }),
    }
}

/// The target of `service`, which has instances on `actual`, asked for on
/// `asked`, where its cgroup is `cgroup`.
fn target(
    service: &str,
    actual: &[NodeName],
    asked: &str,
    cgroup: PathBuf,
) -> Result<Target, ExecError> {
    if !actual.iter().any(|n| n == asked) {
        return Err(ExecError::WrongNode {
            service: service.to_owned(),
            actual: actual.to_vec(),
            asked: asked.to_owned(),
        });
    }
    Ok(Target {
        service: service.to_owned(),
        node: asked.to_owned(),
        cgroup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, NODES, service};

    /// The `/config` document of the agent of `node`.
    fn doc(node: &str) -> ConfigDoc {
        let text = format!(
            "{NODES}{}{}{}cgroup = \"/system.slice/api.service\"\n{}",
            testing::node("c", "10.0.0.3"),
            service("web", &["a"], 80),
            service("api", &["b"], 81),
            service("db", &["b", "c"], 82)
        );
        let config = testing::config(&text);
        ConfigDoc::new(
            &config,
            &node.parse().unwrap(),
            &crate::policy::Policy::new(&config),
        )
    }

    #[test]
    fn the_agent_config_places_a_service_as_the_file_does() {
        let addr: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        let target = in_agent_config(&doc("a"), addr, "a", "web").unwrap();
        assert_eq!(
            target,
            Target {
                service: "web".into(),
                node: "a".into(),
                cgroup: PathBuf::from("/mesh/a/web"),
            }
        );
        let target = in_agent_config(&doc("b"), addr, "b", "api").unwrap();
        assert_eq!(target.cgroup, Path::new("/system.slice/api.service"));

        let err = in_agent_config(&doc("a"), addr, "a", "api").unwrap_err();
        assert!(matches!(err, ExecError::WrongNode { .. }), "{err}");
        let err = in_agent_config(&doc("a"), addr, "a", "ghost").unwrap_err();
        assert!(
            err.to_string()
                .contains("not declared in the config of the agent at 127.0.0.1:15000"),
            "{err}"
        );
        let err = in_agent_config(&doc("a"), addr, "b", "api").unwrap_err();
        assert!(matches!(err, ExecError::OtherAgent { .. }), "{err}");
    }

    #[test]
    fn a_service_with_instances_runs_on_any_node_hosting_one() {
        let addr: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        for node in ["b", "c"] {
            let target = in_agent_config(&doc(node), addr, node, "db").unwrap();
            assert_eq!(target.cgroup, Path::new("/mesh").join(node).join("db"));
        }
        let err = in_agent_config(&doc("a"), addr, "a", "db").unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"service "db" runs on nodes ["b", "c"], not on "a""#),
            "{err}"
        );
    }
}

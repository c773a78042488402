//! The playground of the Consul Connect tutorial our users know, on one
//! machine: nodes `frontend` and `data-api` as network namespaces, agents on
//! both, `data-api` (users and sessions in sqlite) on 127.0.0.1:5001, and
//! `frontend` (public, port 5000) calling it by name, `data-api.mesh`.
//! Default deny, plus `frontend -> data-api` allow. Used by `cargo xtask run`
//! and by the test that drives the demo. On etcd (`cargo xtask run --catalog
//! etcd`), the catalog lives in a 3-member cluster with TLS and RBAC
//! (`crate::etcd`).
//!
//! The frontend agent's web UI is forwarded to this host's loopback
//! ([`Playground::ui_url`]) through a process of uid 65534 (nobody) in the
//! frontend's namespace, which the demo's agent lets write
//! (`--ui-writers 65534`; on etcd, as etcd's admin user): in the demo,
//! anyone on the machine may change intentions from the UI. A real agent
//! lets only root.

use std::{net::Ipv4Addr, path::PathBuf};

use crate::{Mesh, app};

/// The uid the UI's forwarder runs as in the frontend's namespace.
pub const UI_FORWARDER_UID: u32 = 65534;

/// A running playground; dropping it removes everything.
pub struct Playground {
    pub mesh: Mesh,
    /// The host's address on the mesh's bridge.
    pub host: Ipv4Addr,
    /// The port on this host's 127.0.0.1 that reaches the frontend
    /// agent's admin endpoint (its web UI).
    pub ui_port: u16,
}

impl Playground {
    /// Builds and starts it with the given `mesh-agent` binary, its
    /// catalog in a file or (`etcd`) in etcd.
    pub fn start(agent: PathBuf, etcd: bool) -> Self {
        let topology = Mesh::nodes(&["frontend", "data-api"]);
        let topology = if etcd { topology.etcd_auth() } else { topology };
        let mesh = topology
            .agent(agent)
            .comment("The playground: frontend calls data-api through the mesh.")
            .default_policy("deny")
            .service_with("frontend", "frontend", 5000, |s| s.public())
            .service("data-api", "data-api", 5001)
            .intention("frontend", "data-api", "allow")
            .agent_args("frontend", &["--ui-writers", &UI_FORWARDER_UID.to_string()])
            .ui_etcd_writer("frontend", "admin")
            .start();

        let db = mesh.dir.join("data-api.db");
        let mut api = mesh.cmd_as("data-api", "data-api", "python3");
        api.arg(app("playground/data_api.py"))
            .args(["--port", "5001", "--db"])
            .arg(&db);
        mesh.spawn_app(api, "data-api");
        mesh.wait_listening("data-api", 5001);

        let mut web = mesh.cmd_as("frontend", "frontend", "python3");
        web.arg(app("playground/frontend.py")).args([
            "--port",
            "5000",
            "--bind",
            "0.0.0.0",
            "--api",
            "http://data-api.mesh:5001",
        ]);
        mesh.spawn_app(web, "frontend");
        mesh.wait_listening("frontend", 5000);
        let host = mesh.expose_to_host();
        let ui_port = mesh.forward_admin("frontend", UI_FORWARDER_UID);
        Self {
            mesh,
            host,
            ui_port,
        }
    }

    /// The frontend agent's web UI, from this host.
    pub fn ui_url(&self) -> String {
        format!("http://127.0.0.1:{}/ui/", self.ui_port)
    }

    /// The arguments that name the catalog for the CLI: `--config FILE`,
    /// or `--catalog URL` and the etcd admin's certificate.
    pub fn catalog_args(&self) -> Vec<String> {
        match &self.mesh.catalog {
            Some(url) => ["--catalog".to_owned(), url.clone()]
                .into_iter()
                .chain(self.mesh.etcd_client_args("admin"))
                .collect(),
            None => vec![
                "--config".to_owned(),
                self.mesh.config().display().to_string(),
            ],
        }
    }

    /// The frontend's URL, from this host.
    pub fn frontend_url(&self) -> String {
        format!("http://{}:5000/", self.mesh.node("frontend").v4)
    }

    /// data-api's catalog address, which outsiders cannot use.
    pub fn data_api_url(&self) -> String {
        format!(
            "http://{}:5001/admin/list_all",
            self.mesh.node("data-api").v4
        )
    }
}

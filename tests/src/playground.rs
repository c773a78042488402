//! The playground of the Consul Connect tutorial our users know, on one
//! machine: nodes `frontend` and `data-api` as network namespaces, agents on
//! both, `data-api` (users and sessions in sqlite) on 127.0.0.1:5001, and
//! `frontend` (public, port 5000) calling it by name, `data-api.mesh`.
//! Default deny, plus `frontend -> data-api` allow. Used by `cargo xtask run`
//! and by the test that drives the demo.

use std::{net::Ipv4Addr, path::PathBuf};

use crate::{Mesh, app};

/// A running playground; dropping it removes everything.
pub struct Playground {
    pub mesh: Mesh,
    /// The host's address on the mesh's bridge.
    pub host: Ipv4Addr,
}

impl Playground {
    /// Builds and starts it with the given `mesh-agent` binary.
    pub fn start(agent: PathBuf) -> Self {
        let mesh = Mesh::nodes(&["frontend", "data-api"])
            .agent(agent)
            .comment("The playground: frontend calls data-api through the mesh.")
            .default_policy("deny")
            .service_with("frontend", "frontend", 5000, |s| s.public())
            .service("data-api", "data-api", 5001)
            .intention("frontend", "data-api", "allow")
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
        Self { mesh, host }
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

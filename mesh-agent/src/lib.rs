//! `mesh-agent`: the node agent of the mesh, as a library; `main.rs` and
//! `cli/` are its command line. See ARCHITECTURE.md for how the pieces fit
//! together.
//!
//! From the top: [`app`] builds and runs one agent (`App::build`,
//! `App::spawn`, `Running::stop`) out of the components: the data path
//! ([`proxy`], over [`tls`] and [`identity`]), the kernel side ([`ebpf`],
//! [`cgroup`], [`denials`], [`handover`]), the catalog ([`catalog`],
//! [`config`]) and what is derived from it ([`snapshot`], [`policy`],
//! [`zone`], [`health`], [`peers`]), and what is seen of it ([`admin`]
//! serving the [`endpoint`] routes the components register, [`telemetry`],
//! and the web UI, [`ui`]). No module
//! imports one that imports it back (`tests/layers.rs`).

pub mod admin;
pub mod app;
pub mod buffer;
pub mod catalog;
pub mod cgroup;
pub mod config;
pub mod containers;
pub mod denials;
pub mod dns;
pub mod drain;
pub mod ebpf;
pub mod endpoint;
pub mod exec;
pub mod handover;
pub mod health;
pub mod health_view;
pub mod identity;
pub mod names;
pub mod netns;
pub mod peers;
pub mod policy;
pub mod proxy;
pub mod snapshot;
pub mod table;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod ui;
pub mod zone;

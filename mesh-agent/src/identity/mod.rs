//! Service and agent identities: the built-in CA (`ca`), SPIFFE IDs
//! (`spiffe`), and the current leaf of every local service and of this
//! node's agent, each renewed at half its lifetime.

pub mod ca;
pub mod import;
pub mod rotation;
pub mod spiffe;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

pub use ca::NodeCa;

use crate::names::{NodeName, ServiceName};
use spiffe::SpiffeId;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("refusing to overwrite {0}")]
    Exists(PathBuf),
    #[error("no root CA certificate at {0}: create one with `mesh-agent ca init --config F`")]
    NoRoot(PathBuf),
    #[error(
        "no intermediate CA for node {node:?} at {path}, and no root key to issue one here: \
         run `mesh-agent ca issue-node --node {node}` where the root key is, and copy the files"
    )]
    NoNodeCa { node: String, path: PathBuf },
    #[error("bad node CA {path}: {why}")]
    BadNodeCa { path: PathBuf, why: String },
    #[error("{0}")]
    Rotation(String),
    #[error("refusing to import {path}: {why}; nothing changed")]
    Import { path: PathBuf, why: String },
    #[error("bad CA file {path}: {why}")]
    BadCaFile { path: PathBuf, why: String },
    #[error("failed to {what}: {source}")]
    Rcgen {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is readable by others (mode {mode:o}): run `chmod 600` on it")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("a validity of {0:?} is out of range")]
    Validity(Duration),
    #[error("the system random number generator failed")]
    Random,
    #[error("failed to load a leaf key into rustls: {0}")]
    Key(rustls::Error),
}

/// What an agent trusts and presents, as it tells the others over the
/// health links (`peers::News`): `ca retire-old` reads who is behind.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrustReport {
    /// SHA-256 of each root it trusts.
    pub roots: Vec<String>,
    /// SHA-256 of its node CA.
    pub node_ca: String,
    /// SHA-256 of the public key that signed its node CA.
    pub issuer_key: String,
}

/// The current certificate of a local service, or of this node's agent.
pub struct Current {
    pub key: Arc<CertifiedKey>,
    pub spiffe_id: SpiffeId,
    pub serial: String,
    pub not_after: SystemTime,
    /// When this agent issued it.
    pub issued: SystemTime,
}

/// The leaves of this node's services and of its agent, swapped in place
/// on renewal: live connections keep the session they have; new handshakes
/// get the new leaf.
pub struct Identities {
    trust_domain: String,
    /// Replaced as a whole when `ca_dir` changes (`set_ca`).
    ca: RwLock<Arc<NodeCa>>,
    ttl: Duration,
    leaves: RwLock<HashMap<ServiceName, Arc<Current>>>,
    /// The agent's own leaf (`spiffe://<td>/agent/<node>`).
    agent: RwLock<Arc<Current>>,
    /// Counts service leaf renewals (TLS ends resumable sessions when it
    /// changes). The agent leaf is not counted: no session carries it.
    renewals: std::sync::atomic::AtomicU64,
}

impl Identities {
    /// Issues the agent's leaf (for the node of `ca`) and a leaf for each of
    /// `services`.
    pub fn new(
        trust_domain: &str,
        ca: NodeCa,
        ttl: Duration,
        services: impl IntoIterator<Item = ServiceName>,
    ) -> Result<Self, IdentityError> {
        let agent = issue_agent(&ca, trust_domain, ttl)?;
        let this = Self {
            trust_domain: trust_domain.to_owned(),
            ca: RwLock::new(Arc::new(ca)),
            ttl,
            leaves: RwLock::new(HashMap::new()),
            agent: RwLock::new(Arc::new(agent)),
            renewals: Default::default(),
        };
        for service in services {
            this.renew(&service)?;
        }
        Ok(this)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// This node's name (its CA's).
    pub fn node(&self) -> NodeName {
        self.ca().node().clone()
    }

    /// The agent's current leaf.
    pub fn agent(&self) -> Arc<Current> {
        self.agent.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Issues a new leaf for the agent and makes it current.
    pub fn renew_agent(&self) -> Result<Arc<Current>, IdentityError> {
        let current = Arc::new(issue_agent(&self.ca(), &self.trust_domain, self.ttl)?);
        *self.agent.write().unwrap_or_else(|e| e.into_inner()) = current.clone();
        Ok(current)
    }

    /// The node CA in force (and through it, the roots).
    pub fn ca(&self) -> Arc<NodeCa> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `ca` the node CA in force (its roots trusted from now on) and
    /// issues every leaf again under it, so new handshakes present the new
    /// chain; live connections keep theirs. `ca` must be of the same node.
    pub fn set_ca(&self, ca: NodeCa) -> Result<(), IdentityError> {
        *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ca);
        self.renew_agent()?;
        for (service, _) in self.all() {
            self.renew(&service)?;
        }
        Ok(())
    }

    /// The current leaf of `service`, if it is local.
    pub fn current(&self, service: &str) -> Option<Arc<Current>> {
        self.leaves
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .cloned()
    }

    /// How many leaves were issued so far; changes on every renewal.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Registers `mesh_certificate_expiry_seconds` (per local service),
    /// `mesh_agent_certificate_expiry_seconds` and `mesh_ca_expiry_seconds`
    /// (per root, node CA and intermediate): negative once expired.
    pub fn register_metrics(self: &Arc<Self>, reg: &mut crate::telemetry::Registry) {
        use crate::telemetry::registry::gauges;
        let this = self.clone();
        reg.collect(move |e| {
            let now = SystemTime::now();
            let samples = this.all().into_iter().map(|(service, leaf)| {
                let service = service.to_string();
                (
                    crate::telemetry::ServiceLabels { service },
                    seconds_left(leaf.not_after, now),
                )
            });
            gauges(
                e,
                "mesh_certificate_expiry_seconds",
                "Seconds until each local service's certificate expires",
                samples,
            )?;
            crate::telemetry::registry::gauge(
                e,
                "mesh_agent_certificate_expiry_seconds",
                "Seconds until this agent's own certificate (agent links) expires",
                seconds_left(this.agent().not_after, now) as i64,
            )?;
            let ca = this.ca();
            let samples = ca.certs().iter().map(|c| {
                let labels = CaLabels {
                    kind: c.kind,
                    subject: c.subject.clone(),
                    fingerprint: c.fingerprint.clone(),
                };
                (labels, seconds_left(c.not_after, now))
            });
            gauges(
                e,
                "mesh_ca_expiry_seconds",
                "Seconds until each CA certificate this agent trusts or presents expires",
                samples,
            )
        });
    }

    /// Logs a warning for each root and intermediate that expires within
    /// [`ca::EXPIRY_WARNING`]: now, and again every day.
    pub async fn warn_expiry_forever(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(24 * 3600));
        loop {
            every.tick().await;
            for line in self.expiring(SystemTime::now()) {
                tracing::warn!(
                    kind = %line.kind,
                    subject = %line.subject,
                    fingerprint = %line.fingerprint,
                    days_left = line.days_left,
                    not_after = %time::OffsetDateTime::from(line.not_after),
                    "{}",
                    line.advice
                );
            }
        }
    }

    /// The CA certificates that expire within [`ca::EXPIRY_WARNING`] of
    /// `now`, with what to do.
    pub fn expiring(&self, now: SystemTime) -> Vec<Expiring> {
        self.ca()
            .certs()
            .iter()
            .filter(|c| c.not_after < now + ca::EXPIRY_WARNING)
            .map(|c| Expiring {
                kind: c.kind,
                subject: c.subject.clone(),
                fingerprint: c.fingerprint.clone(),
                not_after: c.not_after,
                days_left: c.not_after.duration_since(now).unwrap_or_default().as_secs() / 86400,
                advice: match c.kind {
                    ca::CaKind::Root => {
                        "a trusted root CA expires soon: rotate it with `mesh-agent ca rotate`"
                    }
                    ca::CaKind::Node => {
                        "this node's CA expires soon (leaves cannot outlive it): issue a new one \
                         with `mesh-agent ca issue-node`"
                    }
                    ca::CaKind::Intermediate => {
                        "an intermediate CA above this node's expires soon: replace it where it was made"
                    }
                },
            })
            .collect()
    }

    /// Every local service's current leaf, sorted by service name.
    pub fn all(&self) -> Vec<(ServiceName, Arc<Current>)> {
        let mut all: Vec<_> = self
            .leaves
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Issues a new leaf for `service` and makes it current.
    pub fn renew(&self, service: &ServiceName) -> Result<Arc<Current>, IdentityError> {
        let leaf = self.ca().issue_leaf(service, self.ttl)?;
        let current = Arc::new(current(
            leaf,
            SpiffeId::service(&self.trust_domain, service),
        )?);
        self.leaves
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.clone(), current.clone());
        self.renewals
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(current)
    }

    /// Makes the leaves exactly those of `services`: issues the missing,
    /// drops the others.
    pub fn sync(&self, services: &[ServiceName]) -> Result<(), IdentityError> {
        for service in services {
            if self.current(service).is_none() {
                self.renew(service)?;
            }
        }
        self.leaves
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| services.contains(name));
        Ok(())
    }

    /// Renews every leaf, the agent's included, once it is half its
    /// lifetime old (counted from when it was issued, so time spent starting
    /// up counts), forever, including leaves added later. A failed renewal
    /// is logged and retried on a later tick.
    pub async fn renew_forever(self: Arc<Self>) {
        let half = self.ttl / 2;
        // Fine enough for second-long lifetimes, cheap for long ones.
        let tick = (self.ttl / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut every = tokio::time::interval(tick);
        loop {
            every.tick().await;
            for (service, current) in self.all() {
                if current.issued.elapsed().unwrap_or_default() < half {
                    continue;
                }
                match self.renew(&service) {
                    Ok(leaf) => tracing::info!(%service, serial = %leaf.serial, "renewed leaf"),
                    Err(e) => tracing::warn!(%service, error = %e, "leaf renewal failed"),
                }
            }
            if self.agent().issued.elapsed().unwrap_or_default() >= half {
                match self.renew_agent() {
                    Ok(leaf) => tracing::info!(serial = %leaf.serial, "renewed agent leaf"),
                    Err(e) => tracing::warn!(error = %e, "agent leaf renewal failed"),
                }
            }
        }
    }
}

/// A CA certificate that expires soon.
#[derive(Debug, Clone)]
pub struct Expiring {
    pub kind: ca::CaKind,
    pub subject: String,
    pub fingerprint: String,
    pub not_after: SystemTime,
    pub days_left: u64,
    /// What to do about it.
    pub advice: &'static str,
}

/// Labels of `mesh_ca_expiry_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CaLabels {
    kind: ca::CaKind,
    subject: String,
    fingerprint: String,
}

/// Seconds from `now` to `t`, negative once past.
fn seconds_left(t: SystemTime, now: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    }
}

/// A fresh agent leaf of `ca`'s node, ready for rustls.
fn issue_agent(ca: &NodeCa, trust_domain: &str, ttl: Duration) -> Result<Current, IdentityError> {
    current(
        ca.issue_agent_leaf(ttl)?,
        SpiffeId::agent(trust_domain, ca.node()),
    )
}

/// `leaf`, naming `spiffe_id`, with its key loaded into rustls.
fn current(leaf: ca::Leaf, spiffe_id: SpiffeId) -> Result<Current, IdentityError> {
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(leaf.key)
        .map_err(IdentityError::Key)?;
    Ok(Current {
        key: Arc::new(CertifiedKey::new(leaf.chain, signer)),
        spiffe_id,
        serial: leaf.serial,
        not_after: leaf.not_after,
        issued: SystemTime::now(),
    })
}

impl std::fmt::Debug for Identities {
    // Keys stay out of logs: only names and serials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serials: Vec<_> = self
            .all()
            .into_iter()
            .map(|(name, c)| (name, c.serial.clone()))
            .collect();
        f.debug_struct("Identities")
            .field("trust_domain", &self.trust_domain)
            .field("agent", &self.agent().serial)
            .field("leaves", &serials)
            .finish()
    }
}

/// The URI SANs of a parsed certificate.
pub fn uri_sans<'a>(cert: &'a x509_parser::certificate::X509Certificate<'_>) -> Vec<&'a str> {
    sans(cert)
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect()
}

/// The SANs of a parsed certificate that are not URIs, including entries
/// x509-parser could not read (`GeneralName::Invalid`).
pub fn other_sans<'a>(
    cert: &'a x509_parser::certificate::X509Certificate<'_>,
) -> Vec<&'a GeneralName<'a>> {
    sans(cert)
        .filter(|n| !matches!(n, GeneralName::URI(_)))
        .collect()
}

/// Every SAN; none if the extension is missing or unreadable (e.g. twice).
fn sans<'a>(
    cert: &'a x509_parser::certificate::X509Certificate<'_>,
) -> impl Iterator<Item = &'a GeneralName<'a>> {
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.as_slice(),
        _ => &[],
    };
    names.iter()
}

//! The built-in CA: root, one intermediate per node, one leaf per local
//! service and one for the node's own agent. ECDSA P-256 keys made with
//! rcgen; key files are 0600.
//!
//! Layout of `ca_dir` (see ARCHITECTURE.md, PKI): `root.crt`, `root.key`
//! (the CA that signs node CAs; the key may live elsewhere), `trust.crt`
//! (the roots agents trust; when absent, `root.crt`), `nodes/<node>.crt`
//! (the node CA, then any certificates to present above it) and
//! `nodes/<node>.key`. Leaves are never written to disk.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::{IdentityError, spiffe, spiffe::SpiffeId};
use crate::config::Config;
use crate::names::{NodeName, ServiceName};

/// Validity of a root CA, unless `ca init --days` says otherwise.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of a node intermediate CA, unless `ca issue-node --days` says
/// otherwise.
pub const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// From how long before a root or intermediate expires the agent warns.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// How far back a certificate's validity starts, for clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(30);

/// Paths of the CA files of a mesh.
#[derive(Debug, Clone)]
pub struct CaDir(PathBuf);

impl CaDir {
    /// The CA directory of `config` (`[mesh] ca_dir`).
    pub fn of(config: &Config) -> Self {
        Self(config.mesh.ca_dir.clone())
    }
    pub fn root_cert(&self) -> PathBuf {
        self.0.join("root.crt")
    }
    pub fn root_key(&self) -> PathBuf {
        self.0.join("root.key")
    }
    /// The root a rotation replaces, until `ca retire-old`.
    pub fn old_root_cert(&self) -> PathBuf {
        self.0.join("root.old.crt")
    }
    pub fn old_root_key(&self) -> PathBuf {
        self.0.join("root.old.key")
    }
    /// The CAs above an imported intermediate's node CAs (`ca import`):
    /// appended to every node CA issued.
    pub fn chain(&self) -> PathBuf {
        self.0.join("chain.crt")
    }
    /// Where the node CAs are.
    pub fn nodes(&self) -> PathBuf {
        self.0.join("nodes")
    }
    /// The trust bundle; when absent, `root.crt` is the only root.
    pub fn trust(&self) -> PathBuf {
        self.0.join("trust.crt")
    }
    pub fn node_cert(&self, node: &str) -> PathBuf {
        self.0.join("nodes").join(format!("{node}.crt"))
    }
    pub fn node_key(&self, node: &str) -> PathBuf {
        self.0.join("nodes").join(format!("{node}.key"))
    }
}

/// `mesh-agent ca init`: creates the root CA. Refuses to overwrite one.
/// Returns the paths written.
/// The root is valid for `validity` (10 years by default).
pub fn init(config: &Config, validity: Duration) -> Result<Vec<PathBuf>, IdentityError> {
    let dir = CaDir::of(config);
    for path in [dir.root_cert(), dir.root_key()] {
        if path.exists() {
            return Err(IdentityError::Exists(path));
        }
    }
    let key = new_key()?;
    let params = root_params(
        config,
        &format!("mesh root CA {}", config.mesh.trust_domain),
        validity,
    )?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| IdentityError::Rcgen {
            what: "sign the root CA",
            source,
        })?;
    write_new(&dir.root_key(), &key.serialize_pem(), 0o600)?;
    write_new(&dir.root_cert(), &cert.pem(), 0o644)?;
    Ok(vec![dir.root_cert(), dir.root_key()])
}

/// `mesh-agent ca issue-node`: issues the intermediate CA of `node`, signed
/// by the root key (which must be in `ca_dir`), valid for `validity` (a
/// year by default). Refuses to overwrite one.
pub fn issue_node(
    config: &Config,
    node: &str,
    validity: Duration,
) -> Result<Vec<PathBuf>, IdentityError> {
    let dir = CaDir::of(config);
    for path in [dir.node_cert(node), dir.node_key(node)] {
        if path.exists() {
            return Err(IdentityError::Exists(path));
        }
    }
    let root_key = read(&dir.root_key())?;
    let root_key = KeyPair::from_pem(&root_key).map_err(|source| IdentityError::Rcgen {
        what: "read the root key",
        source,
    })?;
    let root = Issuer::from_ca_cert_pem(&read(&dir.root_cert())?, root_key).map_err(|source| {
        IdentityError::Rcgen {
            what: "read the root certificate",
            source,
        }
    })?;
    let key = new_key()?;
    let cert = node_params(config, node, validity)?
        .signed_by(&key, &root)
        .map_err(|source| IdentityError::Rcgen {
            what: "sign the node CA",
            source,
        })?;
    if let Some(parent) = dir.node_key(node).parent() {
        fs::create_dir_all(parent).map_err(|source| IdentityError::Write {
            path: parent.to_owned(),
            source,
        })?;
    }
    // Under an imported intermediate, the node CA is followed by it and
    // what lies between it and the root.
    let above = if dir.chain().exists() {
        read(&dir.chain())?
    } else {
        String::new()
    };
    write_new(&dir.node_key(node), &key.serialize_pem(), 0o600)?;
    write_new(&dir.node_cert(node), &(cert.pem() + &above), 0o644)?;
    Ok(vec![dir.node_cert(node), dir.node_key(node)])
}

/// A node's intermediate CA, which signs the leaves of the node's services
/// and of its agent.
pub struct NodeCa {
    trust_domain: String,
    /// The node it belongs to (its URI SAN, checked at load).
    node: NodeName,
    issuer: Issuer<'static, KeyPair>,
    /// The node CA, then the certificates presented above it.
    chain: Vec<CertificateDer<'static>>,
    /// The roots this node trusts, and the same as webpki takes them.
    roots: Vec<CertificateDer<'static>>,
    anchors: std::sync::Arc<[rustls_pki_types::TrustAnchor<'static>]>,
    /// The intermediate's own expiry: no leaf outlives it.
    not_after: OffsetDateTime,
    /// Every CA certificate of `roots` and `chain`, for expiry reports.
    certs: Vec<CaCert>,
    /// What it trusts and presents, as told to the other agents.
    report: super::TrustReport,
}

/// What a CA certificate is to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaKind {
    /// A root it trusts.
    Root,
    /// A certificate it presents between its node CA and a root.
    Intermediate,
    /// Its own node CA.
    Node,
}

impl CaKind {
    /// As in `status` and the `kind` label of `mesh_ca_expiry_seconds`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Intermediate => "intermediate",
            Self::Node => "node",
        }
    }
}

impl std::fmt::Display for CaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl prometheus_client::encoding::EncodeLabelValue for CaKind {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// A CA certificate of a node's trust, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaCert {
    pub kind: CaKind,
    /// Its subject, as `openssl x509 -subject` prints it (RFC 4514 order).
    pub subject: String,
    /// SHA-256 of its DER, lowercase hex.
    pub fingerprint: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for NodeCa {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCa")
            .field("node", &self.node)
            .field("certs", &self.certs)
            .finish_non_exhaustive()
    }
}

/// A freshly issued leaf.
pub struct Leaf {
    /// `[leaf, intermediate]`, as presented in TLS.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    pub not_after: SystemTime,
}

impl NodeCa {
    /// Loads the intermediate of `node` from `ca_dir`; when it is missing and
    /// the root key is there, issues it first (single-machine setups).
    pub fn load_or_issue(config: &Config, node: &NodeName) -> Result<Self, IdentityError> {
        let dir = CaDir::of(config);
        if !dir.root_cert().exists() {
            return Err(IdentityError::NoRoot(dir.root_cert()));
        }
        if !dir.node_cert(node).exists() {
            if !dir.root_key().exists() {
                return Err(IdentityError::NoNodeCa {
                    node: node.to_string(),
                    path: dir.node_cert(node),
                });
            }
            issue_node(config, node, NODE_VALIDITY)?;
            tracing::info!(node = node.as_str(), path = %dir.node_cert(node).display(), "issued the node CA");
        }
        Self::load(config, node)
    }

    /// Loads the intermediate of `node`, the roots and any chain from
    /// `ca_dir`.
    pub fn load(config: &Config, node: &NodeName) -> Result<Self, IdentityError> {
        let dir = CaDir::of(config);
        if !dir.root_cert().exists() && !dir.trust().exists() {
            return Err(IdentityError::NoRoot(dir.root_cert()));
        }
        let td = config.mesh.trust_domain.clone();
        let cert_pem = read(&dir.node_cert(node))?;
        let chain = pem_certs(&cert_pem, &dir.node_cert(node))?;
        let not_after = check_node_cert(&chain[0], &td, node, &dir.node_cert(node))?;
        check_key_mode(&dir.node_key(node))?;
        let key = KeyPair::from_pem(&read(&dir.node_key(node))?).map_err(|source| {
            IdentityError::Rcgen {
                what: "read the node key",
                source,
            }
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| IdentityError::Rcgen {
                what: "read the node certificate",
                source,
            })?;
        let bundle = if dir.trust().exists() {
            dir.trust()
        } else {
            dir.root_cert()
        };
        let roots = pem_certs(&read(&bundle)?, &bundle)?;
        let anchors = roots
            .iter()
            .map(|root| {
                webpki::anchor_from_trusted_cert(root)
                    .map(|a| a.to_owned())
                    .map_err(|e| IdentityError::BadCaFile {
                        path: bundle.clone(),
                        why: format!("not a usable root: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let node_file = dir.node_cert(node);
        let kinds =
            roots
                .iter()
                .map(|c| (CaKind::Root, c, &bundle))
                .chain(chain.iter().enumerate().map(|(i, c)| {
                    let kind = if i == 0 {
                        CaKind::Node
                    } else {
                        CaKind::Intermediate
                    };
                    (kind, c, &node_file)
                }));
        let certs = kinds
            .map(|(kind, der, path)| ca_cert(kind, der, path))
            .collect::<Result<_, _>>()?;
        let report = super::TrustReport {
            roots: roots.iter().map(|r| fingerprint(r)).collect(),
            node_ca: fingerprint(&chain[0]),
            issuer_key: issuer_key(&chain, &roots),
        };
        Ok(Self {
            trust_domain: td,
            node: node.clone(),
            issuer,
            chain,
            roots,
            anchors,
            not_after,
            certs,
            report,
        })
    }

    /// When the intermediate expires.
    pub fn not_after(&self) -> SystemTime {
        SystemTime::from(self.not_after)
    }

    /// The node this CA belongs to.
    pub fn node(&self) -> &NodeName {
        &self.node
    }

    /// The roots this node trusts.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots this node trusts, for webpki.
    pub fn anchors(&self) -> std::sync::Arc<[rustls_pki_types::TrustAnchor<'static>]> {
        self.anchors.clone()
    }

    /// What this node trusts and presents, as it tells the others.
    pub fn report(&self) -> super::TrustReport {
        self.report.clone()
    }

    /// The CA certificates of this node's trust: roots, its node CA and any
    /// presented above it.
    pub fn certs(&self) -> &[CaCert] {
        &self.certs
    }

    /// Issues a leaf for `service`, valid for `ttl` (from 30 s ago, and no
    /// longer than the node CA).
    pub fn issue_leaf(&self, service: &ServiceName, ttl: Duration) -> Result<Leaf, IdentityError> {
        let td = &self.trust_domain;
        self.issue(
            service,
            &SpiffeId::service(td, service),
            spiffe::sni(td, service),
            ttl,
        )
    }

    /// Issues the leaf of this node's own agent, for agent-to-agent links,
    /// valid for `ttl` like `issue_leaf`. A node CA vouches for no other
    /// node's agent, so it takes no name.
    pub fn issue_agent_leaf(&self, ttl: Duration) -> Result<Leaf, IdentityError> {
        let td = &self.trust_domain;
        let node = &self.node;
        self.issue(
            &format!("mesh agent {node}"),
            &SpiffeId::agent(td, node),
            spiffe::agent_sni(td, node),
            ttl,
        )
    }

    /// A leaf naming `id` (URI SAN) and `dns` (its TLS server name), for
    /// both ends of a handshake.
    fn issue(
        &self,
        common_name: &str,
        id: &SpiffeId,
        dns: String,
        ttl: Duration,
    ) -> Result<Leaf, IdentityError> {
        let key = new_key()?;
        let mut params = params(common_name, ttl)?;
        params.not_after = params.not_after.min(self.not_after);
        params.subject_alt_names = vec![
            uri_san(&id.to_string())?,
            SanType::DnsName(dns.try_into().map_err(|source| IdentityError::Rcgen {
                what: "make the DNS SAN",
                source,
            })?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| hex(s.as_ref()))
            .unwrap_or_default();
        let not_after = SystemTime::from(params.not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| IdentityError::Rcgen {
                what: "sign a leaf",
                source,
            })?;
        Ok(Leaf {
            chain: std::iter::once(cert.der().clone())
                .chain(self.chain.iter().cloned())
                .collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            serial,
            not_after,
        })
    }
}

/// A root CA's profile: `common_name`, the trust domain's URI SAN, CA
/// without a path length limit.
pub(super) fn root_params(
    config: &Config,
    common_name: &str,
    validity: Duration,
) -> Result<CertificateParams, IdentityError> {
    let td = &config.mesh.trust_domain;
    let mut params = params(common_name, validity)?;
    params.subject_alt_names = vec![uri_san(&spiffe::trust_domain_id(td))?];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A node CA's profile: CN `mesh node <node>`, its URI SAN, CA that signs
/// only leaves.
pub(super) fn node_params(
    config: &Config,
    node: &str,
    validity: Duration,
) -> Result<CertificateParams, IdentityError> {
    let mut params = params(&format!("mesh node {node}"), validity)?;
    params.subject_alt_names = vec![uri_san(&spiffe::node_id(&config.mesh.trust_domain, node))?];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Parameters shared by every certificate: CN, validity, random serial.
fn params(common_name: &str, validity: Duration) -> Result<CertificateParams, IdentityError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|source| IdentityError::Rcgen {
            what: "make certificate parameters",
            source,
        })?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now
        .checked_add(time::Duration::try_from(validity).unwrap_or(time::Duration::MAX))
        .ok_or(IdentityError::Validity(validity))?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

pub(super) fn new_key() -> Result<KeyPair, IdentityError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| IdentityError::Rcgen {
        what: "generate a P-256 key",
        source,
    })
}

fn uri_san(uri: &str) -> Result<SanType, IdentityError> {
    Ok(SanType::URI(uri.try_into().map_err(|source| {
        IdentityError::Rcgen {
            what: "make the URI SAN",
            source,
        }
    })?))
}

/// 16 random bytes, the first made positive and non-zero.
fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from(bytes.to_vec()))
}

/// Lowercase hex without leading zeros, as `openssl x509 -serial` prints it
/// (modulo case).
pub fn hex(bytes: &[u8]) -> String {
    let s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = s.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// Checks the node certificate's name and validity; returns its expiry.
fn check_node_cert(
    cert: &CertificateDer<'_>,
    trust_domain: &str,
    node: &NodeName,
    path: &Path,
) -> Result<OffsetDateTime, IdentityError> {
    let bad = |why: String| IdentityError::BadNodeCa {
        path: path.to_owned(),
        why,
    };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| bad(format!("not X.509: {e}")))?;
    let want = SpiffeId::node(trust_domain, node).to_string();
    let uris = super::uri_sans(&parsed);
    if uris != [want.as_str()] {
        return Err(bad(format!(
            "its URI SANs are {uris:?}, expected [{want:?}]"
        )));
    }
    if !parsed.validity().is_valid() {
        return Err(bad(format!(
            "it is not valid now (valid {} to {})",
            parsed.validity().not_before,
            parsed.validity().not_after
        )));
    }
    Ok(parsed.validity().not_after.to_datetime())
}

/// Refuses a key file that others may read (it must be 0600 or stricter).
pub(super) fn check_key_mode(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(path)
        .map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::KeyMode {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// Every certificate of a PEM file, in order; at least one.
pub(super) fn pem_certs(
    pem: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    use rustls_pki_types::pem::PemObject as _;
    let bad = |why: String| IdentityError::BadCaFile {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The report of a CA certificate read from `path`.
fn ca_cert(kind: CaKind, der: &CertificateDer<'_>, path: &Path) -> Result<CaCert, IdentityError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::BadCaFile {
            path: path.to_owned(),
            why: format!("not X.509: {e}"),
        })?;
    Ok(CaCert {
        kind,
        subject: parsed.subject().to_string(),
        fingerprint: fingerprint(der),
        not_after: SystemTime::from(parsed.validity().not_after.to_datetime()),
    })
}

/// SHA-256 of the public key of the certificate among `chain[1..]` and
/// `roots` whose subject is the node CA's (`chain[0]`) issuer; empty if
/// none is.
fn issuer_key(chain: &[CertificateDer<'_>], roots: &[CertificateDer<'_>]) -> String {
    fn parse(der: &[u8]) -> Option<x509_parser::certificate::X509Certificate<'_>> {
        x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| c)
    }
    let Some(node_ca) = parse(&chain[0]) else {
        return String::new();
    };
    chain[1..]
        .iter()
        .chain(roots)
        .filter_map(|der| parse(der))
        .find(|c| c.subject().as_raw() == node_ca.issuer().as_raw())
        .map(|c| fingerprint(c.public_key().raw))
        .unwrap_or_default()
}

/// A certificate as PEM, with `\n` line ends as rcgen writes them.
pub(super) fn pem_of(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes a new file with `mode`; fails if it exists.
pub(super) fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, identity::Identities, testing};

    const DAY: Duration = Duration::from_secs(86_400);

    fn mesh(scratch: &testing::Scratch) -> Config {
        Config::parse(&testing::mesh_text(9000), &scratch.file()).unwrap()
    }

    fn read_pem(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn expiry_warnings_name_what_expires_within_30_days() {
        let scratch = testing::Scratch::new();
        let config = mesh(&scratch);
        init(&config, 20 * DAY).unwrap();
        issue_node(&config, "a", 40 * DAY).unwrap();
        let a: NodeName = "a".parse().unwrap();
        let ca = NodeCa::load_or_issue(&config, &a).unwrap();
        let kinds: Vec<_> = ca.certs().iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [CaKind::Root, CaKind::Node]);
        assert_eq!(ca.certs()[0].subject, "CN=mesh root CA mesh.local");
        let ids = Identities::new("mesh.local", ca, Duration::from_secs(60), []).unwrap();
        let now = SystemTime::now();
        let soon = ids.expiring(now);
        assert_eq!(soon.len(), 1, "{soon:?}");
        assert_eq!((soon[0].kind, soon[0].days_left), (CaKind::Root, 19));
        assert!(soon[0].advice.contains("mesh-agent ca rotate"));
        // Fifteen days on, the node CA is within 30 days too.
        let later = ids.expiring(now + 15 * DAY);
        let kinds: Vec<_> = later.iter().map(|e| (e.kind, e.days_left)).collect();
        assert_eq!(kinds, [(CaKind::Root, 4), (CaKind::Node, 24)]);
    }

    #[test]
    fn a_bundle_of_roots_and_a_node_file_with_a_chain_are_read_whole() {
        let scratch = testing::Scratch::new();
        let config = mesh(&scratch);
        let dir = CaDir::of(&config);
        // A second root, in a mesh of its own, to trust beside the first.
        let other = testing::Scratch::new();
        let other_config = mesh(&other);
        init(&other_config, ROOT_VALIDITY).unwrap();
        init(&config, ROOT_VALIDITY).unwrap();
        let bundle = read_pem(&dir.root_cert()) + &read_pem(&CaDir::of(&other_config).root_cert());
        fs::write(dir.trust(), bundle).unwrap();
        issue_node(&config, "a", NODE_VALIDITY).unwrap();
        // Whatever follows the node CA in its file is presented above it.
        let node_file = dir.node_cert("a");
        let extra = read_pem(&CaDir::of(&other_config).root_cert());
        fs::write(&node_file, read_pem(&node_file) + &extra).unwrap();
        let ca = NodeCa::load_or_issue(&config, &"a".parse().unwrap()).unwrap();
        assert_eq!(ca.roots().len(), 2);
        let kinds: Vec<_> = ca.certs().iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                CaKind::Root,
                CaKind::Root,
                CaKind::Node,
                CaKind::Intermediate
            ]
        );
        let leaf = ca
            .issue_leaf(&"web".parse().unwrap(), Duration::from_secs(60))
            .unwrap();
        assert_eq!(leaf.chain.len(), 3);
        assert_eq!(leaf.chain[2], ca.roots()[1]);
        // An empty bundle is refused, naming the file.
        fs::write(dir.trust(), "").unwrap();
        let err = NodeCa::load_or_issue(&config, &"a".parse().unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("trust.crt") && err.contains("no PEM certificate"),
            "{err}"
        );
    }
}

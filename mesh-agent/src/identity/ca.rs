//! The built-in CA: root, one intermediate per node, one leaf per local
//! service and one for the node's own agent. ECDSA P-256 keys made with
//! rcgen; key files are 0600.
//!
//! Layout of `ca_dir` (see ARCHITECTURE.md):
//! `root.crt`, `root.key` (may live elsewhere), `nodes/<node>.crt`,
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

/// Validity of a root CA.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of a node intermediate CA.
const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
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
    pub fn node_cert(&self, node: &str) -> PathBuf {
        self.0.join("nodes").join(format!("{node}.crt"))
    }
    pub fn node_key(&self, node: &str) -> PathBuf {
        self.0.join("nodes").join(format!("{node}.key"))
    }
}

/// `mesh-agent ca init`: creates the root CA. Refuses to overwrite one.
/// Returns the paths written.
pub fn init(config: &Config) -> Result<Vec<PathBuf>, IdentityError> {
    let dir = CaDir::of(config);
    for path in [dir.root_cert(), dir.root_key()] {
        if path.exists() {
            return Err(IdentityError::Exists(path));
        }
    }
    let td = &config.mesh.trust_domain;
    let key = new_key()?;
    let mut params = params(&format!("mesh root CA {td}"), ROOT_VALIDITY)?;
    params.subject_alt_names = vec![uri_san(&spiffe::trust_domain_id(td))?];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
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
/// by the root key (which must be in `ca_dir`). Refuses to overwrite one.
pub fn issue_node(config: &Config, node: &str) -> Result<Vec<PathBuf>, IdentityError> {
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
    let mut params = params(&format!("mesh node {node}"), NODE_VALIDITY)?;
    params.subject_alt_names = vec![uri_san(&spiffe::node_id(&config.mesh.trust_domain, node))?];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
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
    write_new(&dir.node_key(node), &key.serialize_pem(), 0o600)?;
    write_new(&dir.node_cert(node), &cert.pem(), 0o644)?;
    Ok(vec![dir.node_cert(node), dir.node_key(node)])
}

/// A node's intermediate CA, which signs the leaves of the node's services
/// and of its agent.
pub struct NodeCa {
    trust_domain: String,
    /// The node it belongs to (its URI SAN, checked at load).
    node: NodeName,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    root: CertificateDer<'static>,
    /// The intermediate's own expiry: no leaf outlives it.
    not_after: OffsetDateTime,
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
            issue_node(config, node)?;
            tracing::info!(node = node.as_str(), path = %dir.node_cert(node).display(), "issued the node CA");
        }
        let td = config.mesh.trust_domain.clone();
        let cert_pem = read(&dir.node_cert(node))?;
        let cert = pem_cert(&cert_pem, &dir.node_cert(node))?;
        let not_after = check_node_cert(&cert, &td, node, &dir.node_cert(node))?;
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
        let root = pem_cert(&read(&dir.root_cert())?, &dir.root_cert())?;
        Ok(Self {
            trust_domain: td,
            node: node.clone(),
            issuer,
            cert,
            root,
            not_after,
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

    /// The root certificate this node trusts.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
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
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            serial,
            not_after,
        })
    }
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

fn new_key() -> Result<KeyPair, IdentityError> {
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
fn check_key_mode(path: &Path) -> Result<(), IdentityError> {
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

fn pem_cert(pem: &str, path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::BadNodeCa {
        path: path.to_owned(),
        why: format!("no PEM certificate: {e}"),
    })
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes a new file with `mode`; fails if it exists.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), IdentityError> {
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

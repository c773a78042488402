//! Test certificates: a small factory that writes PEM files in the mesh's
//! PKI layout and certificate profiles (see ARCHITECTURE.md, PKI), plus
//! deliberately bad ones (expired, self-signed, foreign trust domain) for
//! the e2e tests to present to an agent with `openssl s_client`.
//!
//! Every function panics with a message naming the file or step that failed:
//! these are test helpers, and a panic is the test failing.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, pem::parse_x509_pem};

/// A certificate + key written as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Intermediates to present after the leaf (`None` when the issuer is a root).
    pub chain: Option<PathBuf>,
}

/// An issuer: the mesh root, or a node intermediate (`nodes/<node>.crt/.key`).
#[derive(Debug)]
pub struct Ca {
    cert_pem: String,
    /// Subject, key identifier method, key usages and the signing key.
    issuer: Issuer<'static, KeyPair>,
    /// Whether this is a root, i.e. leaves it signs need no chain file.
    is_root: bool,
}

impl Ca {
    /// Loads the root from `<ca_dir>/root.crt` and `<ca_dir>/root.key`.
    pub fn load_root(ca_dir: &Path) -> Ca {
        Self::load(&ca_dir.join("root"), true)
    }

    /// Loads the intermediate of `node` from `<ca_dir>/nodes/<node>.crt/.key`.
    pub fn load_node(ca_dir: &Path, node: &str) -> Ca {
        Self::load(&ca_dir.join("nodes").join(node), false)
    }

    /// A fresh self-made root for `trust_domain` (cert and key in memory),
    /// per the contract's root profile.
    pub fn new_root(trust_domain: &str) -> Ca {
        let mut params = ca_params(
            "mesh root CA",
            &format!("spiffe://{trust_domain}"),
            BasicConstraints::Unconstrained,
            Duration::days(3650),
        );
        params.use_authority_key_identifier_extension = false;
        let key = new_key();
        let cert = params
            .self_signed(&key)
            .expect("self-sign a test root certificate");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            is_root: true,
        }
    }

    /// A node intermediate for `node` signed by this CA, per the contract's
    /// profile (CA:true, pathlen 0, URI SAN `spiffe://<TD>/node/<node>`).
    /// Normally `self` is a root; signing with a node CA gives a chain that
    /// breaks pathlen, which a test may want on purpose.
    pub fn new_node(&self, trust_domain: &str, node: &str) -> Ca {
        let params = ca_params(
            &format!("mesh node {node}"),
            &format!("spiffe://{trust_domain}/node/{node}"),
            BasicConstraints::Constrained(0),
            Duration::days(365),
        );
        let key = new_key();
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("sign the intermediate of node {node}: {e}"));
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            is_root: false,
        }
    }

    /// The CA's certificate in PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Saves the CA as `<path>.crt` and `<path>.key` (PKCS#8, mode 0600),
    /// creating the parent directory: `save(&ca_dir.join("root"))` or
    /// `save(&ca_dir.join("nodes").join(node))` give the contract's layout.
    pub fn save(&self, path_without_ext: &Path) {
        if let Some(parent) = path_without_ext.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        write_file(&with_ext(path_without_ext, "crt"), &self.cert_pem, false);
        write_file(
            &with_ext(path_without_ext, "key"),
            &self.issuer.key().serialize_pem(),
            true,
        );
    }

    fn load(path_without_ext: &Path, is_root: bool) -> Ca {
        let cert_path = with_ext(path_without_ext, "crt");
        let key_path = with_ext(path_without_ext, "key");
        let cert_pem = read_file(&cert_path);
        let key = KeyPair::from_pem(&read_file(&key_path))
            .unwrap_or_else(|e| panic!("parse PKCS#8 key {}: {e}", key_path.display()));
        with_cert(&cert_pem, |cert| {
            assert_eq!(
                cert.public_key().subject_public_key.data.as_ref(),
                key.public_key_raw(),
                "{} does not hold the key of {}",
                key_path.display(),
                cert_path.display()
            );
        });
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .unwrap_or_else(|e| panic!("load CA certificate {}: {e}", cert_path.display()));
        Ca {
            cert_pem,
            issuer,
            is_root,
        }
    }
}

/// Options for a leaf.
#[derive(Debug, Clone, Copy)]
pub struct Leaf<'a> {
    /// The full URI SAN, e.g. `spiffe://mesh.local/svc/web`.
    pub uri: &'a str,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Leaf<'_> {
    /// A leaf for `uri` valid from a minute ago to an hour from now.
    pub fn valid_now(uri: &str) -> Leaf<'_> {
        let now = OffsetDateTime::now_utc();
        Leaf {
            uri,
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::hours(1),
        }
    }
}

/// Writes a leaf signed by `issuer` into `dir` as `<name>.crt/.key`, plus
/// `<name>.chain.pem` holding `issuer`'s certificate when `issuer` is an
/// intermediate (not a root): the chain a client presents after the leaf.
pub fn write_leaf(dir: &Path, name: &str, issuer: &Ca, leaf: &Leaf) -> CertFiles {
    let params = leaf_params(leaf);
    let key = new_key();
    let cert = params
        .signed_by(&key, &issuer.issuer)
        .unwrap_or_else(|e| panic!("sign leaf {name} for {}: {e}", leaf.uri));
    let chain = (!issuer.is_root).then(|| {
        let path = dir.join(format!("{name}.chain.pem"));
        write_file(&path, &issuer.cert_pem, false);
        path
    });
    write_cert_files(dir, name, &cert.pem(), &key, chain)
}

/// Writes a self-signed certificate carrying the URI SAN `uri` (and the leaf
/// profile otherwise, so CA:false) into `dir` as `<name>.crt/.key`.
pub fn write_self_signed(dir: &Path, name: &str, uri: &str) -> CertFiles {
    let params = leaf_params(&Leaf::valid_now(uri));
    let key = new_key();
    let cert = params
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("self-sign {name} for {uri}: {e}"));
    write_cert_files(dir, name, &cert.pem(), &key, None)
}

/// The URI SANs of a PEM certificate, in order.
pub fn uri_sans(cert_pem: &str) -> Vec<String> {
    with_cert(cert_pem, |cert| {
        let san = cert
            .subject_alternative_name()
            .expect("well-formed subjectAltName extension");
        san.map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
    })
}

/// The serial of a PEM certificate in hex: lowercase, no colons, no leading
/// zeros (`"0"` for zero).
pub fn serial_hex(cert_pem: &str) -> String {
    with_cert(cert_pem, |cert| format!("{:x}", cert.serial))
}

/// Params shared by the root and node profiles.
fn ca_params(
    common_name: &str,
    uri: &str,
    constraints: BasicConstraints,
    lifetime: Duration,
) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.subject_alt_names = vec![uri_san(uri)];
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + lifetime;
    params.use_authority_key_identifier_extension = true;
    params
}

/// The leaf profile: CN is the service name (the whole URI when it is not
/// `spiffe://TD/svc/NAME`), exactly one URI SAN, a DNS SAN `NAME.svc.TD` for
/// service URIs, CA:false, digitalSignature, serverAuth+clientAuth. The
/// serial is rcgen's default (a hash of the fresh key, so unique per leaf).
fn leaf_params(leaf: &Leaf) -> CertificateParams {
    let service = service_of(leaf.uri);
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(service.map_or(leaf.uri, |(_, name)| name));
    params.subject_alt_names = vec![uri_san(leaf.uri)];
    if let Some((td, name)) = service {
        let dns = format!("{name}.svc.{td}");
        params.subject_alt_names.push(SanType::DnsName(
            dns.as_str()
                .try_into()
                .unwrap_or_else(|e| panic!("DNS SAN {dns:?}: {e}")),
        ));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = leaf.not_before;
    params.not_after = leaf.not_after;
    params.use_authority_key_identifier_extension = true;
    params
}

/// `(TD, NAME)` of `spiffe://TD/svc/NAME`, else `None`.
fn service_of(uri: &str) -> Option<(&str, &str)> {
    let (td, path) = uri.strip_prefix("spiffe://")?.split_once('/')?;
    let name = path.strip_prefix("svc/")?;
    (!td.is_empty() && !name.is_empty() && !name.contains('/')).then_some((td, name))
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn uri_san(uri: &str) -> SanType {
    SanType::URI(
        uri.try_into()
            .unwrap_or_else(|e| panic!("URI SAN {uri:?}: {e}")),
    )
}

fn new_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a P-256 key")
}

fn write_cert_files(
    dir: &Path,
    name: &str,
    cert_pem: &str,
    key: &KeyPair,
    chain: Option<PathBuf>,
) -> CertFiles {
    let files = CertFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        chain,
    };
    write_file(&files.cert, cert_pem, false);
    write_file(&files.key, &key.serialize_pem(), true);
    files
}

/// Writes `contents` to `path`; a secret gets mode 0600.
fn write_file(path: &Path, contents: &str, secret: bool) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    if secret {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", path.display()));
    }
}

fn read_file(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `path` with `.ext` appended (`nodes/n1.x` + `crt` gives `nodes/n1.x.crt`).
fn with_ext(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Parses the first certificate of `cert_pem` and hands it to `f`.
fn with_cert<T>(cert_pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("a well-formed X.509 certificate");
    f(&cert)
}

#[cfg(test)]
mod tests {
    use std::{
        process::Command,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    const TD: &str = "test.td";

    /// A unique scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let dir =
                std::env::temp_dir().join(format!("mesh-pki-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Runs openssl; returns whether it succeeded and its stdout+stderr.
    fn openssl(args: &[&str]) -> (bool, String) {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn text_of(cert: &Path) -> String {
        let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", path_str(cert)]);
        assert!(ok, "openssl x509 failed: {text}");
        text
    }

    /// `openssl verify` of `leaf` against `root` with optional untrusted chain.
    fn verify(root: &Path, chain: Option<&Path>, leaf: &Path) -> (bool, String) {
        let mut args = vec!["verify", "-CAfile", path_str(root)];
        if let Some(chain) = chain {
            args.extend(["-untrusted", path_str(chain)]);
        }
        args.push(path_str(leaf));
        openssl(&args)
    }

    fn path_str(p: &Path) -> &str {
        p.to_str().expect("utf-8 temp path")
    }

    fn save_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, pem).expect("write pem");
        path
    }

    #[test]
    fn root_node_leaf_chain_verifies_and_has_the_profiles() {
        let tmp = TempDir::new();
        let root = Ca::new_root(TD);
        let node = root.new_node(TD, "n1");
        let uri = format!("spiffe://{TD}/svc/web");
        let files = write_leaf(&tmp.0, "web", &node, &Leaf::valid_now(&uri));
        let root_pem = save_pem(&tmp.0, "root.pem", &root.cert_pem());

        let chain = files.chain.as_deref().expect("a chain for an intermediate");
        assert_eq!(read_file(chain), node.cert_pem());
        let (ok, text) = verify(&root_pem, Some(chain), &files.cert);
        assert!(ok, "chain does not verify: {text}");
        // Without the intermediate the leaf must not verify.
        let (ok, text) = verify(&root_pem, None, &files.cert);
        assert!(!ok, "leaf verified without its chain: {text}");

        let leaf = text_of(&files.cert);
        assert!(leaf.contains(&format!("URI:{uri}")), "{leaf}");
        assert!(leaf.contains(&format!("DNS:web.svc.{TD}")), "{leaf}");
        assert!(leaf.contains("Subject: CN = web"), "{leaf}");
        assert!(leaf.contains("CA:FALSE"), "{leaf}");
        assert!(leaf.contains("Digital Signature"), "{leaf}");
        assert!(
            leaf.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{leaf}"
        );
        assert!(leaf.contains("prime256v1"), "{leaf}");
        assert_eq!(uri_sans(&read_file(&files.cert)), vec![uri]);

        let node_text = text_of(&save_pem(&tmp.0, "node.pem", &node.cert_pem()));
        assert!(node_text.contains("CA:TRUE, pathlen:0"), "{node_text}");
        assert!(
            node_text.contains(&format!("URI:spiffe://{TD}/node/n1")),
            "{node_text}"
        );
        assert!(
            node_text.contains("Subject: CN = mesh node n1"),
            "{node_text}"
        );
        assert!(
            node_text.contains("Certificate Sign, CRL Sign"),
            "{node_text}"
        );

        let root_text = text_of(&root_pem);
        assert!(root_text.contains("CA:TRUE\n"), "{root_text}");
        assert!(
            root_text.contains(&format!("URI:spiffe://{TD}\n")),
            "{root_text}"
        );
        assert!(
            root_text.contains("Subject: CN = mesh root CA"),
            "{root_text}"
        );

        let key = read_file(&files.key);
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        let (ok, text) = openssl(&["pkey", "-noout", "-in", path_str(&files.key)]);
        assert!(ok, "openssl cannot read the key: {text}");
    }

    #[test]
    fn leaf_signed_by_root_has_no_chain() {
        let tmp = TempDir::new();
        let root = Ca::new_root(TD);
        let files = write_leaf(&tmp.0, "direct", &root, &Leaf::valid_now("spiffe://x/y"));
        assert!(files.chain.is_none());
        assert!(!tmp.0.join("direct.chain.pem").exists());
        let root_pem = save_pem(&tmp.0, "root.pem", &root.cert_pem());
        let (ok, text) = verify(&root_pem, None, &files.cert);
        assert!(ok, "{text}");
        // Not a service URI: CN is the URI, no DNS SAN.
        let leaf = text_of(&files.cert);
        assert!(!leaf.contains("DNS:"), "{leaf}");
        assert_eq!(uri_sans(&read_file(&files.cert)), vec!["spiffe://x/y"]);
    }

    #[test]
    fn expired_leaf_fails_verification() {
        let tmp = TempDir::new();
        let root = Ca::new_root(TD);
        let node = root.new_node(TD, "n1");
        let now = OffsetDateTime::now_utc();
        let leaf = Leaf {
            uri: "spiffe://test.td/svc/old",
            not_before: now - Duration::hours(2),
            not_after: now - Duration::hours(1),
        };
        let files = write_leaf(&tmp.0, "old", &node, &leaf);
        let root_pem = save_pem(&tmp.0, "root.pem", &root.cert_pem());
        let (ok, text) = verify(&root_pem, files.chain.as_deref(), &files.cert);
        assert!(!ok, "expired leaf verified: {text}");
        assert!(text.contains("expired"), "{text}");
    }

    #[test]
    fn self_signed_verifies_only_against_itself() {
        let tmp = TempDir::new();
        let uri = format!("spiffe://{TD}/svc/web");
        let files = write_self_signed(&tmp.0, "selfie", &uri);
        assert!(files.chain.is_none());
        assert_eq!(uri_sans(&read_file(&files.cert)), vec![uri.clone()]);
        let text = text_of(&files.cert);
        assert!(text.contains("CA:FALSE"), "{text}");

        let (ok, text) = verify(&files.cert, None, &files.cert);
        assert!(ok, "self-signed does not verify against itself: {text}");
        let root = Ca::new_root(TD);
        let root_pem = save_pem(&tmp.0, "root.pem", &root.cert_pem());
        let (ok, text) = verify(&root_pem, None, &files.cert);
        assert!(!ok, "self-signed verified against a root: {text}");
    }

    #[test]
    fn load_reads_the_contract_layout() {
        let tmp = TempDir::new();
        let ca_dir = tmp.0.join("ca");
        let root = Ca::new_root(TD);
        let node = root.new_node(TD, "n1");
        root.save(&ca_dir.join("root"));
        node.save(&ca_dir.join("nodes").join("n1"));
        for key in [ca_dir.join("root.key"), ca_dir.join("nodes/n1.key")] {
            let mode = fs::metadata(&key)
                .expect("key metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }

        let root2 = Ca::load_root(&ca_dir);
        let node2 = Ca::load_node(&ca_dir, "n1");
        assert_eq!(root2.cert_pem(), root.cert_pem());
        assert_eq!(node2.cert_pem(), node.cert_pem());

        // A loaded node signs leaves that chain to the loaded root, and a
        // loaded root signs new intermediates.
        let root_pem = save_pem(&tmp.0, "root.pem", &root2.cert_pem());
        let uri = format!("spiffe://{TD}/svc/api");
        let files = write_leaf(&tmp.0, "api", &node2, &Leaf::valid_now(&uri));
        let (ok, text) = verify(&root_pem, files.chain.as_deref(), &files.cert);
        assert!(ok, "{text}");
        let node3 = root2.new_node(TD, "n2");
        let files = write_leaf(&tmp.0, "api2", &node3, &Leaf::valid_now(&uri));
        let (ok, text) = verify(&root_pem, files.chain.as_deref(), &files.cert);
        assert!(ok, "{text}");
    }

    #[test]
    #[should_panic(expected = "does not hold the key")]
    fn load_refuses_a_mismatched_key() {
        let tmp = TempDir::new();
        let a = Ca::new_root(TD);
        let b = Ca::new_root(TD);
        a.save(&tmp.0.join("root"));
        b.save(&tmp.0.join("other"));
        fs::copy(tmp.0.join("other.key"), tmp.0.join("root.key")).expect("copy key");
        Ca::load_root(&tmp.0);
    }

    #[test]
    fn foreign_root_does_not_verify_against_ours() {
        let tmp = TempDir::new();
        let ours = Ca::new_root(TD);
        let theirs = Ca::new_root("evil.td");
        let node = theirs.new_node("evil.td", "n1");
        let files = write_leaf(
            &tmp.0,
            "spoof",
            &node,
            &Leaf::valid_now("spiffe://test.td/svc/web"),
        );
        let our_pem = save_pem(&tmp.0, "ours.pem", &ours.cert_pem());
        let (ok, text) = verify(&our_pem, files.chain.as_deref(), &files.cert);
        assert!(!ok, "foreign chain verified: {text}");
        let their_pem = save_pem(&tmp.0, "theirs.pem", &theirs.cert_pem());
        let (ok, text) = verify(&their_pem, files.chain.as_deref(), &files.cert);
        assert!(ok, "{text}");
    }

    #[test]
    fn serial_and_sans_agree_with_openssl() {
        let tmp = TempDir::new();
        let root = Ca::new_root(TD);
        let node = root.new_node(TD, "n1");
        let uri = format!("spiffe://{TD}/svc/web");
        let files = write_leaf(&tmp.0, "web", &node, &Leaf::valid_now(&uri));
        let node_pem = save_pem(&tmp.0, "node.pem", &node.cert_pem());
        for (cert, uri) in [
            (files.cert.as_path(), uri.as_str()),
            (node_pem.as_path(), "spiffe://test.td/node/n1"),
        ] {
            let pem = read_file(cert);
            let (ok, text) = openssl(&["x509", "-noout", "-serial", "-in", path_str(cert)]);
            assert!(ok, "{text}");
            let theirs = text
                .trim()
                .strip_prefix("serial=")
                .expect("serial=HEX")
                .trim_start_matches('0')
                .to_ascii_lowercase();
            let ours = serial_hex(&pem);
            assert_eq!(ours, theirs);
            assert!(!ours.starts_with('0') && ours == ours.to_ascii_lowercase());
            assert_eq!(uri_sans(&pem), vec![uri.to_owned()]);
        }
    }

    #[test]
    fn service_of_parses_only_service_uris() {
        assert_eq!(service_of("spiffe://td/svc/web"), Some(("td", "web")));
        assert_eq!(service_of("spiffe://td/node/n1"), None);
        assert_eq!(service_of("spiffe://td/svc/"), None);
        assert_eq!(service_of("spiffe://td/svc/a/b"), None);
        assert_eq!(service_of("https://td/svc/web"), None);
    }
}

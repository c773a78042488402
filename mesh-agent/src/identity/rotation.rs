//! Root rotation without an outage: `mesh-agent ca rotate` and `ca
//! retire-old`, which rewrite the files of `ca_dir`; every agent reloads
//! them within a second (`app::trust`). ARCHITECTURE.md, "Root rotation".
//!
//! `rotate`, with the old root R1 in `root.crt`/`root.key`:
//! 1. makes a new root R2, and R2 cross-signed by R1 (R2's subject and key,
//!    issuer R1), through which an agent that trusts only R1 verifies a
//!    chain under R2;
//! 2. keeps R1 as `root.old.crt`/`root.old.key`;
//! 3. `trust.crt`: the roots trusted so far, and R2;
//! 4. re-issues every `nodes/<n>.crt` under R2 for the node's own key (no
//!    key moves or changes), followed by the cross-signed R2;
//! 5. `root.crt`/`root.key`: R2.
//!
//! `retire_old`: `trust.crt` is R2 alone, each `nodes/<n>.crt` its node CA
//! alone, `root.old.*` are removed. Whether every agent has the new chain
//! first is the caller's check (`cli::ca`, from the agents' reports).

use std::{fs, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path, path::PathBuf};

use rcgen::{Issuer, KeyPair, PublicKeyData as _, SubjectPublicKeyInfo};
use rustls_pki_types::CertificateDer;

use super::{
    IdentityError,
    ca::{self, CaDir, NODE_VALIDITY, ROOT_VALIDITY},
};
use crate::config::Config;

/// What `rotate` did.
#[derive(Debug)]
pub struct Rotated {
    /// The new root's subject and SHA-256.
    pub subject: String,
    pub fingerprint: String,
    /// The nodes whose CA was re-issued.
    pub nodes: Vec<String>,
    pub written: Vec<PathBuf>,
}

/// Whether a rotation was started and not yet ended.
pub fn in_progress(config: &Config) -> bool {
    CaDir::of(config).old_root_cert().exists()
}

/// `mesh-agent ca rotate` (see the module docs). Nothing is written unless
/// every certificate could be made.
pub fn rotate(config: &Config) -> Result<Rotated, IdentityError> {
    let dir = CaDir::of(config);
    if dir.old_root_cert().exists() {
        return Err(IdentityError::Rotation(format!(
            "a rotation is in progress ({} exists): end it with `mesh-agent ca retire-old`",
            dir.old_root_cert().display()
        )));
    }
    if !dir.root_key().exists() {
        return Err(IdentityError::Rotation(format!(
            "no root key at {}: run this where the root key is",
            dir.root_key().display()
        )));
    }
    let old_pem = ca::read(&dir.root_cert())?;
    let old_key_pem = ca::read(&dir.root_key())?;
    let old_der = ca::pem_certs(&old_pem, &dir.root_cert())?.remove(0);
    let old_not_after = self_signed_root(&old_der, &dir.root_cert())?;
    let old = issuer(&old_pem, &old_key_pem, "the root")?;

    let key = ca::new_key()?;
    let key_pem = key.serialize_pem();
    // A subject of its own: agents tell the two roots apart by it.
    let td = &config.mesh.trust_domain;
    let tag: String = ca::fingerprint(&key.subject_public_key_info())
        .chars()
        .take(8)
        .collect();
    let common_name = format!("mesh root CA {td} {tag}");
    let new = ca::root_params(config, &common_name, ROOT_VALIDITY)?
        .self_signed(&key)
        .map_err(|source| rcgen_error("sign the new root", source))?;
    let mut cross = ca::root_params(config, &common_name, ROOT_VALIDITY)?;
    cross.not_after = cross.not_after.min(old_not_after);
    let cross = cross
        .signed_by(&key, &old)
        .map_err(|source| rcgen_error("cross-sign the new root", source))?;
    let new_issuer = Issuer::from_ca_cert_der(new.der(), key)
        .map_err(|source| rcgen_error("read the new root", source))?;

    let mut nodes = Vec::new();
    for (node, path) in node_files(&dir)? {
        let pem = ca::read(&path)?;
        let der = ca::pem_certs(&pem, &path)?.remove(0);
        let spki = subject_public_key(&der, &path)?;
        let cert = ca::node_params(config, &node, NODE_VALIDITY)?
            .signed_by(&spki, &new_issuer)
            .map_err(|source| rcgen_error("re-issue a node CA", source))?;
        nodes.push((node, path, cert.pem() + &cross.pem()));
    }

    let bundle = if dir.trust().exists() {
        ca::read(&dir.trust())?
    } else {
        old_pem.clone()
    };
    let mut written = Vec::new();
    ca::write_new(&dir.old_root_key(), &old_key_pem, 0o600)?;
    ca::write_new(&dir.old_root_cert(), &old_pem, 0o644)?;
    written.extend([dir.old_root_cert(), dir.old_root_key()]);
    // Trusted everywhere before anyone presents it (the cross-signed copy
    // covers agents that reload later).
    replace(&dir.trust(), &(with_newline(bundle) + &new.pem()), 0o644)?;
    written.push(dir.trust());
    for (_, path, pem) in &nodes {
        replace(path, pem, 0o644)?;
        written.push(path.clone());
    }
    replace(&dir.root_key(), &key_pem, 0o600)?;
    replace(&dir.root_cert(), &new.pem(), 0o644)?;
    written.extend([dir.root_cert(), dir.root_key()]);
    Ok(Rotated {
        subject: format!("CN={common_name}"),
        fingerprint: ca::fingerprint(new.der()),
        nodes: nodes.into_iter().map(|(n, _, _)| n).collect(),
        written,
    })
}

/// `mesh-agent ca retire-old` once every agent has the new chain (see the
/// module docs); returns the paths written or removed.
pub fn retire_old(config: &Config) -> Result<Vec<PathBuf>, IdentityError> {
    let dir = CaDir::of(config);
    if !dir.old_root_cert().exists() {
        return Err(IdentityError::Rotation(
            "no rotation in progress: start one with `mesh-agent ca rotate`".into(),
        ));
    }
    let new_pem = ca::read(&dir.root_cert())?;
    let mut written = Vec::new();
    for (_, path) in node_files(&dir)? {
        let pem = ca::read(&path)?;
        let first = ca::pem_certs(&pem, &path)?.remove(0);
        replace(&path, &ca::pem_of(&first), 0o644)?;
        written.push(path);
    }
    replace(&dir.trust(), &new_pem, 0o644)?;
    written.push(dir.trust());
    for path in [dir.old_root_key(), dir.old_root_cert()] {
        match fs::remove_file(&path) {
            Ok(()) => written.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(IdentityError::Write { path, source }),
        }
    }
    Ok(written)
}

/// The SHA-256 of the public key (SubjectPublicKeyInfo) of the root in
/// `root.crt`: what an agent's node CA must be signed with to be on the
/// new chain.
pub fn root_key_fingerprint(config: &Config) -> Result<(String, String), IdentityError> {
    let dir = CaDir::of(config);
    let der = ca::pem_certs(&ca::read(&dir.root_cert())?, &dir.root_cert())?.remove(0);
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| IdentityError::BadCaFile {
            path: dir.root_cert(),
            why: format!("not X.509: {e}"),
        })?;
    Ok((
        ca::fingerprint(&der),
        ca::fingerprint(parsed.public_key().raw),
    ))
}

/// `nodes/<n>.crt` of every node, sorted by name.
fn node_files(dir: &CaDir) -> Result<Vec<(String, PathBuf)>, IdentityError> {
    let nodes = dir.nodes();
    let entries = match fs::read_dir(&nodes) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(IdentityError::Read {
                path: nodes,
                source,
            });
        }
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p)))
        .collect();
    files.sort();
    Ok(files)
}

/// The end of a self-signed root's validity; refuses anything else (an
/// imported organization CA is replaced by importing another).
fn self_signed_root(
    der: &CertificateDer<'_>,
    path: &Path,
) -> Result<time::OffsetDateTime, IdentityError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::BadCaFile {
            path: path.to_owned(),
            why: format!("not X.509: {e}"),
        })?;
    if parsed.subject().as_raw() != parsed.issuer().as_raw() {
        return Err(IdentityError::Rotation(format!(
            "{} is not a root of this mesh's own (its issuer is {}): an organization's CA is \
             replaced with `mesh-agent ca import`",
            path.display(),
            parsed.issuer()
        )));
    }
    Ok(parsed.validity().not_after.to_datetime())
}

/// The public key of a certificate, to sign another certificate for it.
fn subject_public_key(
    der: &CertificateDer<'_>,
    path: &Path,
) -> Result<SubjectPublicKeyInfo, IdentityError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::BadCaFile {
            path: path.to_owned(),
            why: format!("not X.509: {e}"),
        })?;
    SubjectPublicKeyInfo::from_der(parsed.public_key().raw)
        .map_err(|source| rcgen_error("read a node CA's public key", source))
}

fn issuer(
    cert_pem: &str,
    key_pem: &str,
    what: &'static str,
) -> Result<Issuer<'static, KeyPair>, IdentityError> {
    let key = KeyPair::from_pem(key_pem).map_err(|source| rcgen_error(what, source))?;
    Issuer::from_ca_cert_pem(cert_pem, key).map_err(|source| rcgen_error(what, source))
}

fn rcgen_error(what: &'static str, source: rcgen::Error) -> IdentityError {
    IdentityError::Rcgen { what, source }
}

fn with_newline(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// Replaces `path` with `contents` at once (written beside it, then
/// renamed): an agent reloading never reads half a file.
pub(super) fn replace(path: &Path, contents: &str, mode: u32) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

//! An organization's CA (`mesh-agent ca import`): an intermediate made
//! elsewhere (openssl, Vault, step-ca) becomes the CA that signs node CAs.
//!
//! `stage` checks the intermediate (a CA whose path length leaves room for
//! node CAs and whose name constraints allow the trust domain, valid now,
//! its key matching it, chaining to the root given) and writes the files it
//! would put in `ca_dir` into a directory beside it; the caller proves the
//! staged files end to end (a node CA and a leaf issued and verified as
//! agents do: `cli::ca`) and then `Staged::install`s them. Nothing in
//! `ca_dir` changes unless every check passes.
//!
//! Files: `root.crt`/`root.key` are the intermediate and its key,
//! `trust.crt` the organization's root, `chain.crt` the intermediate and
//! any CA between it and the root: what every node CA is followed by in
//! `nodes/<n>.crt` (`ca::issue_node` appends it).

use std::{
    fs,
    path::{Path, PathBuf},
};

use rustls_pki_types::CertificateDer;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

use super::{
    IdentityError,
    ca::{self, CaDir},
    rotation,
};
use crate::config::Config;

/// The files `stage` wrote, not yet in force.
#[derive(Debug)]
pub struct Staged {
    /// A copy of the config whose `ca_dir` is the staging directory.
    pub config: Config,
    dir: PathBuf,
    target: CaDir,
    /// The intermediate's subject, and the root's.
    pub subject: String,
    pub root: String,
}

fn bad(path: &Path, why: impl Into<String>) -> IdentityError {
    IdentityError::Import {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// Checks the intermediate at `cert` (its key at `key`, the chain to the
/// organization's root in `chain`, root last) for `config`'s mesh and
/// stages the files (module docs).
pub fn stage(
    config: &Config,
    cert: &Path,
    key: &Path,
    chain: &Path,
) -> Result<Staged, IdentityError> {
    let dir = CaDir::of(config);
    if rotation::in_progress(config) {
        return Err(IdentityError::Rotation(
            "a rotation is in progress: end it with `mesh-agent ca retire-old` first".into(),
        ));
    }
    let issued: Vec<_> = fs::read_dir(dir.nodes())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "crt"))
                .collect()
        })
        .unwrap_or_default();
    if !issued.is_empty() {
        return Err(IdentityError::Rotation(format!(
            "{} node CA(s) are already issued in {}: import an organization's CA before \
             issuing node CAs (replacing the CA of a running mesh is a rotation, which `ca \
             import` does not do yet)",
            issued.len(),
            dir.nodes().display()
        )));
    }
    let ica_pem = ca::read(cert)?;
    let ica_der = ca::pem_certs(&ica_pem, cert)?.remove(0);
    let chain_certs = ca::pem_certs(&ca::read(chain)?, chain)?;
    let key_pem = ca::read(key)?;
    let ica = parse(&ica_der, cert)?;
    check_ca(&ica, cert)?;
    check_key(&ica, &key_pem, key)?;
    check_names(&ica, &config.mesh.trust_domain, cert)?;
    let parsed: Vec<_> = chain_certs
        .iter()
        .map(|c| parse(c, chain))
        .collect::<Result<_, _>>()?;
    let Some(root) = parsed.last() else {
        return Err(bad(chain, "no certificate in it"));
    };
    if root.subject().as_raw() != root.issuer().as_raw() {
        return Err(bad(
            chain,
            format!(
                "its last certificate ({}) is not a self-signed root: give the chain up to \
                 the organization's root",
                root.subject()
            ),
        ));
    }
    // Each certificate is issued by the next: the intermediate by the
    // first of the chain, and so on up to the root.
    let mut below = &ica;
    for (i, above) in parsed.iter().enumerate() {
        if below.issuer().as_raw() != above.subject().as_raw() {
            return Err(bad(
                chain,
                format!(
                    "certificate {} ({}) did not issue {} (issued by {})",
                    i + 1,
                    above.subject(),
                    below.subject(),
                    below.issuer()
                ),
            ));
        }
        if !above.validity().is_valid() {
            return Err(bad(
                chain,
                format!("{} in the chain is not valid now", above.subject()),
            ));
        }
        below = above;
    }
    for c in &parsed[..parsed.len() - 1] {
        check_ca(c, chain)?;
    }

    let staging = dir_of(config).join(format!(".import-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("nodes")).map_err(|source| IdentityError::Write {
        path: staging.clone(),
        source,
    })?;
    let mut staged_config = config.clone();
    staged_config.mesh.ca_dir = staging.clone();
    let staged = CaDir::of(&staged_config);
    let above: String = std::iter::once(&ica_der)
        .chain(&chain_certs[..chain_certs.len() - 1])
        .map(|c| ca::pem_of(c))
        .collect();
    let result = (|| {
        ca::write_new(&staged.root_cert(), &ca::pem_of(&ica_der), 0o644)?;
        ca::write_new(&staged.root_key(), &key_pem, 0o600)?;
        ca::write_new(
            &staged.trust(),
            &ca::pem_of(&chain_certs[chain_certs.len() - 1]),
            0o644,
        )?;
        ca::write_new(&staged.chain(), &above, 0o644)
    })();
    let staged = Staged {
        config: staged_config,
        dir: staging,
        target: dir,
        subject: ica.subject().to_string(),
        root: root.subject().to_string(),
    };
    result?;
    Ok(staged)
}

impl Staged {
    /// Moves the staged files into `ca_dir` (the root, key and trust bundle
    /// made before are replaced); returns the paths written.
    pub fn install(self) -> Result<Vec<PathBuf>, IdentityError> {
        let from = CaDir::of(&self.config);
        let mut written = Vec::new();
        for (src, dst) in [
            (from.trust(), self.target.trust()),
            (from.chain(), self.target.chain()),
            (from.root_key(), self.target.root_key()),
            (from.root_cert(), self.target.root_cert()),
        ] {
            fs::rename(&src, &dst).map_err(|source| IdentityError::Write {
                path: dst.clone(),
                source,
            })?;
            written.push(dst);
        }
        Ok(written)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `ca_dir` itself (created if missing), where the staging directory goes.
fn dir_of(config: &Config) -> PathBuf {
    let dir = config.mesh.ca_dir.clone();
    let _ = fs::create_dir_all(&dir);
    dir
}

fn parse<'a>(
    der: &'a CertificateDer<'_>,
    path: &Path,
) -> Result<X509Certificate<'a>, IdentityError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| bad(path, format!("not X.509: {e}")))
}

/// A CA (basicConstraints CA:TRUE, keyCertSign if key usage is given),
/// valid now, whose path length leaves room for a node CA below it.
fn check_ca(c: &X509Certificate<'_>, path: &Path) -> Result<(), IdentityError> {
    let subject = c.subject();
    match c.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            if bc.value.path_len_constraint == Some(0) {
                return Err(bad(
                    path,
                    format!(
                        "{subject} has pathlen:0: it may sign no CA, and node CAs are CAs \
                         (pathlen must be at least 1, or absent)"
                    ),
                ));
            }
        }
        Ok(_) => {
            return Err(bad(
                path,
                format!("{subject} is not a CA (basicConstraints CA:TRUE is missing)"),
            ));
        }
        Err(e) => return Err(bad(path, format!("{subject}: bad basicConstraints: {e}"))),
    }
    if let Ok(Some(ku)) = c.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(bad(
            path,
            format!("{subject} may not sign certificates (keyUsage lacks keyCertSign)"),
        ));
    }
    let v = c.validity();
    if !v.is_valid() {
        return Err(bad(
            path,
            format!(
                "{subject} is not valid now (valid from {} to {})",
                v.not_before, v.not_after
            ),
        ));
    }
    Ok(())
}

/// The key at `path` is the certificate's.
fn check_key(c: &X509Certificate<'_>, key_pem: &str, path: &Path) -> Result<(), IdentityError> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| {
        bad(
            path,
            format!("not a private key rcgen can use (PKCS#8 PEM, RSA or ECDSA P-256/P-384): {e}"),
        )
    })?;
    if key.public_key_raw() != c.public_key().subject_public_key.data.as_ref() {
        return Err(bad(
            path,
            format!("this key does not match the certificate of {}", c.subject()),
        ));
    }
    Ok(())
}

/// Name constraints, if any, permit the trust domain's URIs
/// (`spiffe://<td>/...`) and DNS names (`*.svc.<td>`, `*.agent.<td>`)
/// and exclude neither.
fn check_names(c: &X509Certificate<'_>, td: &str, path: &Path) -> Result<(), IdentityError> {
    let Ok(Some(nc)) = c.name_constraints() else {
        return Ok(());
    };
    let uri_ok = |base: &str| host_matches(td, base);
    // A DNS constraint covers its domain and every name below it: the
    // SANs `<x>.svc.<td>` and `<x>.agent.<td>` are all covered by `td` or
    // a domain above it.
    let dns_ok = |base: &str| {
        let base = base.trim_start_matches('.');
        td == base || td.ends_with(&format!(".{base}"))
    };
    fn names<'a>(
        subtrees: &'a Option<Vec<x509_parser::extensions::GeneralSubtree<'a>>>,
    ) -> Vec<&'a GeneralName<'a>> {
        subtrees.iter().flatten().map(|s| &s.base).collect()
    }
    let permitted = names(&nc.value.permitted_subtrees);
    let excluded = names(&nc.value.excluded_subtrees);
    let uris: Vec<&str> = permitted
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let dns: Vec<&str> = permitted
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    let refused = |what: String| {
        bad(
            path,
            format!(
                "the name constraints of {} exclude the trust domain {td}: {what}",
                c.subject()
            ),
        )
    };
    if !uris.is_empty() && !uris.iter().any(|u| uri_ok(u)) {
        return Err(refused(format!(
            "permitted URIs {uris:?} do not include {td}"
        )));
    }
    // rustls-webpki, the agents' verifier, does not evaluate URI name
    // constraints and fails closed: every SPIFFE ID under them is refused.
    if uris.len()
        + excluded
            .iter()
            .filter(|n| matches!(n, GeneralName::URI(_)))
            .count()
        > 0
    {
        return Err(bad(
            path,
            format!(
                "{} has URI name constraints, which the agents' verifier (rustls-webpki) \
                 does not evaluate: it would refuse every SPIFFE ID under them. Constrain DNS \
                 names instead (e.g. permitted;DNS:{td})",
                c.subject()
            ),
        ));
    }
    if !dns.is_empty() && !dns.iter().any(|d| dns_ok(d)) {
        return Err(refused(format!(
            "permitted DNS names {dns:?} do not include {td}"
        )));
    }
    for n in excluded {
        match n {
            GeneralName::URI(u) if uri_ok(u) => {
                return Err(refused(format!("URIs of {u} are excluded")));
            }
            GeneralName::DNSName(d) if dns_ok(d) => {
                return Err(refused(format!("DNS names of {d} are excluded")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// RFC 5280 URI constraint: `base` names the host exactly, or with a
/// leading dot any host below it.
fn host_matches(host: &str, base: &str) -> bool {
    match base.strip_prefix('.') {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => host == base,
    }
}

//! A DER certificate as a peer's leaf, through what the verifier does with
//! it (`tls::verify::PeerRules`): reading its service (`service_of`), the
//! full check with node a's CA (`verify`), and the re-check of a resumed
//! session (`recheck`); and its URI SANs through `spiffe::parse`.
//!
//! Invariants:
//! - a service read from a certificate is a valid service name, the
//!   certificate's URI SANs are exactly that service's SPIFFE ID, and its
//!   other SANs at most the service's DNS name;
//! - a SPIFFE ID `spiffe::parse` accepts is exactly the ID it names;
//! - only the seed leaf passes the full check (the fuzzer cannot sign);
//! - `recheck` names the service `service_of` reads, or refuses.

use mesh_agent::{
    config::is_name,
    identity::{other_sans, spiffe, uri_sans},
};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::mesh::{self, TRUST_DOMAIN};

pub fn check(data: &[u8]) {
    let pki = mesh::pki();
    let cert = CertificateDer::from(data);
    let parsed = x509_parser::parse_x509_certificate(data).ok();

    let named = pki.rules.service_of(&cert);
    if let Ok(service) = &named {
        let (_, parsed) = parsed
            .as_ref()
            .expect("a certificate with a service parses");
        assert!(is_name(service), "{service:?}");
        assert_eq!(
            uri_sans(parsed),
            [spiffe::service_id(TRUST_DOMAIN, service)]
        );
        let own_dns = spiffe::sni(TRUST_DOMAIN, service);
        for other in other_sans(parsed) {
            assert!(
                matches!(other, GeneralName::DNSName(dns) if *dns == own_dns),
                "{service:?} with {other}"
            );
        }
    }
    if let Some((_, parsed)) = &parsed {
        for uri in uri_sans(parsed) {
            let Some((kind, name)) = spiffe::parse(TRUST_DOMAIN, uri) else {
                continue;
            };
            let id = match kind {
                spiffe::Kind::Service => spiffe::service_id(TRUST_DOMAIN, name),
                spiffe::Kind::Agent => spiffe::agent_id(TRUST_DOMAIN, name),
                spiffe::Kind::Node => spiffe::node_id(TRUST_DOMAIN, name),
            };
            assert_eq!(uri, id);
            assert!(is_name(name), "{name:?} in {uri:?}");
        }
    }

    let node_a = std::slice::from_ref(&pki.node_a);
    let verified = pki.rules.verify(
        &cert,
        node_a,
        pki.now,
        webpki::KeyUsage::client_auth(),
        None,
    );
    if let Ok(service) = verified {
        assert_eq!(data, mesh::WEB_LEAF_DER, "verified as {service:?}");
    }

    let chain = [cert.clone(), pki.node_a.clone()];
    if let Ok(service) = pki.rules.recheck(&chain, pki.now, None) {
        assert_eq!(named.ok(), Some(service));
    }
}

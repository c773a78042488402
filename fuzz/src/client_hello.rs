//! The first bytes of an inbound connection, as `Tls::accept` reads them:
//! the first-byte check, rustls' `Acceptor` up to the ClientHello, then the
//! agent's SNI checks (`tls::check_hello`, `spiffe::service_from_sni`).
//!
//! Invariants:
//! - `check_hello` accepts exactly the SNI `web.svc.mesh.local` for `web`;
//! - a service named by an SNI gives back that SNI, and is a valid name.

use mesh_agent::{config::is_name, identity::spiffe, tls};
use rustls::server::Acceptor;

use crate::mesh::TRUST_DOMAIN;

pub fn check(data: &[u8]) {
    if !tls::starts_tls(data) {
        return;
    }
    let mut acceptor = Acceptor::default();
    let mut rest = data;
    let accepted = loop {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err(_) => return,
        }
    };
    let hello = accepted.client_hello();
    let sni = hello.server_name();
    let ok = tls::check_hello(TRUST_DOMAIN, "web", &hello).is_ok();
    assert_eq!(ok, sni == Some("web.svc.mesh.local"), "{sni:?}");
    if let Some(service) = sni.and_then(|sni| spiffe::service_from_sni(TRUST_DOMAIN, sni)) {
        assert_eq!(Some(spiffe::sni(TRUST_DOMAIN, service).as_str()), sni);
        assert!(is_name(service), "{service:?} from SNI {sni:?}");
    }
}

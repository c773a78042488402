//! Who may start an inbound TLS handshake. Unauthenticated peers hold a
//! socket and a task until their handshake ends, so those are rationed:
//! at most `max` handshakes in progress at once, and once half of them are
//! taken, at most `per_source` per source address. One address (a broken or
//! hostile node) can then hold at most half of the slots, and every other
//! address still finds room. Strangers never get this far: sk_lookup
//! refuses sources that are not mesh nodes (`CHECK_PEERS`).
//!
//! Time is rationed by `tls`: the ClientHello must arrive within
//! `tls::HELLO_TIMEOUT` and the whole handshake end within
//! `tls::HANDSHAKE_TIMEOUT`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Why a handshake was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many handshakes in progress")]
    Full,
    #[error("too many handshakes in progress from this source")]
    SourceFull,
}

impl Refusal {
    /// The `reason` label of `mesh_handshake_failures_total`.
    pub fn reason(self) -> crate::telemetry::Refusal {
        match self {
            Self::Full => crate::telemetry::Refusal::TooManyHandshakes,
            Self::SourceFull => crate::telemetry::Refusal::TooManyFromSource,
        }
    }
}

/// The handshake slots of one agent.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    per_source: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One admitted handshake; its slot is given back when this is dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    /// Registers `mesh_handshakes_in_progress`.
    pub fn register_metrics(self: &Arc<Self>, reg: &mut crate::telemetry::Registry) {
        use crate::telemetry::registry::{count, gauge};
        let this = self.clone();
        reg.collect(move |e| {
            gauge(
                e,
                "mesh_handshakes_in_progress",
                "Inbound TLS handshakes in progress (each holds a slot)",
                count(this.in_progress()),
            )
        });
    }

    /// `max` slots in all; `per_source` for each address once half are taken.
    pub fn new(max: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_source,
            held: Mutex::default(),
        })
    }

    /// A slot for a handshake from `source`, or why there is none.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refusal> {
        let source = source.to_canonical();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.total >= self.max {
            return Err(Refusal::Full);
        }
        let mine = held.by_source.get(&source).copied().unwrap_or(0);
        if mine >= self.per_source && held.total >= self.max / 2 {
            return Err(Refusal::SourceFull);
        }
        held.total += 1;
        *held.by_source.entry(source).or_default() += 1;
        Ok(Slot {
            admission: self.clone(),
            source,
        })
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .admission
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 77, 0, last])
    }

    #[test]
    fn one_source_holds_at_most_half_and_others_still_get_in() {
        let a = Admission::new(8, 2);
        // Below half, a burst from one source is fine.
        let flood: Vec<Slot> = (0..4).map(|_| a.admit(ip(9)).unwrap()).collect();
        // Now half is taken and the source is over its share.
        assert_eq!(a.admit(ip(9)).unwrap_err(), Refusal::SourceFull);
        // Others get their share each, up to the total.
        let b: Vec<Slot> = (0..2).map(|_| a.admit(ip(2)).unwrap()).collect();
        assert_eq!(a.admit(ip(2)).unwrap_err(), Refusal::SourceFull);
        let c: Vec<Slot> = (0..2).map(|_| a.admit(ip(3)).unwrap()).collect();
        assert_eq!(a.admit(ip(4)).unwrap_err(), Refusal::Full);
        assert_eq!(a.in_progress(), 8);
        drop((flood, b, c));
        assert_eq!(a.in_progress(), 0);
        assert!(a.held.lock().unwrap().by_source.is_empty());
    }

    #[test]
    fn slots_come_back_when_handshakes_end() {
        let a = Admission::new(2, 1);
        let first = a.admit(ip(9)).unwrap();
        assert_eq!(a.admit(ip(9)).unwrap_err(), Refusal::SourceFull);
        drop(first);
        let _again = a.admit(ip(9)).unwrap();
    }

    #[test]
    fn an_ipv4_mapped_source_is_the_same_source() {
        let a = Admission::new(4, 1);
        let _v4 = a.admit(ip(9)).unwrap();
        let _v4_too = a.admit(ip(9)).unwrap();
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(10, 77, 0, 9).to_ipv6_mapped());
        assert_eq!(a.admit(mapped).unwrap_err(), Refusal::SourceFull);
    }
}

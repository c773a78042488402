//! Resumption state kept by the destination agent: stateful TLS 1.3
//! tickets. The client holds only a random id; the session (keys and the
//! client's certificate chain) stays here. A ticket works once (rustls
//! `take`s it) and for at most `TTL`; the oldest are dropped when `CAPACITY`
//! is reached. A resumed handshake issues a new ticket for the same session,
//! so a chain of resumptions could outlive the leaves in it: `Tls` ends
//! sessions when a leaf is renewed (at half its lifetime) on either side.
//! Every resumed connection re-checks the peer's chain
//! (`PeerRules::recheck`), so a session never outlives the rules.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use rustls::server::StoresServerSessions;

/// How long a ticket can be used after the full handshake that made it.
pub const TTL: Duration = Duration::from_secs(300);
/// Most sessions kept; a client keeps at most 8 tickets per destination.
pub const CAPACITY: usize = 4096;

/// Server-side session store with expiry (see the module docs).
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<Vec<u8>, (Vec<u8>, Instant)>,
    /// Ids by age, oldest first; may name sessions already taken.
    order: VecDeque<(Vec<u8>, Instant)>,
}

impl Sessions {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: Mutex::default(),
        }
    }

    /// Forgets every session (a local leaf was renewed: peers holding
    /// tickets for the old one must do a full handshake).
    pub fn clear(&self) {
        *self.lock() = Inner::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Drops sessions older than `ttl`, and the oldest beyond `keep`.
    fn prune(&mut self, now: Instant, ttl: Duration, keep: usize) {
        while let Some((id, born)) = self.order.front() {
            let live = self.by_id.get(id).is_some_and(|(_, b)| b == born);
            let expired = now.duration_since(*born) >= ttl;
            if live && !expired && self.by_id.len() <= keep {
                break;
            }
            if live {
                self.by_id.remove(id);
            }
            self.order.pop_front();
        }
        // Taken tickets leave their ids behind in `order`: compact now and
        // then so it stays proportional to the sessions kept.
        if self.order.len() > 2 * keep.max(1) {
            let by_id = &self.by_id;
            self.order
                .retain(|(id, born)| by_id.get(id).is_some_and(|(_, b)| b == born));
        }
    }
}

impl StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.prune(now, self.ttl, self.capacity.saturating_sub(1));
        inner.order.push_back((key.clone(), now));
        inner.by_id.insert(key, (value, now));
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let inner = self.lock();
        let (value, born) = inner.by_id.get(key)?;
        (born.elapsed() < self.ttl).then(|| value.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        let (value, born) = inner.by_id.remove(key)?;
        (born.elapsed() < self.ttl).then_some(value)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_works_once() {
        let s = Sessions::new(TTL, 8);
        assert!(s.put(b"id".to_vec(), b"session".to_vec()));
        assert_eq!(s.take(b"id").as_deref(), Some(&b"session"[..]));
        assert_eq!(s.take(b"id"), None);
    }

    #[test]
    fn clear_forgets_every_session() {
        let s = Sessions::new(TTL, 8);
        s.put(b"id".to_vec(), b"session".to_vec());
        s.clear();
        assert_eq!(s.take(b"id"), None);
    }

    #[test]
    fn a_ticket_expires() {
        let s = Sessions::new(Duration::from_millis(20), 8);
        s.put(b"id".to_vec(), b"session".to_vec());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.take(b"id"), None);
    }

    #[test]
    fn the_oldest_go_first_when_full() {
        let s = Sessions::new(TTL, 2);
        for id in [b"1", b"2", b"3"] {
            s.put(id.to_vec(), id.to_vec());
        }
        assert_eq!(s.take(b"1"), None);
        assert!(s.take(b"2").is_some() && s.take(b"3").is_some());
        assert!(s.lock().by_id.is_empty());
    }

    #[test]
    fn taken_tickets_do_not_pile_up() {
        let s = Sessions::new(TTL, 4);
        for i in 0..1000u32 {
            let id = i.to_be_bytes().to_vec();
            s.put(id.clone(), id.clone());
            s.take(&id);
        }
        assert!(s.lock().order.len() <= 8, "{}", s.lock().order.len());
    }
}

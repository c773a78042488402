//! The other agents of the mesh as this one hears them over the health
//! links (`health::link`): when each was last heard, which version it
//! runs, and its traffic per pair (`telemetry::traffic`). The web UI reads
//! this to show every node's agent and the whole mesh's topology, not only
//! this node's.
//!
//! Each agent puts [`News`] (its version and traffic) into the report
//! lines it sends its followers, at most once per heartbeat and only when
//! it changed; an agent that does not (an older one) is still heard, with
//! no news.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

// Tokio's clock: paused in tests, as the links' heartbeats are.
use tokio::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{
    identity::{Identities, TrustReport},
    names::NodeName,
    telemetry::{Telemetry, traffic::Edge},
};

/// What an agent tells its followers about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct News {
    /// `mesh-agent --version`'s number.
    pub version: String,
    pub pid: u32,
    /// Unix time (seconds) the agent started.
    pub started: u64,
    /// Its traffic per pair.
    pub traffic: Vec<Edge>,
    /// What it trusts and presents (`None` from older agents).
    #[serde(default)]
    pub trust: Option<TrustReport>,
}

/// One other agent, as last heard.
#[derive(Clone, Debug)]
pub struct Peer {
    pub last_heard: SystemTime,
    /// `None` until it sends news (an older agent never does).
    pub news: Option<News>,
}

/// How long one reading of this agent's news serves: every link's
/// sender asks each heartbeat, and one reading walks every pair's window.
const NEWS_FRESH: Duration = Duration::from_millis(200);

/// This agent's news and what it heard from the others.
pub struct Peers {
    telemetry: Arc<Telemetry>,
    /// This agent's CA, for its trust report.
    identities: Option<Arc<Identities>>,
    started: u64,
    heard: Mutex<HashMap<NodeName, Peer>>,
    /// The last reading of this agent's news, and when.
    news: Mutex<Option<(Instant, News)>>,
}

impl Peers {
    /// The peers of an agent that counts its traffic in `telemetry` and
    /// holds `identities`.
    pub fn new(telemetry: Arc<Telemetry>, identities: Option<Arc<Identities>>) -> Arc<Self> {
        Arc::new(Self {
            telemetry,
            identities,
            started: unix(SystemTime::now()),
            heard: Mutex::default(),
            news: Mutex::default(),
        })
    }

    /// This agent's news, read at most `NEWS_FRESH` ago.
    pub fn news(&self) -> News {
        let mut last = self.news.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((at, news)) if at.elapsed() < NEWS_FRESH => news.clone(),
            _ => {
                let news = News {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    pid: std::process::id(),
                    started: self.started,
                    traffic: self.telemetry.traffic(),
                    trust: self.identities.as_ref().map(|i| i.ca().report()),
                };
                *last = Some((Instant::now(), news.clone()));
                news
            }
        }
    }

    /// A line came from `node`'s agent, with `news` if it sent some.
    pub fn heard(&self, node: &NodeName, news: Option<News>) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        match heard.get_mut(node) {
            Some(peer) => {
                peer.last_heard = now;
                if news.is_some() {
                    peer.news = news;
                }
            }
            None => {
                heard.insert(
                    node.clone(),
                    Peer {
                        last_heard: now,
                        news,
                    },
                );
            }
        }
    }

    /// Every agent heard so far, by node.
    pub fn all(&self) -> HashMap<NodeName, Peer> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `t` as Unix seconds.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_keeps_the_news() {
        let peers = Peers::new(Arc::default(), None);
        let b: NodeName = "b".parse().unwrap();
        let news = peers.news();
        assert_eq!(news.version, env!("CARGO_PKG_VERSION"));
        peers.heard(&b, Some(news.clone()));
        let first = peers.all()[&b].last_heard;
        peers.heard(&b, None);
        let all = peers.all();
        assert_eq!(all[&b].news.as_ref(), Some(&news));
        assert!(all[&b].last_heard >= first);
    }
}

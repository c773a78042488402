//! How the agent ends without cutting what flows: every connection the
//! proxy accepted holds a [`Live`] from [`Drain::enter`] (from its accept,
//! so one still being set up counts too). On SIGTERM or SIGINT
//! the listeners close first (new connections are refused at once), then
//! [`Drain::wait`] gives the open ones `--drain-seconds` to finish; what is
//! still open then is closed when the agent exits. Pooled `mesh/2`
//! connections outlive the listeners: they wait on [`Drain::stopping`] to
//! refuse new streams (GOAWAY) while their open ones finish.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tracing::{info, warn};

/// How often `wait` looks at the count.
const POLL: Duration = Duration::from_millis(50);

/// The count of flowing connections; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    live: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
}

/// One flowing connection, counted until dropped.
#[derive(Debug)]
pub struct Live {
    live: Arc<AtomicUsize>,
}

impl Drain {
    /// Counts a connection as flowing while the returned guard lives.
    pub fn enter(&self) -> Live {
        self.live.fetch_add(1, Ordering::SeqCst);
        Live {
            live: self.live.clone(),
        }
    }

    /// Tells every [`Drain::stopping`] that the agent stops.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Resolves once [`Drain::stop`] was called (at once if it was).
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    /// Connections flowing now.
    pub fn open(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Waits until no connection flows or `grace` has passed, and logs
    /// which.
    pub async fn wait(&self, grace: Duration) {
        let open = self.open();
        if open == 0 {
            return;
        }
        info!(
            connections = open,
            grace_secs = grace.as_secs_f64(),
            "draining"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while self.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        let left = self.open();
        if left > 0 {
            warn!(
                connections = left,
                "grace period over: closing open connections"
            );
        } else {
            info!("drained");
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_live_connections_within_the_grace() {
        let drain = Drain::default();
        // Nothing open: no wait at all.
        let started = std::time::Instant::now();
        drain.wait(Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(1));

        let live = drain.enter();
        let other = drain.clone().enter();
        assert_eq!(drain.open(), 2);
        drop(other);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(live);
        });
        let started = std::time::Instant::now();
        drain.wait(Duration::from_secs(10)).await;
        assert_eq!(drain.open(), 0);
        assert!(started.elapsed() < Duration::from_secs(5));

        // One that never ends: the grace decides.
        let _stuck = drain.enter();
        let started = std::time::Instant::now();
        drain.wait(Duration::from_millis(200)).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(drain.open(), 1);
    }
}

//! Runs one local check forever: `http` and `tcp` every `interval` (the
//! first run at once), `ttl` by expiring it when no update came in time.
//! Results go to the [`Results`] (the `Board`); the board aborts the task
//! when the check or its instance goes.

use std::sync::Arc;

use tokio::time::Instant;

use super::{State, probe};
use crate::config::{Check, CheckKind};
use crate::containers::Containers;
use crate::names::ServiceName;

/// Where a check's results go: the `Board`, which spawns the runners.
pub trait Results: Send + Sync + 'static {
    /// Records one run of the check `check` of `service`.
    fn record(&self, service: &ServiceName, check: &str, state: State, output: String);
    /// Turns the ttl check `check` of `service` critical if its deadline
    /// passed at `now`; when to look again (`None`: the check is gone).
    fn expire(&self, service: &ServiceName, check: &str, now: Instant) -> Option<Instant>;
}

/// The task of the check `check` of the local instance of `service`
/// (listening on `127.0.0.1:port`).
pub async fn run<R: Results>(
    board: Arc<R>,
    service: ServiceName,
    port: u16,
    check: Check,
    containers: Arc<Containers>,
) {
    match &check.kind {
        CheckKind::Ttl(_) => loop {
            let Some(next) = board.expire(&service, &check.name, Instant::now()) else {
                return;
            };
            tokio::time::sleep_until(next).await;
        },
        kind => {
            let mut every = tokio::time::interval(check.interval);
            // A slow run delays the next; runs never pile up.
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let (state, output) =
                    probe::instance(kind, &containers, &service, port, check.timeout).await;
                board.record(&service, &check.name, state, output);
            }
        }
    }
}

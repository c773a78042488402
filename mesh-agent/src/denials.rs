//! Connects refused in the kernel. connect4/6 return EPERM for a pair the
//! intentions deny and for the loopback guard, before the agent sees
//! anything. Each EPERM is counted in `DENIALS`; the first of each (source,
//! destination, reason), and then at most one every
//! `DENIAL_REPORT_INTERVAL_NS`, is reported through `DENIAL_EVENTS`. This
//! task logs each report with the number refused since the last one, so an
//! app refused in a tight loop is one line per interval, and folds the
//! counts into the metrics and `status` (`side="source"`).

use std::{collections::HashMap, sync::Arc};

use mesh_common::{DENIED_BY_LOOPBACK_GUARD, DenialEvent, DenialKey, MAX_DENIALS};
use tracing::warn;

use crate::{
    ebpf::{DenialEvents, Kernel, socket_addr},
    proxy::ServiceIds,
    snapshot::Watch,
    telemetry::{Telemetry, since},
};

/// The kernel's refused connects, named and folded into the telemetry.
#[derive(Clone)]
pub struct Denials {
    /// `DENIALS`, the kernel's counts.
    kernel: Arc<Kernel>,
    /// The names behind the keys' service ids.
    ids: Arc<ServiceIds>,
    /// The intentions in force, for the deciding rule.
    snapshot: Watch,
    telemetry: Arc<Telemetry>,
    /// To name the container a refused caller is in.
    containers: Arc<crate::containers::Containers>,
}

impl Denials {
    /// Folds the kernel's denial counts into the telemetry before each
    /// scrape.
    pub fn register_metrics(&self, reg: &mut crate::telemetry::Registry) {
        let this = self.clone();
        reg.before_scrape(move || this.harvest());
    }

    /// Reads `DENIALS` from `kernel`, names its keys with `ids` and the
    /// intentions in `snapshot`, and counts them in `telemetry`; a caller
    /// in one of `containers` is named with it in the log.
    pub fn new(
        kernel: Arc<Kernel>,
        ids: Arc<ServiceIds>,
        snapshot: Watch,
        telemetry: Arc<Telemetry>,
        containers: Arc<crate::containers::Containers>,
    ) -> Self {
        Self {
            kernel,
            ids,
            snapshot,
            telemetry,
            containers,
        }
    }

    /// Folds what connect4/6 refused since the last call (`DENIALS`) into
    /// the metrics and the pair stats.
    pub fn harvest(&self) {
        self.harvest_counts(self.kernel.denials());
    }

    fn harvest_counts(&self, counts: Vec<(DenialKey, u64)>) {
        self.telemetry
            .harvest_kernel_denials(counts, |key| self.describe(key));
    }

    /// Names a `DENIALS` key: source, destination and the deciding rule.
    /// A caller without a mesh identity is `-`.
    pub fn describe(&self, key: &DenialKey) -> (String, String, String) {
        let name = |id: u32| match (id, self.ids.name(id)) {
            (0, _) => "-".to_owned(),
            (_, Some(name)) => name,
            (_, None) => format!("#{id}"),
        };
        let (src, dst) = (name(key.src), name(key.dst));
        let rule = if key.reason == DENIED_BY_LOOPBACK_GUARD {
            "loopback guard".to_owned()
        } else {
            let snapshot = self.snapshot.borrow().clone();
            snapshot.policy.decide(&src, &dst).rule.to_string()
        };
        (src, dst, rule)
    }

    /// Harvests the kernel's counts every `period`, until dropped.
    pub async fn harvest_every(self, period: std::time::Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.harvest();
        }
    }

    /// Logs the kernel's reports until the ring buffer fails or the task is
    /// dropped.
    pub async fn report(self, mut events: DenialEvents) {
        // Per key, the kernel's count (all CPUs) when it was last logged.
        let mut logged: HashMap<DenialKey, u64> = HashMap::new();
        loop {
            let batch = match events.next_batch().await {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(error = %e, "kernel denials are no longer reported");
                    return;
                }
            };
            if logged.len() > 2 * MAX_DENIALS as usize {
                logged.clear();
            }
            let counts = self.kernel.denials();
            let totals: HashMap<DenialKey, u64> = counts.iter().copied().collect();
            for event in batch {
                let total = totals.get(&event.key).copied().unwrap_or(0);
                let last = logged.insert(event.key, total).unwrap_or(0);
                let refused = since(last, total);
                // Two CPUs may report one key in the same batch: log it once.
                if refused > 0 {
                    self.log(&event, refused);
                }
            }
            self.harvest_counts(counts);
        }
    }

    fn log(&self, event: &DenialEvent, refused: u64) {
        let (src, dst, rule) = self.describe(&event.key);
        let dialed = socket_addr(&event.dst);
        let comm = comm(&event.comm);
        let pid = event.pid;
        // The caller's container: by its cgroup, else (a process in a
        // cgroup below the container's) by its netns if it still runs.
        let container = self.containers.by_cgroup(event.cgroup).or_else(|| {
            crate::netns::inode_of_pid(pid)
                .ok()
                .and_then(|inode| self.containers.get(inode))
        });
        let container = container.as_ref().map(|c| c.labels.cgroup.as_str());
        if event.key.reason == DENIED_BY_LOOPBACK_GUARD {
            warn!(
                %src, %dst, %dialed, %rule, pid, %comm, cgroup = event.cgroup, container, refused,
                "connect() refused with EPERM: only {dst} itself may use its loopback port"
            );
        } else {
            warn!(
                %src, %dst, %dialed, %rule, pid, %comm, cgroup = event.cgroup, container, refused,
                "connect() refused with EPERM: intentions deny {src} -> {dst}"
            );
        }
    }
}

/// A kernel `comm`: bytes up to the first NUL.
fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_stops_at_the_first_nul() {
        assert_eq!(comm(b"python3\0\0\0\0\0\0\0\0\0"), "python3");
        assert_eq!(comm(b"0123456789abcdef"), "0123456789abcdef");
    }
}

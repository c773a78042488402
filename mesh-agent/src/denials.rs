//! Connects refused in the kernel. connect4/6 return EPERM for a pair the
//! intentions deny and for the loopback guard, before the agent sees
//! anything. Each EPERM is counted in `DENIALS`; the first of each (source,
//! destination, reason), and then at most one every
//! `DENIAL_REPORT_INTERVAL_NS`, is reported through `DENIAL_EVENTS`. This
//! task logs each report with the number refused since the last one, so an
//! app refused in a tight loop is one line per interval, and folds the
//! counts into the metrics and `status` (`side="source"`).

use std::collections::HashMap;

use mesh_common::{DENIED_BY_LOOPBACK_GUARD, DenialEvent, DenialKey, MAX_DENIALS};
use tracing::warn;

use crate::{
    ebpf::{DenialEvents, socket_addr},
    proxy::Shared,
};

/// Logs the kernel's reports until the ring buffer fails or the task is
/// dropped.
pub async fn report(mut events: DenialEvents, ctx: Shared) {
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
        let totals: HashMap<DenialKey, u64> = ctx.kernel.denials().into_iter().collect();
        for event in batch {
            let total = totals.get(&event.key).copied().unwrap_or(0);
            let last = logged.insert(event.key, total).unwrap_or(0);
            let refused = since(last, total);
            // Two CPUs may report one key in the same batch: log it once.
            if refused > 0 {
                log(&ctx, &event, refused);
            }
        }
        ctx.harvest_kernel_denials();
    }
}

/// How many were refused between two readings of one key's count (a key
/// evicted from the LRU map and filed again starts from zero).
pub fn since(last: u64, now: u64) -> u64 {
    if now >= last { now - last } else { now }
}

fn log(ctx: &Shared, event: &DenialEvent, refused: u64) {
    let (src, dst, rule) = ctx.describe_denial(&event.key);
    let dialed = socket_addr(&event.dst);
    let comm = comm(&event.comm);
    let pid = event.pid;
    if event.key.reason == DENIED_BY_LOOPBACK_GUARD {
        warn!(
            %src, %dst, %dialed, %rule, pid, %comm, cgroup = event.cgroup, refused,
            "connect() refused with EPERM: only {dst} itself may use its loopback port"
        );
    } else {
        warn!(
            %src, %dst, %dialed, %rule, pid, %comm, cgroup = event.cgroup, refused,
            "connect() refused with EPERM: intentions deny {src} -> {dst}"
        );
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
    fn counts_since_the_last_report() {
        assert_eq!(since(0, 1), 1);
        assert_eq!(since(1, 1000), 999);
        // Evicted and filed again.
        assert_eq!(since(1000, 3), 3);
    }

    #[test]
    fn comm_stops_at_the_first_nul() {
        assert_eq!(comm(b"python3\0\0\0\0\0\0\0\0\0"), "python3");
        assert_eq!(comm(b"0123456789abcdef"), "0123456789abcdef");
    }
}

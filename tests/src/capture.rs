//! Packet captures: tcpdump on a node's `eth0`, written to a pcap file.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{Mesh, wait_until};

/// A running tcpdump (see [`Mesh::capture`]); killed if dropped unstopped.
pub struct Capture {
    child: Child,
    file: PathBuf,
    err: PathBuf,
}

impl Capture {
    /// Stops tcpdump (SIGINT, so it flushes) and returns the pcap file.
    pub fn stop(mut self) -> PathBuf {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let stopped = wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        assert!(stopped, "tcpdump did not stop: {}", self.log());
        let log = self.log();
        assert!(
            log.contains("0 packets dropped by kernel"),
            "tcpdump dropped packets: {log}"
        );
        self.file.clone()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mesh {
    /// Starts tcpdump on `node`'s eth0 with `filter`; stop it with
    /// [`Capture::stop`] to get the pcap file.
    pub fn capture(&self, node: &str, filter: &str) -> Capture {
        let file = self.dir.join(format!("capture-{node}.pcap"));
        let err = self.dir.join(format!("capture-{node}.err"));
        let mut cmd = self.cmd(node, "tcpdump");
        // A 32 MiB buffer (-B is in KiB): a bulk transfer over veth comes
        // in 64 KiB segments.
        cmd.args(["-i", "eth0", "-U", "--immediate-mode", "-B", "32768", "-w"])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).expect("tcpdump log"));
        let child = cmd.spawn().expect("spawn tcpdump");
        let started = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(&err)
                .unwrap_or_default()
                .contains("listening on")
        });
        let capture = Capture { child, file, err };
        assert!(started, "tcpdump did not start: {}", capture.log());
        capture
    }
}

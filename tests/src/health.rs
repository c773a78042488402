//! Helpers for tests of instance health: the health server app
//! (`apps/health_server.py`), HTTP calls through the mesh
//! (`apps/http_client.py`, curl), and instances as an agent's `GET
//! /catalog` shows them.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{Mesh, app, output_with_timeout, wait_until};

/// Bound on one HTTP call by [`Mesh::http_get`].
const GET_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of one call: the body of a 200, else what went wrong.
pub type CallResult = Result<String, String>;

/// The outcome of one line of `apps/http_client.py` (`ok <body>` or `fail
/// <what>`); `None` for any other line.
pub fn call_result(line: &str) -> Option<CallResult> {
    if let Some(body) = line.strip_prefix("ok ") {
        Some(Ok(body.to_owned()))
    } else {
        line.strip_prefix("fail ").map(|why| Err(why.to_owned()))
    }
}

/// How many of `results` are bodies equal to `name` (the node of the
/// instance that answered, for `apps/health_server.py`).
pub fn answered_by(results: &[CallResult], name: &str) -> usize {
    results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|b| b == name))
        .count()
}

/// The failed calls of `results`, numbered from 0.
pub fn failed_calls(results: &[CallResult]) -> Vec<(usize, String)> {
    results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e.clone())))
        .collect()
}

/// A running `apps/http_client.py` whose calls are read as they end (see
/// [`Mesh::http_call_stream`]). Killed if dropped unfinished.
pub struct CallStream {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every call read so far.
    pub results: Vec<CallResult>,
}

impl CallStream {
    /// Waits up to `timeout` for the next call to end; returns its outcome
    /// (also kept in `results`), `None` if none ended in time or the client
    /// is done.
    pub fn next(&mut self, timeout: Duration) -> Option<CallResult> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            if let Some(result) = call_result(&line) {
                self.results.push(result.clone());
                return Some(result);
            }
        }
    }

    /// Waits up to `timeout` for the client to end; returns every call's
    /// outcome. Panics if it is still running then.
    pub fn finish(mut self, timeout: Duration) -> Vec<CallResult> {
        let deadline = Instant::now() + timeout;
        while self
            .next(deadline.saturating_duration_since(Instant::now()))
            .is_some()
        {}
        let ended = wait_until(deadline.saturating_duration_since(Instant::now()), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            ended,
            "the HTTP client still runs after {timeout:?}, {} calls done",
            self.results.len()
        );
        std::mem::take(&mut self.results)
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mesh {
    /// The file whose content the health server of `service` on `node`
    /// answers `GET /health` with (see [`Mesh::set_health`]).
    pub fn health_file(&self, node: &str, service: &str) -> PathBuf {
        self.dir.join(format!("health-{service}-{node}"))
    }

    /// Starts `apps/health_server.py` as `service` on `node`, on
    /// 127.0.0.1:`port`: `GET /health` answers the status last given to
    /// [`Mesh::set_health`] (200 until then; a restarted server keeps it),
    /// any other path 200 with the node's name as the body. Returns once it
    /// listens, with its pid (for [`Mesh::stop_app`]).
    pub fn start_health_server(&self, node: &str, service: &str, port: u16) -> u32 {
        let mut cmd = self.cmd_as(node, service, "python3");
        cmd.arg(app("health_server.py"))
            .arg(port.to_string())
            .arg(self.health_file(node, service))
            .arg(node);
        let pid = self.spawn_app(cmd, &format!("{service}-{node}"));
        self.wait_listening(node, port);
        pid
    }

    /// Makes `GET /health` of the health server of `service` on `node`
    /// answer `status` from its next request on (the file is replaced at
    /// once, never read half-written).
    pub fn set_health(&self, node: &str, service: &str, status: u16) {
        let file = self.health_file(node, service);
        let tmp = file.with_extension("tmp");
        fs::write(&tmp, format!("{status}\n")).expect("write health state");
        fs::rename(&tmp, &file).expect("rename health state");
    }

    /// `GET http://<host>:<port><path>` with curl, as `service` on `node`,
    /// bounded at 5 s: the body if the answer is 200, else curl's error or
    /// the status.
    pub fn http_get(
        &self,
        node: &str,
        service: &str,
        host: IpAddr,
        port: u16,
        path: &str,
    ) -> CallResult {
        let url = match host {
            IpAddr::V4(ip) => format!("http://{ip}:{port}{path}"),
            IpAddr::V6(ip) => format!("http://[{ip}]:{port}{path}"),
        };
        let secs = GET_TIMEOUT.as_secs().to_string();
        let mut cmd = self.cmd_as(node, service, "curl");
        cmd.args(["-sS", "-m", &secs, "-w", "\n%{http_code}", &url]);
        let out = output_with_timeout(&mut cmd, GET_TIMEOUT + Duration::from_secs(5));
        let text = String::from_utf8_lossy(&out.stdout);
        match text.rsplit_once('\n') {
            Some((body, "200")) => Ok(body.to_owned()),
            Some((body, code)) => Err(format!(
                "status {code} {body}{}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            None => Err(format!("curl: {}", String::from_utf8_lossy(&out.stderr))),
        }
    }

    /// The command running `apps/http_client.py` as `service` on `node`:
    /// `count` calls `GET /` to `host`:`port`, started `interval` apart,
    /// each on a new connection.
    pub fn http_calls_cmd(
        &self,
        node: &str,
        service: &str,
        host: IpAddr,
        port: u16,
        count: usize,
        interval: Duration,
    ) -> Command {
        let mut cmd = self.cmd_as(node, service, "python3");
        cmd.arg(app("http_client.py"))
            .arg(host.to_string())
            .arg(port.to_string())
            .arg(count.to_string())
            .arg(interval.as_secs_f64().to_string());
        cmd
    }

    /// Runs [`Mesh::http_calls_cmd`] to its end and returns each call's
    /// outcome, in order. Bounded in time (a hung client is killed);
    /// panics if not every call ran.
    pub fn http_calls(
        &self,
        node: &str,
        service: &str,
        host: IpAddr,
        port: u16,
        count: usize,
        interval: Duration,
    ) -> Vec<CallResult> {
        let mut cmd = self.http_calls_cmd(node, service, host, port, count, interval);
        let bound =
            Duration::from_secs(30) + (interval + Duration::from_millis(500)) * count as u32;
        let out = output_with_timeout(&mut cmd, bound);
        let text = String::from_utf8_lossy(&out.stdout);
        let results: Vec<CallResult> = text.lines().filter_map(call_result).collect();
        assert_eq!(
            results.len(),
            count,
            "not every call ran within {bound:?}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        results
    }

    /// Starts [`Mesh::http_calls_cmd`] and returns at once: read its calls
    /// as they end with [`CallStream::next`]. Its stderr goes to
    /// `http-client-<node>.log` in the mesh's directory.
    pub fn http_call_stream(
        &self,
        node: &str,
        service: &str,
        host: IpAddr,
        port: u16,
        count: usize,
        interval: Duration,
    ) -> CallStream {
        let log =
            fs::File::create(self.dir.join(format!("http-client-{node}.log"))).expect("client log");
        let mut child = self
            .http_calls_cmd(node, service, host, port, count, interval)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn http_client.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        // Ends with the client's stdout.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        CallStream {
            child,
            lines,
            results: Vec::new(),
        }
    }

    /// The instance of `service` on `instance` as `node`'s agent knows it
    /// (its `GET /catalog` entry: node, address, state, reason, checks);
    /// `None` if the agent did not answer or has no such instance.
    pub fn catalog_instance(
        &self,
        node: &str,
        service: &str,
        instance: &str,
    ) -> Option<serde_json::Value> {
        let (200, catalog) = self.admin_get(node, "/catalog")? else {
            return None;
        };
        catalog["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == service)?["instances"]
            .as_array()?
            .iter()
            .find(|i| i["node"] == instance)
            .cloned()
    }

    /// The state ("passing", "warning", "critical") of the instance of
    /// `service` on `instance` as `node`'s agent knows it; `None` as for
    /// [`Mesh::catalog_instance`].
    pub fn instance_state(&self, node: &str, service: &str, instance: &str) -> Option<String> {
        self.catalog_instance(node, service, instance)?["state"]
            .as_str()
            .map(str::to_owned)
    }

    /// Polls `node`'s `GET /catalog` until the instance of `service` on
    /// `instance` is in `state`, for at most `timeout`; returns how long
    /// that took, `None` if it did not happen in time.
    pub fn wait_instance_state(
        &self,
        node: &str,
        service: &str,
        instance: &str,
        state: &str,
        timeout: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        wait_until(timeout, || {
            self.instance_state(node, service, instance).as_deref() == Some(state)
        })
        .then(|| start.elapsed())
    }
}

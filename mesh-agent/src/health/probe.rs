//! One run of an `http` or `tcp` check against an instance on this node.
//! The agent runs it from its own cgroup, so the loopback guard lets it
//! through (ARCHITECTURE.md, the loopback guard). A service with
//! containers is probed in each ([`instance`]).

use std::{io, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::State;
use crate::{
    config::{CheckKind, local_addr},
    containers::{Container, Containers},
    names::ServiceName,
};

/// Where a probe connects to `127.0.0.1:<port>`.
#[derive(Clone, Copy, Debug)]
pub enum Place<'a> {
    /// The node's own loopback.
    Node,
    /// A container's.
    Container(&'a Container),
}

impl Place<'_> {
    async fn connect(self, port: u16) -> io::Result<TcpStream> {
        match self {
            Place::Node => TcpStream::connect(local_addr(port)).await,
            Place::Container(c) => c.dial(port).await,
        }
    }
}

/// One run of the `http` or `tcp` check `kind` against the local instance
/// of `service` on `127.0.0.1:port`: on the node, or, if the service has
/// containers, in each of them. The instance is as good as its best
/// container (the data path skips one that refuses); the output names
/// each container's result.
pub async fn instance(
    kind: &CheckKind,
    containers: &Containers,
    service: &ServiceName,
    port: u16,
    timeout: Duration,
) -> (State, String) {
    let once = |place| async move {
        match kind {
            CheckKind::Http { path } => http(place, port, path, timeout).await,
            _ => tcp(place, port, timeout).await,
        }
    };
    let replicas = containers.replicas(service);
    if replicas.is_empty() {
        return once(Place::Node).await;
    }
    let mut best = State::Critical;
    let mut outputs = Vec::new();
    for c in &replicas {
        let (state, output) = once(Place::Container(c)).await;
        best = best.min(state);
        outputs.push(format!("container {}: {output}", c.cgroup.display()));
    }
    (best, outputs.join("; "))
}

/// How much of an http check's response body goes into its output.
const BODY_SHOWN: usize = 256;
/// How much of the body is read at most.
const BODY_READ: usize = 4096;

/// GET `http://127.0.0.1:<port><path>` at `place` within `timeout`: 2xx
/// passing, 429 warning, anything else, an error or no full answer in time
/// critical. Returns the state and a one-line output (status and body
/// start).
pub async fn http(place: Place<'_>, port: u16, path: &str, timeout: Duration) -> (State, String) {
    let url = format!("http://{}{path}", local_addr(port));
    match tokio::time::timeout(timeout, get(place, port, path)).await {
        Ok(Ok((status, body))) => {
            let state = if status.is_success() {
                State::Passing
            } else if status == StatusCode::TOO_MANY_REQUESTS {
                State::Warning
            } else {
                State::Critical
            };
            let shown: String = String::from_utf8_lossy(&body)
                .chars()
                .filter(|c| !c.is_control())
                .take(BODY_SHOWN)
                .collect();
            let output = if shown.is_empty() {
                format!("HTTP GET {url}: {status}")
            } else {
                format!("HTTP GET {url}: {status} Output: {shown}")
            };
            (state, output)
        }
        Ok(Err(e)) => (State::Critical, format!("HTTP GET {url}: {e}")),
        Err(_) => (
            State::Critical,
            format!("HTTP GET {url}: no answer within {timeout:?}"),
        ),
    }
}

async fn get(place: Place<'_>, port: u16, path: &str) -> Result<(StatusCode, Bytes), String> {
    let addr = local_addr(port);
    let stream = place.connect(port).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| with_sources(&e))?;
    let conn = tokio::spawn(conn);
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "mesh-agent health check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| with_sources(&e))?;
        let status = response.status();
        // A body larger than we read is still an answer: its status counts.
        let body = Limited::new(response.into_body(), BODY_READ)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok((status, body))
    }
    .await;
    conn.abort();
    result
}

/// `e` and its sources, joined with ": ": hyper's own words ("connection
/// error") say what failed only with them ("Connection reset by peer").
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !out.ends_with(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
        source = cause.source();
    }
    out
}

/// Connect to `127.0.0.1:<port>` at `place` within `timeout`: passing if
/// accepted.
pub async fn tcp(place: Place<'_>, port: u16, timeout: Duration) -> (State, String) {
    let addr = local_addr(port);
    match tokio::time::timeout(timeout, place.connect(port)).await {
        Ok(Ok(_)) => (State::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(e)) => (State::Critical, format!("TCP connect {addr}: {e}")),
        Err(_) => (
            State::Critical,
            format!("TCP connect {addr}: no answer within {timeout:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot HTTP server on 127.0.0.1 answering `response`.
    async fn server(response: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_status_maps_to_consul_states() {
        let t = Duration::from_secs(2);
        let ok = server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let (state, output) = http(Place::Node, ok, "/health", t).await;
        assert_eq!(state, State::Passing, "{output}");
        assert!(output.contains("200 OK Output: ok"), "{output}");
        let busy = server("HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            http(Place::Node, busy, "/health", t).await.0,
            State::Warning
        );
        let bad = server("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            http(Place::Node, bad, "/health", t).await.0,
            State::Critical
        );
        let redirect =
            server("HTTP/1.1 301 Moved\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            http(Place::Node, redirect, "/health", t).await.0,
            State::Critical
        );
    }

    #[tokio::test]
    async fn silence_and_refusal_are_critical() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // Accepts (backlog) but never answers.
        let (state, output) = http(Place::Node, port, "/", Duration::from_millis(200)).await;
        assert_eq!(state, State::Critical);
        assert!(output.contains("no answer within"), "{output}");
        assert_eq!(
            tcp(Place::Node, port, Duration::from_secs(1)).await.0,
            State::Passing
        );
        drop(l);
        let (state, output) = tcp(Place::Node, port, Duration::from_secs(1)).await;
        assert_eq!(state, State::Critical, "{output}");
        assert_eq!(
            http(Place::Node, port, "/", Duration::from_secs(1)).await.0,
            State::Critical
        );
    }

    /// An app that resets the connection mid-request: the output says so,
    /// not only hyper's "connection error".
    #[tokio::test]
    async fn a_reset_is_named_in_the_output() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            // Linger 0: closing sends a reset.
            let linger = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger).unwrap();
            drop(s);
        });
        let (state, output) = http(Place::Node, port, "/", Duration::from_secs(2)).await;
        assert_eq!(state, State::Critical);
        assert!(output.contains("reset by peer"), "{output}");
    }
}

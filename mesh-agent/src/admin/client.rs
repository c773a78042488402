//! The admin endpoint's clients: `mesh-agent status`, `exec` (its
//! fallback config), `catalog` and `check`, and the status table.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpStream;

use super::{AdminError, ConfigDoc, status::StatusDoc};
use crate::health::doc::{CatalogDoc, TtlUpdate};

/// Bound on one request, connect to last byte.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// `mesh-agent status`: fetches `/status` from the agent at `addr`.
pub async fn fetch_status(addr: SocketAddr) -> Result<StatusDoc, AdminError> {
    tokio::time::timeout(CLIENT_TIMEOUT, get(addr, "/status"))
        .await
        .map_err(|_| AdminError::Timeout(addr))?
}

/// `mesh-agent exec`: fetches `/config` from the agent at `addr`. Blocks,
/// on a runtime of its own that starts no thread, so the caller stays
/// single-threaded (it may need to `unshare` next).
pub fn fetch_config(addr: SocketAddr) -> Result<ConfigDoc, AdminError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::Runtime)?;
    rt.block_on(async {
        tokio::time::timeout(CLIENT_TIMEOUT, get(addr, "/config"))
            .await
            .map_err(|_| AdminError::Timeout(addr))?
    })
}

/// `mesh-agent ca retire-old`: fetches `/ca` from the agent at `addr`.
pub async fn fetch_trust(addr: SocketAddr) -> Result<super::trust::TrustDoc, AdminError> {
    tokio::time::timeout(CLIENT_TIMEOUT, get(addr, "/ca"))
        .await
        .map_err(|_| AdminError::Timeout(addr))?
}

/// `mesh-agent catalog`: fetches `/catalog` from the agent at `addr`.
pub async fn fetch_catalog(addr: SocketAddr) -> Result<CatalogDoc, AdminError> {
    tokio::time::timeout(CLIENT_TIMEOUT, get(addr, "/catalog"))
        .await
        .map_err(|_| AdminError::Timeout(addr))?
}

/// `mesh-agent check`: sends a ttl check update to the agent at `addr`.
pub async fn send_ttl(addr: SocketAddr, update: &TtlUpdate) -> Result<(), AdminError> {
    let body = serde_json::to_vec(update).map_err(|source| AdminError::Json { addr, source })?;
    let _: Value = tokio::time::timeout(CLIENT_TIMEOUT, request(addr, "/check", Some(body)))
        .await
        .map_err(|_| AdminError::Timeout(addr))??;
    Ok(())
}

async fn get<T: DeserializeOwned>(addr: SocketAddr, path: &str) -> Result<T, AdminError> {
    request(addr, path, None).await
}

/// A GET of `path`, or a POST of `body` to it; the JSON answer. An answer
/// other than 200 is an error, with the agent's message if it sent one.
async fn request<T: DeserializeOwned>(
    addr: SocketAddr,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<T, AdminError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| AdminError::Connect { addr, source })?;
    let http = |source| AdminError::Http { addr, source };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let builder = match body {
        Some(_) => Request::post(path).header(hyper::header::CONTENT_TYPE, "application/json"),
        None => Request::get(path),
    };
    let req = builder
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| AdminError::Request(e.to_string()))?;
    let response = sender.send_request(req).await.map_err(http)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    if status != StatusCode::OK {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        return Err(match message {
            Some(message) => AdminError::Refused { addr, message },
            None => AdminError::Status { addr, status },
        });
    }
    serde_json::from_slice(&body).map_err(|source| AdminError::Json { addr, source })
}

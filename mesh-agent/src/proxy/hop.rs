//! The hop between two agents: how the source agent tells the destination
//! agent who is calling and whom.
//!
//! For now this is a plaintext preamble (`MESHHOP1`, then the source and the
//! destination service names, each as one length byte and the bytes). The
//! mTLS issue replaces it: the client certificate then carries the source
//! identity and SNI the destination, and `connect`/`accept` return TLS streams.
//! Everything after the preamble is the app's bytes, unframed.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// First bytes of every hop.
const MAGIC: &[u8; 8] = b"MESHHOP1";
/// How long the destination waits for the preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    #[error("i/o error on the hop: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer did not speak the mesh protocol (plaintext or unknown client)")]
    NotMesh,
    #[error("peer sent no preamble within {0:?}")]
    Timeout(Duration),
    #[error("service name too long for the hop: {0}")]
    NameTooLong(String),
    #[error("peer asked for service {asked:?} but this port belongs to {expected:?}")]
    WrongDestination { asked: String, expected: String },
}

/// The caller's identity as the destination agent learned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub service: String,
}

/// Source side: announces `src` calling `dst` on a fresh connection to the
/// destination agent.
pub async fn connect(mut stream: TcpStream, src: &str, dst: &str) -> Result<TcpStream, HopError> {
    let mut preamble = Vec::with_capacity(MAGIC.len() + 2 + src.len() + dst.len());
    preamble.extend_from_slice(MAGIC);
    for name in [src, dst] {
        let len = u8::try_from(name.len()).map_err(|_| HopError::NameTooLong(name.to_owned()))?;
        preamble.push(len);
        preamble.extend_from_slice(name.as_bytes());
    }
    stream.write_all(&preamble).await?;
    Ok(stream)
}

/// Destination side: reads the preamble of a connection that arrived for
/// `dst` and returns who is calling.
pub async fn accept(mut stream: TcpStream, dst: &str) -> Result<(TcpStream, Peer), HopError> {
    let read = async {
        let mut magic = [0u8; 8];
        stream.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(HopError::NotMesh);
        }
        let src = read_name(&mut stream).await?;
        let asked = read_name(&mut stream).await?;
        Ok((src, asked))
    };
    let (src, asked) = tokio::time::timeout(PREAMBLE_TIMEOUT, read)
        .await
        .map_err(|_| HopError::Timeout(PREAMBLE_TIMEOUT))??;
    if asked != dst {
        return Err(HopError::WrongDestination {
            asked,
            expected: dst.to_owned(),
        });
    }
    Ok((stream, Peer { service: src }))
}

async fn read_name(stream: &mut TcpStream) -> Result<String, HopError> {
    let len = stream.read_u8().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    String::from_utf8(buf).map_err(|_| HopError::NotMesh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn preamble_round_trip_and_rejections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let s = TcpStream::connect(addr).await.unwrap();
            let mut s = connect(s, "web", "api").await.unwrap();
            s.write_all(b"hello").await.unwrap();
        });
        let (s, _) = listener.accept().await.unwrap();
        let (mut s, peer) = accept(s, "api").await.unwrap();
        assert_eq!(peer.service, "web");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        client.await.unwrap();

        // Plaintext from a random client is refused.
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        });
        let (s, _) = listener.accept().await.unwrap();
        assert!(matches!(accept(s, "api").await, Err(HopError::NotMesh)));

        // A hop for another service is refused.
        tokio::spawn(async move {
            let s = TcpStream::connect(addr).await.unwrap();
            let _ = connect(s, "web", "db").await.unwrap();
        });
        let (s, _) = listener.accept().await.unwrap();
        assert!(matches!(
            accept(s, "api").await,
            Err(HopError::WrongDestination { .. })
        ));
    }
}

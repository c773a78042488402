//! The TCP socket under a TLS session, read in large batches.
//!
//! rustls asks its transport for at most 4 KiB at a time; on a busy stream
//! that would mean several `recv` calls (and ACKs) per 16 KiB record. This
//! socket reads up to `BATCH` bytes at once and hands them out from memory.
//! The batch buffer exists only while unread bytes wait in it or a read
//! finds data: an idle connection holds none.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Most bytes one `recv` asks for.
pub const BATCH: usize = 256 * 1024;

/// A TCP stream whose reads are batched (see the module docs).
pub struct Transport {
    tcp: TcpStream,
    /// Read from the socket, not yet handed out.
    buf: BytesMut,
}

impl Transport {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: BytesMut::new(),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if this.buf.capacity() < BATCH {
                this.buf.reserve(BATCH);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.tcp), cx, &mut this.buf) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                other => {
                    // Nothing buffered and nothing more now: drop the memory.
                    this.buf = BytesMut::new();
                    return other.map_ok(|_| ());
                }
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn hands_out_batches_and_drops_the_buffer_when_drained() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut transport = Transport::new(server);
        let sent: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        // Small reads, as rustls makes them.
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = transport.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(
            transport.buf.capacity(),
            0,
            "a drained transport holds no buffer"
        );
    }
}

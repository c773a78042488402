//! The TCP socket under a TLS session, read in large batches.
//!
//! rustls asks its transport for at most 4 KiB at a time; on a busy stream
//! that would mean several `recv` calls (and ACKs) per 16 KiB record. This
//! socket reads up to `buffer::SIZE` bytes at once and hands them out from
//! memory. It holds a buffer (`crate::buffer`) only while unread bytes wait
//! in it: an idle connection holds none.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A TCP stream whose reads are batched (see the module docs).
pub struct Transport {
    tcp: TcpStream,
    /// Read from the socket; `buf[at..]` is not yet handed out.
    buf: BytesMut,
    at: usize,
}

impl Transport {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: BytesMut::new(),
            at: 0,
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
        if this.at == this.buf.len() {
            this.buf.clear();
            this.at = 0;
            if this.buf.capacity() == 0 {
                this.buf = crate::buffer::take();
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.tcp), cx, &mut this.buf) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                other => {
                    // Nothing buffered and nothing more now: give it back.
                    crate::buffer::give(std::mem::take(&mut this.buf));
                    return other.map_ok(|_| ());
                }
            }
        }
        let n = out.remaining().min(this.buf.len() - this.at);
        out.put_slice(&this.buf[this.at..this.at + n]);
        this.at += n;
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

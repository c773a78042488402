//! The byte copy between two sockets, both ways, in one task.
//!
//! Each direction holds a buffer (`crate::buffer`) only while bytes are in
//! flight: it is taken when a read is due and given back when the reader has
//! nothing more and everything read was written. An idle connection holds
//! no buffer. Reads are large and gathered before writing, so a busy stream
//! costs few syscalls (and, over TLS, few full records): see
//! `cargo xtask bench`.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes one direction reads before it writes.
const CHUNK: usize = crate::buffer::SIZE;

/// Copies both ways until both directions are done. When one side finishes
/// writing, the other side's write half is shut down (half-close), and the
/// opposite direction keeps flowing. Returns bytes (a -> b, b -> a).
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Flow::default();
    let mut ba = Flow::default();
    poll_fn(|cx| {
        let to_b = ab.poll(cx, a, b)?;
        let to_a = ba.poll(cx, b, a)?;
        let to_b = ready!(to_b);
        let to_a = ready!(to_a);
        Poll::Ready(Ok((to_b, to_a)))
    })
    .await
}

/// One direction of a relay.
#[derive(Default)]
struct Flow {
    /// Read; `buf[at..]` is not yet written. No capacity while idle.
    buf: BytesMut,
    at: usize,
    /// The reader reached end of stream.
    eof: bool,
    /// Written bytes may sit in the writer (TLS) until flushed.
    flush: bool,
    /// The writer was shut down: this direction is finished.
    done: bool,
    copied: u64,
}

impl Flow {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            // Gather what the reader has, up to CHUNK.
            let mut read_pending = false;
            while !self.eof && self.buf.len() < CHUNK {
                if self.buf.capacity() == 0 {
                    self.buf = crate::buffer::take();
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut *r), cx, &mut self.buf) {
                    Poll::Ready(Ok(0)) => self.eof = true,
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        read_pending = true;
                        break;
                    }
                }
            }
            // Write it all out.
            while self.at < self.buf.len() {
                match Pin::new(&mut *w).poll_write(cx, &self.buf[self.at..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.at += n;
                        self.copied += n as u64;
                        self.flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // All written: give the memory back while the reader is quiet.
            self.at = 0;
            if read_pending || self.eof {
                crate::buffer::give(std::mem::take(&mut self.buf));
            } else {
                self.buf.clear();
                continue;
            }
            if self.flush {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                self.flush = false;
            }
            if !self.eof {
                return Poll::Pending;
            }
            ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
            self.done = true;
            return Poll::Ready(Ok(self.copied));
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (mut app, mut a) = duplex(64 * 1024);
        let (mut b, mut svc) = duplex(64 * 1024);
        let relay = tokio::spawn(async move { relay(&mut a, &mut b).await });
        let up = pattern(3 * CHUNK + 17, 1);
        let down = pattern(2 * CHUNK + 5, 2);
        let expected_up = up.clone();
        let reply = down.clone();
        let service = tokio::spawn(async move {
            let mut got = Vec::new();
            // Reads until the app's half-close arrives, then answers.
            svc.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, expected_up);
            svc.write_all(&reply).await.unwrap();
            svc.shutdown().await.unwrap();
        });
        app.write_all(&up).await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, down);
        service.await.unwrap();
        let (to_b, to_a) = relay.await.unwrap().unwrap();
        assert_eq!((to_b, to_a), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (mut app, mut a) = duplex(64 * 1024);
        let (mut b, mut svc) = duplex(64 * 1024);
        let mut flow = Flow::default();
        app.write_all(b"hello").await.unwrap();
        let poll = poll_fn(|cx| Poll::Ready(flow.poll(cx, &mut a, &mut b))).await;
        assert!(poll.is_pending(), "the reader is still open");
        let mut got = [0u8; 5];
        svc.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(flow.copied, 5);
        assert_eq!(flow.buf.capacity(), 0, "idle flows give their buffer back");
    }
}

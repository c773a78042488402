//! The byte copy between two sockets, both ways, in one task.
//!
//! Each direction holds a buffer (`crate::buffer`) only while bytes are in
//! flight: it is taken when a read is due and given back when the reader has
//! nothing more and everything read was written. An idle connection holds
//! no buffer. Reads are large and gathered before writing, so a busy stream
//! costs few syscalls (and, over TLS, few full records): see
//! `cargo xtask bench`.
//!
//! Between a socket and a `mesh/2` stream ([`relay_tunnel`]) the bytes are
//! not copied in user space: a read from the socket is handed to HTTP/2 as
//! it is, and what HTTP/2 received is written to the socket from its own
//! buffers (one vectored write for up to [`CHUNK`] bytes).

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::tunnel;

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

/// As [`relay`], between socket `a` and stream `s` without copying the
/// bytes (see the module docs). Returns bytes (a -> s, s -> a).
pub async fn relay_tunnel<A>(a: &mut A, s: &mut tunnel::Stream) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Up::default();
    let mut down = Down::default();
    poll_fn(|cx| {
        let to_s = up.poll(cx, a, s)?;
        let to_a = down.poll(cx, s, a)?;
        let to_s = ready!(to_s);
        let to_a = ready!(to_a);
        Poll::Ready(Ok((to_s, to_a)))
    })
    .await
}

/// Socket to stream: each read is sent as it is.
#[derive(Default)]
struct Up {
    /// Read and not yet sent.
    out: Bytes,
    eof: bool,
    done: bool,
    copied: u64,
}

impl Up {
    fn poll<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        s: &mut tunnel::Stream,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.copied));
            }
            while !self.out.is_empty() {
                let n = ready!(s.poll_send(cx, &mut self.out))?;
                self.copied += n as u64;
            }
            if self.eof {
                ready!(Pin::new(&mut *s).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            // A buffer of its own for each read: HTTP/2 keeps it until
            // sent. Freed at once if nothing was there, so an idle
            // direction holds none.
            let mut buf = BytesMut::with_capacity(CHUNK);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *r),
                cx,
                &mut buf
            ))? {
                0 => self.eof = true,
                _ => self.out = buf.freeze(),
            }
        }
    }
}

/// Most chunks one vectored write takes.
const SLICES: usize = 64;

/// Stream to socket: what HTTP/2 received, gathered up to [`CHUNK`] and
/// written with one vectored write.
#[derive(Default)]
struct Down {
    chunks: std::collections::VecDeque<Bytes>,
    eof: bool,
    flush: bool,
    done: bool,
    copied: u64,
}

impl Down {
    fn poll<W>(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut tunnel::Stream,
        w: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            let mut read_pending = false;
            let mut held: usize = self.chunks.iter().map(Bytes::len).sum();
            while !self.eof && held < CHUNK && self.chunks.len() < SLICES {
                match s.poll_chunk(cx) {
                    Poll::Ready(Ok(Some(chunk))) => {
                        held += chunk.len();
                        self.chunks.push_back(chunk);
                    }
                    Poll::Ready(Ok(None)) => self.eof = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        read_pending = true;
                        break;
                    }
                }
            }
            while !self.chunks.is_empty() {
                let mut slices = [io::IoSlice::new(&[]); SLICES];
                for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
                    *slot = io::IoSlice::new(chunk);
                }
                let count = self.chunks.len().min(SLICES);
                let mut n = ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..count]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.copied += n as u64;
                self.flush = true;
                while n > 0 {
                    let Some(front) = self.chunks.front_mut() else {
                        break;
                    };
                    let step = n.min(front.len());
                    front.advance(step);
                    n -= step;
                    if front.is_empty() {
                        self.chunks.pop_front();
                    }
                }
            }
            if !read_pending && !self.eof {
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
            assert!(got == expected_up, "{} bytes went", got.len());
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

    /// app <-> relay_tunnel <-> HTTP/2 <-> relay_tunnel <-> service, as
    /// the two agents run it.
    #[tokio::test]
    async fn relays_through_a_stream_both_ways_with_half_close() {
        let bound = std::time::Duration::from_secs(20);
        tokio::time::timeout(bound, through_a_stream())
            .await
            .expect("the relay hung");
    }

    async fn through_a_stream() {
        let (near, far) = duplex(1 << 20);
        let (mut svc_end, mut svc) = duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut server = tunnel::Server::handshake(far).await.unwrap();
            let connect = server.accept().await.unwrap().unwrap();
            let relayed = tokio::spawn(async move {
                let mut stream = connect.accept().unwrap();
                relay_tunnel(&mut svc_end, &mut stream).await
            });
            // Streams make progress while the connection is polled.
            while server.accept().await.is_some() {}
            relayed.await.unwrap()
        });
        let (client, driver) = tunnel::handshake(near).await.unwrap();
        tokio::spawn(driver);
        let mut stream = client.open("api.svc.mesh.local:80").await.unwrap();
        let (mut app, mut app_end) = duplex(64 * 1024);
        let relay = tokio::spawn(async move { relay_tunnel(&mut app_end, &mut stream).await });
        let up = pattern(3 * CHUNK + 17, 1);
        let down = pattern(2 * CHUNK + 5, 2);
        let (expected_up, reply) = (up.clone(), down.clone());
        let service = tokio::spawn(async move {
            let mut got = Vec::new();
            svc.read_to_end(&mut got).await.unwrap();
            assert!(got == expected_up, "{} bytes went", got.len());
            svc.write_all(&reply).await?;
            svc.shutdown().await
        });
        let wrote = app.write_all(&up).await;
        if wrote.is_err() {
            panic!("app write: {wrote:?}; relay: {:?}", relay.await);
        }
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        if got != down {
            panic!(
                "{} bytes came back; service: {:?}; server relay: {:?}",
                got.len(),
                service.await,
                server.await
            );
        }
        service.await.unwrap().unwrap();
        let (to_s, to_a) = relay.await.unwrap().unwrap();
        assert_eq!((to_s, to_a), (up.len() as u64, down.len() as u64));
        drop(client);
        let (from_svc, to_svc) = server.await.unwrap().unwrap();
        assert_eq!((from_svc, to_svc), (down.len() as u64, up.len() as u64));
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

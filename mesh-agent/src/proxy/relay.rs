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
//! buffers (one vectored write for up to `CHUNK` bytes).

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
    /// A flow that goes on after `copied` bytes went another way.
    fn after(copied: u64) -> Self {
        Self {
            copied,
            ..Self::default()
        }
    }

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

/// How far a flow on a `mesh/2` stream has come, for a [`Mover`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Bytes relayed, both ways.
    pub bytes: u64,
    /// Reads from the socket.
    pub reads: u64,
    /// A direction has not ended yet (a download after the request's
    /// half-close still counts).
    pub open: bool,
}

/// Where a `mesh/2` stream's bytes may move to (see `tunnel`): asked on
/// every turn of [`relay_tunnel`]; once it yields a connection, each
/// direction finishes what it has on the stream and goes on over that
/// connection.
pub trait Mover {
    type Conn: AsyncRead + AsyncWrite + Unpin;
    /// `Ready` with the connection to move to; `Pending` until then (or
    /// for good), having arranged a wake-up if it will be ready later.
    fn poll_conn(&mut self, cx: &mut Context<'_>, progress: Progress) -> Poll<Self::Conn>;
    /// Both directions left the stream (called once).
    fn left(&mut self) {}
}

/// A [`Mover`] that never moves.
pub struct Stay;

impl Mover for Stay {
    type Conn = tokio::io::DuplexStream;
    fn poll_conn(&mut self, _: &mut Context<'_>, _: Progress) -> Poll<Self::Conn> {
        Poll::Pending
    }
}

/// How long a direction waits for the move's connection after the peer
/// said its bytes go on over it.
const MOVE_WAIT: std::time::Duration = crate::tls::HANDSHAKE_TIMEOUT;

/// As [`relay`], between socket `a` and stream `s` without copying the
/// bytes (see the module docs), moving both directions to the connection
/// `mover` yields, if it does. Returns bytes (a -> s, s -> a).
pub async fn relay_tunnel<A, M>(
    a: &mut A,
    s: &mut tunnel::Stream,
    mover: &mut M,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    M: Mover,
{
    let mut up = Up::default();
    let mut down = Down::default();
    // After the move: a -> conn and conn -> a. Boxed: a TLS connection
    // inline would make every relay's future (one per idle app connection)
    // larger by its size.
    let mut conn: Option<Box<M::Conn>> = None;
    let mut up_moved: Option<Flow> = None;
    let mut down_moved: Option<Flow> = None;
    let mut waiting: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut left = false;
    poll_fn(|cx| {
        if conn.is_none() {
            let progress = Progress {
                bytes: up.copied + down.copied,
                reads: up.reads,
                open: !up.eof || !down.eof,
            };
            if let Poll::Ready(c) = mover.poll_conn(cx, progress) {
                conn = Some(Box::new(c));
                up.moving = true;
            }
        }
        let to_s = match (&mut up_moved, &mut conn) {
            (Some(flow), Some(c)) => flow.poll(cx, a, c),
            _ => match up.poll(cx, a, s)? {
                Poll::Ready(End::Moved) => {
                    let flow = up_moved.insert(Flow::after(up.copied));
                    let c = conn.as_mut().expect("moved only with a connection");
                    flow.poll(cx, a, c)
                }
                Poll::Ready(End::Done) => Poll::Ready(Ok(up.copied)),
                Poll::Pending => Poll::Pending,
            },
        }?;
        let to_a = match (&mut down_moved, &mut conn) {
            (Some(flow), Some(c)) => flow.poll(cx, c, a),
            _ => match down.poll(cx, s, a)? {
                Poll::Ready(End::Moved) => match conn.as_mut() {
                    Some(c) => down_moved.insert(Flow::after(down.copied)).poll(cx, c, a),
                    None => {
                        let wait =
                            waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(MOVE_WAIT)));
                        ready!(wait.as_mut().poll(cx));
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the moved stream's connection did not come",
                        )));
                    }
                },
                Poll::Ready(End::Done) => Poll::Ready(Ok(down.copied)),
                Poll::Pending => Poll::Pending,
            },
        }?;
        if !left && (up_moved.is_some() || up.done) && (down_moved.is_some() || down.done) {
            left = true;
            mover.left();
        }
        let to_s = ready!(to_s);
        let to_a = ready!(to_a);
        Poll::Ready(Ok((to_s, to_a)))
    })
    .await
}

/// How a direction on a stream ended.
enum End {
    /// This side's bytes are all through and the direction is finished.
    Done,
    /// The rest goes over the move's connection.
    Moved,
}

/// Socket to stream: each read is sent as it is.
#[derive(Default)]
struct Up {
    /// Read and not yet sent.
    out: Bytes,
    eof: bool,
    done: bool,
    /// The move's connection is there: end the stream's side after what
    /// was read.
    moving: bool,
    copied: u64,
    reads: u64,
}

impl Up {
    fn poll<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        s: &mut tunnel::Stream,
    ) -> Poll<io::Result<End>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(End::Done));
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
            if self.moving {
                s.end_moved()?;
                return Poll::Ready(Ok(End::Moved));
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
                _ => {
                    self.reads += 1;
                    self.out = buf.freeze();
                }
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
    /// Ends [`End::Moved`] if the peer's side ended with the move trailer
    /// (`w` stays open), else shuts `w` down at the end.
    fn poll<W>(
        &mut self,
        cx: &mut Context<'_>,
        s: &mut tunnel::Stream,
        w: &mut W,
    ) -> Poll<io::Result<End>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(if s.moved() { End::Moved } else { End::Done }));
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
            if s.moved() {
                self.done = true;
                return Poll::Ready(Ok(End::Moved));
            }
            ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
            self.done = true;
            return Poll::Ready(Ok(End::Done));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
    };

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
                let mut stream = connect.accept(None).unwrap();
                relay_tunnel(&mut svc_end, &mut stream, &mut Stay).await
            });
            // Streams make progress while the connection is polled.
            while server.accept().await.is_some() {}
            relayed.await.unwrap()
        });
        let (client, driver) = tunnel::handshake(near).await.unwrap();
        tokio::spawn(driver);
        let mut stream = client.open("api.svc.mesh.local:80").await.unwrap();
        let (mut app, mut app_end) = duplex(64 * 1024);
        let relay =
            tokio::spawn(async move { relay_tunnel(&mut app_end, &mut stream, &mut Stay).await });
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

    /// Source side's mover for the tests: once `after` bytes went, takes
    /// one end of an in-memory pipe and sends the other to the destination
    /// side's [`Arrives`]: at once (before the trailer can get there), or
    /// from a task `late` later.
    struct Moves {
        after: u64,
        late: Option<std::time::Duration>,
        to: Option<tokio::sync::oneshot::Sender<tokio::io::DuplexStream>>,
        left: Arc<AtomicBool>,
    }

    impl Mover for Moves {
        type Conn = tokio::io::DuplexStream;
        fn poll_conn(&mut self, _: &mut Context<'_>, p: Progress) -> Poll<Self::Conn> {
            if p.bytes < self.after || !p.open {
                return Poll::Pending;
            }
            let Some(to) = self.to.take() else {
                return Poll::Pending;
            };
            let (mine, theirs) = duplex(256 * 1024);
            match self.late {
                None => {
                    let _ = to.send(theirs);
                }
                Some(late) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(late).await;
                        let _ = to.send(theirs);
                    });
                }
            }
            Poll::Ready(mine)
        }
        fn left(&mut self) {
            self.left.store(true, Ordering::SeqCst);
        }
    }

    struct Arrives(Option<tokio::sync::oneshot::Receiver<tokio::io::DuplexStream>>);

    impl Mover for Arrives {
        type Conn = tokio::io::DuplexStream;
        fn poll_conn(&mut self, cx: &mut Context<'_>, _: Progress) -> Poll<Self::Conn> {
            let Some(rx) = self.0.as_mut() else {
                return Poll::Pending;
            };
            let conn = ready!(Pin::new(rx).poll(cx));
            self.0 = None;
            conn.map_or(Poll::Pending, Poll::Ready)
        }
    }

    /// How the test service answers.
    #[derive(Clone, Copy, PartialEq)]
    enum Answer {
        /// While it reads (after the first MiB).
        Meanwhile,
        /// All of it, ending its side, before it reads.
        First,
        /// After it read the app's half-close.
        Last,
    }

    /// app <-> relay_tunnel <-> HTTP/2 (then a pipe) <-> relay_tunnel <->
    /// service, both ways. Returns whether each direction moved (app's,
    /// service's).
    async fn moving(
        up_len: usize,
        down_len: usize,
        late_ms: Option<u64>,
        how: Answer,
    ) -> (bool, bool) {
        let (near, far) = duplex(1 << 20);
        let (mut svc_end, svc) = duplex(64 * 1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let mut server = tunnel::Server::handshake(far).await.unwrap();
            let connect = server.accept().await.unwrap().unwrap();
            let relayed = tokio::spawn(async move {
                let mut stream = connect.accept(Some(7)).unwrap();
                let relayed = relay_tunnel(&mut svc_end, &mut stream, &mut Arrives(Some(rx))).await;
                relayed.map(|bytes| (bytes, stream.moved()))
            });
            while server.accept().await.is_some() {}
            relayed.await.unwrap()
        });
        let (client, driver) = tunnel::handshake(near).await.unwrap();
        tokio::spawn(driver);
        let mut stream = client.open("api.svc.mesh.local:80").await.unwrap();
        assert_eq!(stream.move_token(), Some(7), "the 200 carries the token");
        let left = Arc::new(AtomicBool::new(false));
        let mut mover = Moves {
            after: 64 * 1024,
            late: late_ms.map(std::time::Duration::from_millis),
            to: Some(tx),
            left: left.clone(),
        };
        let (app, mut app_end) = duplex(64 * 1024);
        let relay = tokio::spawn(async move {
            let relayed = relay_tunnel(&mut app_end, &mut stream, &mut mover).await;
            relayed.map(|bytes| (bytes, stream.moved()))
        });
        let (up, down) = (pattern(up_len, 3), pattern(down_len, 4));
        let (expected_up, reply) = (up.clone(), down.clone());
        let service = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(svc);
            let answer = async {
                w.write_all(&reply).await?;
                w.shutdown().await
            };
            let mut got = Vec::new();
            if how == Answer::First {
                answer.await?;
                r.read_to_end(&mut got).await?;
            } else if how == Answer::Last {
                r.read_to_end(&mut got).await?;
                answer.await?;
            } else {
                // Past the first 64 KiB the app's bytes come over the pipe,
                // so the destination has it before the answer starts.
                got.resize(1 << 20, 0);
                r.read_exact(&mut got).await?;
                let (answered, read) = tokio::join!(answer, r.read_to_end(&mut got));
                answered?;
                read?;
            }
            assert!(
                got == expected_up,
                "{} of {} bytes came",
                got.len(),
                expected_up.len()
            );
            io::Result::Ok(())
        });
        let (mut r, mut w) = tokio::io::split(app);
        let send = async {
            w.write_all(&up).await?;
            w.shutdown().await
        };
        let mut got = Vec::new();
        let (sent, read) = tokio::join!(send, r.read_to_end(&mut got));
        if sent.is_err() || read.is_err() {
            panic!(
                "app: {sent:?} {read:?}; source relay: {:?}; destination relay: {:?}",
                relay.await,
                server.await
            );
        }
        assert!(
            got == down,
            "{} of {} bytes came back",
            got.len(),
            down.len()
        );
        service.await.unwrap().unwrap();
        let ((to_s, to_a), down_moved) = relay.await.unwrap().unwrap();
        assert_eq!((to_s, to_a), (up_len as u64, down_len as u64));
        assert!(
            left.load(Ordering::SeqCst),
            "both directions left the stream"
        );
        drop(client);
        let ((from_svc, to_svc), up_moved) = server.await.unwrap().unwrap();
        assert_eq!((from_svc, to_svc), (down_len as u64, up_len as u64));
        (up_moved, down_moved)
    }

    #[tokio::test]
    async fn a_busy_stream_moves_both_ways_without_losing_a_byte() {
        let bound = std::time::Duration::from_secs(20);
        // More than a stream window each way. The destination has the
        // pipe before the trailer, then (50 ms late) after it.
        let window = tunnel::STREAM_WINDOW as usize;
        for late_ms in [None, Some(50)] {
            let run = moving(2 * window + 11, 2 * window + 5, late_ms, Answer::Meanwhile);
            let moved = tokio::time::timeout(bound, run)
                .await
                .expect("the relay hung");
            assert_eq!(moved, (true, true), "late by {late_ms:?} ms");
        }
    }

    #[tokio::test]
    async fn a_stream_whose_answer_ended_moves_only_the_other_way() {
        let bound = std::time::Duration::from_secs(20);
        let run = moving(4 * CHUNK + 11, 1000, None, Answer::First);
        let moved = tokio::time::timeout(bound, run)
            .await
            .expect("the relay hung");
        assert_eq!(moved, (true, false));
    }

    #[tokio::test]
    async fn a_download_after_the_request_half_close_moves() {
        let bound = std::time::Duration::from_secs(20);
        // More than a stream window: the answer cannot be all sent before
        // the move.
        let window = tunnel::STREAM_WINDOW as usize;
        let run = moving(1000, 2 * window + 7, None, Answer::Last);
        let moved = tokio::time::timeout(bound, run)
            .await
            .expect("the relay hung");
        assert_eq!(moved, (false, true));
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

//! The multiplexed hop between agents (`mesh/2`): the HTTP/2 framing, used
//! by `pool` (source side) and `inbound` (destination side).
//!
//! Wire form: one TLS 1.3 connection per (source service, destination
//! service, destination node), ALPN `mesh/2`, carrying HTTP/2. Each app
//! connection is one CONNECT stream whose `:authority` is
//! `<destination service>.svc.<trust domain>:<port>` and must name the
//! service of the connection's SNI. The destination answers 200 before any
//! app byte flows (the client holds the app's bytes until then), or refuses
//! with a status (403: intentions deny; 400: authority not the SNI's
//! service; 405: not a CONNECT). Half-close is END_STREAM; an abort is
//! RST_STREAM.
//!
//! A busy stream may leave the pooled connection for one of its own (see
//! `relay::relay_tunnel`): the 200 carries [`MOVE_HEADER`], a token; the
//! client opens a TLS connection with ALPN `mesh/move`, sends the token's
//! 16 bytes, waits for the one-byte answer `MOVE_ACK`, and then
//! the app's bytes go unframed (as `mesh/1`). Each side ends its half of
//! the stream with the trailer [`MOVED_TRAILER`] once it has the new
//! connection, and sends the rest of its bytes on it; a reader that meets
//! the trailer reads on from the new connection. (RFC 9113 8.5 allows
//! only DATA after a CONNECT's 200; `mesh/2` is spoken only between our
//! agents, and h2 takes the trailer.)
//!
//! Settings, as measured in the findings: 16 KiB
//! frames (bigger ones cost CPU per GB), 4 MiB stream window, 16 MiB
//! connection window; the server admits 200 concurrent streams.
//!
//! [`handshake`] and [`Client::open`] are the client side, [`Server`] (or
//! [`serve`]) the server side, [`Stream`] the app connection's bytes.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, Waker, ready},
};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// ALPN protocol id of the multiplexed form (negotiated by `tls`).
pub const ALPN: &[u8] = crate::tls::ALPN_MUX;
/// Largest HTTP/2 frame payload either side sends or accepts.
pub const FRAME_SIZE: u32 = 16 * 1024;
/// Flow-control window of each stream.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Flow-control window of the connection (all its streams).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Concurrent streams the server admits per connection; a client over it
/// waits for a slot (h2 queues the open).
pub const MAX_STREAMS: u32 = 200;
/// Largest header block accepted: a CONNECT carries one short authority.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Header of a 200: the token (32 hex digits) a `mesh/move` connection
/// presents to take this stream over.
pub const MOVE_HEADER: &str = "mesh-move";
/// Trailer that ends a side of a stream whose bytes go on over the
/// `mesh/move` connection (a plain END_STREAM is the app's half-close).
pub const MOVED_TRAILER: &str = "mesh-moved";
/// The byte the destination answers a `mesh/move` connection's token with
/// once it has taken the stream over.
pub const MOVE_ACK: u8 = 1;
/// A pooled connection without streams this long is closed by its source
/// (the destination waits twice as long before it closes it).
pub const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("http/2 handshake failed: {0}")]
    Handshake(#[source] h2::Error),
    #[error("http/2 connection failed: {0}")]
    Connection(#[source] h2::Error),
    #[error("invalid authority {authority:?}: {source}")]
    Authority {
        authority: String,
        #[source]
        source: http::Error,
    },
    /// The peer answered the CONNECT with a status other than 200.
    #[error("the peer refused the stream with status {status}")]
    Refused { status: StatusCode },
    /// The stream was not processed: the connection is closed or going
    /// away, or the peer refused the stream (REFUSED_STREAM) before acting
    /// on it. No app byte was sent; retry on a fresh connection.
    #[error("the connection could not carry the stream (retry on a fresh one): {0}")]
    Unprocessed(#[source] h2::Error),
    /// The peer reset the stream before answering, for another reason.
    #[error("the stream was reset before the answer: {0}")]
    Reset(#[source] h2::Error),
    #[error("failed to answer a stream: {0}")]
    Respond(#[source] h2::Error),
}

impl TunnelError {
    /// Whether opening the stream again on a fresh connection is safe and
    /// may succeed (the peer did not process this one).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unprocessed(_))
    }
}

/// `<service>.svc.<trust domain>:<port>`, the `:authority` of a CONNECT.
pub fn authority(service: &crate::names::ServiceName, trust_domain: &str, port: u16) -> String {
    format!("{service}.svc.{trust_domain}:{port}")
}

/// The (service, port) an `:authority` names in `trust_domain`, or `None`
/// if it is not of the form [`authority`] makes.
pub fn parse_authority<'a>(authority: &'a str, trust_domain: &str) -> Option<(&'a str, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let service = host.strip_suffix(trust_domain)?.strip_suffix(".svc.")?;
    (!service.is_empty() && !service.contains('.')).then_some((service, port))
}

// ---------------------------------------------------------------- client

/// The client side of one `mesh/2` connection: opens streams. Cheap to
/// clone; the connection lives while a clone, a stream or the driver
/// future does (and the peer keeps it).
#[derive(Clone)]
pub struct Client {
    send: h2::client::SendRequest<Bytes>,
}

/// Runs the HTTP/2 handshake as the client over `io` (TLS already
/// established). Returns the [`Client`] and the connection's driver, a
/// future that must be polled (spawned) for any stream to make progress; it
/// ends when the connection closes.
pub async fn handshake<T>(
    io: T,
) -> Result<
    (
        Client,
        impl Future<Output = Result<(), TunnelError>> + Send + 'static,
    ),
    TunnelError,
>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(TunnelError::Handshake)?;
    Ok((Client { send }, async move {
        conn.await.map_err(TunnelError::Connection)
    }))
}

impl Client {
    /// Opens a stream to `authority` (see [`authority`]): sends the
    /// CONNECT and waits for the answer. Waits for a slot if the peer's
    /// concurrent stream limit is reached.
    ///
    /// Fails with [`TunnelError::Refused`] on a status other than 200,
    /// [`TunnelError::Unprocessed`] (retryable) if the connection could
    /// not carry the stream.
    pub async fn open(&self, authority: &str) -> Result<Stream, TunnelError> {
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .map_err(|source| TunnelError::Authority {
                authority: authority.to_owned(),
                source,
            })?;
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(TunnelError::Unprocessed)?;
        let (response, body) = send
            .send_request(request, false)
            .map_err(TunnelError::Unprocessed)?;
        let response = response.await.map_err(before_answer)?;
        match response.status() {
            StatusCode::OK => {
                let token = response
                    .headers()
                    .get(MOVE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| u128::from_str_radix(v, 16).ok());
                Ok(Stream::new(body, response.into_body(), token))
            }
            // Dropping `body` resets the stream (CANCEL) if the peer did
            // not end it.
            status => Err(TunnelError::Refused { status }),
        }
    }

    /// Whether the connection can take a new stream: false once it is
    /// closed, failed or the peer sent GOAWAY. A pool skips such a
    /// connection. Does not wait.
    pub fn is_ready(&self) -> bool {
        let mut send = self.send.clone();
        let mut cx = Context::from_waker(Waker::noop());
        matches!(send.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Concurrent streams the peer allows on this connection now.
    pub fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }
}

/// Sorts a failure before the CONNECT's answer into retryable or not.
fn before_answer(e: h2::Error) -> TunnelError {
    if e.is_go_away() || e.is_io() || e.reason() == Some(Reason::REFUSED_STREAM) {
        TunnelError::Unprocessed(e)
    } else if e.is_reset() {
        TunnelError::Reset(e)
    } else {
        // A library error (the connection closed under the stream).
        TunnelError::Unprocessed(e)
    }
}

// ---------------------------------------------------------------- server

/// The server side of one `mesh/2` connection: yields the CONNECTs.
///
/// Streams make progress only while [`Server::accept`] is being polled, so
/// loop on it and hand each [`Connect`] to its own task.
pub struct Server<T> {
    conn: h2::server::Connection<T, Bytes>,
}

impl<T> Server<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Runs the HTTP/2 handshake as the server over `io` (TLS already
    /// established).
    pub async fn handshake(io: T) -> Result<Self, TunnelError> {
        let conn = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(FRAME_SIZE)
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake(io)
            .await
            .map_err(TunnelError::Handshake)?;
        Ok(Self { conn })
    }

    /// The next CONNECT, or `None` when the connection has closed
    /// cleanly. Other methods are answered 405 here and a CONNECT without
    /// an authority 400; neither is returned.
    pub async fn accept(&mut self) -> Option<Result<Connect, TunnelError>> {
        loop {
            let (request, mut respond) = match self.conn.accept().await? {
                Ok(r) => r,
                Err(e) => return Some(Err(TunnelError::Connection(e))),
            };
            let status = if request.method() != Method::CONNECT {
                StatusCode::METHOD_NOT_ALLOWED
            } else if let Some(authority) = request.uri().authority() {
                return Some(Ok(Connect {
                    authority: authority.as_str().to_owned(),
                    respond,
                    recv: request.into_body(),
                }));
            } else {
                StatusCode::BAD_REQUEST
            };
            // The peer may have reset it already; nothing to do then.
            let _ = respond.send_response(answer(status), true);
        }
    }

    /// Sends GOAWAY: no new streams, the open ones finish. Keep polling
    /// [`Server::accept`] until it returns `None`.
    pub fn graceful_shutdown(&mut self) {
        self.conn.graceful_shutdown();
    }

    /// Closes the connection now, resetting every stream on it (a revoked
    /// pair).
    pub fn abrupt_shutdown(&mut self) {
        self.conn.abrupt_shutdown(Reason::NO_ERROR);
    }
}

/// Runs the server side of a connection: each CONNECT goes to `handler` in
/// a task of its own; the handler calls [`Connect::accept`] or
/// [`Connect::refuse`]. Returns when the connection closes.
pub async fn serve<T, F, Fut>(io: T, handler: F) -> Result<(), TunnelError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Connect) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut server = Server::handshake(io).await?;
    while let Some(connect) = server.accept().await {
        tokio::spawn(handler(connect?));
    }
    Ok(())
}

/// A CONNECT waiting for its answer.
pub struct Connect {
    authority: String,
    respond: h2::server::SendResponse<Bytes>,
    recv: RecvStream,
}

impl Connect {
    /// The `:authority` the client asked for.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Answers 200 and returns the stream; with `token`, the client may
    /// move the stream to a connection of its own that presents it.
    pub fn accept(mut self, token: Option<u128>) -> Result<Stream, TunnelError> {
        let mut ok = answer(StatusCode::OK);
        if let Some(token) = token {
            let value = http::HeaderValue::from_str(&format!("{token:032x}"))
                .expect("hex digits are a valid header value");
            ok.headers_mut().insert(MOVE_HEADER, value);
        }
        let send = self
            .respond
            .send_response(ok, false)
            .map_err(TunnelError::Respond)?;
        Ok(Stream::new(send, self.recv, token))
    }

    /// Answers `status` (not 200) and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        // The peer may have reset it already; nothing to do then.
        let _ = self.respond.send_response(answer(status), true);
    }
}

fn answer(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

// ---------------------------------------------------------------- stream

/// One app connection's bytes over an HTTP/2 stream, as a tokio socket.
///
/// Reads return what the peer sent and give the window back as the caller
/// consumes it; `Ok(0)` once the peer ended its side, or moved it (then
/// [`Stream::moved`] is true and its bytes go on elsewhere). Writes take at most
/// the send capacity the peer's windows allow and return `Pending` while
/// there is none. `poll_shutdown` ends this side (END_STREAM) and leaves
/// the other open. Dropping the stream before both sides ended resets it
/// (RST_STREAM CANCEL). A reset by the peer reads and writes as
/// `ConnectionReset`.
pub struct Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read; its window is released as it is read.
    pending: Bytes,
    eof: bool,
    shut: bool,
    /// The token of a move, if the destination offered one.
    token: Option<u128>,
    /// The peer ended its side with [`MOVED_TRAILER`].
    moved: bool,
}

impl Stream {
    fn new(send: SendStream<Bytes>, recv: RecvStream, token: Option<u128>) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            eof: false,
            shut: false,
            token,
            moved: false,
        }
    }

    /// The token a `mesh/move` connection presents to take this stream
    /// over (the one the destination sent, or gave).
    pub fn move_token(&self) -> Option<u128> {
        self.token
    }

    /// Whether the peer's side ended because its bytes go on over the
    /// `mesh/move` connection (read to the end first).
    pub fn moved(&self) -> bool {
        self.moved
    }

    /// Ends this side with [`MOVED_TRAILER`]: the rest of its bytes go on
    /// the `mesh/move` connection.
    pub fn end_moved(&mut self) -> io::Result<()> {
        self.send.reserve_capacity(0);
        let mut trailers = http::HeaderMap::new();
        trailers.insert(MOVED_TRAILER, http::HeaderValue::from_static("1"));
        self.send
            .send_trailers(trailers)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        self.shut = true;
        Ok(())
    }

    /// Aborts the stream both ways (RST_STREAM CANCEL): the peer's reads
    /// and writes fail.
    pub fn reset(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }

    /// Fills `pending` with the next bytes the peer sent if it is empty;
    /// false once the peer ended its side and nothing is left.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while self.pending.is_empty() {
            if self.eof {
                return Poll::Ready(Ok(false));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => self.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => {
                    // Trailers, if any, come after the last data.
                    let trailers = ready!(self.recv.poll_trailers(cx)).map_err(io_error)?;
                    self.moved = trailers.is_some_and(|t| t.contains_key(MOVED_TRAILER));
                    self.eof = true;
                }
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Gives the window of `n` bytes read back to the peer; fails only if
    /// the stream is gone, which the next read reports.
    fn release(&mut self, n: usize) {
        let _ = self.recv.flow_control().release_capacity(n);
    }

    /// The next bytes the peer sent, as HTTP/2 delivered them (no copy,
    /// never empty); their window is given back at once. `None` once the
    /// peer ended its side.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !ready!(self.poll_pending(cx))? {
            return Poll::Ready(Ok(None));
        }
        let chunk = std::mem::take(&mut self.pending);
        self.release(chunk.len());
        Poll::Ready(Ok(Some(chunk)))
    }

    /// Sends the front of `data`, as much as the windows allow now,
    /// without copying it; returns how much went (taken off `data`).
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_send_capacity(cx, data.len()))?;
        Poll::Ready(self.send(cx, data.split_to(n)))
    }

    /// Queues `data` (within the capacity [`Stream::poll_send_capacity`]
    /// gave) and returns its length.
    fn send(&mut self, cx: &mut Context<'_>, data: Bytes) -> io::Result<usize> {
        let n = data.len();
        match self.send.send_data(data, false) {
            Ok(()) => Ok(n),
            Err(_) => Err(self.closed_error(cx)),
        }
    }

    /// Waits until the windows let at least one byte go; returns how many
    /// of `want` (not 0) may go now. Fails once this side was shut down.
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.shut {
            return Poll::Ready(Err(self.closed_error(cx)));
        }
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                return Poll::Ready(Ok(capacity.min(want)));
            }
            // Only asked when none is assigned: asking less than what is
            // assigned would hand the rest back to the connection. h2 takes
            // a u32; more than a window cannot be assigned at once anyway.
            self.send.reserve_capacity(want.min(STREAM_WINDOW as usize));
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(self.closed_error(cx))),
            }
        }
    }

    /// The error for a write on a stream that cannot send any more.
    fn closed_error(&mut self, cx: &mut Context<'_>) -> io::Error {
        if self.shut {
            return io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown");
        }
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("stream reset by the peer: {reason}"),
            ),
            Poll::Ready(Err(e)) => io_error(e),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !ready!(this.poll_pending(cx))? {
            return Poll::Ready(Ok(()));
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        this.release(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        Poll::Ready(this.send(cx, Bytes::copy_from_slice(&buf[..n])))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's driver writes what `send_data` queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.shut {
            return Poll::Ready(Ok(()));
        }
        // Drop any capacity still asked for: nothing more will be sent.
        this.send.reserve_capacity(0);
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                this.shut = true;
                Poll::Ready(Ok(()))
            }
            Err(_) => Poll::Ready(Err(this.closed_error(cx))),
        }
    }
}

/// An h2 error as the io error a socket would give.
fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("http/2 i/o error"));
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

#[cfg(test)]
pub(crate) mod tests;

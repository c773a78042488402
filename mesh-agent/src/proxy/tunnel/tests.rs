use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    sync::Notify,
};

use super::*;

const AUTHORITY: &str = "api.svc.mesh.test:5001";
/// Bound on any one test step: a flow-control bug shows as a stall.
const PATIENCE: Duration = Duration::from_secs(30);

/// A client over an in-memory pipe to a server that hands each CONNECT
/// to `handler`.
async fn client_to<F, Fut>(handler: F) -> Client
where
    F: Fn(Connect) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (near, far) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let _ = serve(far, handler).await;
    });
    client_over(near).await
}

async fn client_over(io: DuplexStream) -> Client {
    let (client, driver) = handshake(io).await.expect("client handshake");
    tokio::spawn(driver);
    client
}

/// Accepts and sends back everything, then ends its side.
pub(crate) async fn echo(connect: Connect) {
    let Ok(stream) = connect.accept(None) else {
        return;
    };
    let (mut r, mut w) = tokio::io::split(stream);
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

/// `len` bytes that differ from a shifted copy of themselves.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251 % 7) as u8 ^ seed)
        .collect()
}

pub(crate) async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: stalled for {PATIENCE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_echo() {
    let client = client_to(echo).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100u8 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut stream = client.open(AUTHORITY).await.expect("open");
            let sent = pattern(10_000 + usize::from(i) * 97, i);
            stream.write_all(&sent).await.expect("write");
            stream.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.expect("read");
            assert!(got == sent, "stream {i}: echo differs");
        });
    }
    within("100 streams", async {
        while let Some(r) = tasks.join_next().await {
            r.expect("stream task");
        }
    })
    .await;
    assert!(client.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_through_one_stream() {
    const LEN: usize = 64 << 20;
    let client = client_to(echo).await;
    let stream = client.open(AUTHORITY).await.expect("open");
    let (mut r, mut w) = tokio::io::split(stream);
    let sent = Arc::new(pattern(LEN, 0x5a));
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            // Odd-sized writes, so frames and windows do not line up.
            for chunk in sent.chunks(100_003) {
                w.write_all(chunk).await.expect("write");
            }
            w.shutdown().await.expect("shutdown");
        })
    };
    let mut got = Vec::with_capacity(LEN);
    within("64 MiB echo", r.read_to_end(&mut got))
        .await
        .expect("read");
    writer.await.expect("writer");
    assert_eq!(got.len(), LEN);
    assert!(got == *sent, "64 MiB echo differs");
}

#[tokio::test]
async fn writes_stop_at_the_stream_window_until_the_peer_reads() {
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let held_tx = std::sync::Mutex::new(Some(held_tx));
    let client = client_to(move |connect: Connect| {
        let tx = held_tx.lock().expect("lock").take();
        async move {
            if let (Some(tx), Ok(stream)) = (tx, connect.accept(None)) {
                let _ = tx.send(stream);
            }
        }
    })
    .await;
    let mut stream = client.open(AUTHORITY).await.expect("open");
    let mut held = held_rx.await.expect("server stream");
    let chunk = vec![7u8; 1 << 20];
    let mut written = 0;
    // Writes are taken until the peer's window is used up...
    while written < STREAM_WINDOW as usize {
        written += within("write within the window", stream.write(&chunk))
            .await
            .expect("write");
    }
    assert_eq!(written, STREAM_WINDOW as usize);
    // ...then pend.
    let more = tokio::time::timeout(Duration::from_millis(300), stream.write(&chunk)).await;
    assert!(more.is_err(), "wrote past the window: {more:?}");
    // Reading gives the window back, and the writer goes on.
    let mut buf = vec![0; 1 << 20];
    let mut read = 0;
    let more = async {
        stream
            .write_all(&chunk)
            .await
            .expect("write after the peer read");
        stream.shutdown().await.expect("shutdown");
    };
    let drain = async {
        loop {
            let n = held.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            read += n;
        }
    };
    within("window released", async { tokio::join!(more, drain) }).await;
    assert_eq!(read, written + chunk.len());
}

#[tokio::test]
async fn half_close_still_reads_the_reply() {
    // Reads to the client's end, then answers with the count.
    let client = client_to(|connect: Connect| async move {
        let Ok(mut stream) = connect.accept(None) else {
            return;
        };
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.expect("server read");
        let reply = format!("got {} bytes", got.len());
        stream
            .write_all(reply.as_bytes())
            .await
            .expect("server write");
        stream.shutdown().await.expect("server shutdown");
    })
    .await;
    let mut stream = client.open(AUTHORITY).await.expect("open");
    stream.write_all(&[1; 5000]).await.expect("write");
    stream.shutdown().await.expect("shutdown");
    stream
        .shutdown()
        .await
        .expect("a second shutdown is a no-op");
    let err = stream.write(b"x").await.expect_err("write after shutdown");
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    let mut reply = String::new();
    within("reply", stream.read_to_string(&mut reply))
        .await
        .expect("read");
    assert_eq!(reply, "got 5000 bytes");
    // EOF stays EOF.
    assert_eq!(stream.read(&mut [0; 8]).await.expect("read after eof"), 0);
}

#[tokio::test]
async fn a_refused_connect_gives_its_status() {
    let client = client_to(|connect: Connect| async move {
        assert_eq!(connect.authority(), AUTHORITY);
        connect.refuse(StatusCode::FORBIDDEN);
    })
    .await;
    let err = client.open(AUTHORITY).await.err().expect("refused");
    assert!(
        matches!(err, TunnelError::Refused { status } if status == StatusCode::FORBIDDEN),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // The connection is still good for other streams.
    assert!(client.is_ready());
}

#[tokio::test]
async fn a_request_other_than_connect_gets_405() {
    let (near, far) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let _ = serve(far, |_: Connect| async {
            panic!("a GET reached the handler")
        })
        .await;
    });
    let (mut send, conn) = h2::client::handshake(near).await.expect("handshake");
    tokio::spawn(conn);
    let get = Request::get("http://api.svc.mesh.test/")
        .body(())
        .expect("request");
    let (response, _) = send.send_request(get, true).expect("send");
    let response = within("405", response).await.expect("response");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn an_open_pending_when_the_server_drops_the_connection_is_retryable() {
    let (near, far) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(async move {
        let mut server = Server::handshake(far).await.expect("server handshake");
        // Takes the CONNECT, never answers, and drops the connection.
        let connect = server.accept().await.expect("a connect").expect("ok");
        drop((connect, server));
    });
    let client = client_over(near).await;
    let err = within("open", client.open(AUTHORITY))
        .await
        .err()
        .expect("the connection went away");
    assert!(err.is_retryable(), "{err:?}");
    server.await.expect("server");
    assert!(!client.is_ready());
    let err = client.open(AUTHORITY).await.err().expect("closed");
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn after_goaway_opens_fail_retryable_and_open_streams_finish() {
    let (near, far) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut server = Server::handshake(far).await.expect("server handshake");
        let first = server.accept().await.expect("a connect").expect("ok");
        tokio::spawn(echo(first));
        server.graceful_shutdown();
        while let Some(next) = server.accept().await {
            assert!(next.is_err(), "a stream after GOAWAY was accepted");
        }
    });
    let client = client_over(near).await;
    let mut first = client.open(AUTHORITY).await.expect("open");
    within("goaway seen", async {
        while client.is_ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let err = client.open(AUTHORITY).await.err().expect("after goaway");
    assert!(err.is_retryable(), "{err:?}");
    first.write_all(b"still here").await.expect("write");
    first.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    within("echo", first.read_to_end(&mut got))
        .await
        .expect("read");
    assert_eq!(got, b"still here");
}

#[tokio::test]
async fn a_stream_reset_by_the_peer_reads_as_connection_reset() {
    let client = client_to(|connect: Connect| async move {
        let Ok(mut stream) = connect.accept(None) else {
            return;
        };
        let mut one = [0; 1];
        let _ = stream.read_exact(&mut one).await;
        stream.reset();
    })
    .await;
    let mut stream = client.open(AUTHORITY).await.expect("open");
    stream.write_all(b"x").await.expect("write");
    let err = within("read", stream.read(&mut [0; 16]))
        .await
        .expect_err("reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let err = stream.write(b"y").await.expect_err("write after reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn a_dropped_stream_resets_the_peer() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let client = client_to(move |connect: Connect| {
        let tx = tx.lock().expect("lock").take();
        async move {
            let Ok(mut stream) = connect.accept(None) else {
                return;
            };
            let r = stream.read(&mut [0; 16]).await;
            if let Some(tx) = tx {
                let _ = tx.send(r.map_err(|e| e.kind()));
            }
        }
    })
    .await;
    let stream = client.open(AUTHORITY).await.expect("open");
    drop(stream);
    let r = within("reset seen", rx).await.expect("server result");
    assert_eq!(r, Err(io::ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn streams_dropped_with_unread_data_give_the_connection_window_back() {
    const LEN: usize = 1 << 20;
    // Each stream sends 1 MiB; 40 dropped after one byte are 2.5 times
    // the connection window.
    let client = client_to(|connect: Connect| async move {
        let Ok(mut stream) = connect.accept(None) else {
            return;
        };
        if stream.write_all(&pattern(LEN, 1)).await.is_ok() {
            let _ = stream.shutdown().await;
        }
        let _ = stream.read(&mut [0; 1]).await;
    })
    .await;
    assert!(40 * LEN > CONNECTION_WINDOW as usize);
    for _ in 0..40 {
        let mut stream = client.open(AUTHORITY).await.expect("open");
        within("first byte", stream.read_exact(&mut [0; 1]))
            .await
            .expect("read");
        // Lets the rest arrive unread.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut stream = client.open(AUTHORITY).await.expect("open");
    let mut got = Vec::new();
    within(
        "a full stream after 40 dropped",
        stream.read_to_end(&mut got),
    )
    .await
    .expect("read");
    assert!(got == pattern(LEN, 1));
}

#[tokio::test]
async fn opens_over_the_stream_limit_wait_for_a_slot() {
    let release = Arc::new(Notify::new());
    let client = client_to({
        let release = release.clone();
        move |connect: Connect| {
            let release = release.clone();
            async move {
                let Ok(_stream) = connect.accept(None) else {
                    return;
                };
                release.notified().await;
            }
        }
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..MAX_STREAMS {
        held.push(client.open(AUTHORITY).await.expect("open"));
    }
    assert_eq!(client.max_streams(), MAX_STREAMS as usize);
    let extra = tokio::spawn({
        let client = client.clone();
        async move { client.open(AUTHORITY).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!extra.is_finished(), "opened past the peer's limit");
    // Closing one stream both ways frees a slot.
    let mut first = held.swap_remove(0);
    first.shutdown().await.expect("shutdown");
    release.notify_one();
    within("slot", extra)
        .await
        .expect("task")
        .expect("open in the freed slot");
}

#[test]
fn authorities_round_trip() {
    let a = authority(&"api".parse().unwrap(), "mesh.test", 5001);
    assert_eq!(a, AUTHORITY);
    assert_eq!(parse_authority(&a, "mesh.test"), Some(("api", 5001)));
    assert_eq!(parse_authority(&a, "other.test"), None);
    assert_eq!(parse_authority("api.svc.mesh.test", "mesh.test"), None);
    assert_eq!(parse_authority("a.b.svc.mesh.test:1", "mesh.test"), None);
    assert_eq!(parse_authority(".svc.mesh.test:1", "mesh.test"), None);
    assert_eq!(parse_authority("apisvc.mesh.test:1", "mesh.test"), None);
}

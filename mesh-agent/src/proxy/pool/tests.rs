//! The pool's rules (`sweep`, `pick`) over `mesh/2` connections on
//! in-memory pipes, and `Pool::connect` end to end with real mTLS over
//! loopback against a stand-in for the destination agent.

use std::{net::Ipv4Addr, sync::atomic::AtomicUsize};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
    sync::Notify,
    task::JoinHandle,
};

use super::*;
use crate::{
    drain::Drain,
    identity::Identities,
    proxy::tunnel::{
        Server,
        tests::{echo, within},
    },
    testing::mesh_text,
    tls::{Tls, tests::Mesh},
};

const AUTHORITY: &str = "api.svc.mesh.local:81";

/// Node a's leaves (`web`), and the mesh that issued them.
fn web_identities() -> (Mesh, Arc<Identities>) {
    let mesh = Mesh::new(&mesh_text(81));
    let ids = mesh.identities("a");
    (mesh, ids)
}

fn key(node: &str) -> Key {
    Key {
        src: "web".parse().unwrap(),
        dst: "api".parse().unwrap(),
        node: node.parse().unwrap(),
        addr: "10.0.0.2:81".parse().unwrap(),
    }
}

/// The server side of a connection made by [`conn`]: answers CONNECTs
/// with an echo; `goaway` makes it send GOAWAY, aborting `task` drops it,
/// and `task` ends once the connection closed.
struct Far {
    task: JoinHandle<()>,
    goaway: Arc<Notify>,
}

/// A pool connection with `leaf` over an in-memory pipe, and its far end.
async fn conn(leaf: &Arc<Current>) -> (Conn, Far) {
    let (near, far) = tokio::io::duplex(1 << 16);
    let goaway = Arc::new(Notify::new());
    let told = goaway.clone();
    let task = tokio::spawn(async move {
        let mut server = Server::handshake(far).await.expect("server handshake");
        loop {
            tokio::select! {
                next = server.accept() => match next {
                    Some(Ok(connect)) => {
                        tokio::spawn(echo(connect));
                    }
                    _ => return,
                },
                () = told.notified() => server.graceful_shutdown(),
            }
        }
    });
    let conn = Conn::start(near, leaf.clone()).await.expect("handshake");
    (conn, Far { task, goaway })
}

fn same(a: &Conn, b: &Conn) -> bool {
    Arc::ptr_eq(&a.usage, &b.usage)
}

/// Waits, within the test bound, until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn sweep_closes_idle_connections_keeps_busy_or_recent_ones_and_forgets_empty_keys() {
    let (_mesh, ids) = web_identities();
    let leaf = ids.current("web").unwrap();
    let pool = Pool::default();
    let (busy, _busy_far) = conn(&leaf).await;
    let (idle, idle_far) = conn(&leaf).await;
    let stream = busy.open(AUTHORITY).await.unwrap();
    // The pool holds the only handles on both connections.
    lock(&pool.entry(&key("b")).conns).push(busy);
    lock(&pool.entry(&key("c")).conns).push(idle);

    pool.sweep(Instant::now() + IDLE - Duration::from_secs(1));
    assert_eq!(pool.total(), 2, "idle for less than IDLE: kept");
    pool.sweep(Instant::now() + IDLE);
    assert_eq!(pool.total(), 1, "the idle one is closed, the busy one kept");
    assert!(lock(&pool.keys).contains_key(&key("b")));
    assert!(!lock(&pool.keys).contains_key(&key("c")), "empty key kept");
    // Let go of, the connection really ends: its server sees it close.
    within("the swept connection's server ends", idle_far.task)
        .await
        .unwrap();

    // Its stream ended: the busy connection is idle from now on.
    drop(stream);
    pool.sweep(Instant::now() + IDLE - Duration::from_secs(1));
    assert_eq!(pool.total(), 1);
    pool.sweep(Instant::now() + IDLE);
    assert_eq!(pool.total(), 0);
    assert!(lock(&pool.keys).is_empty());
}

#[tokio::test]
async fn pick_wants_a_second_connection_once_the_only_one_has_spread_at_streams() {
    let (_mesh, ids) = web_identities();
    let leaf = ids.current("web").unwrap();
    let entry = Entry::default();
    let (c, _far) = conn(&leaf).await;
    lock(&entry.conns).push(c.clone());
    c.usage.streams.store(SPREAD_AT - 1, Ordering::SeqCst);
    assert!(pick(&entry, &leaf).is_some_and(|p| same(&p, &c)));
    c.usage.streams.store(SPREAD_AT, Ordering::SeqCst);
    assert!(pick(&entry, &leaf).is_none());
    // Busy is not dead: it stays pooled.
    assert_eq!(lock(&entry.conns).len(), 1);
}

#[tokio::test]
async fn with_per_key_connections_all_past_spread_at_pick_takes_the_least_loaded() {
    let (_mesh, ids) = web_identities();
    let leaf = ids.current("web").unwrap();
    let entry = Entry::default();
    let mut fars = Vec::new();
    for i in 0..PER_KEY {
        let (c, far) = conn(&leaf).await;
        // The second is the least loaded.
        let extra = if i == 1 { 1 } else { 2 + i };
        c.usage.streams.store(SPREAD_AT + extra, Ordering::SeqCst);
        lock(&entry.conns).push(c);
        fars.push(far);
    }
    assert_eq!(lock(&entry.conns).len(), PER_KEY);
    let least = lock(&entry.conns)[1].clone();
    assert!(pick(&entry, &leaf).is_some_and(|p| same(&p, &least)));
    // One short of PER_KEY, another connection is wanted instead.
    lock(&entry.conns).pop();
    assert!(pick(&entry, &leaf).is_none());
}

#[tokio::test]
async fn pick_drops_a_connection_made_with_a_leaf_since_renewed() {
    let (_mesh, ids) = web_identities();
    let old = ids.current("web").unwrap();
    let entry = Entry::default();
    let (c, _far) = conn(&old).await;
    lock(&entry.conns).push(c);
    assert!(pick(&entry, &old).is_some());
    let renewed = ids.renew(&"web".parse().unwrap()).unwrap();
    assert!(pick(&entry, &renewed).is_none());
    assert!(lock(&entry.conns).is_empty());
}

#[tokio::test]
async fn a_connection_whose_peer_went_away_is_marked_closed_and_dropped_by_pick_and_sweep() {
    let (_mesh, ids) = web_identities();
    let leaf = ids.current("web").unwrap();
    let (picked, picked_far) = conn(&leaf).await;
    let (swept, swept_far) = conn(&leaf).await;
    let entry = Entry::default();
    lock(&entry.conns).push(picked.clone());
    let pool = Pool::default();
    lock(&pool.entry(&key("b")).conns).push(swept.clone());
    picked_far.task.abort();
    swept_far.task.abort();
    until("both drivers ended", || {
        picked.usage.closed.load(Ordering::SeqCst) && swept.usage.closed.load(Ordering::SeqCst)
    })
    .await;
    assert!(pick(&entry, &leaf).is_none());
    assert!(lock(&entry.conns).is_empty());
    // Not idle (now), only closed.
    pool.sweep(Instant::now());
    assert_eq!(pool.total(), 0);
}

#[tokio::test]
async fn pick_drops_a_connection_whose_peer_sent_goaway() {
    let (_mesh, ids) = web_identities();
    let leaf = ids.current("web").unwrap();
    let entry = Entry::default();
    let (c, far) = conn(&leaf).await;
    lock(&entry.conns).push(c.clone());
    // An open stream keeps the connection up after the GOAWAY.
    let _stream = c.open(AUTHORITY).await.unwrap();
    far.goaway.notify_one();
    until("GOAWAY seen", || !c.client.is_ready()).await;
    assert!(!c.usage.closed.load(Ordering::SeqCst));
    assert!(pick(&entry, &leaf).is_none());
    assert!(lock(&entry.conns).is_empty());
}

// ------------------------------------------------ end to end, over loopback

/// Node a's agent (the pool's side) and a stand-in for node b's agent on
/// 127.0.0.1: TLS as `api`, then each CONNECT (`mesh/2`) or the
/// connection itself (`mesh/1`) echoed.
struct Agents {
    mesh: Mesh,
    _publisher: crate::snapshot::Publisher,
    pi: Arc<Inputs>,
    /// TLS handshakes node b completed.
    handshakes: Arc<AtomicUsize>,
    /// Node b's connections, to drop them.
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

impl Agents {
    /// Node b speaks `mesh/2` and `mesh/1`, or only `mesh/1`.
    async fn new(multiplex: bool) -> Self {
        // Bound first: the catalog gives api the port node a dials.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let mesh = Mesh::new(&mesh_text(listener.local_addr().unwrap().port()));
        let (publisher, snapshots) = mesh.snapshots();
        let a = Tls::new(mesh.identities("a"), Arc::new(snapshots.clone())).unwrap();
        let b = Arc::new(
            Tls::with_multiplex(mesh.identities("b"), Arc::new(snapshots.clone()), multiplex)
                .unwrap(),
        );
        let pi = Inputs::new(
            "a".parse().unwrap(),
            snapshots,
            a,
            Arc::default(),
            Drain::default(),
            Arc::default(),
        );
        let handshakes = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (handshakes, conns) = (handshakes.clone(), conns.clone());
            async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let (b, handshakes) = (b.clone(), handshakes.clone());
                    lock(&conns).push(tokio::spawn(async move {
                        let (tls, _) = b.accept(tcp, &"api".parse().unwrap()).await.unwrap();
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        if crate::tls::protocol(tls.get_ref().1) == Protocol::Multiplexed {
                            let _ = tunnel::serve(tls, echo).await;
                        } else {
                            let (mut r, mut w) = tokio::io::split(tls);
                            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                                let _ = w.shutdown().await;
                            }
                        }
                    }));
                }
            }
        });
        Self {
            mesh,
            _publisher: publisher,
            pi,
            handshakes,
            conns,
            _accept: accept,
        }
    }

    /// A hop from web to api on node b, through `pool`.
    async fn connect(&self, pool: &Pool) -> Hop {
        let config = &self.mesh.config;
        // Node addresses cannot be loopback in a config: b's is replaced.
        let b = Node {
            name: "b".parse().unwrap(),
            address: Ipv4Addr::LOCALHOST.into(),
        };
        let (web, api) = (config.service("web"), config.service("api"));
        within(
            "connect",
            pool.connect(&self.pi, web.unwrap(), api.unwrap(), &b),
        )
        .await
        .unwrap()
    }

    /// Node b drops every connection it has (no close_notify, no GOAWAY).
    async fn drop_connections(&self) {
        let conns = std::mem::take(&mut *lock(&self.conns));
        for c in conns {
            c.abort();
            let _ = c.await;
        }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

/// Sends a few bytes through `io` and reads them back.
async fn echoes(mut io: impl AsyncRead + AsyncWrite + Unpin) {
    io.write_all(b"ping").await.unwrap();
    io.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("echo", io.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"ping");
}

async fn echoes_on_a_stream(hop: Hop) {
    let Hop::Stream(stream, _in_use) = hop else {
        panic!("a mesh/1 connection, not a stream")
    };
    echoes(stream).await;
}

#[tokio::test]
async fn two_app_connections_in_a_row_share_one_pooled_connection() {
    let agents = Agents::new(true).await;
    let pool = Pool::default();
    echoes_on_a_stream(agents.connect(&pool).await).await;
    echoes_on_a_stream(agents.connect(&pool).await).await;
    assert_eq!(agents.handshakes(), 1);
    assert_eq!(pool.total(), 1);
}

#[tokio::test]
async fn after_the_destination_drops_the_pooled_connection_the_next_connect_uses_a_fresh_one() {
    let agents = Agents::new(true).await;
    let pool = Pool::default();
    echoes_on_a_stream(agents.connect(&pool).await).await;
    agents.drop_connections().await;
    // On this one-thread runtime the client has not read the close yet:
    // the dead connection is picked, its stream fails unprocessed, and the
    // pool retries on a fresh one.
    echoes_on_a_stream(agents.connect(&pool).await).await;
    assert_eq!(agents.handshakes(), 2);
    assert_eq!(pool.total(), 1, "the dead connection is still pooled");
}

#[tokio::test]
async fn a_destination_speaking_only_mesh_1_gets_single_hops_and_is_remembered() {
    let agents = Agents::new(false).await;
    let pool = Pool::default();
    for _ in 0..2 {
        let Hop::Single(tls) = agents.connect(&pool).await else {
            panic!("a stream, from a mesh/1 agent")
        };
        echoes(tls).await;
        assert!(pool.speaks_single(&"b".parse().unwrap()));
    }
    // Each app connection had its own TLS connection; none was pooled.
    assert_eq!(agents.handshakes(), 2);
    assert_eq!(pool.total(), 0);
}

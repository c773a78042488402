//! Two nodes' agents on loopback, without the kernel, for the listeners'
//! tests: the mesh of `tls::tests::mesh_text` (node a hosts `web`, node b
//! `api`), with node b's address moved to 127.0.0.2 after parsing (the
//! config refuses loopback), so that node a's agent reaches node b's
//! inbound listener by dialing `127.0.0.2:<api port>`, as sk_lookup would
//! steer it. `api` itself is an echo server on `127.0.0.1:<api port>`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mesh_common::OrigDst;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::{Inbound, Inputs, OrigDstAddr, admission::Admission};
use crate::{
    drain::Drain,
    snapshot::{Publisher, Snapshot, Watch},
    telemetry::{PairStats, Telemetry},
    testing::mesh_text,
    tls::{Tls, tests::Mesh},
};

/// Node b's address in the tests.
pub(crate) const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The mesh, its snapshot, and the `api` service.
pub(crate) struct Fixture {
    pub(crate) mesh: Mesh,
    pub(crate) _publisher: Publisher,
    pub(crate) snapshots: Watch,
    /// The port of `api`, on 127.0.0.1 (the service) and on [`B`] (node
    /// b's inbound listener, once [`Fixture::inbound`] made it).
    pub(crate) port: u16,
    /// Connections `api` accepted.
    pub(crate) api_accepted: Arc<AtomicUsize>,
}

impl Fixture {
    /// The mesh with `api` listening; `allow`: an intention allows `web ->
    /// api` (else the default policy denies it).
    pub(crate) async fn new(allow: bool) -> Self {
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = api.local_addr().unwrap().port();
        let api_accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(echo(api, api_accepted.clone()));
        let mut text = mesh_text(port);
        if allow {
            text.push_str(
                "\n[[intention]]\nsource = \"web\"\ndestination = \"api\"\naction = \"allow\"\n",
            );
        }
        let mesh = Mesh::new(&text);
        let mut config = mesh.config.clone();
        for node in config.nodes.iter_mut().filter(|n| n.name == "b") {
            node.address = B;
        }
        let (publisher, snapshots) = Snapshot::new(config).publish();
        Self {
            mesh,
            _publisher: publisher,
            snapshots,
            port,
            api_accepted,
        }
    }

    /// The inputs of the agent of `node`, and its telemetry.
    pub(crate) fn inputs(&self, node: &str) -> (Arc<Inputs>, Arc<Telemetry>) {
        let tls = Tls::new(self.mesh.identities(node), Arc::new(self.snapshots.clone())).unwrap();
        let telemetry = Arc::new(Telemetry::default());
        let pi = Inputs::new(
            node.parse().unwrap(),
            self.snapshots.clone(),
            tls,
            telemetry.clone(),
            Drain::default(),
            Arc::default(),
        );
        (pi, telemetry)
    }

    /// Node b's inbound listener on `B:port`, running; its telemetry.
    pub(crate) async fn inbound(&self) -> Arc<Telemetry> {
        let listener = TcpListener::bind(SocketAddr::new(B, self.port))
            .await
            .unwrap();
        let (pi, telemetry) = self.inputs("b");
        let inbound = Inbound::new(listener, pi, Admission::new(16, 16), Arc::default());
        tokio::spawn(inbound.run());
        telemetry
    }

    /// Connections `api` accepted so far.
    pub(crate) fn api_accepted(&self) -> usize {
        self.api_accepted.load(Ordering::SeqCst)
    }
}

/// Echoes every connection until its peer half-closes, counting them.
async fn echo(listener: TcpListener, accepted: Arc<AtomicUsize>) {
    while let Ok((mut conn, _)) = listener.accept().await {
        accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            if conn.read_to_end(&mut buf).await.is_ok() {
                let _ = conn.write_all(&buf).await;
                let _ = conn.shutdown().await;
            }
        });
    }
}

/// An [`OrigDstAddr`] holding at most one record, for whichever connection
/// asks first.
pub(crate) struct OneRecord(pub(crate) Mutex<Option<OrigDst>>);

impl OrigDstAddr for OneRecord {
    fn take(&self, _peer: SocketAddr, _local: SocketAddr, _netns: u64) -> Option<OrigDst> {
        self.0.lock().unwrap().take()
    }
}

/// `telemetry`'s counts for `web -> api`.
pub(crate) fn web_to_api(telemetry: &Telemetry) -> PairStats {
    telemetry
        .pairs()
        .into_iter()
        .find(|((src, dst), _)| src == "web" && dst == "api")
        .map(|(_, stats)| stats)
        .unwrap_or_default()
}

/// Sends `hello` on `conn`, half-closes, and returns what came back
/// (nothing if the agent closed it or failed it).
pub(crate) async fn exchange<S>(mut conn: S) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut answer = Vec::new();
    let talk = async {
        conn.write_all(b"hello").await?;
        conn.shutdown().await?;
        conn.read_to_end(&mut answer).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), talk)
        .await
        .expect("the agent neither answered nor closed the connection");
    answer
}

/// Waits (up to 2 s) until `done` holds; whether it did.
pub(crate) async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

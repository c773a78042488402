//! The stunnel baselines: their configs and the check of their handshakes.

use std::{collections::BTreeMap, fs, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::ensure;
use mesh_tests::{Mesh, pki};

/// One stunnel pair: a client on bench-a's 127.0.0.1:`client_port`, a
/// server on bench-b's address:`server_port` in front of the same
/// `meshbench serve` (127.0.0.1:7002).
pub(super) struct Stunnel {
    /// Its mode in [`MODES`](super::MODES).
    pub(super) mode: &'static str,
    pub(super) client_port: u16,
    pub(super) server_port: u16,
    /// `sessionResume` of both ends.
    pub(super) resume: bool,
}

/// The stunnel modes: full handshakes, and stunnel's default resumption.
pub(super) const STUNNELS: [Stunnel; 2] = [
    Stunnel {
        mode: "stunnel",
        client_port: 7004,
        server_port: 7003,
        resume: false,
    },
    Stunnel {
        mode: "stunnel resumed",
        client_port: 7014,
        server_port: 7013,
        resume: true,
    },
];
/// Connections of the check that a stunnel pair makes the handshakes its
/// mode says.
pub(super) const STUNNEL_CHECK_CONNS: usize = 4;

/// The cipher suite the agents negotiate (rustls prefers it on x86 with
/// AES-NI); stunnel's default would be TLS_AES_256_GCM_SHA384.
pub(super) const STUNNEL_SUITE: &str = "TLS_AES_128_GCM_SHA256";

/// The stunnel pairs of [`STUNNELS`], running.
pub(super) struct Stunnels {
    /// Each mode's client (node a) and server (node b) pids.
    pub(super) pids: BTreeMap<&'static str, [u32; 2]>,
    /// (title, text) of each config.
    pub(super) configs: Vec<(String, String)>,
    /// (mode, full, resumed) handshakes of each pair's check.
    pub(super) handshakes: Vec<(&'static str, usize, usize)>,
}

/// Checks and starts each of [`STUNNELS`].
pub(super) fn stunnels(mesh: &Mesh, meshbench: &Path, b: Ipv4Addr) -> anyhow::Result<Stunnels> {
    // stunnel: TLS 1.3, client certificates, ECDSA P-256, one small CA,
    // the agents' cipher suite ([`STUNNEL_SUITE`]).
    let dir = mesh.dir.join("stunnel");
    fs::create_dir_all(&dir)?;
    let root = pki::Ca::new_root("bench.local");
    root.save(&dir.join("ca"));
    let certs = [
        ("a", "spiffe://bench.local/svc/a"),
        ("b", "spiffe://bench.local/svc/b"),
    ]
    .map(|(name, uri)| pki::write_leaf(&dir, name, &root, &pki::Leaf::valid_now(uri)));
    let mut stunnel = BTreeMap::new();
    let mut stunnel_configs = Vec::new();
    let mut stunnel_handshakes = Vec::new();
    for pair in &STUNNELS {
        let handshakes = pair.check(mesh, meshbench, &dir, b, &certs)?;
        stunnel_handshakes.push((pair.mode, handshakes.0, handshakes.1));
        let [client, server] = pair.configs(&dir, b, &certs, false);
        let pids = [
            ("client", "bench-a", &client),
            ("server", "bench-b", &server),
        ]
        .map(|(side, node, text)| {
            let path = dir.join(format!("{}-{side}.conf", pair.client_port));
            fs::write(&path, text)?;
            let mut c = mesh.cmd(node, "stunnel4");
            c.arg(&path);
            anyhow::Ok(mesh.spawn_app(c, &format!("stunnel-{}-{side}", pair.client_port)))
        });
        let [cli, srv] = pids;
        stunnel.insert(pair.mode, [cli?, srv?]);
        mesh.wait_listening("bench-b", pair.server_port);
        mesh.wait_listening("bench-a", pair.client_port);
        stunnel_configs.push((format!("{}, client (bench-a)", pair.mode), client));
        stunnel_configs.push((format!("{}, server (bench-b)", pair.mode), server));
    }
    Ok(Stunnels {
        pids: stunnel,
        configs: stunnel_configs,
        handshakes: stunnel_handshakes,
    })
}

impl Stunnel {
    /// The client's and the server's config. Tuned as the agents are:
    /// logs to its own output only (with no syslog daemon it writes every
    /// connection to /dev/console, ~2.5 ms), no libwrap lookups,
    /// TCP_NODELAY on both sockets. `info` logs each handshake's kind.
    pub(super) fn configs(
        &self,
        dir: &Path,
        b: Ipv4Addr,
        [a, bl]: &[pki::CertFiles; 2],
        info: bool,
    ) -> [String; 2] {
        let resume = if self.resume { "yes" } else { "no" };
        let common = format!(
            "foreground = yes\nsyslog = no\npid =\n{}sslVersionMin = TLSv1.3\n\
             verifyChain = yes\nCAfile = {}\nlibwrap = no\n\
             socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
            if info { "debug = info\n" } else { "" },
            dir.join("ca.crt").display()
        );
        let (client, server) = (self.client_port, self.server_port);
        [
            format!(
                "{common}[cli]\nclient = yes\naccept = 127.0.0.1:{client}\nconnect = {b}:{server}\n\
                 cert = {}\nkey = {}\nciphersuites = {STUNNEL_SUITE}\nsessionResume = {resume}\n",
                a.cert.display(),
                a.key.display()
            ),
            format!(
                "{common}[srv]\naccept = {b}:{server}\nconnect = 127.0.0.1:7002\n\
                 cert = {}\nkey = {}\nrequireCert = yes\nciphersuites = {STUNNEL_SUITE}\n\
                 sessionResume = {resume}\n",
                bl.cert.display(),
                bl.key.display()
            ),
        ]
    }

    /// Runs the pair at log level info for [`STUNNEL_CHECK_CONNS`]
    /// connections and counts the server's (full, resumed) handshakes;
    /// fails unless they are what the mode says: all full, or all but the
    /// first resumed.
    pub(super) fn check(
        &self,
        mesh: &Mesh,
        meshbench: &Path,
        dir: &Path,
        b: Ipv4Addr,
        certs: &[pki::CertFiles; 2],
    ) -> anyhow::Result<(usize, usize)> {
        let [client, server] = self.configs(dir, b, certs, true);
        let mut pids = Vec::new();
        for (side, node, text) in [("client", "bench-a", client), ("server", "bench-b", server)] {
            let path = dir.join(format!("{}-{side}-check.conf", self.client_port));
            fs::write(&path, text)?;
            let mut c = mesh.cmd(node, "stunnel4");
            c.arg(&path);
            let name = format!("stunnel-{}-{side}-check", self.client_port);
            pids.push((
                mesh.spawn_app(c, &name),
                mesh.dir.join(format!("app-{name}.log")),
            ));
        }
        mesh.wait_listening("bench-b", self.server_port);
        mesh.wait_listening("bench-a", self.client_port);
        let mut c = mesh.cmd("bench-a", meshbench);
        c.args(["connrate", "--count", &STUNNEL_CHECK_CONNS.to_string()])
            .args(["--to", &format!("127.0.0.1:{}", self.client_port)]);
        let out = mesh_tests::output_with_timeout(&mut c, Duration::from_secs(30));
        for (pid, _) in &pids {
            mesh.stop_app(*pid);
        }
        let (ok, text) = mesh_tests::outcome(&out);
        ensure!(ok, "{}: meshbench connrate failed: {text}", self.mode);
        let log = fs::read_to_string(&pids[1].1)?;
        let count = |what: &str| log.matches(&format!("TLS accepted: {what}")).count();
        let (full, resumed) = (
            count("new session negotiated"),
            count("previous session reused"),
        );
        let n = STUNNEL_CHECK_CONNS;
        let want = if self.resume { (1, n - 1) } else { (n, 0) };
        ensure!(
            (full, resumed) == want,
            "{}: {n} connections made {full} full and {resumed} resumed handshakes, not {} and {} (server log: {})",
            self.mode,
            want.0,
            want.1,
            pids[1].1.display()
        );
        Ok((full, resumed))
    }
}

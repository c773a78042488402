//! `cargo xtask setup`: installs what building and testing the mesh needs on
//! Debian 12 (packages, the nightly toolchain with rust-src, bpf-linker 0.13,
//! cargo-fuzz), skipping what is already present.

use std::process::Command;

use anyhow::ensure;

use crate::cmd;

/// Debian packages: LLVM 22 and friends to build bpf-linker, and the tools the
/// netns tests and the demo use.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "bpftool",
    "tcpdump",
    "socat",
    "curl",
    "python3",
    "procps",
    "openssl",
    "stunnel4",
    // dig, for the DNS (SRV) tests.
    "dnsutils",
    // The fleet catalog: the tests start their own etcd clusters; the
    // etcd-client crate compiles etcd's protobufs with protoc, which needs
    // the well-known types (google/protobuf/*.proto) from libprotobuf-dev
    // (only a recommendation of protobuf-compiler, which we do not install).
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // Containers with their own network namespace: rootful podman with the
    // cgroupfs manager, runc (crun refuses this machine's hybrid cgroups),
    // the bridge network (netavark, with iptables) and its DNS.
    "podman",
    "runc",
    "netavark",
    "aardvark-dns",
    "containernetworking-plugins",
    "iptables",
    // The web UI's tests drive Debian's Chromium through ChromeDriver.
    "chromium",
    "chromium-driver",
    // Decrypts the captures of the CA tests (with openssl's key log) to
    // read the certificate chains agents present.
    "tshark",
];

/// Packages whose install would start (and enable) a system service the
/// mesh does not want: the tests run their own.
const NO_SERVICE: &[(&str, &str)] = &[("etcd-server", "etcd")];

/// Variables the outer `cargo xtask` may pass down that would make another
/// cargo (`cargo install`, `cargo +nightly fuzz`) build into the wrong place
/// or with the wrong compiler or flags.
pub const CARGO_ENV_REMOVE: &[&str] = &[
    "CARGO_TARGET_DIR",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTUP_TOOLCHAIN",
];

/// Installs whatever is missing, printing one line per item. Fails if an
/// install fails, or if Debian packages are missing and we are not root.
pub fn ensure() -> anyhow::Result<()> {
    packages()?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    capabilities()
}

fn packages() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for &package in PACKAGES {
        let status = cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]));
        if status.as_deref() == Some("install ok installed") {
            present(package);
        } else {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    ensure!(
        mesh_tests::is_root(),
        "setup: Debian packages {} are missing and installing them needs root \
         (try: sudo -E cargo xtask setup)",
        missing.join(", ")
    );
    for package in &missing {
        installing(package, "apt-get");
    }
    cmd::run(apt_get().arg("update"))?;
    let services: Vec<&str> = NO_SERVICE
        .iter()
        .filter(|(package, _)| missing.contains(package))
        .map(|(_, service)| *service)
        .collect();
    {
        let _no_start = (!services.is_empty())
            .then(NoServiceStart::new)
            .transpose()?;
        cmd::run(
            apt_get()
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    // Installed enabled for boot on a systemd host: not wanted either.
    if std::path::Path::new("/run/systemd/system").exists() {
        for service in services {
            eprintln!("setup: {service}: disabling the system service (tests run their own)");
            cmd::run(Command::new("systemctl").args(["disable", "--now", service]))?;
        }
    }
    Ok(())
}

/// Debian's policy-rc.d while it exists: package scripts may not start
/// services (exit 101). Written only if there is none, removed on drop.
struct NoServiceStart(Option<&'static str>);

impl NoServiceStart {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if std::path::Path::new(Self::PATH).exists() {
            return Ok(Self(None));
        }
        std::fs::write(
            Self::PATH,
            "#!/bin/sh\n# cargo xtask setup: no service starts\nexit 101\n",
        )?;
        std::fs::set_permissions(Self::PATH, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(Some(Self::PATH)))
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn nightly() -> anyhow::Result<()> {
    const ITEM: &str = "nightly toolchain";
    // The plain `nightly` channel, as rust_src() and aya-build use it; a
    // dated nightly alone does not count.
    if cmd::probe(cmd::new("rustup").args(["run", "nightly", "rustc", "--version"])).is_some() {
        present(ITEM);
        return Ok(());
    }
    installing(ITEM, "rustup");
    cmd::run(cmd::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn rust_src() -> anyhow::Result<()> {
    const ITEM: &str = "rust-src for nightly";
    let components = cmd::probe(cmd::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if components.lines().any(|line| line.starts_with("rust-src")) {
        present(ITEM);
        return Ok(());
    }
    installing(ITEM, "rustup");
    cmd::run(cmd::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    const ITEM: &str = "bpf-linker 0.13";
    let version = cmd::probe(cmd::new("bpf-linker").arg("--version"));
    let version = version.as_deref().map(str::trim);
    if version.is_some_and(|v| v.starts_with("bpf-linker 0.13.")) {
        present(ITEM);
        return Ok(());
    }
    let found = version.map(|v| format!("found {v}; ")).unwrap_or_default();
    installing(
        ITEM,
        &format!("{found}cargo install against LLVM 22, this takes several minutes"),
    );
    let mut install = cmd::new("cargo");
    install
        .args(["install", "bpf-linker", "--version", "^0.13"])
        .args(["--no-default-features", "--features", "llvm-22", "--locked"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22");
    for var in CARGO_ENV_REMOVE {
        install.env_remove(var);
    }
    cmd::run(&mut install)
}

/// cargo-fuzz, for `cargo xtask fuzz` (the targets build with nightly).
fn cargo_fuzz() -> anyhow::Result<()> {
    const ITEM: &str = "cargo-fuzz";
    if cmd::probe(cmd::new("cargo").args(["fuzz", "--version"])).is_some() {
        present(ITEM);
        return Ok(());
    }
    installing(ITEM, "cargo install, this takes a few minutes");
    let mut install = cmd::new("cargo");
    // The version known to build with this machine's stable toolchain.
    install.args(["install", "cargo-fuzz", "--version", "0.13.2", "--locked"]);
    for var in CARGO_ENV_REMOVE {
        install.env_remove(var);
    }
    cmd::run(&mut install)
}

/// A thing setup promised, checked by using it: (what, how to check, where
/// it comes from).
struct Capability {
    what: &'static str,
    check: fn() -> Result<(), String>,
    from: &'static str,
}

/// Every tool the build, the tests and the demo use, checked by running it:
/// a package that is installed but incomplete (protoc without its
/// well-known types) shows here, not in the middle of a build.
const CAPABILITIES: &[Capability] = &[
    Capability {
        what: "protoc compiles a file importing google/protobuf/descriptor.proto",
        check: protoc_well_known_types,
        from: "apt-get install protobuf-compiler libprotobuf-dev",
    },
    Capability {
        what: "bpf-linker 0.13",
        check: || runs("bpf-linker", &["--version"], Some("bpf-linker 0.13.")),
        from: "cargo xtask setup (cargo install bpf-linker against LLVM 22)",
    },
    Capability {
        what: "etcd",
        check: || runs("etcd", &["--version"], Some("etcd Version")),
        from: "apt-get install etcd-server",
    },
    Capability {
        what: "etcdctl",
        check: || runs("etcdctl", &["version"], Some("etcdctl version")),
        from: "apt-get install etcd-client",
    },
    Capability {
        what: "dig",
        check: || runs("dig", &["-v"], None),
        from: "apt-get install dnsutils",
    },
    Capability {
        what: "stunnel4",
        check: || runs("stunnel4", &["-version"], None),
        from: "apt-get install stunnel4",
    },
    Capability {
        what: "tcpdump",
        check: || runs("tcpdump", &["--version"], Some("tcpdump version")),
        from: "apt-get install tcpdump",
    },
    Capability {
        what: "bpftool",
        check: || runs("bpftool", &["version"], None),
        from: "apt-get install bpftool",
    },
    Capability {
        what: "ip (iproute2)",
        check: || runs("ip", &["-V"], None),
        from: "apt-get install iproute2",
    },
    Capability {
        what: "socat",
        check: || runs("socat", &["-V"], None),
        from: "apt-get install socat",
    },
    Capability {
        what: "curl",
        check: || runs("curl", &["--version"], None),
        from: "apt-get install curl",
    },
    Capability {
        what: "openssl",
        check: || runs("openssl", &["version"], None),
        from: "apt-get install openssl",
    },
    Capability {
        what: "podman",
        check: || runs("podman", &["--version"], Some("podman version")),
        from: "apt-get install podman",
    },
    Capability {
        what: "runc",
        check: || runs("runc", &["--version"], Some("runc version")),
        from: "apt-get install runc",
    },
    Capability {
        what: "chromium",
        check: || runs("chromium", &["--version"], Some("Chromium ")),
        from: "apt-get install chromium",
    },
    Capability {
        what: "chromedriver",
        check: || runs("chromedriver", &["--version"], Some("ChromeDriver ")),
        from: "apt-get install chromium-driver",
    },
    Capability {
        what: "tshark",
        check: || runs("tshark", &["--version"], Some("TShark ")),
        from: "apt-get install tshark",
    },
    Capability {
        what: "python3",
        check: || runs("python3", &["--version"], None),
        from: "apt-get install python3",
    },
];

/// Checks every capability; fails naming each that is missing and how to get it.
fn capabilities() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for cap in CAPABILITIES {
        match (cap.check)() {
            Ok(()) => {}
            Err(why) => missing.push(format!("  {}: {why} (from: {})", cap.what, cap.from)),
        }
    }
    ensure!(
        missing.is_empty(),
        "setup: installed, but these do not work:\n{}",
        missing.join("\n")
    );
    eprintln!(
        "setup: checked: {} tools run as the build and tests need",
        CAPABILITIES.len()
    );
    Ok(())
}

/// `program args` exits 0 (stdout or stderr containing `expect`, if given).
fn runs(program: &str, args: &[&str], expect: Option<&str>) -> Result<(), String> {
    let output = cmd::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|err| format!("`{program}` does not start: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{program} {}` failed ({})",
            args.join(" "),
            output.status
        ));
    }
    let text = [output.stdout, output.stderr].concat();
    let text = String::from_utf8_lossy(&text);
    match expect {
        Some(want) if !text.contains(want) => Err(format!(
            "`{program} {}` printed {:?}, not {want:?}",
            args.join(" "),
            text.lines().next().unwrap_or("")
        )),
        _ => Ok(()),
    }
}

/// protoc can compile what etcd-client's build compiles: a file importing a
/// well-known type.
fn protoc_well_known_types() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("xtask-setup-protoc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let proto = dir.join("check.proto");
    let result = std::fs::write(
        &proto,
        "syntax = \"proto3\";\nimport \"google/protobuf/descriptor.proto\";\n\
         message Check { google.protobuf.FileDescriptorProto file = 1; }\n",
    )
    .map_err(|err| format!("{}: {err}", proto.display()))
    .and_then(|()| {
        let out = dir.join("check.pb");
        let proto_path = format!("--proto_path={}", dir.display());
        let descriptor = format!("--descriptor_set_out={}", out.display());
        let proto_arg = proto.to_string_lossy().into_owned();
        runs("protoc", &[&proto_path, &descriptor, &proto_arg], None)
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn present(item: &str) {
    eprintln!("setup: {item}: present");
}

fn installing(item: &str, how: &str) {
    eprintln!("setup: {item}: installing ({how}) ...");
}

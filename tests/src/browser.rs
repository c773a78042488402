//! A real browser for the web UI's tests: Debian's Chromium, headless,
//! driven through ChromeDriver (WebDriver) by fantoccini. It runs on this
//! host; a node's UI reaches it through `Mesh::forward_admin`. Blocking
//! calls, on a runtime of its own; dropping it ends the session, the
//! browser and the driver.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::workspace_root;

/// The browser, and the driver it runs under.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
}

/// Where the tests save screenshots: `target/ui/`.
pub fn screenshots() -> PathBuf {
    workspace_root().join("target").join("ui")
}

impl Browser {
    /// Starts ChromeDriver on a free port of 127.0.0.1 and a headless
    /// Chromium session in a new, empty profile.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let profile =
            std::env::temp_dir().join(format!("mesh-ui-profile-{}-{port}", std::process::id()));
        fs::create_dir_all(&profile).expect("profile dir");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (cargo xtask setup installs chromium-driver)");
        let up = crate::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "chromedriver did not listen on 127.0.0.1:{port}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // As root: no sandbox. No background traffic: the machine's network
        // is closed, and the tests talk to loopback only.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = runtime
            .block_on(
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .expect("a Chromium session through chromedriver");
        Self {
            runtime,
            client: Some(client),
            driver,
            profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    /// Opens `url` (a new document: the page loads from scratch).
    pub fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the
    /// page and returns what it returns.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits up to `timeout` for `check` (a script returning a boolean) to
    /// hold; returns how long it took, or `None`.
    pub fn wait_for(&self, check: &str, args: Vec<Value>, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        loop {
            if self.js(check, args.clone()) == Value::Bool(true) {
                return Some(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The text of the first element matching `css`, if any.
    pub fn text(&self, css: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .as_str()
        .map(str::to_owned)
    }

    /// The element matching `css`; panics if there is none.
    fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.runtime
            .block_on(self.client().find(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// Types `text` into the input matching `css` (cleared first).
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.runtime.block_on(async {
            e.clear().await.expect("clear");
            e.send_keys(text).await.expect("type");
        });
    }

    /// Selects the option of value `value` in the select matching `css`.
    pub fn select(&self, css: &str, value: &str) {
        let e = self.element(css);
        self.runtime
            .block_on(e.select_by_value(value))
            .expect("select");
    }

    /// Clicks the element matching `css`.
    pub fn click(&self, css: &str) {
        self.runtime.block_on(async {
            let e = self
                .client()
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            e.click()
                .await
                .unwrap_or_else(|e| panic!("click {css}: {e}"));
        });
    }

    /// Saves a PNG of the window as `target/ui/<name>.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .expect("screenshot");
        let dir = screenshots();
        fs::create_dir_all(&dir).expect("target/ui");
        let path = dir.join(format!("{name}.png"));
        fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A Chromium the driver left behind (it was killed mid-session).
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!("user-data-dir={}", self.profile.display()))
            .status();
        remove_profile(&self.profile);
    }
}

fn remove_profile(profile: &Path) {
    for _ in 0..20 {
        if fs::remove_dir_all(profile).is_ok() || !profile.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

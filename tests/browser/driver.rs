//! A real browser for the tests: Debian's headless Chromium, driven over
//! WebDriver by its chromedriver, which each [`Browser`] starts on a free
//! port with a fresh profile and stops (with the browser) when dropped.
//!
//! At most two browsers run at once: the machine has two cores, and a third
//! Chromium only makes every test slower.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::common::{free_port, poll_until};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long the page may take to show what a test waits for (the admin
/// page polls every 2 s; a mail is sent within a second or two).
pub const SHOWS_WITHIN: Duration = Duration::from_secs(20);

static BROWSERS: Semaphore = Semaphore::const_new(2);

pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
    _slot: SemaphorePermit<'static>,
}

impl Browser {
    pub async fn start() -> Self {
        let slot = BROWSERS.acquire().await.expect("the browser semaphore");
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver \
                 (scripts/test does)"
            );
        }
        let port = free_port();
        let profile = std::env::temp_dir().join(format!("es-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).expect("a browser profile dir");
        // Its own process group, so that dropping it also ends the
        // browsers it started, even when a test panics mid-session.
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1400,1100",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = poll_until(Duration::from_secs(30), "a chromedriver session", || {
            let caps = caps.clone();
            let url = url.clone();
            async move {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        Browser {
            client,
            driver,
            profile,
            _slot: slot,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Clicks the element `css` names, once it can take a click: on a busy
    /// machine a button may still be disabled, covered or re-rendered when
    /// it is first found, and WebDriver refuses the click then.
    pub async fn click(&self, css: &str) {
        poll_until(SHOWS_WITHIN, &format!("a click on {css}"), || async move {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.click().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }

    /// Waits until `script` returns something truthy; returns it.
    pub async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        poll_until(SHOWS_WITHIN, what, || {
            let args = args.clone();
            async move {
                let v = self.js(script, args).await;
                let truthy = !matches!(&v, Value::Null | Value::Bool(false))
                    && v != json!("")
                    && v != json!(0);
                if truthy { Ok(v) } else { Err(v) }
            }
        })
        .await
    }

    /// Saves what the browser shows as `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("screenshots");
        std::fs::create_dir_all(&dir).expect("the screenshots dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Ends the session (the browser quits) and chromedriver.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.client.clone().close()).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and any browser still running.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

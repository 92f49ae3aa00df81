//! A small W3C WebDriver client over HTTP, enough to drive Debian's headless Chromium
//! through chromedriver: open pages, find elements, type, click, accept dialogs, take
//! screenshots. The protocol is JSON over HTTP, so the project's HTTP client is all it needs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where Chromium and chromedriver live (Debian's packages), or why they cannot be used.
pub fn find_browser() -> Result<(String, String), String> {
    let chromium = std::env::var("NEOCLOUD_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    let driver =
        std::env::var("NEOCLOUD_TEST_CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into());
    for p in [&chromium, &driver] {
        if !Path::new(p).exists() {
            return Err(format!(
                "{p} not found (apt-get install chromium chromium-driver)"
            ));
        }
    }
    Ok((chromium, driver))
}

/// A chromedriver process with one browser session.
pub struct Driver {
    child: Child,
    http: reqwest::Client,
    base: String,
    /// The browser's profile directory: unique to this driver, so it names its Chromium
    /// processes.
    profile: std::path::PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free port and a headless Chromium session.
    pub async fn start(chromium: &str, driver: &str, profile: std::path::PathBuf) -> Driver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut d = Driver {
            child,
            http,
            base,
            profile: profile.clone(),
        };
        // Flags: headless as root in a sandbox-less container, and no background traffic
        // (this machine's network is closed).
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1440,1000",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let v = d.call("POST", "/session", Some(caps)).await;
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        d.base = format!("{}/session/{id}", d.base);
        d
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let v: Value = req
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.get("value").cloned().unwrap_or(v)
    }

    fn check(v: &Value, what: &str) {
        if let Some(e) = v.get("error") {
            panic!("webdriver {what}: {e}: {}", v["message"]);
        }
    }

    /// Opens a URL.
    pub async fn goto(&self, url: &str) {
        let v = self.call("POST", "/url", Some(json!({"url": url}))).await;
        Self::check(&v, "goto");
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Finds an element by CSS selector, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self
                .call(
                    "POST",
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = v.get(ELEMENT).and_then(Value::as_str) {
                return id.to_string();
            }
            assert!(Instant::now() < deadline, "no element {css}: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many elements match a selector now.
    pub async fn count(&self, css: &str) -> usize {
        let v = self
            .call(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array().map_or(0, Vec::len)
    }

    /// An element's visible text.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        let v = self.call("GET", &format!("/element/{id}/text"), None).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Types into an element.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        let v = self
            .call(
                "POST",
                &format!("/element/{id}/value"),
                Some(json!({"text": text})),
            )
            .await;
        Self::check(&v, "type");
    }

    /// Chooses an option of a `<select>` by its value.
    pub async fn select(&self, select_css: &str, value: &str) {
        self.click(&format!("{select_css} option[value=\"{value}\"]"))
            .await;
    }

    /// Clicks an element.
    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        let v = self
            .call("POST", &format!("/element/{id}/click"), None)
            .await;
        Self::check(&v, "click");
    }

    /// Accepts the open `confirm()` dialog.
    pub async fn accept_dialog(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.call("POST", "/alert/accept", None).await;
            if v.get("error").is_none() {
                return;
            }
            assert!(Instant::now() < deadline, "no dialog: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a script in the page and returns its value.
    pub async fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
    }

    /// Waits until the URL's path starts with `prefix`.
    pub async fn wait_path(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let u = self.url().await;
            let path = u.splitn(4, '/').nth(3).map(|p| format!("/{p}"));
            if path.as_deref().is_some_and(|p| p.starts_with(prefix)) {
                return path.unwrap_or_default();
            }
            assert!(Instant::now() < deadline, "still at {u}, wanted {prefix}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs axe-core (`source`: axe.min.js) on the page and returns its serious and
    /// critical violations, one line each: rule, help, and up to three elements.
    pub async fn axe(&self, source: &str) -> Vec<String> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": format!("{source}\nreturn true;"), "args": []})),
        )
        .await;
        let v = self
            .call(
                "POST",
                "/execute/async",
                Some(
                    json!({"script": "const done = arguments[arguments.length - 1];
                    axe.run(document, {resultTypes: ['violations']}).then(r => done(
                      r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                        .map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at ' +
                             v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(', '))));",
                    "args": []}),
                ),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Resizes the browser window (CSS pixels).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Saves a PNG screenshot of the window.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.call("GET", "/screenshot", None).await;
        let b64 = v.as_str().expect("screenshot data");
        std::fs::write(path, base64_decode(b64)).unwrap();
    }
}

impl Driver {
    /// Ends the browser session (chromedriver closes Chromium).
    pub async fn quit(&self) {
        let _ = self.call("DELETE", "", None).await;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium outlives chromedriver: end exactly the processes running with this
        // driver's own profile directory (nothing else has that path on its command line).
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .status();
    }
}

/// Standard base64 (the screenshot encoding).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    out
}

//! A headless Chromium driven over the DevTools protocol, for the dashboard's browser tests.
//!
//! Debian's `chromium`, found or installed by `deploy/local/stack chromium` (which fails with
//! the command that installs it where it cannot), started with the flags these machines need
//! (no sandbox as root, no GPU, nothing that reaches the network) and a fresh profile. The
//! protocol is JSON over one websocket: commands with ids, answers with the same ids, events
//! without; one page is one target attached with a session id ("flattened" sessions). What a
//! page reports (console errors, exceptions, responses) is kept for the test to read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::workspace_root;

/// The flags every run needs here.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--mute-audio",
];

/// Chromium's path, from the stack (installed on first use when it can be).
pub fn chromium() -> PathBuf {
    let output = Command::new(workspace_root().join("deploy/local/stack"))
        .arg("chromium")
        .output()
        .expect("run deploy/local/stack chromium");
    assert!(
        output.status.success(),
        "no Chromium for the browser tests:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;
type Events = Arc<Mutex<HashMap<String, Vec<Value>>>>;

/// A running Chromium; killed when dropped.
pub struct Browser {
    child: Child,
    outgoing: mpsc::UnboundedSender<Message>,
    pending: Pending,
    /// Events by session id.
    events: Events,
    next_id: Arc<AtomicU64>,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn launch() -> Self {
        let profile = tempfile::tempdir().expect("a profile folder");
        let child = Command::new(chromium())
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let url = devtools_url(profile.path()).await;
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect to Chromium's DevTools");
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Events = Arc::default();
        {
            let (pending, events) = (pending.clone(), events.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Ok(text) = message.into_text() else {
                        continue;
                    };
                    let Ok(value) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if let Some(id) = value["id"].as_u64() {
                        if let Some(reply) = pending.lock().unwrap().remove(&id) {
                            let result = match value.get("error") {
                                Some(error) => Err(error.to_string()),
                                None => Ok(value["result"].clone()),
                            };
                            let _ = reply.send(result);
                        }
                    } else {
                        let session = value["sessionId"].as_str().unwrap_or("").to_string();
                        events
                            .lock()
                            .unwrap()
                            .entry(session)
                            .or_default()
                            .push(value);
                    }
                }
            });
        }
        Self {
            child,
            outgoing,
            pending,
            events,
            next_id: Arc::new(AtomicU64::new(1)),
            _profile: profile,
        }
    }

    async fn send(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let (reply, answer) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, reply);
        self.outgoing
            .send(Message::text(message.to_string()))
            .expect("the DevTools connection is open");
        match tokio::time::timeout(Duration::from_secs(60), answer).await {
            Ok(Ok(Ok(value))) => value,
            Ok(Ok(Err(error))) => panic!("{method} failed: {error}"),
            _ => panic!("{method}: no answer from Chromium"),
        }
    }

    /// A new tab of `width`×`height` CSS pixels, with the console, exceptions and network
    /// reported.
    pub async fn page(&self, width: u32, height: u32) -> Page<'_> {
        let target = self
            .send(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await["targetId"]
            .as_str()
            .unwrap()
            .to_string();
        let session = self
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        let page = Page {
            browser: self,
            session,
        };
        for domain in ["Page", "Runtime", "Log", "Network"] {
            page.call(&format!("{domain}.enable"), json!({})).await;
        }
        page.resize(width, height).await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium writes the port it chose, and the browser's path, to `DevToolsActivePort`.
async fn devtools_url(profile: &Path) -> String {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return format!("ws://127.0.0.1:{port}{path}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "Chromium did not start within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One tab.
pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.browser.send(Some(&self.session), method, params).await
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&self, url: &str) {
        let before = self.events_named("Page.loadEventFired").len();
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_until("the page loads", || {
            self.events_named("Page.loadEventFired").len() > before
        })
        .await;
    }

    /// The value of a JavaScript expression (promises awaited); panics on an exception.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy (checked every 100 ms, for at most 60 s) and returns
    /// its value.
    pub async fn wait_for(&self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.eval(expression).await;
            if !matches!(value, Value::Null | Value::Bool(false)) && value != json!("") {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// The events of this tab named `method`, in order.
    pub fn events_named(&self, method: &str) -> Vec<Value> {
        self.browser
            .events
            .lock()
            .unwrap()
            .get(&self.session)
            .map(|list| {
                list.iter()
                    .filter(|e| e["method"] == method)
                    .map(|e| e["params"].clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Errors the page reported: uncaught exceptions, `console.error`, and the browser's own
    /// error entries (a failed request among them), as text.
    pub fn console_errors(&self) -> Vec<String> {
        let mut errors: Vec<String> = self
            .events_named("Runtime.exceptionThrown")
            .iter()
            .map(|e| format!("exception: {}", e["exceptionDetails"]))
            .collect();
        errors.extend(
            self.events_named("Runtime.consoleAPICalled")
                .iter()
                .filter(|e| e["type"] == "error" || e["type"] == "assert")
                .map(|e| format!("console.error: {}", e["args"])),
        );
        errors.extend(
            self.events_named("Log.entryAdded")
                .iter()
                .filter(|e| e["entry"]["level"] == "error")
                .map(|e| {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    format!(
                        "{}: {}",
                        text(&e["entry"]["source"]),
                        text(&e["entry"]["text"])
                    )
                }),
        );
        errors
    }

    /// `(url, status)` of every response the tab received.
    pub fn responses(&self) -> Vec<(String, u64)> {
        self.events_named("Network.responseReceived")
            .iter()
            .map(|e| {
                (
                    e["response"]["url"].as_str().unwrap_or("").to_string(),
                    e["response"]["status"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// The URL of every request the tab sent (websockets included).
    pub fn requested_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self
            .events_named("Network.requestWillBeSent")
            .iter()
            .filter_map(|e| e["request"]["url"].as_str().map(str::to_string))
            .collect();
        urls.extend(
            self.events_named("Network.webSocketCreated")
                .iter()
                .filter_map(|e| e["url"].as_str().map(str::to_string)),
        );
        urls
    }
}

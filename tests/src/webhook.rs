//! A webhook receiver on a free loopback port for the automations' tests: it records every
//! request (its `Idempotency-Key` and body) as it arrives and answers 200, or, while held,
//! records it and never answers, so that a test can kill the sender with a request on the wire
//! that was received but not acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::Value;

#[derive(Clone, Debug)]
pub struct Received {
    pub key: String,
    pub body: Value,
}

#[derive(Clone, Default)]
pub struct Receiver {
    seen: Arc<Mutex<Vec<Received>>>,
    hold: Arc<AtomicBool>,
}

impl Receiver {
    /// Starts it; returns it and its URL.
    pub async fn start() -> (Self, String) {
        let receiver = Receiver::default();
        let (seen, hold) = (receiver.seen.clone(), receiver.hold.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (seen, hold) = (seen.clone(), hold.clone());
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
                seen.lock().unwrap().push(Received { key, body });
                if hold.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    /// While `true`, requests are recorded and never answered.
    pub fn hold(&self, hold: bool) {
        self.hold.store(hold, Ordering::SeqCst);
    }

    pub fn all(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests per idempotency key.
    pub fn attempts(&self) -> BTreeMap<String, usize> {
        let mut by_key = BTreeMap::new();
        for r in self.all() {
            *by_key.entry(r.key).or_insert(0) += 1;
        }
        by_key
    }
}

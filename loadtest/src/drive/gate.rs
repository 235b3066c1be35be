//! A gate the HTTP requests of a run pass through, which a chaos run closes to quiesce the
//! endpoint: once closed, new requests wait, and [`Gate::close`] returns when the ones already
//! sent have been answered (so the endpoint's producer has nothing in flight).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

#[derive(Debug)]
pub struct Gate {
    closed: watch::Sender<bool>,
    is_closed: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// A request through the gate; dropped when it has its answer.
pub struct Pass<'a>(&'a Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            closed: watch::Sender::new(false),
            is_closed: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }
}

impl Gate {
    /// Waits while the gate is closed; the request counts as in flight until the pass drops.
    pub async fn pass(&self) -> Pass<'_> {
        loop {
            // Counted before the check: a closer either sees this request or it sees closed.
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            if !self.is_closed.load(Ordering::SeqCst) {
                return Pass(self);
            }
            drop(Pass(self));
            let mut open = self.closed.subscribe();
            let _ = open.wait_for(|closed| !closed).await;
        }
    }

    /// Closes the gate and waits until no request is in flight (at most `timeout`); returns
    /// whether it got there.
    pub async fn close(&self, timeout: Duration) -> bool {
        self.is_closed.store(true, Ordering::SeqCst);
        self.closed.send_replace(true);
        let drained = async {
            loop {
                let idle = self.idle.notified();
                if self.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, drained).await.is_ok()
    }

    pub fn open(&self) {
        self.is_closed.store(false, Ordering::SeqCst);
        self.closed.send_replace(false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn closing_waits_for_requests_in_flight_and_holds_new_ones() {
        let gate = Arc::new(Gate::default());
        let pass = gate.pass().await;
        let closing = tokio::spawn({
            let gate = gate.clone();
            async move { gate.close(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!closing.is_finished(), "a request is still in flight");
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _pass = gate.pass().await;
            }
        });
        drop(pass);
        assert!(closing.await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the gate is closed");
        gate.open();
        waiting.await.unwrap();
    }

    #[tokio::test]
    async fn closing_gives_up_after_its_timeout() {
        let gate = Gate::default();
        let _pass = gate.pass().await;
        assert!(!gate.close(Duration::from_millis(20)).await);
    }
}

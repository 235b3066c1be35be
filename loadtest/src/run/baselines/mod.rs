//! Baselines measured in the same run, on the same machine, with the same data, so that every
//! figure can be read as a ratio (these machines are shared and noisy; absolute numbers are
//! not comparable from one run to the next):
//! - [`broker`]: the broker's consume-and-discard rate for the backlog the run pre-loaded;
//! - [`insert`]: the engine's raw insert rate for the same rows, into `events`/`logs` with their
//!   materialized views attached (under tenants of their own);
//! - [`scan`]: the dashboard questions answered by scanning the raw events and logs.

pub mod broker;
pub mod insert;
pub mod scan;

use serde::{Deserialize, Serialize};

/// What the baselines measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    pub broker_drain: Option<Rate>,
    pub raw_insert: Option<Rate>,
    /// Why a baseline could not be measured.
    pub errors: Vec<String>,
}

/// Items moved in a measured time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub items: u64,
    pub secs: f64,
    pub per_sec: f64,
}

impl Rate {
    pub fn new(items: u64, secs: f64) -> Self {
        Self {
            items,
            secs,
            per_sec: if secs > 0.0 { items as f64 / secs } else { 0.0 },
        }
    }
}

//! Seeded randomness: ChaCha8 (portable across platforms and rand versions), one independent
//! stream per purpose, so that, e.g., a run's content does not depend on how runs interleave.

use rand::{Rng as _, RngCore, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use uuid::{Builder, Uuid};

pub type Rng = ChaCha8Rng;

/// SplitMix64's finalizer: a cheap, well-mixed hash of a 64-bit value.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The stream for one purpose (`domain`) and item (`index`) of a seed.
pub fn stream(seed: u64, domain: u64, index: u64) -> Rng {
    Rng::seed_from_u64(mix(mix(seed ^ mix(domain)) ^ index))
}

pub const DOMAIN_CATALOG: u64 = 1;
pub const DOMAIN_ARRIVALS: u64 = 2;
pub const DOMAIN_RUN: u64 = 3;
pub const DOMAIN_ESTIMATE: u64 = 4;
pub const DOMAIN_ACCOUNT: u64 = 5;
pub const DOMAIN_DUPLICATES: u64 = 6;

/// Uniform in `[low, high]` (microseconds or any integer).
pub fn uniform(rng: &mut Rng, low: i64, high: i64) -> i64 {
    if high <= low {
        low
    } else {
        rng.random_range(low..=high)
    }
}

/// Log-uniform in `[low, high]`: as many values between 1 s and 10 s as between 10 s and 100 s.
pub fn log_uniform(rng: &mut Rng, low: i64, high: i64) -> i64 {
    let low = low.max(1);
    if high <= low {
        return low;
    }
    let (a, b) = ((low as f64).ln(), (high as f64).ln());
    ((a + (b - a) * rng.random::<f64>()).exp() as i64).clamp(low, high)
}

pub fn chance(rng: &mut Rng, p: f64) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}

/// An index drawn with probability proportional to `weights` (not all zero).
pub fn weighted(rng: &mut Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut target = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if target < *w {
            return i;
        }
        target -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

/// A random (version 4) UUID from the stream.
pub fn uuid4(rng: &mut Rng) -> Uuid {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    Builder::from_random_bytes(bytes).into_uuid()
}

/// A version 7 UUID (Prefect's event ids) for a time in microseconds since the epoch.
pub fn uuid7(rng: &mut Rng, at_us: i64) -> Uuid {
    let mut bytes = [0u8; 10];
    rng.fill_bytes(&mut bytes);
    Builder::from_unix_timestamp_millis((at_us / 1000).max(0) as u64, &bytes).into_uuid()
}

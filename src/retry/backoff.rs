//! How long to wait before trying again: exponential backoff with jitter. Pure but for the
//! jitter's randomness; the caller says when "now" is.

use std::time::Duration;

use rand::Rng;

/// The longest wait between two attempts of a pair, whatever the backoff doubling reaches.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Exponential backoff with jitter: a random wait in [base·2^(n−1)/2, base·2^(n−1)], capped, so
/// that many pairs failing together do not retry in lockstep.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let half = ceiling / 2;
    half + ceiling
        .saturating_sub(half)
        .mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..=30 {
            let d = backoff(base, attempt);
            let ceiling = base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
        }
    }
}

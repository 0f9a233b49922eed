//! The backfill rate: backfilled ÷ sent × 100, rounded half-up to two decimals, in integer
//! arithmetic. Floating point would turn 1/3 into 33.333333333333336 and round some halves the
//! wrong way; the provider accepts at most two decimals, so the value is held as hundredths.
//! Pure: no I/O, no clock.

use std::fmt;

/// A percentage in 0–100 with at most two decimals, stored as hundredths of a percent.
///
/// The only constructor divides counts that have already been checked, so a `Rate` above 100,
/// below 0 or with a third decimal cannot exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(u16);

/// Why counts do not make a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("no codes were sent (cardinal number is 0)")]
    NoneSent,
    #[error("backfilled ({backfilled}) is greater than sent ({sent})")]
    MoreBackfilledThanSent { backfilled: u64, sent: u64 },
}

impl Rate {
    /// The rate for `backfilled` codes typed back out of `sent` codes sent.
    pub fn from_counts(backfilled: u64, sent: u64) -> Result<Self, RateError> {
        if sent == 0 {
            return Err(RateError::NoneSent);
        }
        if backfilled > sent {
            return Err(RateError::MoreBackfilledThanSent { backfilled, sent });
        }
        // hundredths = round_half_up(backfilled * 10_000 / sent), as (2n + d) / 2d; u128 cannot
        // overflow for u64 inputs.
        let (n, d) = (u128::from(backfilled) * 10_000, u128::from(sent));
        let hundredths = (2 * n + d) / (2 * d);
        let hundredths = u16::try_from(hundredths).expect("backfilled <= sent bounds it by 10000");
        Ok(Self(hundredths))
    }

    /// The rate in hundredths of a percent (0–10000).
    pub fn hundredths(self) -> u16 {
        self.0
    }

    /// The rate as a number in percent, for JSON and metrics (exact to two decimals).
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// A rate read back from storage, as queries select it (`(rate * 100)::int`); `None`
    /// outside 0–100 %.
    pub fn from_hundredths(hundredths: i32) -> Option<Self> {
        u16::try_from(hundredths)
            .ok()
            .filter(|h| *h <= 10_000)
            .map(Self)
    }
}

/// The form the provider takes in `backfillNow`: no trailing zeros, no trailing point
/// ("10", "12.5", "33.33").
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{whole}"),
            f10 if f10 % 10 == 0 => write!(f, "{whole}.{}", f10 / 10),
            _ => write!(f, "{whole}.{frac:02}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(b: u64, s: u64) -> String {
        Rate::from_counts(b, s).unwrap().to_string()
    }

    #[test]
    fn the_issue_examples_render_exactly() {
        assert_eq!(rate(100, 1000), "10");
        assert_eq!(rate(1, 8), "12.5");
        assert_eq!(rate(1, 3), "33.33");
        assert_eq!(rate(2, 3), "66.67");
        assert_eq!(rate(0, 5), "0");
        assert_eq!(rate(5, 5), "100");
    }

    #[test]
    fn halves_round_up_and_below_half_rounds_down() {
        // 1/16 = 6.25 exactly; 1/32 = 3.125 → 3.13 (half up); 1/400 = 0.25; 1/80000 = 0.00125 → 0
        assert_eq!(rate(1, 16), "6.25");
        assert_eq!(rate(1, 32), "3.13");
        assert_eq!(rate(1, 400), "0.25");
        assert_eq!(rate(1, 80_000), "0");
        assert_eq!(rate(1, 20_000), "0.01"); // 0.005 → 0.01
        assert_eq!(rate(1, 20_001), "0"); // 0.0049997… → 0
        assert_eq!(rate(19_999, 20_000), "100"); // 99.995 → 100
        assert_eq!(rate(19_998, 20_000), "99.99");
        assert_eq!(rate(7, 10), "70");
        assert_eq!(rate(101, 1000), "10.1");
        assert_eq!(rate(1001, 10_000), "10.01");
    }

    #[test]
    fn extreme_counts_do_not_overflow() {
        assert_eq!(rate(u64::MAX, u64::MAX), "100");
        assert_eq!(rate(u64::MAX / 3, u64::MAX), "33.33");
        assert_eq!(rate(0, u64::MAX), "0");
    }

    #[test]
    fn counts_that_cannot_make_a_rate_are_refused() {
        assert_eq!(Rate::from_counts(0, 0), Err(RateError::NoneSent));
        assert_eq!(
            Rate::from_counts(6, 5),
            Err(RateError::MoreBackfilledThanSent {
                backfilled: 6,
                sent: 5
            })
        );
    }

    #[test]
    fn every_rate_for_small_counts_is_in_range_with_at_most_two_decimals() {
        for sent in 1..=300u64 {
            for backfilled in 0..=sent {
                let r = Rate::from_counts(backfilled, sent).unwrap();
                assert!(r.hundredths() <= 10_000);
                let text = r.to_string();
                let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
                assert!(
                    !text.contains('.') || (decimals <= 2 && !text.ends_with('0')),
                    "{text}"
                );
                // the rendered value is the exact rate rounded half-up: |text*sent - 100*b| <= sent/200
                let shown: f64 = text.parse().unwrap();
                let exact = backfilled as f64 * 100.0 / sent as f64;
                assert!(
                    (shown - exact).abs() <= 0.005 + 1e-9,
                    "{backfilled}/{sent}: {text}"
                );
            }
        }
    }
}

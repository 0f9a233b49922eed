//! What a run is and what became of each of its pairs, as values: how it was started, the
//! states a submission goes through, and the tallies a run closes with. The statements that
//! read and write them are `queue::runs`'; the views (metrics, status) need only these.
//! [`State`] and [`Trigger`] are read from their TEXT columns directly (`as "state: State"`):
//! a value this release does not know is a decoding error, never taken for another one.

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::Postgres;

/// How a cycle was started; stored in `report_runs.trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Once,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Once => "once",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Schedule, Self::Once]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    /// A trigger read back from `report_runs.trigger`: an unknown value is an error.
    pub fn from_column(s: &str) -> anyhow::Result<Self> {
        Self::parse(s).ok_or_else(|| {
            anyhow::anyhow!(
                "report_runs.trigger {} is not a trigger this release knows",
                crate::domain::excerpt::quoted(s)
            )
        })
    }
}

/// The state column's values; also `history --state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
#[value(rename_all = "lower")]
pub enum State {
    Pending,
    Succeeded,
    Failed,
    Skipped,
    Invalid,
    Superseded,
}

impl State {
    pub const ALL: [State; 6] = [
        Self::Pending,
        Self::Succeeded,
        Self::Failed,
        Self::Skipped,
        Self::Invalid,
        Self::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Invalid => "invalid",
            Self::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// A state read back from the database: a value this release does not know (a newer
    /// release wrote it, or a hand edit) is an error, never taken for another state.
    pub fn from_column(s: &str) -> anyhow::Result<Self> {
        Self::parse(s).ok_or_else(|| {
            anyhow::anyhow!(
                "report_submissions.state {} is not a state this release knows",
                crate::domain::excerpt::quoted(s)
            )
        })
    }
}

/// The column's value ("succeeded"), as `status --json` prints it.
impl serde::Serialize for State {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Decodes a TEXT column through `parse`, refusing a value it does not know.
macro_rules! text_column {
    ($ty:ty) => {
        impl sqlx::Type<Postgres> for $ty {
            fn type_info() -> PgTypeInfo {
                <str as sqlx::Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <str as sqlx::Type<Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, Postgres> for $ty {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <&str as sqlx::Decode<Postgres>>::decode(value)?;
                Ok(Self::from_column(text)?)
            }
        }
    };
}

text_column!(State);
text_column!(Trigger);

/// A run's tallies, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub pairs: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub invalid: i64,
    pub superseded: i64,
    pub pending: i64,
}

/// The counts as the summary line and `run --once` print them (pending aside: only a run
/// that ended early has any).
impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pairs, {} succeeded, {} failed, {} skipped, {} invalid, {} superseded",
            self.pairs, self.succeeded, self.failed, self.skipped, self.invalid, self.superseded
        )
    }
}

/// What a run did, for the summary line and `run --once`.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_id: i64,
    pub tick: DateTime<Utc>,
    pub trigger: Trigger,
    pub tally: Tally,
    /// Requests made for the run's pairs, retries included.
    pub attempts: i64,
    /// From the claim until the run closed (or until now, while it is open).
    pub duration: std::time::Duration,
    /// Why pairs failed, most frequent first: (cause, pairs).
    pub failures: Vec<(String, i64)>,
}

impl RunSummary {
    /// Exit 0 only when every pair succeeded, was skipped or was superseded by a newer tick.
    pub fn all_good(&self) -> bool {
        self.tally.failed == 0 && self.tally.invalid == 0 && self.tally.pending == 0
    }
}

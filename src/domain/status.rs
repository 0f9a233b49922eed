//! The provider's top-level `status`, as a value. The two calls' pages document six: "0"
//! (success), "-1" (authentication), "-2" (IP restricted), "-16" (the `Timestamp` header is too
//! far off), "-18" (busy) and "-22" (parameters); any other text the provider sends is kept as
//! it came. The provider classifies them, the queue stores them, the metrics label them and
//! `status` shows them: one list, here.

use std::fmt;

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::Postgres;

/// A status the provider answered with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProviderStatus {
    /// "0"
    Success,
    /// "-1": the key or the signature.
    Authentication,
    /// "-2": this host's address is not on the account's list.
    IpRestricted,
    /// "-16": the `Timestamp` header is too far from the provider's clock.
    Timestamp,
    /// "-18": the provider is busy.
    Busy,
    /// "-22": the request's parameters.
    Parameters,
    /// A status the pages do not document, as the provider wrote it.
    Other(String),
}

impl ProviderStatus {
    /// Every documented status, success first.
    pub const DOCUMENTED: [ProviderStatus; 6] = [
        Self::Success,
        Self::Authentication,
        Self::IpRestricted,
        Self::Timestamp,
        Self::Busy,
        Self::Parameters,
    ];

    /// The status in `text`; surrounding whitespace aside, any text is one.
    pub fn parse(text: &str) -> Self {
        Self::DOCUMENTED
            .into_iter()
            .find(|s| s.code() == Some(text.trim()))
            .unwrap_or_else(|| Self::Other(text.to_owned()))
    }

    /// The documented code ("0", "-16"); `None` for any other status.
    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            Self::Success => "0",
            Self::Authentication => "-1",
            Self::IpRestricted => "-2",
            Self::Timestamp => "-16",
            Self::Busy => "-18",
            Self::Parameters => "-22",
            Self::Other(_) => return None,
        })
    }

    /// The metrics label: the documented code, or "other" for every other status, so that a
    /// provider that invents statuses cannot grow the number of series without bound.
    pub fn label(&self) -> &'static str {
        self.code().unwrap_or("other")
    }
}

/// The status as the provider wrote it.
impl fmt::Display for ProviderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(text) => f.write_str(text),
            documented => f.write_str(documented.code().unwrap_or_default()),
        }
    }
}

impl serde::Serialize for ProviderStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read from the TEXT column `provider_status`, which holds whatever the provider answered.
impl sqlx::Type<Postgres> for ProviderStatus {
    fn type_info() -> PgTypeInfo {
        <str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for ProviderStatus {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self::parse(<&str as sqlx::Decode<Postgres>>::decode(
            value,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_as_written_and_undocumented_ones_share_one_label() {
        for s in ProviderStatus::DOCUMENTED {
            assert_eq!(ProviderStatus::parse(&s.to_string()), s);
        }
        assert_eq!(ProviderStatus::parse(" -16"), ProviderStatus::Timestamp);
        assert_eq!(ProviderStatus::parse("-22").label(), "-22");
        let other = ProviderStatus::parse("-29");
        assert_eq!((other.label(), other.to_string()), ("other", "-29".into()));
    }
}

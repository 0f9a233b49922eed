//! Identifiers the provider constrains: an [`AppId`] of 4–32 characters and an [`Mcc`] of three
//! digits. Built only through validation, so that code holding one never has to check again.
//! This module owns the rules; it does no I/O.

pub mod excerpt;
pub mod host;
pub mod mcc;
pub mod rate;
pub mod run;
pub mod status;

use std::fmt;

use excerpt::drives_a_terminal;

/// An application id as the provider accepts it: 4 to 32 characters.
///
/// The docs say "应用id,4-32字符" without naming a character set, so only the length is
/// enforced, counted in characters (not bytes), and control characters and surrounding
/// whitespace are refused because they can only be a data error.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

impl AppId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if !(4..=32).contains(&len) {
            return Err(format!(
                "appId {} must be 4 to 32 characters, it has {len}",
                excerpt::quoted(raw)
            ));
        }
        if raw.trim() != raw || raw.chars().any(drives_a_terminal) {
            return Err(format!(
                "appId {} has surrounding whitespace or control characters",
                excerpt::quoted(raw)
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A mobile country code: exactly three ASCII digits, sent as a JSON string ("460").
///
/// Kept as text rather than a number so that codes with leading zeros ("001", the test network)
/// survive; an integer source column is accepted when it renders as three digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mcc(String);

impl Mcc {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "mcc {} is not a three-digit code",
                excerpt::quoted(raw)
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Mcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a provider account in `[[accounts]]`: 1 to 32 ASCII letters, digits, `_` or `-`,
/// starting with a letter. It is stored with each submission, labels metrics, and names the
/// account's secret in the environment (`BACKFILL_REPORTER_API_SECRET_<NAME>`) and among
/// systemd credentials (`api_secret_<name>`), so it must be safe in all of those places.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName(String);

impl AccountName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut chars = raw.chars();
        let first_is_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !(1..=32).contains(&raw.len()) || !first_is_letter || !rest_ok {
            return Err(format!(
                "account name {} must be 1 to 32 ASCII letters, digits, '_' or '-', starting with a letter",
                excerpt::quoted(raw)
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as the end of an environment variable: upper case, `-` as `_`. Two names that
    /// differ only there (`eu-shop`, `EU_SHOP`) would share a variable, so config refuses them.
    pub fn env_suffix(&self) -> String {
        self.0.to_ascii_uppercase().replace('-', "_")
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_id_accepts_4_to_32_characters_and_counts_characters_not_bytes() {
        assert!(AppId::parse("abcd").is_ok());
        assert!(AppId::parse(&"x".repeat(32)).is_ok());
        assert!(AppId::parse("回填率回").is_ok());
        assert!(AppId::parse("abc").is_err());
        assert!(AppId::parse(&"x".repeat(33)).is_err());
        assert!(AppId::parse(" abcd").is_err());
        assert!(AppId::parse("ab\ncd").is_err());
        assert!(
            AppId::parse("ab\u{202e}cd").is_err(),
            "a right-to-left override"
        );
    }

    #[test]
    fn an_account_name_is_a_safe_word_for_the_environment_and_credentials() {
        for ok in ["shop", "EU-shop_2", &"a".repeat(32)] {
            assert!(AccountName::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "2shop",
            "-shop",
            "shop/eu",
            "shop eu",
            "shöp",
            &"a".repeat(33),
        ] {
            assert!(AccountName::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            AccountName::parse("eu-shop").unwrap().env_suffix(),
            "EU_SHOP"
        );
    }

    #[test]
    fn mcc_is_exactly_three_ascii_digits() {
        assert_eq!(Mcc::parse("460").unwrap().as_str(), "460");
        assert!(Mcc::parse("001").is_ok());
        for bad in ["46", "4600", "46a", "", "-46", "४६०"] {
            assert!(Mcc::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}

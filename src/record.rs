//! The record of one send, as the provider's `orderId/record` page describes it, parsed
//! leniently, and the provider's codes for it in words. The page's table and its example
//! disagree, and the `record` command must show what it can of any answer. It does no I/O and
//! knows nothing of signing or classification: `provider` fetches a record, `commands` prints it.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};

/// The `data` of a record lookup. The page's table and its example disagree in places, and a
/// debugging command must show what it can of any answer, so every field is optional and
/// lenient: numbers may arrive as strings and strings as numbers, a value of another shape is
/// read as absent, unknown fields are ignored, and a leg list may come as one object (the
/// page's prose says "returns this object", its table says JSONArray).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Record {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub order_id: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub flow_id: Option<i64>,
    #[serde(deserialize_with = "lenient::one")]
    pub verifications: Option<Verification>,
    #[serde(deserialize_with = "lenient::list")]
    pub sms: Vec<SmsLeg>,
    #[serde(deserialize_with = "lenient::list")]
    pub call: Vec<CallLeg>,
    #[serde(deserialize_with = "lenient::list")]
    pub sna: Vec<SnaLeg>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Verification {
    #[serde(deserialize_with = "lenient::opt_int")]
    pub matched: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub verified_date: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub ori_receiver: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub channel: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub order_id: Option<String>,
}

/// Settlement fields shared by every leg. The table calls the currency `settleCurrency`; the
/// example sends `currency`. Both are read, and a leg that carries both is no error:
/// `settleCurrency` wins, as the table is the reference.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", from = "RawSettlement")]
pub struct Settlement {
    pub settle_pay: Option<String>,
    pub settle_price: Option<String>,
    pub settle_currency: Option<String>,
    pub quote_exchange: Option<String>,
}

/// [`Settlement`] as it arrives, with the two spellings of the currency kept apart (a serde
/// alias would make a leg with both a "duplicate field" error).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawSettlement {
    #[serde(deserialize_with = "lenient::opt_string")]
    settle_pay: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    settle_price: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    settle_currency: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    currency: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    quote_exchange: Option<String>,
}

impl From<RawSettlement> for Settlement {
    fn from(raw: RawSettlement) -> Self {
        let present = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        Self {
            settle_pay: raw.settle_pay,
            settle_price: raw.settle_price,
            settle_currency: present(raw.settle_currency).or(present(raw.currency)),
            quote_exchange: raw.quote_exchange,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SmsLeg {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub submit_tm: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub send_tm: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub done_tm: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub mcc: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub mnc: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub sender: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub charge_cnt: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub pay: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub status: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub settlement: Settlement,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CallLeg {
    #[serde(deserialize_with = "lenient::opt_int")]
    pub termination_code: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub termination_reason: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub submit_time: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub call_time: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub ringing_time: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub answer_time: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub hangup_time: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub call_duration: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub charged_duration: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub display_num: Option<String>,
    /// Spelled so in the provider's table and example.
    #[serde(rename = "billPeriodstring", deserialize_with = "lenient::opt_string")]
    pub bill_period: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub code: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub rate: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub cost: Option<String>,
    #[serde(flatten)]
    pub settlement: Settlement,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SnaLeg {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub post_verification_time: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub verification_back_time: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub mcc: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub mnc: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub status: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub settlement: Settlement,
}

/// `matched`, in words.
pub fn matched_in_words(matched: Option<i64>) -> String {
    match matched {
        Some(-1) => "not checked".to_owned(),
        Some(0) => "verified".to_owned(),
        Some(1) => "sending".to_owned(),
        Some(2) => "failed".to_owned(),
        Some(3) => "no such verification".to_owned(),
        Some(other) => format!("unknown ({other})"),
        None => "not reported".to_owned(),
    }
}

/// An SMS or SNA leg's `status`, in words.
pub fn leg_status_in_words(status: Option<i64>, pending_word: &str) -> String {
    match status {
        Some(-1) => pending_word.to_owned(),
        Some(0) => "success".to_owned(),
        Some(1) => "failure".to_owned(),
        Some(other) => format!("unknown ({other})"),
        None => "not reported".to_owned(),
    }
}

/// Deserializers that accept the forms the provider's page shows for the same field, and read
/// any other form as absent rather than failing the whole answer.
pub(crate) mod lenient {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
        /// An object or an array where a scalar belongs.
        Other(IgnoredAny),
    }

    impl Scalar {
        fn into_text(self) -> Option<String> {
            match self {
                Self::Text(s) => Some(s),
                Self::Int(i) => Some(i.to_string()),
                Self::Float(f) => Some(f.to_string()),
                Self::Bool(b) => Some(b.to_string()),
                Self::Other(_) => None,
            }
        }
    }

    /// A required scalar (the envelope's `status`).
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Scalar::deserialize(d)?
            .into_text()
            .ok_or_else(|| serde::de::Error::custom("expected a string or a number"))
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Scalar>::deserialize(d)?.and_then(Scalar::into_text))
    }

    pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(match Option::<Scalar>::deserialize(d)? {
            Some(Scalar::Int(i)) => Some(i),
            Some(Scalar::Text(s)) => s.trim().parse().ok(),
            Some(Scalar::Float(f)) if f.fract() == 0.0 => Some(f as i64),
            _ => None,
        })
    }

    /// A list of objects: an array (elements that are not objects are dropped), one object, or
    /// nothing.
    pub fn list<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
        let items = match serde_json::Value::deserialize(d)? {
            serde_json::Value::Array(items) => items,
            one @ serde_json::Value::Object(_) => vec![one],
            _ => Vec::new(),
        };
        Ok(items
            .into_iter()
            .filter(serde_json::Value::is_object)
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect())
    }

    /// One object: an object, or the first object of an array.
    pub fn one<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        let mut items: Vec<T> = list(d)?;
        Ok((!items.is_empty()).then(|| items.swap_remove(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leg_with_both_currency_keys_prefers_settle_currency() {
        let leg: SmsLeg =
            serde_json::from_str(r#"{"settleCurrency":"USD","currency":"EUR","settlePay":"1"}"#)
                .unwrap();
        assert_eq!(leg.settlement.settle_currency.as_deref(), Some("USD"));
        let leg: SmsLeg = serde_json::from_str(r#"{"currency":"EUR"}"#).unwrap();
        assert_eq!(leg.settlement.settle_currency.as_deref(), Some("EUR"));
        let leg: SmsLeg =
            serde_json::from_str(r#"{"settleCurrency":"","currency":"EUR"}"#).unwrap();
        assert_eq!(leg.settlement.settle_currency.as_deref(), Some("EUR"));
    }

    #[test]
    fn a_record_of_any_shape_parses_to_what_can_be_read() {
        let r: Record = serde_json::from_value(serde_json::json!({
            "orderId": {"unexpected": "object"},
            "flowId": "not a number",
            "verifications": [{"matched": 0, "channel": "sms"}],
            "sms": {"status": 0, "mcc": [460], "sender": null, "newField": true},
            "call": [{"rate": "0.1"}, "garbage", 7],
            "sna": "none",
            "somethingNew": [1, 2, 3]
        }))
        .unwrap();
        assert_eq!(r.order_id, None);
        assert_eq!(r.flow_id, None);
        assert_eq!(r.verifications.unwrap().channel.as_deref(), Some("sms"));
        assert_eq!(r.sms.len(), 1);
        assert_eq!((r.sms[0].status, r.sms[0].mcc), (Some(0), None));
        assert_eq!(r.call.len(), 1);
        assert_eq!(r.call[0].rate.as_deref(), Some("0.1"));
        assert!(r.sna.is_empty());
        let empty: Record = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Record::default());
    }
}

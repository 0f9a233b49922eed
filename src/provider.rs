//! The provider's HTTP API: signing, the two calls this project makes, and the classification of
//! every answer into success, rejected (never retried) or transient (worth retrying). It owns the
//! wire format, with the provider's quirks; it does not retry, sleep or touch the database.

use std::time::Duration;

use anyhow::Context;
use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::ProviderSettings;
use crate::domain::{AppId, Mcc};
use crate::rate::{Rate, RateError};

/// The exact content type of the docs' examples; some gateways compare it as a string.
pub const CONTENT_TYPE: &str = "application/json;charset=UTF-8";

/// `Sign` = lowercase hex md5(apiKey + apiSecret + Timestamp).
pub fn sign(api_key: &str, api_secret: &SecretString, timestamp: i64) -> String {
    let mut md5 = Md5::new();
    md5.update(api_key.as_bytes());
    md5.update(api_secret.expose_secret().as_bytes());
    md5.update(timestamp.to_string().as_bytes());
    hex::encode(md5.finalize())
}

/// The body of `POST {base}/backfillRate`: one submission, from the judge to the wire in one
/// shape. Every field is a JSON string, as the docs' field table and both code samples send
/// them (one example shows `mcc` as a number; the table wins); each is written through its
/// `Display`, so the rate goes out exactly as [`Rate`] renders it ("12.5", never "12.50").
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackfillRequest {
    #[serde(serialize_with = "as_text")]
    pub app_id: AppId,
    #[serde(serialize_with = "as_text")]
    pub mcc: Mcc,
    #[serde(serialize_with = "as_text")]
    pub backfill_number: u64,
    #[serde(serialize_with = "as_text")]
    pub backfill_cardinal_number: u64,
    #[serde(serialize_with = "as_text")]
    pub backfill_now: Rate,
    pub callback_time: String,
}

impl BackfillRequest {
    /// The only constructor: the rate is computed from the counts, so a request whose rate
    /// disagrees with its numbers cannot exist. Used by the judge and when a queued row is read
    /// back for sending.
    pub fn from_counts(
        app_id: AppId,
        mcc: Mcc,
        backfilled: u64,
        sent: u64,
        callback_time: String,
    ) -> Result<Self, RateError> {
        Ok(Self {
            backfill_now: Rate::from_counts(backfilled, sent)?,
            app_id,
            mcc,
            backfill_number: backfilled,
            backfill_cardinal_number: sent,
            callback_time,
        })
    }
}

fn as_text<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    app_id: Option<&'a str>,
    order_id: &'a str,
}

/// How an exchange ended, for retry decisions and for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    /// The provider said no; sending the same thing again cannot help.
    Rejected(Rejection),
    /// The answer may differ next time: retry with backoff, signed afresh.
    Transient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// -1: key, secret or signature wrong. Every further request fails the same way.
    Authentication,
    /// -2: this host's address is not on the account's allow-list. Same for every request.
    IpRestricted,
    /// -22: this request's parameters.
    Parameters,
    /// A status not documented for these calls, or an HTTP 4xx.
    Other,
}

impl Rejection {
    /// Whether the rejection is about the account or host rather than the one request.
    pub fn stops_the_cycle(self) -> bool {
        matches!(self, Self::Authentication | Self::IpRestricted)
    }

    /// What the operator should change, in one line.
    pub fn advice(self) -> &'static str {
        match self {
            Self::Authentication => {
                "check provider.api_key and the API secret (and that the account is active)"
            }
            Self::IpRestricted => {
                "add this host's public IP address to the allow-list in the provider's console"
            }
            Self::Parameters => "the provider refused this request's parameters",
            Self::Other => "the provider refused the request",
        }
    }
}

/// One exchange with the provider, whatever happened: what the operator and the database need.
#[derive(Debug, Clone)]
pub struct Exchange<T> {
    pub class: Class,
    /// The top-level `status`, as text ("0", "-22"), when the body was the documented JSON.
    pub provider_status: Option<String>,
    pub reason: Option<String>,
    pub http_status: Option<u16>,
    /// What went wrong locally (timeout, connection, a body that is not JSON), or the class
    /// explained; `None` on success.
    pub error: Option<String>,
    pub data: Option<T>,
    /// The raw response body, for `record --json`.
    pub body: Option<String>,
    /// The Timestamp that was signed, so a -16 can be logged next to the local clock.
    pub timestamp: i64,
    /// The provider's `Retry-After` on a 429 or 503, capped at [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
}

/// The longest `Retry-After` honoured: a larger one (or a date far ahead) is a misconfigured
/// gateway, not a reason to stop reporting for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl<T> Exchange<T> {
    /// Whether the failure says the provider is unreachable or overloaded (no connection, a
    /// timeout, HTTP 5xx or 429) rather than something about this request: the circuit
    /// breaker counts these.
    pub fn is_outage(&self) -> bool {
        self.class == Class::Transient
            && match self.http_status {
                None => self.provider_status.is_none(),
                Some(h) => h == 429 || (500..=599).contains(&h),
            }
    }
}

/// `Retry-After` in delta-seconds or as an HTTP date, capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A signing HTTP client for both calls, over one pooled keep-alive connection set.
#[derive(Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    api_secret: SecretString,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl ProviderClient {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .user_agent(concat!("backfill-reporter/", env!("CARGO_PKG_VERSION")))
            .https_only(!settings.base_url.starts_with("http://"))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base_url: settings.base_url.clone(),
            api_key: settings.api_key.clone(),
            api_secret: settings.secret()?.clone(),
        })
    }

    /// `POST {base}/backfillRate`.
    #[tracing::instrument(skip_all, fields(app_id = %body.app_id, mcc = %body.mcc))]
    pub async fn submit_backfill(&self, body: &BackfillRequest) -> Exchange<IgnoredAny> {
        self.post("/backfillRate", body).await
    }

    /// `POST {base}/verification/orderId/record`.
    #[tracing::instrument(skip_all, fields(order_id = %order_id))]
    pub async fn lookup_record(&self, order_id: &str, app_id: Option<&str>) -> Exchange<Record> {
        let body = RecordRequest { app_id, order_id };
        self.post("/verification/orderId/record", &body).await
    }

    async fn post<B: Serialize, T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &B,
    ) -> Exchange<T> {
        // Signed afresh for every attempt: the provider refuses stale timestamps (-16).
        let timestamp = chrono::Utc::now().timestamp();
        let mut exchange = Exchange {
            class: Class::Transient,
            provider_status: None,
            reason: None,
            http_status: None,
            error: None,
            data: None,
            body: None,
            timestamp,
            retry_after: None,
        };
        let payload = match serde_json::to_vec(body) {
            Ok(p) => p,
            Err(e) => {
                exchange.class = Class::Rejected(Rejection::Other);
                exchange.error = Some(format!("encoding the request body: {e}"));
                return exchange;
            }
        };
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(
                "Sign",
                sensitive(sign(&self.api_key, &self.api_secret, timestamp)),
            )
            .header("Timestamp", timestamp.to_string())
            .header("Api-Key", &self.api_key)
            .body(payload)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                exchange.error = Some(describe_transport_error(&e));
                return exchange;
            }
        };
        let http = response.status();
        exchange.http_status = Some(http.as_u16());
        if matches!(http.as_u16(), 429 | 503) {
            exchange.retry_after = retry_after(response.headers());
        }
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => {
                exchange.error = Some(describe_transport_error(&e));
                return exchange;
            }
        };
        let parsed = serde_json::from_str::<Envelope<T>>(&text);
        exchange.body = Some(text);
        if let Ok(envelope) = &parsed {
            exchange.provider_status = Some(envelope.status.clone());
            exchange.reason = envelope.reason.clone();
        }
        match (http.as_u16(), parsed) {
            (408 | 429, _) | (500..=599, _) => {
                exchange.error = Some(format!("HTTP {http}"));
            }
            (400..=499, _) => {
                exchange.class = Class::Rejected(Rejection::Other);
                exchange.error = Some(format!("HTTP {http}"));
            }
            (_, Err(e)) => {
                exchange.error = Some(format!(
                    "HTTP {http} with a body that is not the documented JSON: {e}"
                ));
            }
            (_, Ok(envelope)) => {
                exchange.class = classify(&envelope.status);
                if exchange.class != Class::Success {
                    exchange.error = Some(format!(
                        "provider status {}: {}",
                        envelope.status,
                        envelope.reason.as_deref().unwrap_or("(no reason given)")
                    ));
                }
                exchange.data = envelope.data;
            }
        }
        exchange
    }
}

/// The signature as a header value that HTTP/2 never indexes and `Debug` never shows.
fn sensitive(hex: String) -> reqwest::header::HeaderValue {
    let mut value =
        reqwest::header::HeaderValue::from_str(&hex).expect("hex is a valid header value");
    value.set_sensitive(true);
    value
}

/// Maps the provider's top-level status to a class. Statuses not documented for these two calls
/// (other endpoints add -10, -26 … -29) are rejections: retrying cannot change them.
pub fn classify(status: &str) -> Class {
    match status.trim() {
        "0" => Class::Success,
        "-1" => Class::Rejected(Rejection::Authentication),
        "-2" => Class::Rejected(Rejection::IpRestricted),
        "-22" => Class::Rejected(Rejection::Parameters),
        "-16" | "-18" => Class::Transient,
        _ => Class::Rejected(Rejection::Other),
    }
}

fn describe_transport_error(e: &reqwest::Error) -> String {
    // reqwest's Display names the URL but not the cause; the source chain has it. Neither holds
    // headers, so the signature cannot leak here.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The response envelope. `status` is a JSON string in the docs; a number is accepted too.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    #[serde(deserialize_with = "lenient::string")]
    status: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    reason: Option<String>,
    #[serde(default = "none")]
    data: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

/// The `data` of a record lookup. The page's table and its example disagree in places, so every
/// field is optional and lenient: numbers may arrive as strings and strings as numbers.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Record {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub order_id: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int")]
    pub flow_id: Option<i64>,
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
/// example sends `currency`: both are read.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Settlement {
    #[serde(deserialize_with = "lenient::opt_string")]
    pub settle_pay: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub settle_price: Option<String>,
    #[serde(alias = "currency", deserialize_with = "lenient::opt_string")]
    pub settle_currency: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub quote_exchange: Option<String>,
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

/// Deserializers that accept the forms the provider's page shows for the same field.
mod lenient {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }

    impl Scalar {
        fn into_text(self) -> String {
            match self {
                Self::Text(s) => s,
                Self::Int(i) => i.to_string(),
                Self::Float(f) => f.to_string(),
                Self::Bool(b) => b.to_string(),
            }
        }
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Scalar::deserialize(d).map(Scalar::into_text)
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_text))
    }

    pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(match Option::<Scalar>::deserialize(d)? {
            Some(Scalar::Int(i)) => Some(i),
            Some(Scalar::Text(s)) => s.trim().parse().ok(),
            Some(Scalar::Float(f)) if f.fract() == 0.0 => Some(f as i64),
            _ => None,
        })
    }

    pub fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_the_providers_worked_example() {
        let secret = SecretString::from("7bz1lzh9".to_owned());
        assert_eq!(
            sign("bDqJFiq9", &secret, 1_630_468_800),
            "05d7a50893e22a5c4bb3216ae3396c7c"
        );
    }

    #[test]
    fn md5_matches_rfc_1321_vectors() {
        // sign() is md5 of the concatenation, so empty key + secret + timestamp exercises md5.
        let empty = SecretString::from(String::new());
        assert_eq!(sign("", &empty, 0), hex::encode(Md5::digest(b"0")));
        assert_eq!(
            hex::encode(Md5::digest(b"")),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            hex::encode(Md5::digest(b"abc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            hex::encode(Md5::digest(b"message digest")),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
        let abc = SecretString::from("b".to_owned());
        // "a" + "b" + "1" = "ab1"
        assert_eq!(sign("a", &abc, 1), hex::encode(Md5::digest(b"ab1")));
    }

    #[test]
    fn every_documented_status_has_its_class() {
        assert_eq!(classify("0"), Class::Success);
        assert_eq!(classify("-1"), Class::Rejected(Rejection::Authentication));
        assert_eq!(classify("-2"), Class::Rejected(Rejection::IpRestricted));
        assert_eq!(classify("-16"), Class::Transient);
        assert_eq!(classify("-18"), Class::Transient);
        assert_eq!(classify("-22"), Class::Rejected(Rejection::Parameters));
        assert_eq!(classify("-10"), Class::Rejected(Rejection::Other));
        assert_eq!(classify("banana"), Class::Rejected(Rejection::Other));
        assert!(Rejection::Authentication.stops_the_cycle());
        assert!(Rejection::IpRestricted.stops_the_cycle());
        assert!(!Rejection::Parameters.stops_the_cycle());
    }

    #[test]
    fn the_backfill_body_sends_every_field_as_a_string_under_the_docs_names() {
        let body = BackfillRequest::from_counts(
            AppId::parse("mRELxtHc").unwrap(),
            Mcc::parse("460").unwrap(),
            100,
            1000,
            "2023-01-29T09:59:58+08:00".into(),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({
                "appId": "mRELxtHc", "mcc": "460", "backfillNumber": "100",
                "backfillCardinalNumber": "1000", "backfillNow": "10",
                "callbackTime": "2023-01-29T09:59:58+08:00"
            })
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        h.insert(reqwest::header::RETRY_AFTER, "86400".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert(reqwest::header::RETRY_AFTER, soon.parse().unwrap());
        let wait = retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(110) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn the_envelope_accepts_a_numeric_status_and_a_null_data() {
        let e: Envelope<Record> = serde_json::from_str(r#"{"status":0,"data":null}"#).unwrap();
        assert_eq!(e.status, "0");
        assert!(e.data.is_none());
    }
}

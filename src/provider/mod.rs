//! The provider's HTTP API: signing, the two calls this project makes, and the classification of
//! every answer into success, rejected (never retried) or transient (worth retrying). It owns the
//! wire format, with the provider's quirks; it does not retry, sleep or touch the database.

pub mod concurrency;
pub mod record;

use std::time::Duration;

use anyhow::Context;
use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::config::{Account, ProviderSettings};
use crate::domain::excerpt::clean;
use crate::domain::rate::{Rate, RateError};
use crate::domain::status::ProviderStatus;
use crate::domain::{AppId, Mcc};
use crate::provider::record::{Lenient, Record};

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

/// How an exchange ended, for the record and for the retry layer, which decides what each
/// class means for the row (`retry::classify`).
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
    /// -2, "ip限制" (IP restriction): all the page says. Read here as this host's address not
    /// being one the account accepts, which is the same for every request.
    IpRestricted,
    /// -22: this request's parameters.
    Parameters,
    /// A status not documented for these calls, or an HTTP 4xx.
    Other,
}

impl Rejection {
    /// [`Rejection::advice`] for the account the request was signed with: a named account's
    /// key and secret are in its `[[accounts]]` entry, not in `provider.api_key`.
    pub fn advice_for(self, account: Option<&str>) -> String {
        match (self, account) {
            (Self::Authentication, Some(name)) => format!(
                "check the api_key and the API secret of account {name} (and that the account \
                 is active)"
            ),
            _ => self.advice().to_owned(),
        }
    }

    /// What the operator should change, in one line.
    pub fn advice(self) -> &'static str {
        match self {
            Self::Authentication => {
                "check provider.api_key and the API secret (and that the account is active)"
            }
            Self::IpRestricted => {
                "the provider's page says only \"ip限制\" (IP restriction); most likely this \
                 host's public address is not one the account accepts: check with the provider"
            }
            Self::Parameters => "the provider refused this request's parameters",
            Self::Other => "the provider refused the request",
        }
    }
}

/// One exchange with the provider, whatever happened: what the operator and the database need.
/// Every text in it that came from the provider (status, reason, `Location`) is [`clean`]ed:
/// it goes to the log and the database as one bounded line.
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
    /// The raw response body, for `record --json`; `None` when none was read (no answer, a
    /// redirect, or a body over [`MAX_BODY_BYTES`]).
    pub body: Option<String>,
    /// The Timestamp that was signed, so a -16 can be logged next to the local clock.
    pub timestamp: i64,
    /// The `Retry-After` of a 408, 429 or 5xx, in either of its forms, at most
    /// [`MAX_RETRY_AFTER`]: how long the provider asked us to stay away.
    pub retry_after: Option<Duration>,
    /// How the request failed before any HTTP answer was complete, if it did.
    pub transport: Option<Transport>,
}

/// Why no complete HTTP answer came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// No connection: refused, unreachable, DNS or TLS handshake failure.
    Connect,
    /// `provider.request_timeout` passed.
    Timeout,
    /// The connection broke after it was made (closed or reset mid-answer).
    Broken,
    /// The request could not be built or sent for a local reason.
    Local,
}

impl<T> Exchange<T> {
    /// A transient answer with only its transport and HTTP status set: what the unit tests of
    /// the classification build on.
    #[cfg(test)]
    pub(crate) fn transient_for_test(transport: Option<Transport>, http: Option<u16>) -> Self {
        Self {
            class: Class::Transient,
            provider_status: None,
            reason: None,
            http_status: http,
            error: None,
            data: None,
            body: None,
            timestamp: 0,
            retry_after: None,
            transport,
        }
    }

    /// The provider's status, when the body was the documented JSON.
    pub fn status(&self) -> Option<ProviderStatus> {
        self.provider_status.as_deref().map(ProviderStatus::parse)
    }

    /// How the answer bears on the adaptive concurrency limit: the provider asked us to slow
    /// down (429, 503, a `Retry-After`) or did not answer in time; or it processed the
    /// request, and its round trip measures it; or neither (no connection). A 429 is back
    /// pressure, not an outage: a throttling provider is up, and wants fewer requests at once.
    pub fn load_signal(&self) -> crate::provider::concurrency::Signal {
        use crate::provider::concurrency::Signal;
        if self.transport == Some(Transport::Timeout)
            || matches!(self.http_status, Some(429 | 503))
            || self.retry_after.is_some()
        {
            Signal::BackPressure
        } else if self.transport.is_none() {
            Signal::Answered
        } else {
            Signal::Nothing
        }
    }
}

/// The most of a provider body that is read. The two endpoints answer a few hundred bytes (a
/// record with several legs stays under 8 KiB); a gateway page or a broken stream can be
/// endless, and must cost neither memory nor time.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest `Retry-After` honoured: a larger value (or a date far ahead) is a
/// misconfigured gateway, and waiting longer than the schedule's period helps nobody.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// The most characters kept of the provider's `reason` (and of a `Location`).
pub const MAX_REASON_CHARS: usize = 500;
/// The most characters kept of the provider's `status`: documented ones are 1 to 3.
const MAX_STATUS_CHARS: usize = 32;
/// The most characters kept of an error text, which may quote provider data.
const MAX_ERROR_CHARS: usize = 1000;

/// A signing HTTP client for both calls, for one account, over a pooled keep-alive connection
/// set that the clients of every account share.
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
    /// A client that signs as `account`.
    pub fn new(settings: &ProviderSettings, account: &Account) -> anyhow::Result<Self> {
        Self::with_http(http_client(settings)?, settings, account)
    }

    fn with_http(
        http: reqwest::Client,
        settings: &ProviderSettings,
        account: &Account,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http,
            base_url: settings.base_url.clone(),
            api_key: account.api_key.clone(),
            api_secret: account.secret()?.clone(),
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

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Exchange<T> {
        // Signed afresh for every attempt: the provider refuses stale timestamps (-16).
        let timestamp = chrono::Utc::now().timestamp();
        let mut exchange = Exchange::new(timestamp);
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
                exchange.transport = Some(transport_kind(&e));
                exchange.error = Some(describe_transport_error(&e));
                return exchange;
            }
        };
        if let Some(text) = exchange.read(response).await {
            exchange.judge(text);
        }
        exchange
    }
}

/// The HTTP client every account's requests share: one pool of connections to the provider.
fn http_client(settings: &ProviderSettings) -> anyhow::Result<reqwest::Client> {
    // Config allows http:// for a loopback host only; a scheme is compared as the url crate
    // reads it, in lowercase, whatever case it was written in.
    let cleartext = reqwest::Url::parse(&settings.base_url).is_ok_and(|u| u.scheme() == "http");
    reqwest::Client::builder()
        .timeout(settings.request_timeout)
        .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(90))
        // A request given up on must not reach the provider later: without this, the
        // kernel goes on retransmitting a timed-out request for minutes after a network
        // partition, and a provider that gets it once the partition heals takes it twice
        // (the retry too). With it, data unacknowledged for the request timeout aborts
        // the connection.
        .tcp_user_timeout(settings.request_timeout)
        .tcp_keepalive(Duration::from_secs(60))
        .user_agent(concat!("backfill-reporter/", env!("CARGO_PKG_VERSION")))
        .https_only(!cleartext)
        // A redirect would carry Api-Key, Timestamp and Sign to wherever it points (reqwest
        // strips only the standard credential headers), and a 302 turns the POST into a
        // bodiless GET whose `"status":"0"` would read as success: a 3xx is an answer.
        .redirect(reqwest::redirect::Policy::none())
        // The pages spell the headers `Sign`, `Timestamp`, `Api-Key`; gateways in front of
        // the provider may compare names with case. (HTTP/2 names are lowercase by rule.)
        .http1_title_case_headers()
        .build()
        .context("building the HTTP client")
}

/// A client per account, sharing one connection pool: a submission is signed by the account
/// its row was planned for, whichever account its app belongs to now.
#[derive(Clone, Debug)]
pub struct Clients(Vec<(Option<String>, ProviderClient)>);

impl Clients {
    /// Every account's client; fails, naming the account, when a secret is missing.
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        let http = http_client(settings)?;
        settings
            .accounts
            .iter()
            .map(|a| {
                let client = ProviderClient::with_http(http.clone(), settings, a)?;
                Ok((a.name_str().map(str::to_owned), client))
            })
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    /// The client of the account stored as `account` (`None`: the unnamed one); `None` when
    /// the config has no such account (any more).
    pub fn get(&self, account: Option<&str>) -> Option<&ProviderClient> {
        self.0
            .iter()
            .find(|(name, _)| name.as_deref() == account)
            .map(|(_, c)| c)
    }
}

impl<T: DeserializeOwned> Exchange<T> {
    /// Nothing sent yet: transient until something says otherwise.
    fn new(timestamp: i64) -> Self {
        Self {
            class: Class::Transient,
            provider_status: None,
            reason: None,
            http_status: None,
            error: None,
            data: None,
            body: None,
            timestamp,
            retry_after: None,
            transport: None,
        }
    }

    /// Reads the answer's status, `Retry-After` and body (at most [`MAX_BODY_BYTES`]). `None`
    /// when there is no body to judge: a redirect (never followed), a body too large, a broken
    /// connection; the exchange says why.
    async fn read(&mut self, response: reqwest::Response) -> Option<String> {
        let http = response.status().as_u16();
        self.http_status = Some(http);
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        if try_again_later(http) {
            self.retry_after = header(reqwest::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(&v, chrono::Utc::now()));
        }
        if (300..=399).contains(&http) {
            let location = header(reqwest::header::LOCATION).map_or_else(
                || "nowhere (no Location)".to_owned(),
                |l| clean(&l, MAX_REASON_CHARS),
            );
            self.class = Class::Rejected(Rejection::Other);
            self.error = Some(format!(
                "HTTP {http} redirect to {location} not followed: the signed request goes to \
                 provider.base_url only; check that it is the provider's API address"
            ));
            return None;
        }
        match read_limited(response, MAX_BODY_BYTES).await {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(ReadError::TooLarge) => {
                self.error = Some(format!(
                    "HTTP {http} with a body over {} KiB: not read further",
                    MAX_BODY_BYTES / 1024
                ));
                None
            }
            Err(ReadError::Transport(e)) => {
                self.transport = Some(transport_kind(&e));
                self.error = Some(describe_transport_error(&e));
                None
            }
        }
    }

    /// Classes the answer. The rule, as README's "What is sent" states it:
    ///
    /// 1. a status the provider's pages document (`0`, `-1`, `-2`, `-16`, `-18`, `-22`) in the
    ///    body decides, whatever the HTTP code a gateway put on it: a `-1` on HTTP 401 still
    ///    stops the cycle, a `-18` on HTTP 503 is retried. A `0` on a non-2xx answer contradicts
    ///    itself, and the HTTP status decides;
    /// 2. an HTTP 408, 429 or 5xx whose body carries no documented status (not JSON, or a
    ///    gateway's own JSON such as Spring's `{"status":429,"error":"Too Many Requests"}`,
    ///    whose numeric `status` is the HTTP code again, not the provider's) is transient,
    ///    retried no sooner than its `Retry-After`;
    /// 3. anything else: an undocumented status is a rejection (as is a redirect, see
    ///    [`Exchange::read`]), a body that is not the documented JSON is classed by its HTTP
    ///    status.
    fn judge(&mut self, text: String) {
        let http = self.http_status.unwrap_or_default();
        let parsed = serde_json::from_str::<Envelope>(&text);
        self.body = Some(text);
        let envelope = match parsed {
            Ok(envelope) => envelope,
            Err(e) => {
                self.by_http(
                    http,
                    &format!("with a body that is not the documented JSON: {e}"),
                );
                return;
            }
        };
        let status = clean(envelope.status.trim(), MAX_STATUS_CHARS);
        let documented = documented(&status);
        if documented.is_none() && try_again_later(http) {
            // A gateway's body: its `status` and text are not the provider's to record.
            self.by_http(
                http,
                &format!("with a body whose status {status} the provider does not document"),
            );
            return;
        }
        let reason = envelope.reason.0.map(|r| clean(&r, MAX_REASON_CHARS));
        self.provider_status = Some(status.clone());
        self.reason = reason.clone();
        let success_http = (200..=299).contains(&http);
        if !success_http && documented == Some(Class::Success) {
            self.by_http(http, "with provider status 0");
            return;
        }
        self.class = documented.unwrap_or(Class::Rejected(Rejection::Other));
        if self.class != Class::Success {
            let on = if success_http {
                String::new()
            } else {
                format!(" (HTTP {http})")
            };
            self.error = Some(format!(
                "provider status {status}{on}: {}",
                reason.as_deref().unwrap_or("(no reason given)")
            ));
            return;
        }
        match envelope.data.map(serde_json::from_value::<T>).transpose() {
            Ok(data) => self.data = data,
            Err(e) => {
                self.class = Class::Transient;
                self.error = Some(clean(
                    &format!(
                        "provider status 0 with a data field that is not the documented shape: {e}"
                    ),
                    MAX_ERROR_CHARS,
                ));
            }
        }
    }

    /// Classes the answer by its HTTP status alone, `detail` saying why the body did not decide.
    fn by_http(&mut self, http: u16, detail: &str) {
        let (class, what) = http_class(http);
        self.class = class;
        self.error = Some(clean(
            &format!("HTTP {http}{what} {detail}"),
            MAX_ERROR_CHARS,
        ));
    }
}

/// HTTP statuses that say "not now" rather than "no": a timeout (408), throttling (429) and
/// server or gateway errors (5xx). Their `Retry-After` is honoured.
fn try_again_later(http: u16) -> bool {
    matches!(http, 408 | 429 | 500..=599)
}

/// The class of an HTTP status when the body does not say more, with a word on what it means.
fn http_class(http: u16) -> (Class, &'static str) {
    match http {
        408 | 429 => (Class::Transient, " (try again later)"),
        500..=599 => (Class::Transient, " (provider or gateway error)"),
        400..=499 => (Class::Rejected(Rejection::Other), " (refused)"),
        _ => (Class::Transient, ""),
    }
}

enum ReadError {
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads at most `limit` bytes of the body; a declared or actual length over it is an error
/// and the connection is dropped rather than drained.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` as delta-seconds or an HTTP-date (IMF-fixdate, RFC 850 or asctime), as a
/// wait from `now`, at most [`MAX_RETRY_AFTER`]. A date in the past is no wait.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only an overflow fails to parse, and that is "very long".
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let naive = |format: &str| {
        chrono::NaiveDateTime::parse_from_str(value, format)
            .ok()
            .map(|t| t.and_utc())
    };
    let at = chrono::DateTime::parse_from_rfc2822(value)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|| naive("%A, %d-%b-%y %H:%M:%S GMT"))
        .or_else(|| naive("%a %b %e %H:%M:%S %Y"))?;
    Some(
        (at - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
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
    documented(status).unwrap_or(Class::Rejected(Rejection::Other))
}

/// The class of a status the two pages document, `None` for any other.
fn documented(status: &str) -> Option<Class> {
    Some(match ProviderStatus::parse(status) {
        ProviderStatus::Success => Class::Success,
        ProviderStatus::Authentication => Class::Rejected(Rejection::Authentication),
        ProviderStatus::IpRestricted => Class::Rejected(Rejection::IpRestricted),
        ProviderStatus::Parameters => Class::Rejected(Rejection::Parameters),
        ProviderStatus::Timestamp | ProviderStatus::Busy => Class::Transient,
        ProviderStatus::Other(_) => return None,
    })
}

fn transport_kind(e: &reqwest::Error) -> Transport {
    if e.is_timeout() {
        Transport::Timeout
    } else if e.is_connect() {
        Transport::Connect
    } else if e.is_builder() {
        Transport::Local
    } else {
        Transport::Broken
    }
}

fn describe_transport_error(e: &reqwest::Error) -> String {
    // reqwest's Display names the URL but not the cause; the source chain has it. Neither holds
    // headers, so the signature cannot leak here.
    let kind = match transport_kind(e) {
        Transport::Timeout => "timed out",
        Transport::Connect => "could not connect",
        _ if e.is_body() || e.is_decode() => "reading the response failed",
        _ => "request failed",
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    clean(&text, MAX_ERROR_CHARS)
}

/// The response envelope. `status` is a JSON string in the docs; a number is accepted too.
/// `data` is kept as JSON and read into its type only on success, so that a `data` of an
/// unexpected shape on an error answer cannot hide the provider's status.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(deserialize_with = "required_status")]
    status: String,
    reason: Lenient<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// Unlike every other field, the status cannot be absent: without it an answer cannot be
/// classified, so it is read as a body that is not the documented JSON.
fn required_status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Lenient::<String>::deserialize(d)?
        .0
        .ok_or_else(|| serde::de::Error::custom("expected a string or a number"))
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
    fn every_documented_status_has_its_class() {
        assert_eq!(classify("0"), Class::Success);
        assert_eq!(classify("-1"), Class::Rejected(Rejection::Authentication));
        assert_eq!(classify("-2"), Class::Rejected(Rejection::IpRestricted));
        assert_eq!(classify("-16"), Class::Transient);
        assert_eq!(classify("-18"), Class::Transient);
        assert_eq!(classify("-22"), Class::Rejected(Rejection::Parameters));
        assert_eq!(classify("-10"), Class::Rejected(Rejection::Other));
        assert_eq!(classify("banana"), Class::Rejected(Rejection::Other));
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
    fn the_envelope_accepts_a_numeric_status_and_a_null_data() {
        let e: Envelope = serde_json::from_str(r#"{"status":0,"data":null}"#).unwrap();
        assert_eq!(e.status, "0");
        assert!(e.data.is_none());
    }

    #[test]
    fn the_envelope_needs_a_status_but_not_a_reason() {
        let e: Envelope = serde_json::from_str(r#"{"status":"-22"}"#).unwrap();
        assert_eq!((e.status.as_str(), e.reason.0), ("-22", None));
        for bad in [
            r#"{"reason":"x"}"#,
            r#"{"status":null}"#,
            r#"{"status":{}}"#,
        ] {
            assert!(serde_json::from_str::<Envelope>(bad).is_err(), "{bad}");
        }
    }

    fn exchange(transport: Option<Transport>, http: Option<u16>) -> Exchange<IgnoredAny> {
        Exchange::transient_for_test(transport, http)
    }

    #[test]
    fn throttling_and_timeouts_are_back_pressure_and_an_answer_measures_the_provider() {
        use crate::provider::concurrency::Signal;
        assert_eq!(
            exchange(None, Some(429)).load_signal(),
            Signal::BackPressure
        );
        assert_eq!(
            exchange(None, Some(503)).load_signal(),
            Signal::BackPressure
        );
        assert_eq!(
            exchange(Some(Transport::Timeout), None).load_signal(),
            Signal::BackPressure
        );
        assert_eq!(exchange(None, Some(200)).load_signal(), Signal::Answered);
        assert_eq!(exchange(None, Some(400)).load_signal(), Signal::Answered);
        assert_eq!(
            exchange(Some(Transport::Connect), None).load_signal(),
            Signal::Nothing
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_all_three_http_date_forms_capped_at_ten_minutes() {
        let now = chrono::DateTime::parse_from_rfc3339("1994-11-06T08:49:07Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(parse_retry_after("120", now), secs(120));
        assert_eq!(parse_retry_after(" 0 ", now), secs(0));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        // RFC 9110's three examples of one instant, 30 s after `now`.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            secs(30)
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            secs(30)
        );
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), secs(30));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            secs(0)
        );
        assert_eq!(
            parse_retry_after("Mon, 07 Nov 1994 08:49:37 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        for bad in ["", "soon", "-5", "1.5", "Sun, 06 Nov 1994"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}

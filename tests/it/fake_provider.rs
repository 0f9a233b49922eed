//! In-process fake of the iTniotech OTP HTTP API (the two endpoints this project calls).
//!
//! The fake is deliberately *strict*: it rejects everything the real provider is documented to
//! reject (and, where the docs are ambiguous, the stricter reading), so that a client test
//! passing against it means something. Sources: `shared/provider-docs/backfillRate.txt`,
//! `orderId-record.txt` and `NOTES.md` (the field tables are authoritative over the examples).
//!
//! Every request is checked in this order, and the first failure answers:
//!
//! 0. throttling, when [`FakeProvider::throttle`] set a capacity: a request beyond it is
//!    answered at once as a Spring gateway does, HTTP 429 with `Retry-After: 1` and a JSON body
//!    whose numeric `status` is that 429 (`{"status":429,"error":"Too Many Requests",…}`);
//! 1. route: `POST {base}/backfillRate` or `POST {base}/verification/orderId/record`, base
//!    path `/otp`; anything else is HTTP 404 (still recorded);
//! 2. headers: `Content-Type` (`-22`), `Api-Key` (`-1`), `Timestamp` parseable (`-1`),
//!    `Sign` (`-1`, checked against the secret of the account whose `Api-Key` came, when
//!    [`FakeProvider::add_account`] made several), `Timestamp` within the allowed skew
//!    (`-16`); each of the four must also
//!    be *spelled* as the pages spell it on the wire (a gateway may compare case), which the
//!    fake can check because it records the raw bytes of every connection;
//! 3. body: a JSON object with exactly the documented fields, each well-formed (`-22`), and
//!    an `appId` of the signing account when that account was given its apps (`-22`: the
//!    pages do not say what the provider answers to another account's app; this is the
//!    stricter reading, so that a report signed by the wrong account fails its test);
//! 4. scripted answers ([`FakeProvider::script_all`] first, then [`FakeProvider::script`]):
//!    only a request that passed every check gets one, so a test that scripts an answer still
//!    proves that the client sent a valid, correctly signed request;
//! 5. success: `{"status":"0","reason":"success"}` (plus `data` for the record endpoint).
//!
//! Like the real API, every provider-level answer is HTTP 200 with a JSON body whose `status`
//! is a JSON *string* (`"0"`, `"-1"`, …), not a number.

// examples/sandbox_provider.rs includes this file and uses only part of it; the test binary
// stays strict about dead code.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use futures::StreamExt;
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

/// Base path of the API, as in `https://api.itniotech.com/otp`.
pub const BASE_PATH: &str = "/otp";
/// Full path of the backfill-rate endpoint on the fake.
pub const BACKFILL_PATH: &str = "/otp/backfillRate";
/// Full path of the record-by-orderId endpoint on the fake.
pub const RECORD_PATH: &str = "/otp/verification/orderId/record";
/// The only `Content-Type` the fake accepts (case-insensitive, spaces around `;` allowed).
pub const CONTENT_TYPE: &str = "application/json;charset=UTF-8";
/// Default allowed clock skew in seconds. The real value is undocumented (NOTES.md); five
/// minutes is a common choice and tight enough to catch a milliseconds-instead-of-seconds bug.
pub const DEFAULT_MAX_SKEW_SECS: i64 = 300;
/// Largest request body the fake reads; larger bodies are recorded and answered HTTP 413.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Lowercase hex MD5 of `api_key + api_secret + timestamp`: the documented `Sign` header.
///
/// `timestamp` is the exact string sent in the `Timestamp` header; the provider signs that
/// string, not a number, so e.g. leading zeros change the signature.
pub fn sign(api_key: &str, api_secret: &str, timestamp: &str) -> String {
    let mut h = Md5::new();
    h.update(api_key.as_bytes());
    h.update(api_secret.as_bytes());
    h.update(timestamp.as_bytes());
    hex::encode(h.finalize())
}

/// Current unix time in whole seconds (what a client should put in `Timestamp`).
pub fn now_unix() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The response example of `orderId-record.txt`, verbatim (status, reason and data).
///
/// Use `docs_record_example()["data"].clone()` with [`FakeProvider::put_record`] to make the
/// fake answer exactly what the docs show. Note the example's quirks, kept on purpose: the
/// legs use `currency` where the field table says `settleCurrency`, `displayNum` is `null`,
/// and `verifications` is an object although `sms`/`call` are arrays.
pub fn docs_record_example() -> Value {
    serde_json::from_str(DOCS_RECORD_EXAMPLE).expect("DOCS_RECORD_EXAMPLE is valid JSON")
}

const DOCS_RECORD_EXAMPLE: &str = r#"{
    "status": "0",
    "reason": "success",
    "data": {
        "orderId": "1234566",
        "flowId": 1,
        "verifications":
        {
            "matched": 0,
            "verifiedDate": "2022-07-12T13:39:47+08:00",
            "oriReceiver": "91856321412",
            "channel": "call",
            "orderId": "1234566"
        },
        "sms": [
            {
                "submitTm": "2022-07-12T13:39:45+08:00",
                "sendTm": "2022-07-12T13:39:45+08:00",
                "doneTm": "2022-07-12T13:39:49+08:00",
                "mcc": 460,
                "mnc": 10,
                "sender": "",
                "chargeCnt": 1,
                "pay": "0.000002",
                "status": 0,
                "reason": "successR",
                "settlePay":"0.01368",
                "settlePrice":"0.01",
                "currency":"EUR",
                "quoteExchange": "0.938"
            }
        ],
        "call": [
            {
                "terminationCode": 100005,
                "terminationReason": "Temporarily Unavailable",
                "submitTime": "2022-07-12T13:59:55+08:00",
                "callTime": "2022-07-12T13:59:56+08:00",
                "ringingTime": "2022-07-12T13:59:56+08:00",
                "answerTime": "2022-07-12T13:59:56+08:00",
                "hangupTime": "2022-07-12T13:59:56+08:00",
                "callDuration": 0,
                "chargedDuration": 0,
                "displayNum": null,
                "billPeriodstring": "20+20",
                "code": "661",
                "rate": "0.138",
                "cost": "0",
                "settlePay":"0.01368",
                "settlePrice":"0.01",
                "currency":"EUR",
                "quoteExchange": "0.938"
            }
        ]
    }
}"#;

/// One request the fake received, with what it answered.
#[derive(Clone, Debug)]
pub struct Received {
    /// Request path without query, e.g. `"/otp/backfillRate"`.
    pub path: String,
    /// Request headers, lowercase names; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// Header names exactly as they came over the wire, in order (`"Sign"`, not `"sign"`).
    pub raw_header_names: Vec<String>,
    /// Body parsed as JSON, `Value::Null` if it was not valid JSON.
    pub body: Value,
    /// HTTP status the fake answered. `0` means *not answered (yet)*: the request is still
    /// being delayed, is hanging ([`Scripted::Hang`]), or the client gave up on it.
    pub answered_http: u16,
    /// The provider `status` string answered, `None` for non-JSON answers (and while unanswered).
    pub answered_status: Option<String>,
    /// Arrival time.
    pub at: SystemTime,
}

/// A canned answer, queued with [`FakeProvider::script`] or [`FakeProvider::script_all`].
#[derive(Clone, Debug)]
pub enum Scripted {
    /// Answer HTTP 200 `{"status": s, "reason": r}` without any validation.
    Status(&'static str, &'static str),
    /// Answer that HTTP status with a small `text/plain` body (an invalid code answers 500).
    Http(u16),
    /// Answer HTTP 200 `text/html` `<html>…</html>` (a proxy or captive-portal page).
    Html,
    /// Wait that long, then validate and answer normally. The request is recorded on
    /// arrival with `answered_http == 0` until it is answered.
    Delay(Duration),
    /// Never answer (sleeps an hour): for client timeout tests.
    Hang,
    /// Answer exactly this: HTTP status, extra headers and body (a documented JSON body on an
    /// HTTP error, a redirect with its `Location`, a 429 with `Retry-After`, a huge reason).
    Reply {
        http: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// HTTP 200 whose chunked body never ends: the client must stop reading by itself.
    Endless,
}

impl Scripted {
    /// HTTP `http` with a JSON body (the documented envelope, or anything else).
    pub fn json(http: u16, body: Value) -> Scripted {
        Scripted::Reply {
            http,
            headers: vec![("content-type", "application/json;charset=UTF-8".to_string())],
            body: body.to_string(),
        }
    }
}

/// Which documented endpoint a request hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Backfill,
    Record,
}

/// What the handler decided to answer; turned into a response and recorded by `finish`.
enum Answer {
    Provider {
        status: String,
        reason: String,
        data: Option<Value>,
    },
    Http(u16, &'static str),
    Html,
    /// Headers, then the connection is cut: the client never gets a whole answer.
    Dropped,
    Reply {
        http: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    Endless,
}

impl Answer {
    fn provider(status: &str, reason: impl Into<String>) -> Answer {
        Answer::Provider {
            status: status.to_string(),
            reason: reason.into(),
            data: None,
        }
    }
}

struct Config {
    /// The key of the account the fake was started with.
    api_key: String,
}

/// An account the fake knows: its secret, and the apps it may report for (empty: any app).
#[derive(Clone, Default)]
struct FakeAccount {
    secret: String,
    apps: Vec<String>,
}

#[derive(Default)]
struct Inner {
    /// Every account by its API key. The first one's secret is changeable, to stand for a
    /// secret rotated in the provider's console.
    accounts: HashMap<String, FakeAccount>,
    max_skew: i64,
    /// Added to every request before it is answered: a provider far away.
    latency: Duration,
    /// The share of requests (0–1) that fail transiently, in turn as -18, HTTP 503 and a
    /// connection dropped mid-answer; see [`FakeProvider::fail_randomly`].
    failure_rate: f64,
    failures: u64,
    /// Requests served at once, at most; `None`: no limit. See [`FakeProvider::throttle`].
    capacity: Option<usize>,
    /// Requests being served now (throttled ones aside).
    busy: usize,
    received: Vec<Received>,
    script_all: VecDeque<Scripted>,
    /// Keyed by appId (backfillRate) or orderId (record); one namespace for both.
    scripts: HashMap<String, VecDeque<Scripted>>,
    records: HashMap<String, Value>,
}

struct Shared {
    cfg: Config,
    inner: Mutex<Inner>,
}

impl Shared {
    /// Locks the state, ignoring poisoning: a panicking test thread must not turn every
    /// later request into a second, misleading panic inside the server.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running fake. The server task is aborted when this is dropped.
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT/otp`, no trailing slash: what the client's base URL should be.
    pub base_url: String,
    /// The bound address.
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime (so it stops with the
    /// test's runtime). Panics only if the socket cannot be bound: that is test setup.
    pub async fn start(api_key: &str, api_secret: &str) -> FakeProvider {
        let shared = Arc::new(Shared {
            cfg: Config {
                api_key: api_key.to_string(),
            },
            inner: Mutex::new(Inner {
                accounts: HashMap::from([(
                    api_key.to_string(),
                    FakeAccount {
                        secret: api_secret.to_string(),
                        apps: Vec::new(),
                    },
                )]),
                max_skew: DEFAULT_MAX_SKEW_SECS,
                ..Inner::default()
            }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake provider: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake provider: local_addr");
        // A single fallback handler sees every request, so even unknown routes are recorded.
        let app = Router::new()
            .fallback(handle)
            .with_state(shared.clone())
            .into_make_service_with_connect_info::<Wire>();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(TapListener(listener), app).await {
                eprintln!("fake provider: server error: {e}");
            }
        });
        FakeProvider {
            base_url: format!("http://{addr}{BASE_PATH}"),
            addr,
            shared,
            task,
        }
    }

    /// Every request in arrival order, including rejected, 404 and still-unanswered ones.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Bodies of `/backfillRate` requests answered with status `"0"` — i.e. the reports the
    /// provider would have accepted. A scripted `Status("0", …)` counts too, since the client
    /// cannot tell it from a real success.
    pub fn backfill_bodies(&self) -> Vec<Value> {
        self.shared
            .lock()
            .received
            .iter()
            .filter(|r| r.path == BACKFILL_PATH && r.answered_status.as_deref() == Some("0"))
            .map(|r| r.body.clone())
            .collect()
    }

    /// Queues answers for requests whose body has this `appId` (backfillRate) or `orderId`
    /// (record). Each such request pops one answer (a popped `Delay` delays, then the request
    /// is handled normally without popping again); when the queue is empty, normal
    /// validation applies. Appends to any answers already queued for that key.
    pub fn script(&self, app_id: &str, answers: Vec<Scripted>) {
        self.shared
            .lock()
            .scripts
            .entry(app_id.to_string())
            .or_default()
            .extend(answers);
    }

    /// Like [`script`](Self::script) for every request to either endpoint regardless of its
    /// body; consumed before the per-key queues (a request pops from one queue only).
    pub fn script_all(&self, answers: Vec<Scripted>) {
        self.shared.lock().script_all.extend(answers);
    }

    /// Sets what the record endpoint returns as `data` for this orderId.
    pub fn put_record(&self, order_id: &str, data: Value) {
        self.shared
            .lock()
            .records
            .insert(order_id.to_string(), data);
    }

    /// Every request waits this long before it is answered.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Makes that share of requests fail transiently, as a flaky provider does: in turn a
    /// `-18` (system error), an HTTP 503, and a connection dropped in the middle of the answer.
    pub fn fail_randomly(&self, rate: f64) {
        self.shared.lock().failure_rate = rate;
    }

    /// Serves at most `capacity` requests at once, as a throttling gateway in front of the
    /// provider does: each request beyond it is answered HTTP 429 with `Retry-After: 1` and a
    /// Spring-style JSON body (`{"status":429,"error":"Too Many Requests",…}`) before any
    /// check, and recorded with `answered_http` 429.
    pub fn throttle(&self, capacity: usize) {
        self.shared.lock().capacity = Some(capacity);
    }

    /// Sets the allowed |now − Timestamp| in seconds (default 300).
    pub fn set_max_skew(&self, secs: i64) {
        self.shared.lock().max_skew = secs;
    }

    /// The `Sign` this fake expects for a given `Timestamp` header string, from the account
    /// it was started with.
    pub fn sign_for(&self, timestamp: &str) -> String {
        let key = &self.shared.cfg.api_key;
        sign(key, &self.shared.lock().accounts[key].secret, timestamp)
    }

    /// Changes the secret the fake checks `Sign` against for the account it was started
    /// with, as a rotation in the provider's console would: requests signed with the old one
    /// get `-1` from now on.
    pub fn set_secret(&self, api_secret: &str) {
        let key = self.shared.cfg.api_key.clone();
        if let Some(account) = self.shared.lock().accounts.get_mut(&key) {
            account.secret = api_secret.to_string();
        }
    }

    /// Another account, as a company with several has at the provider: requests with its
    /// `Api-Key` are checked against its secret, and a backfillRate for an app not in `apps`
    /// is refused (`-22`). The account the fake was started with takes any app.
    pub fn add_account(&self, api_key: &str, api_secret: &str, apps: &[&str]) {
        let account = FakeAccount {
            secret: api_secret.to_string(),
            apps: apps.iter().map(ToString::to_string).collect(),
        };
        self.shared
            .lock()
            .accounts
            .insert(api_key.to_string(), account);
    }

    /// Correct headers for a request made now, as `(name, value)` pairs: handy for tests that
    /// talk to the fake directly rather than through the client under test.
    pub fn valid_headers(&self) -> Vec<(&'static str, String)> {
        let ts = now_unix().to_string();
        vec![
            ("Content-Type", CONTENT_TYPE.to_string()),
            ("Api-Key", self.shared.cfg.api_key.clone()),
            ("Sign", self.sign_for(&ts)),
            ("Timestamp", ts),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling. Nothing below may panic on request data: a panic in the handler would
// only surface as a dropped connection in the client test, hiding the real bug.
// ---------------------------------------------------------------------------------------------

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(wire): ConnectInfo<Wire>,
    req: Request,
) -> Response {
    let at = SystemTime::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let headers = header_map(&parts.headers);
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let raw_header_names = wire.take_request(bytes.as_ref().ok().map(Bytes::len));
    let parsed = match &bytes {
        Ok(b) => serde_json::from_slice::<Value>(b).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };

    // Record on arrival so that delayed/hanging requests are visible to the test.
    let idx = {
        let mut inner = shared.lock();
        inner.received.push(Received {
            path: path.clone(),
            headers,
            raw_header_names: raw_header_names.clone(),
            body: parsed.clone(),
            answered_http: 0,
            answered_status: None,
            at,
        });
        inner.received.len() - 1
    };
    let Some(_slot) = Slot::take(&shared) else {
        return finish(&shared, idx, too_many_requests(&path));
    };

    let answer = decide(
        &shared,
        &parts.method,
        &path,
        &parts.headers,
        &raw_header_names,
        bytes.is_ok(),
        &parsed,
    )
    .await;
    finish(&shared, idx, answer)
}

/// One of the requests a throttled fake serves at once, given back when dropped.
struct Slot(Arc<Shared>);

impl Slot {
    /// A slot, or `None` when the fake is throttled and every slot is taken.
    fn take(shared: &Arc<Shared>) -> Option<Slot> {
        let mut inner = shared.lock();
        if inner
            .capacity
            .is_some_and(|capacity| inner.busy >= capacity)
        {
            return None;
        }
        inner.busy += 1;
        Some(Slot(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.busy = inner.busy.saturating_sub(1);
    }
}

/// What Spring Boot's default error handler answers to a throttled request: the HTTP code
/// again as a JSON *number* `status`, no `reason`.
fn too_many_requests(path: &str) -> Answer {
    let body = json!({
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "status": 429,
        "error": "Too Many Requests",
        "path": path,
    });
    Answer::Reply {
        http: 429,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("retry-after", "1".to_string()),
        ],
        body: body.to_string(),
    }
}

async fn decide(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    raw_header_names: &[String],
    body_read: bool,
    body: &Value,
) -> Answer {
    // 1. Route.
    let endpoint = match (method == Method::POST, path) {
        (true, BACKFILL_PATH) => Endpoint::Backfill,
        (true, RECORD_PATH) => Endpoint::Record,
        _ => return Answer::Http(404, "not found"),
    };
    if !body_read {
        return Answer::Http(413, "request body too large");
    }

    // 2. Headers, then 3. body.
    if let Err((status, reason)) = check_headers(shared, headers, raw_header_names) {
        return Answer::provider(status, reason);
    }
    let Some(obj) = body.as_object() else {
        return Answer::provider("-22", "body: not a JSON object");
    };
    let validated = match endpoint {
        Endpoint::Backfill => validate_backfill(obj).map(|()| None),
        Endpoint::Record => validate_record(obj).map(Some),
    };
    let order_id = match validated {
        Ok(order_id) => order_id,
        Err(reason) => return Answer::provider("-22", reason),
    };
    if endpoint == Endpoint::Backfill {
        if let Err(reason) = check_app_of_account(shared, headers, body) {
            return Answer::provider("-22", reason);
        }
    }

    // Latency and injected failures, for valid requests only.
    let (latency, fail) = {
        let mut inner = shared.lock();
        let fail = inner.failure_rate > 0.0 && rand::random::<f64>() < inner.failure_rate;
        if fail {
            inner.failures += 1;
        }
        (inner.latency, fail.then_some(inner.failures % 3))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fail {
        Some(0) => return Answer::provider("-18", "system busy (injected)"),
        Some(1) => return Answer::Http(503, "injected outage"),
        Some(_) => return Answer::Dropped,
        None => {}
    }

    // 4. Scripts, for valid requests only.
    let key_field = match endpoint {
        Endpoint::Backfill => "appId",
        Endpoint::Record => "orderId",
    };
    let key = body.get(key_field).and_then(Value::as_str);
    let scripted = {
        let mut inner = shared.lock();
        match inner.script_all.pop_front() {
            Some(s) => Some(s),
            None => key.and_then(|k| inner.scripts.get_mut(k).and_then(VecDeque::pop_front)),
        }
    };
    match scripted {
        None => {}
        Some(Scripted::Status(s, r)) => return Answer::provider(s, r),
        Some(Scripted::Http(code)) => return Answer::Http(code, "scripted error"),
        Some(Scripted::Html) => return Answer::Html,
        Some(Scripted::Reply {
            http,
            headers,
            body,
        }) => {
            return Answer::Reply {
                http,
                headers,
                body,
            }
        }
        Some(Scripted::Endless) => return Answer::Endless,
        Some(Scripted::Delay(d)) => tokio::time::sleep(d).await,
        Some(Scripted::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Answer::Http(504, "hung for an hour");
        }
    }

    // 5. The answer.
    let Some(order_id) = order_id else {
        return Answer::provider("0", "success");
    };
    match shared.lock().records.get(order_id) {
        Some(data) => Answer::Provider {
            status: "0".to_string(),
            reason: "success".to_string(),
            data: Some(data.clone()),
        },
        // The docs don't say what an unknown orderId yields (error status, or "0"
        // with empty/absent data). We answer a parameter error so that a client
        // treating "0" as "record exists" is never silently fed nothing.
        None => Answer::provider("-22", "orderId not found"),
    }
}

fn finish(shared: &Shared, idx: usize, answer: Answer) -> Response {
    let (http, status, response) = match answer {
        Answer::Provider {
            status,
            reason,
            data,
        } => {
            let mut body = json!({ "status": status, "reason": reason });
            if let (Some(data), Some(obj)) = (data, body.as_object_mut()) {
                obj.insert("data".to_string(), data);
            }
            let resp = (StatusCode::OK, axum::Json(body)).into_response();
            (200, Some(status), resp)
        }
        Answer::Http(code, text) => {
            let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let resp = (sc, format!("{} {text}\n", sc.as_u16())).into_response();
            (sc.as_u16(), None, resp)
        }
        Answer::Dropped => {
            let cut = futures::stream::once(async {
                Err::<axum::body::Bytes, _>(std::io::Error::other("connection dropped (injected)"))
            });
            (200, None, Response::new(Body::from_stream(cut)))
        }
        Answer::Html => {
            let mut resp = Response::new(Body::from(
                "<html><head><title>Gateway</title></head><body>Please wait…</body></html>",
            ));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            (200, None, resp)
        }
        Answer::Reply {
            http,
            headers,
            body,
        } => {
            let status = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_string));
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() =
                StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            for (name, value) in headers {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    resp.headers_mut().append(name, value);
                }
            }
            (http, status, resp)
        }
        Answer::Endless => {
            // Starts like the documented envelope, then a reason that never ends.
            let start = futures::stream::once(async {
                Ok::<_, std::convert::Infallible>(Bytes::from_static(
                    br#"{"status":"0","reason":""#,
                ))
            });
            let rest = futures::stream::repeat_with(|| Ok(Bytes::from(vec![b'x'; 16 * 1024])));
            let resp = Response::new(Body::from_stream(start.chain(rest)));
            (200, Some("0".to_string()), resp)
        }
    };
    if let Some(r) = shared.lock().received.get_mut(idx) {
        r.answered_http = http;
        r.answered_status = status;
    }
    response
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Header checks, in an order of the fake's own (the provider's docs fix none): Content-Type
/// (`-22`, parameter error), Api-Key, Timestamp syntax (unparseable means the Sign cannot be
/// verified, hence `-1`, account authentication error), Sign, then Timestamp skew (`-16`,
/// timestamp expired), as the docs' status table names them.
fn check_headers(
    shared: &Shared,
    headers: &HeaderMap,
    raw_header_names: &[String],
) -> Result<(), (&'static str, String)> {
    // As the pages spell them; a lowercase `sign` may pass the provider itself but not a
    // gateway that compares names with case.
    for (spelled, status) in [
        ("Content-Type", "-22"),
        ("Api-Key", "-1"),
        ("Timestamp", "-1"),
        ("Sign", "-1"),
    ] {
        if let Some(sent) = raw_header_names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(spelled) && n.as_str() != spelled)
        {
            return Err((
                status,
                format!("{spelled}: header name sent as {sent:?}, the docs spell it {spelled}"),
            ));
        }
    }

    // Content-Type: both examples send exactly `application/json;charset=UTF-8`. reqwest's
    // `.json()` sets bare `application/json`, which we reject so the client must set it.
    let ct = header_str(headers, "content-type");
    if !ct.is_some_and(content_type_ok) {
        return Err((
            "-22",
            format!(
                "Content-Type: expected {CONTENT_TYPE}, got {}",
                ct.map_or_else(|| "nothing".to_string(), |c| format!("{c:?}"))
            ),
        ));
    }

    let account = match header_str(headers, "api-key") {
        None => return Err(("-1", "Api-Key: missing".to_string())),
        Some(k) => match shared.lock().accounts.get(k) {
            None => return Err(("-1", "Api-Key: unknown key".to_string())),
            Some(account) => (k.to_string(), account.secret.clone()),
        },
    };

    // Digits only: `+5`, ` 5`, `5.0` and negative values are not unix seconds as the
    // provider's examples produce them (Java `getEpochSecond`, PHP `time()`).
    let ts_str = match header_str(headers, "timestamp") {
        None => return Err(("-1", "Timestamp: missing, cannot verify Sign".to_string())),
        Some(t) => t,
    };
    let ts: Option<i64> = if !ts_str.is_empty() && ts_str.bytes().all(|b| b.is_ascii_digit()) {
        ts_str.parse().ok()
    } else {
        None
    };
    let Some(ts) = ts else {
        return Err((
            "-1",
            format!("Timestamp: {ts_str:?} is not integer unix seconds, cannot verify Sign"),
        ));
    };

    let expected = sign(&account.0, &account.1, ts_str);
    match header_str(headers, "sign") {
        None => return Err(("-1", "Sign: missing".to_string())),
        // NOTES.md: compared case-insensitively.
        Some(s) if !s.eq_ignore_ascii_case(&expected) => {
            return Err((
                "-1",
                "Sign: does not match md5(apiKey+apiSecret+Timestamp)".to_string(),
            ))
        }
        Some(_) => {}
    }

    let max_skew = shared.lock().max_skew;
    let skew = i128::from(now_unix()) - i128::from(ts);
    if skew.abs() > i128::from(max_skew) {
        return Err((
            "-16",
            format!("Timestamp: expired ({skew} s from server time, max {max_skew} s)"),
        ));
    }
    Ok(())
}

/// The `appId` of a backfillRate must be one of the signing account's apps, when the test
/// gave that account its apps ([`FakeProvider::add_account`]).
fn check_app_of_account(shared: &Shared, headers: &HeaderMap, body: &Value) -> Result<(), String> {
    let key = header_str(headers, "api-key").unwrap_or_default();
    let app = body
        .get("appId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let inner = shared.lock();
    match inner.accounts.get(key) {
        Some(account) if !account.apps.is_empty() && !account.apps.iter().any(|a| a == app) => Err(
            format!("appId: {app:?} is not an app of the account {key:?}"),
        ),
        _ => Ok(()),
    }
}

/// `application/json;charset=UTF-8`, case-insensitive, spaces allowed around `;` only.
fn content_type_ok(ct: &str) -> bool {
    let mut parts = ct.split(';').map(str::trim);
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(mime), Some(charset), None)
            if mime.eq_ignore_ascii_case("application/json")
                && charset.eq_ignore_ascii_case("charset=UTF-8")
    )
}

const BACKFILL_FIELDS: [&str; 6] = [
    "appId",
    "mcc",
    "backfillNumber",
    "backfillCardinalNumber",
    "backfillNow",
    "callbackTime",
];

/// Validates a backfillRate body; `Err` is the `-22` reason, `"<field>: <what is wrong>"`.
///
/// Every field must be a JSON string, as the field table says. In particular `mcc` must be a
/// string although the request example shows `"mcc":460`: the table is authoritative, the
/// official SDK sends every field as a string, and a lenient fake would let a client that
/// serialises mcc as a number (losing leading zeros, e.g. "001") pass its tests. Optional
/// fields, when present, must be strings too: `null` is rejected, which catches an
/// `Option` serialised without `skip_serializing_if`.
fn validate_backfill(obj: &Map<String, Value>) -> Result<(), String> {
    if let Some(k) = obj.keys().find(|k| !BACKFILL_FIELDS.contains(&k.as_str())) {
        return Err(format!("{k}: unknown field"));
    }

    let app_id = required_str(obj, "appId")?;
    check_len("appId", app_id, 4, 32)?;

    let mcc = required_str(obj, "mcc")?;
    if mcc.len() != 3 || !mcc.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("mcc: {mcc:?} is not exactly 3 ASCII digits"));
    }

    let number = optional_count(obj, "backfillNumber")?;
    let cardinal = optional_count(obj, "backfillCardinalNumber")?;
    if let (Some(n), Some(c)) = (number, cardinal) {
        if n > c {
            return Err(format!(
                "backfillNumber: {n} is greater than backfillCardinalNumber {c}"
            ));
        }
    }

    let now = required_str(obj, "backfillNow")?;
    if !rate_ok(now) {
        return Err(format!(
            "backfillNow: {now:?} is not a decimal in [0, 100] with at most two decimals"
        ));
    }

    let cb = required_str(obj, "callbackTime")?;
    if !callback_time_ok(cb) {
        return Err(format!(
            "callbackTime: {cb:?} is not ISO 8601 YYYY-MM-DDTHH:MM:SS±HH:MM (or Z)"
        ));
    }
    Ok(())
}

/// Validates a record body and returns the orderId. Unknown fields are rejected here too,
/// for the same reason as on backfillRate: the client should send only documented fields.
/// orderId is 1–64 characters (NOTES.md says 0–64, but the table marks it required, and an
/// empty id cannot name a record).
fn validate_record(obj: &Map<String, Value>) -> Result<&str, String> {
    if let Some(k) = obj.keys().find(|k| *k != "appId" && *k != "orderId") {
        return Err(format!("{k}: unknown field"));
    }
    if let Some(v) = obj.get("appId") {
        let app_id = v
            .as_str()
            .ok_or_else(|| format!("appId: expected a JSON string, got {}", type_name(v)))?;
        check_len("appId", app_id, 4, 32)?;
    }
    let order_id = required_str(obj, "orderId")?;
    check_len("orderId", order_id, 1, 64)?;
    Ok(order_id)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    match obj.get(field) {
        None => Err(format!("{field}: missing (required)")),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!(
            "{field}: expected a JSON string, got {}",
            type_name(v)
        )),
    }
}

fn check_len(field: &str, s: &str, min: usize, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(format!(
            "{field}: length {n}, expected {min}-{max} characters"
        ));
    }
    Ok(())
}

/// Optional string of a non-negative integer (digits only, fits u64).
fn optional_count(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, String> {
    let Some(v) = obj.get(field) else {
        return Ok(None);
    };
    let Value::String(s) = v else {
        return Err(format!(
            "{field}: expected a JSON string, got {}",
            type_name(v)
        ));
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{field}: {s:?} is not a non-negative integer"));
    }
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("{field}: {s:?} is too large"))
}

/// `^[0-9]+(\.[0-9]{1,2})?$` with value ≤ 100: "10", "12.5", "33.33", "100", "100.00".
fn rate_ok(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || frac.len() > 2 {
        return false;
    }
    if s.contains('.') && frac.is_empty() {
        return false; // "5."
    }
    let Ok(int) = int.parse::<u64>() else {
        return false; // absurdly long
    };
    let frac_hundredths = match frac.len() {
        0 => 0,
        1 => u64::from(frac.as_bytes()[0] - b'0') * 10,
        _ => u64::from(frac.as_bytes()[0] - b'0') * 10 + u64::from(frac.as_bytes()[1] - b'0'),
    };
    int.checked_mul(100)
        .and_then(|h| h.checked_add(frac_hundredths))
        .is_some_and(|h| h <= 10_000)
}

/// Exact shape `YYYY-MM-DDTHH:MM:SS` followed by `Z` or `±HH:MM`, and a valid RFC 3339 time
/// for chrono (which alone would also accept fractional seconds, a lowercase `t` or a space).
fn callback_time_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let d = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let c = |i: usize, ch: u8| b.get(i) == Some(&ch);
    let date_time = (0..4).all(d)
        && c(4, b'-')
        && d(5)
        && d(6)
        && c(7, b'-')
        && d(8)
        && d(9)
        && c(10, b'T')
        && d(11)
        && d(12)
        && c(13, b':')
        && d(14)
        && d(15)
        && c(16, b':')
        && d(17)
        && d(18);
    let offset = match b.len() {
        20 => c(19, b'Z'),
        25 => (c(19, b'+') || c(19, b'-')) && d(20) && d(21) && c(22, b':') && d(23) && d(24),
        _ => false,
    };
    date_time && offset && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

// ---------------------------------------------------------------------------------------------
// The wire tap: every connection's raw bytes, so that header names are seen as sent (hyper
// lowercases them before the handler runs).
// ---------------------------------------------------------------------------------------------

/// The bytes one connection has received and not yet matched to a request.
#[derive(Clone, Default)]
struct Wire(Arc<Mutex<Vec<u8>>>);

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wire")
    }
}

impl Wire {
    /// The header names of the request at the head of the buffer, which is then dropped with
    /// its body (`body_len` bytes; `None` when the body was not read, which drops everything).
    /// Requests on one connection come one after another (HTTP/1.1, no pipelining).
    fn take_request(&self, body_len: Option<usize>) -> Vec<String> {
        let mut bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            bytes.clear();
            return Vec::new();
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let names: Vec<String> = head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':').map(|(n, _)| n.to_string()))
            .collect();
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        match body_len {
            Some(len) if !chunked => {
                let taken = (end + 4 + len).min(bytes.len());
                bytes.drain(..taken);
            }
            _ => bytes.clear(),
        }
        names
    }
}

impl Connected<IncomingStream<'_, TapListener>> for Wire {
    fn connect_info(stream: IncomingStream<'_, TapListener>) -> Self {
        stream.remote_addr().clone()
    }
}

struct TapListener(tokio::net::TcpListener);

impl Listener for TapListener {
    type Io = TapStream;
    type Addr = Wire;

    async fn accept(&mut self) -> (TapStream, Wire) {
        loop {
            match self.0.accept().await {
                Ok((stream, _)) => {
                    let wire = Wire::default();
                    return (
                        TapStream {
                            stream,
                            wire: wire.clone(),
                        },
                        wire,
                    );
                }
                // EMFILE and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Wire> {
        Ok(Wire::default())
    }
}

/// A TCP stream that copies what it reads into its [`Wire`].
struct TapStream {
    stream: tokio::net::TcpStream,
    wire: Wire,
}

impl tokio::io::AsyncRead for TapStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &poll {
            self.wire
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf.filled()[before..]);
        }
        poll
    }
}

impl tokio::io::AsyncWrite for TapStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

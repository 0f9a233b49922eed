//! The signed client against the fake provider: every answer lands in its class with the
//! provider's status, reason and the HTTP status kept.

use std::time::Duration;

use backfill_reporter::config::{self, ProviderSettings};
use backfill_reporter::domain::{AppId, Mcc};
use backfill_reporter::provider::{BackfillRequest, Class, ProviderClient, Rejection};

use backfill_reporter::provider::concurrency::Signal;
use backfill_reporter::retry::classify::is_outage;

use crate::fake_provider::{self, FakeProvider, Scripted};
use crate::helpers::{API_KEY, API_SECRET};

fn settings(base_url: &str, secret: &str, timeout: Duration) -> ProviderSettings {
    let text = format!(
        "[provider]\nbase_url = {base_url:?}\napi_key = {API_KEY:?}\napi_secret = {secret:?}\n\
         concurrency = 1\nmax_in_flight = 1\nmax_attempts = 1\nretry_backoff = \"10ms\"\n"
    );
    let mut settings = config::from_toml(&text, std::path::Path::new("t.toml"), &|_| None)
        .expect("a valid provider section")
        .provider;
    // Below the config's floor of 1 s: these tests time the client out on purpose.
    settings.request_timeout = timeout;
    settings
}

/// The client of the one (unnamed) account of `settings`.
fn client_of(settings: &ProviderSettings) -> anyhow::Result<ProviderClient> {
    ProviderClient::new(settings, settings.accounts.get(None).expect("one account"))
}

fn body() -> BackfillRequest {
    BackfillRequest::from_counts(
        AppId::parse("mRELxtHc").unwrap(),
        Mcc::parse("460").unwrap(),
        100,
        1000,
        "2023-01-29T09:59:58+08:00".into(),
    )
    .unwrap()
}

async fn client_for(fake: &FakeProvider) -> ProviderClient {
    client_of(&settings(
        &fake.base_url,
        API_SECRET,
        Duration::from_secs(5),
    ))
    .unwrap()
}

#[tokio::test]
async fn a_valid_submission_is_signed_as_the_docs_say_and_succeeds() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let ex = client_for(&fake).await.submit_backfill(&body()).await;
    assert_eq!(ex.class, Class::Success, "{ex:?}");
    assert_eq!(ex.provider_status.as_deref(), Some("0"));
    let got = fake.received();
    assert_eq!(got.len(), 1);
    let h = &got[0].headers;
    assert_eq!(h["content-type"], "application/json;charset=UTF-8");
    assert_eq!(h["api-key"], API_KEY);
    let ts = &h["timestamp"];
    assert_eq!(h["sign"], fake_provider::sign(API_KEY, API_SECRET, ts));
    assert!((ts.parse::<i64>().unwrap() - fake_provider::now_unix()).abs() <= 5);
}

#[tokio::test]
async fn a_trailing_slash_on_the_base_url_reaches_the_same_endpoint() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let slash = format!("{}/", fake.base_url);
    let cfg = backfill_reporter::config::from_toml(
        &format!("[provider]\nbase_url = {slash:?}\napi_key = {API_KEY:?}\napi_secret = {API_SECRET:?}\n"),
        std::path::Path::new("t.toml"),
        &|_| None,
    )
    .unwrap();
    let ex = client_of(&cfg.provider)
        .unwrap()
        .submit_backfill(&body())
        .await;
    assert_eq!(ex.class, Class::Success);
    assert_eq!(fake.received()[0].path, "/otp/backfillRate");
}

#[tokio::test]
async fn a_wrong_secret_is_an_authentication_rejection() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let client = client_of(&settings(&fake.base_url, "wrong", Duration::from_secs(5))).unwrap();
    let ex = client.submit_backfill(&body()).await;
    assert_eq!(ex.class, Class::Rejected(Rejection::Authentication));
    assert_eq!(ex.provider_status.as_deref(), Some("-1"));
    assert!(ex.reason.is_some());
}

#[tokio::test]
async fn a_clock_far_from_the_providers_gets_a_transient_minus_16() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    fake.set_max_skew(-1); // every timestamp is now "too old"
    let ex = client_for(&fake).await.submit_backfill(&body()).await;
    assert_eq!(ex.provider_status.as_deref(), Some("-16"));
    assert_eq!(ex.class, Class::Transient);
}

#[tokio::test]
async fn bad_parameters_get_a_minus_22_naming_the_field() {
    // The client's types cannot build these bodies, so they are sent raw, correctly signed:
    // this proves the stand-in checks every field as the docs say.
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let http = reqwest::Client::builder()
        .http1_title_case_headers()
        .build()
        .unwrap();
    for (field, bad) in [
        ("appId", "abc"),
        ("backfillNow", "100.01"),
        ("backfillNow", "12.345"),
        ("mcc", "46"),
    ] {
        let mut b = serde_json::to_value(body()).unwrap();
        b[field] = serde_json::json!(bad);
        let mut req = http.post(format!("{}/backfillRate", fake.base_url));
        for (name, value) in fake.valid_headers() {
            req = req.header(name, value);
        }
        let answer: serde_json::Value = req
            .body(b.to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "-22", "{field}={bad}");
        assert!(
            answer["reason"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn every_status_and_failure_mode_lands_in_its_class() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let client = client_for(&fake).await;
    // Only the hanging case waits for the timeout; the others get a loaded CI machine's margin.
    let impatient = client_of(&settings(
        &fake.base_url,
        API_SECRET,
        Duration::from_millis(700),
    ))
    .unwrap();
    let cases: Vec<(Scripted, Class, Option<&str>, Option<u16>)> = vec![
        (
            Scripted::Status("0", "success"),
            Class::Success,
            Some("0"),
            Some(200),
        ),
        (
            Scripted::Status("-1", "auth"),
            Class::Rejected(Rejection::Authentication),
            Some("-1"),
            Some(200),
        ),
        (
            Scripted::Status("-2", "ip"),
            Class::Rejected(Rejection::IpRestricted),
            Some("-2"),
            Some(200),
        ),
        (
            Scripted::Status("-16", "ts"),
            Class::Transient,
            Some("-16"),
            Some(200),
        ),
        (
            Scripted::Status("-18", "sys"),
            Class::Transient,
            Some("-18"),
            Some(200),
        ),
        (
            Scripted::Status("-22", "param"),
            Class::Rejected(Rejection::Parameters),
            Some("-22"),
            Some(200),
        ),
        (
            Scripted::Status("-10", "balance"),
            Class::Rejected(Rejection::Other),
            Some("-10"),
            Some(200),
        ),
        (Scripted::Http(500), Class::Transient, None, Some(500)),
        (Scripted::Http(502), Class::Transient, None, Some(502)),
        (Scripted::Http(429), Class::Transient, None, Some(429)),
        (Scripted::Http(408), Class::Transient, None, Some(408)),
        (
            Scripted::Http(404),
            Class::Rejected(Rejection::Other),
            None,
            Some(404),
        ),
        (
            Scripted::Http(403),
            Class::Rejected(Rejection::Other),
            None,
            Some(403),
        ),
        (Scripted::Html, Class::Transient, None, Some(200)),
        (Scripted::Hang, Class::Transient, None, None),
    ];
    for (script, class, status, http) in cases {
        fake.script_all(vec![script.clone()]);
        let hangs = matches!(script, Scripted::Hang);
        let ex = if hangs { &impatient } else { &client }
            .submit_backfill(&body())
            .await;
        assert_eq!(ex.class, class, "{script:?}: {ex:?}");
        assert_eq!(ex.provider_status.as_deref(), status, "{script:?}");
        assert_eq!(ex.http_status, http, "{script:?}");
        if class != Class::Success {
            assert!(ex.error.is_some(), "{script:?} keeps an error text");
        }
        if hangs {
            assert!(ex.error.unwrap().contains("timed out"));
        }
    }
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    // Bind then drop a listener: nothing listens on that port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = client_of(&settings(
        &format!("http://127.0.0.1:{port}/otp"),
        API_SECRET,
        Duration::from_secs(2),
    ))
    .unwrap();
    let ex = client.submit_backfill(&body()).await;
    assert_eq!(ex.class, Class::Transient);
    assert_eq!(ex.http_status, None);
    assert!(is_outage(&ex));
    assert!(ex.error.unwrap().contains("could not connect"));
}

#[tokio::test]
async fn the_docs_record_example_parses_into_the_typed_model_with_every_leg() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    fake.put_record(
        "1234566",
        fake_provider::docs_record_example()["data"].clone(),
    );
    let ex = client_for(&fake)
        .await
        .lookup_record("1234566", Some("ad454212"))
        .await;
    assert_eq!(ex.class, Class::Success, "{ex:?}");
    assert_eq!(
        fake.received()[0].body,
        serde_json::json!({"appId": "ad454212", "orderId": "1234566"})
    );
    let r = ex.data.unwrap();
    assert_eq!(r.order_id.as_deref(), Some("1234566"));
    assert_eq!(r.flow_id, Some(1));
    let v = r.verifications.unwrap();
    assert_eq!(v.matched, Some(0));
    assert_eq!(v.channel.as_deref(), Some("call"));
    assert_eq!(v.ori_receiver.as_deref(), Some("91856321412"));
    assert_eq!(
        v.verified_date.as_deref(),
        Some("2022-07-12T13:39:47+08:00")
    );
    let sms = &r.sms[0];
    assert_eq!(
        (*sms.mcc, *sms.mnc, *sms.charge_cnt, *sms.status),
        (Some(460), Some(10), Some(1), Some(0))
    );
    assert_eq!(sms.pay.as_deref(), Some("0.000002"));
    assert_eq!(sms.reason.as_deref(), Some("successR"));
    assert_eq!(sms.settlement.settle_currency.as_deref(), Some("EUR")); // sent as "currency"
    assert_eq!(sms.settlement.quote_exchange.as_deref(), Some("0.938"));
    let call = &r.call[0];
    assert_eq!(call.termination_code, Some(100_005));
    assert_eq!(
        call.termination_reason.as_deref(),
        Some("Temporarily Unavailable")
    );
    assert_eq!(call.display_num, None);
    assert_eq!(call.bill_period.as_deref(), Some("20+20"));
    assert_eq!(
        (*call.call_duration, *call.charged_duration),
        (Some(0), Some(0))
    );
    assert_eq!(call.rate.as_deref(), Some("0.138"));
    assert_eq!(call.settlement.settle_pay.as_deref(), Some("0.01368"));
    assert!(r.sna.is_empty());
}

#[tokio::test]
async fn numbers_as_strings_and_an_sna_leg_are_accepted() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    fake.put_record(
        "o-1",
        serde_json::json!({
            "orderId": "o-1", "flowId": "7",
            "verifications": {"matched": "2", "channel": "sna"},
            "sna": [{"postVerificationTime": "2022-07-12T13:39:45+08:00",
                     "verificationBackTime": "2022-07-12T13:39:46+08:00",
                     "mcc": "460", "mnc": 1, "status": "1", "reason": "mismatch",
                     "settlePay": 0.5, "settleCurrency": "USD"}]
        }),
    );
    let r = client_for(&fake)
        .await
        .lookup_record("o-1", None)
        .await
        .data
        .unwrap();
    assert_eq!(r.flow_id, Some(7));
    assert_eq!(r.verifications.unwrap().matched, Some(2));
    let sna = &r.sna[0];
    assert_eq!(
        (*sna.mcc, *sna.mnc, *sna.status),
        (Some(460), Some(1), Some(1))
    );
    assert_eq!(sna.settlement.settle_pay.as_deref(), Some("0.5"));
    assert_eq!(sna.settlement.settle_currency.as_deref(), Some("USD"));
}

#[tokio::test]
async fn the_headers_go_out_spelled_as_the_pages_spell_them() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;

    let ex = client_for(&fake).await.submit_backfill(&body()).await;

    assert_eq!(ex.class, Class::Success, "{ex:?}");
    let names = &fake.received()[0].raw_header_names;
    for spelled in ["Content-Type", "Sign", "Timestamp", "Api-Key"] {
        assert!(
            names.iter().any(|n| n == spelled),
            "{spelled} not on the wire as spelled: {names:?}"
        );
    }
}

#[tokio::test]
async fn the_fake_refuses_a_header_name_spelled_otherwise_even_when_the_signature_is_right() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let ts = fake_provider::now_unix().to_string();
    let body = r#"{"orderId":"1234566"}"#;
    let request = format!(
        "POST /otp/verification/orderId/record HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/json;charset=UTF-8\r\nsign: {}\r\nTimestamp: {ts}\r\n\
         Api-Key: {API_KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        fake.addr,
        fake.sign_for(&ts),
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(fake.addr).await.unwrap();

    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();

    assert!(answer.contains(r#""status":"-1""#), "{answer}");
    assert!(answer.contains("header name sent as"), "{answer}");
    assert_eq!(fake.received()[0].raw_header_names[2], "sign");
}

#[tokio::test]
async fn a_documented_json_body_on_an_http_error_is_classed_by_its_status() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let client = client_for(&fake).await;
    let envelope =
        |status: &str, reason: &str| serde_json::json!({"status": status, "reason": reason});
    let cases = [
        (
            401,
            envelope("-1", "auth"),
            Class::Rejected(Rejection::Authentication),
        ),
        (
            403,
            envelope("-2", "ip"),
            Class::Rejected(Rejection::IpRestricted),
        ),
        (
            400,
            envelope("-22", "param"),
            Class::Rejected(Rejection::Parameters),
        ),
        (503, envelope("-18", "busy"), Class::Transient),
        // A "0" on an error page contradicts itself: the HTTP status decides.
        (500, envelope("0", "success"), Class::Transient),
        (
            404,
            envelope("0", "success"),
            Class::Rejected(Rejection::Other),
        ),
    ];
    for (http, body, class) in cases {
        fake.script_all(vec![Scripted::json(http, body.clone())]);

        let ex = client.submit_backfill(&self::body()).await;

        assert_eq!(ex.class, class, "HTTP {http} {body}: {ex:?}");
        assert_eq!(ex.http_status, Some(http));
        assert_eq!(
            ex.provider_status.as_deref(),
            body["status"].as_str(),
            "{body}"
        );
        assert!(ex.error.unwrap().contains(&http.to_string()));
    }
    let got = fake.received();
    assert_eq!(got.len(), 6);
    assert!(
        got.iter().all(|r| r.answered_http >= 400),
        "scripted answers only"
    );
}

#[tokio::test]
async fn an_http_408_429_or_5xx_whose_body_has_no_documented_status_is_transient() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let client = client_for(&fake).await;
    // Spring Boot's default error body: the HTTP code again, as a JSON number `status`.
    let spring = |http: u16, error: &str| {
        serde_json::json!({"timestamp": "2026-01-01T00:00:00.000+00:00", "status": http,
            "error": error, "path": "/otp/backfillRate"})
    };
    let with_retry_after = |http: u16, body: serde_json::Value| Scripted::Reply {
        http,
        headers: vec![
            ("content-type", "application/json".into()),
            ("retry-after", "1".into()),
        ],
        body: body.to_string(),
    };
    let cases: Vec<(Scripted, Class, Option<&str>, Option<Duration>)> = vec![
        (
            with_retry_after(429, spring(429, "Too Many Requests")),
            Class::Transient,
            None,
            Some(Duration::from_secs(1)),
        ),
        (
            Scripted::json(500, spring(500, "Internal Server Error")),
            Class::Transient,
            None,
            None,
        ),
        (
            with_retry_after(503, spring(503, "Service Unavailable")),
            Class::Transient,
            None,
            Some(Duration::from_secs(1)),
        ),
        (
            Scripted::json(408, spring(408, "Request Timeout")),
            Class::Transient,
            None,
            None,
        ),
        // A status other endpoints use, on a 502: the gateway's code decides.
        (
            Scripted::json(502, serde_json::json!({"status": "-29", "reason": "?"})),
            Class::Transient,
            None,
            None,
        ),
        // Everything else as before: a documented status decides on any HTTP code, an
        // undocumented one on a 2xx or another 4xx is a rejection.
        (
            with_retry_after(503, serde_json::json!({"status": "-22", "reason": "param"})),
            Class::Rejected(Rejection::Parameters),
            Some("-22"),
            Some(Duration::from_secs(1)),
        ),
        (
            Scripted::json(400, spring(400, "Bad Request")),
            Class::Rejected(Rejection::Other),
            Some("400"),
            None,
        ),
        (
            Scripted::json(
                200,
                serde_json::json!({"status": "-10", "reason": "balance"}),
            ),
            Class::Rejected(Rejection::Other),
            Some("-10"),
            None,
        ),
    ];
    for (script, class, status, retry_after) in cases {
        fake.script_all(vec![script.clone()]);

        let ex = client.submit_backfill(&body()).await;

        assert_eq!(ex.class, class, "{script:?}: {ex:?}");
        assert_eq!(ex.provider_status.as_deref(), status, "{script:?}");
        assert_eq!(ex.retry_after, retry_after, "{script:?}");
        let error = ex.error.unwrap();
        if status.is_none() {
            assert!(error.contains("the provider does not document"), "{error}");
        }
    }
    assert_eq!(fake.received().len(), 8, "one request per case");
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_its_location_is_in_the_reason() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let elsewhere = FakeProvider::start(API_KEY, API_SECRET).await;
    let client = client_for(&fake).await;
    for http in [301, 302, 303, 307, 308] {
        let location = format!("{}/backfillRate", elsewhere.base_url);
        fake.script_all(vec![Scripted::Reply {
            http,
            headers: vec![("location", location.clone())],
            body: String::new(),
        }]);

        let ex = client.submit_backfill(&body()).await;

        assert_eq!(
            ex.class,
            Class::Rejected(Rejection::Other),
            "{http}: {ex:?}"
        );
        assert_eq!(ex.http_status, Some(http));
        let error = ex.error.unwrap();
        assert!(error.contains(&location), "{error}");
        assert!(error.contains("not followed"), "{error}");
    }
    assert_eq!(fake.received().len(), 5);
    assert!(
        elsewhere.received().is_empty(),
        "the signed request went on to the Location: {:?}",
        elsewhere.received()[0].headers
    );
}

#[tokio::test]
async fn a_body_over_64_kib_is_an_error_and_is_not_read_to_its_end() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let client = client_for(&fake).await;
    let big = serde_json::json!({"status": "0", "reason": "x".repeat(100 * 1024)});
    // Declared too long (Content-Length), then endless (chunked): the second would time out,
    // or fill the memory, if the client read on.
    for script in [Scripted::json(200, big), Scripted::Endless] {
        fake.script_all(vec![script.clone()]);

        let ex = client.submit_backfill(&body()).await;

        assert_eq!(ex.class, Class::Transient, "{script:?}: {ex:?}");
        assert_eq!(ex.http_status, Some(200));
        assert_eq!(ex.body, None);
        let error = ex.error.unwrap();
        assert!(error.contains("over 64 KiB"), "{script:?}: {error}");
    }
    // Just under the limit is read.
    let fits = serde_json::json!({"status": "-22", "reason": "y".repeat(60 * 1024)});
    fake.script_all(vec![Scripted::json(200, fits)]);
    let ex = client.submit_backfill(&body()).await;
    assert_eq!(ex.class, Class::Rejected(Rejection::Parameters));
}

#[tokio::test]
async fn the_providers_reason_is_escaped_and_capped() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let reason = format!(
        "bad\n2026-01-01T00:00:00.000000Z  INFO backfill_reporter: forged line\r\u{1b}[2J{}",
        "z".repeat(20_000)
    );
    fake.script_all(vec![Scripted::json(
        200,
        serde_json::json!({"status": "-22\nforged", "reason": reason}),
    )]);

    let ex = client_for(&fake).await.submit_backfill(&body()).await;

    let kept = ex.reason.unwrap();
    assert!(kept.starts_with("bad\\n2026-01-01"), "{kept}");
    assert!(!kept.chars().any(char::is_control), "{kept}");
    assert!(kept.chars().count() <= 501, "{}", kept.chars().count());
    assert_eq!(ex.provider_status.as_deref(), Some("-22\\nforged"));
    let error = ex.error.unwrap();
    assert!(!error.chars().any(char::is_control), "{error}");
}

#[tokio::test]
async fn a_429_or_503_keeps_its_retry_after_a_503_is_an_outage_and_both_are_back_pressure() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let client = client_for(&fake).await;
    let in_90s = (chrono::Utc::now() + chrono::Duration::seconds(90))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    fake.script_all(vec![
        Scripted::Reply {
            http: 429,
            headers: vec![("retry-after", "7".into())],
            body: "slow down".into(),
        },
        Scripted::Reply {
            http: 503,
            headers: vec![("retry-after", in_90s)],
            body: String::new(),
        },
        Scripted::Reply {
            http: 503,
            headers: vec![("retry-after", "86400".into())],
            body: String::new(),
        },
        Scripted::Status("-22", "param"),
    ]);

    let first = client.submit_backfill(&body()).await;
    let second = client.submit_backfill(&body()).await;
    let third = client.submit_backfill(&body()).await;
    let rejected = client.submit_backfill(&body()).await;

    assert_eq!(first.retry_after, Some(Duration::from_secs(7)));
    let wait = second.retry_after.unwrap();
    assert!(
        (85..=90).contains(&wait.as_secs()),
        "an HTTP-date 90 s ahead: {wait:?}"
    );
    assert_eq!(third.retry_after, Some(Duration::from_secs(600)));
    // A throttling provider is up: a 429 slows this instance down, it opens no breaker.
    assert!(!is_outage(&first) && is_outage(&second) && is_outage(&third));
    for throttled in [&first, &second, &third] {
        assert_eq!(throttled.load_signal(), Signal::BackPressure);
    }
    assert_eq!(rejected.retry_after, None);
    assert!(!is_outage(&rejected));
    assert_eq!(rejected.load_signal(), Signal::Answered);
}

#[tokio::test]
async fn a_record_with_both_currency_keys_legs_as_objects_and_unknown_fields_parses() {
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    fake.put_record(
        "o-2",
        serde_json::json!({
            "orderId": "o-2",
            "verifications": {"matched": 1, "channel": "sms", "newThing": {"a": 1}},
            "sms": {"status": -1, "settleCurrency": "USD", "currency": "EUR", "pay": "0.1",
                    "mcc": "460", "carrier": "new field"},
            "call": [{"code": "661", "rate": 0.138, "settleCurrency": null, "currency": "EUR",
                      "callDuration": "12"}],
            "extra": [1, 2]
        }),
    );

    let ex = client_for(&fake).await.lookup_record("o-2", None).await;

    assert_eq!(ex.class, Class::Success, "{ex:?}");
    let r = ex.data.unwrap();
    assert_eq!(r.verifications.unwrap().matched, Some(1));
    assert_eq!(r.sms.len(), 1);
    assert_eq!(r.sms[0].settlement.settle_currency.as_deref(), Some("USD"));
    assert_eq!(r.sms[0].mcc, Some(460));
    assert_eq!(r.call[0].settlement.settle_currency.as_deref(), Some("EUR"));
    assert_eq!(r.call[0].rate.as_deref(), Some("0.138"));
    assert_eq!(r.call[0].call_duration, Some(12));
}

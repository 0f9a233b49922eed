//! The record of one send, as the provider's `orderId/record` page describes it, parsed
//! leniently, and the provider's codes for it in words. The page's table and its example
//! disagree, and the `record` command must show what it can of any answer. It does no I/O and
//! knows nothing of signing or classification: `provider` fetches a record, [`render_record`]
//! words it for the operator, `commands` prints that.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::excerpt;

/// The `data` of a record lookup. The page's table and its example disagree in places, and a
/// debugging command must show what it can of any answer, so every field is optional and
/// lenient: numbers may arrive as strings and strings as numbers, a value of another shape is
/// read as absent, unknown fields are ignored, and a leg list may come as one object (the
/// page's prose says "returns this object", its table says JSONArray).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Record {
    pub order_id: Lenient<String>,
    pub flow_id: Lenient<i64>,
    #[serde(deserialize_with = "first_object")]
    pub verifications: Option<Verification>,
    #[serde(deserialize_with = "legs")]
    pub sms: Vec<SmsLeg>,
    #[serde(deserialize_with = "legs")]
    pub call: Vec<CallLeg>,
    #[serde(deserialize_with = "legs")]
    pub sna: Vec<SnaLeg>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Verification {
    pub matched: Lenient<i64>,
    pub verified_date: Lenient<String>,
    pub ori_receiver: Lenient<String>,
    pub channel: Lenient<String>,
    pub order_id: Lenient<String>,
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
    settle_pay: Lenient<String>,
    settle_price: Lenient<String>,
    settle_currency: Lenient<String>,
    currency: Lenient<String>,
    quote_exchange: Lenient<String>,
}

impl From<RawSettlement> for Settlement {
    fn from(raw: RawSettlement) -> Self {
        let present = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        Self {
            settle_pay: raw.settle_pay.0,
            settle_price: raw.settle_price.0,
            settle_currency: present(raw.settle_currency.0).or(present(raw.currency.0)),
            quote_exchange: raw.quote_exchange.0,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SmsLeg {
    pub submit_tm: Lenient<String>,
    pub send_tm: Lenient<String>,
    pub done_tm: Lenient<String>,
    pub mcc: Lenient<i64>,
    pub mnc: Lenient<i64>,
    pub sender: Lenient<String>,
    pub charge_cnt: Lenient<i64>,
    pub pay: Lenient<String>,
    pub status: Lenient<i64>,
    pub reason: Lenient<String>,
    #[serde(flatten)]
    pub settlement: Settlement,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct CallLeg {
    pub termination_code: Lenient<i64>,
    pub termination_reason: Lenient<String>,
    pub submit_time: Lenient<String>,
    pub call_time: Lenient<String>,
    pub ringing_time: Lenient<String>,
    pub answer_time: Lenient<String>,
    pub hangup_time: Lenient<String>,
    pub call_duration: Lenient<i64>,
    pub charged_duration: Lenient<i64>,
    pub display_num: Lenient<String>,
    /// Spelled so in the provider's table and example.
    #[serde(rename = "billPeriodstring")]
    pub bill_period: Lenient<String>,
    pub code: Lenient<String>,
    pub rate: Lenient<String>,
    pub cost: Lenient<String>,
    #[serde(flatten)]
    pub settlement: Settlement,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct SnaLeg {
    pub post_verification_time: Lenient<String>,
    pub verification_back_time: Lenient<String>,
    pub mcc: Lenient<i64>,
    pub mnc: Lenient<i64>,
    pub status: Lenient<i64>,
    pub reason: Lenient<String>,
    #[serde(flatten)]
    pub settlement: Settlement,
}

impl Verification {
    /// `matched`, in words, as the page's table lists the codes: -1 未校验, 0 校验成功,
    /// 1 发送中, 2 校验失败, 3 不存在的verificationId.
    pub fn matched_in_words(&self) -> String {
        match *self.matched {
            Some(-1) => "not checked".to_owned(),
            Some(0) => "verified".to_owned(),
            Some(1) => "sending".to_owned(),
            Some(2) => "verification failed".to_owned(),
            Some(3) => "no such verificationId".to_owned(),
            Some(other) => format!("unknown ({other})"),
            None => "not reported".to_owned(),
        }
    }
}

impl SmsLeg {
    /// `status`, in words: for an SMS, -1 means it is still being sent.
    pub fn status_in_words(&self) -> String {
        leg_status_in_words(*self.status, "sending")
    }
}

impl CallLeg {
    /// `terminationCode`, in words. The page documents 0 (success) and "any other is a
    /// failure"; which failure is the code's and `terminationReason`'s to say.
    pub fn status_in_words(&self) -> String {
        match *self.termination_code {
            Some(0) => "success".to_owned(),
            Some(_) => "failed".to_owned(),
            None => "not reported".to_owned(),
        }
    }
}

impl SnaLeg {
    /// `status`, in words: for a silent network login, -1 means it was never verified.
    pub fn status_in_words(&self) -> String {
        leg_status_in_words(*self.status, "not verified")
    }
}

/// The status codes SMS and SNA legs share; only the meaning of -1 differs between them.
fn leg_status_in_words(status: Option<i64>, pending_word: &str) -> String {
    match status {
        Some(-1) => pending_word.to_owned(),
        Some(0) => "success".to_owned(),
        Some(1) => "failure".to_owned(),
        Some(other) => format!("unknown ({other})"),
        None => "not reported".to_owned(),
    }
}

/// A scalar field read as the provider's page shows it: the page's table and its example
/// disagree on which fields are numbers, so a number may arrive as a string and a string as a
/// number. `null`, an absent field and a value of another shape (an object, an array) are all
/// `None`: one odd field must not cost the operator the rest of the record.
#[derive(Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Lenient<T>(pub Option<T>);

impl<T> std::ops::Deref for Lenient<T> {
    type Target = Option<T>;

    fn deref(&self) -> &Option<T> {
        &self.0
    }
}

impl<T: PartialEq> PartialEq<Option<T>> for Lenient<T> {
    fn eq(&self, other: &Option<T>) -> bool {
        self.0 == *other
    }
}

/// As the `Option` it stands for, so that a failed assertion or a `{:?}` reads as before.
impl<T: std::fmt::Debug> std::fmt::Debug for Lenient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Text: any scalar, written as JSON would write it.
impl<'de> Deserialize<'de> for Lenient<String> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(match Option::<Scalar>::deserialize(d)? {
            Some(Scalar::Text(s)) => Some(s),
            Some(Scalar::Int(i)) => Some(i.to_string()),
            Some(Scalar::Float(f)) => Some(f.to_string()),
            Some(Scalar::Bool(b)) => Some(b.to_string()),
            Some(Scalar::Other(_)) | None => None,
        }))
    }
}

/// An integer: a JSON integer, a whole float, or a string holding an integer.
impl<'de> Deserialize<'de> for Lenient<i64> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(match Option::<Scalar>::deserialize(d)? {
            Some(Scalar::Int(i)) => Some(i),
            Some(Scalar::Text(s)) => s.trim().parse().ok(),
            Some(Scalar::Float(f)) if f.fract() == 0.0 => Some(f as i64),
            _ => None,
        }))
    }
}

/// Whatever JSON value stands where the page puts a scalar.
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

/// A leg list: an array (elements that are not objects are dropped), one object (the page's
/// prose says "returns this object" where its table says JSONArray), or nothing.
fn legs<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
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
fn first_object<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    let mut items: Vec<T> = legs(d)?;
    Ok((!items.is_empty()).then(|| items.swap_remove(0)))
}

/// The human summary of a record: the verification, then every leg. It claims no more than the
/// provider's page: where the page names no unit or currency, neither does the summary. Every
/// text from the provider is [`excerpt::clean`]ed, so that it cannot drive the terminal.
pub fn render_record(r: &Record) -> String {
    let mut out = lines(&verification_header(r));
    each_leg(&mut out, "sms", &r.sms, sms_leg);
    each_leg(&mut out, "call", &r.call, call_leg);
    each_leg(&mut out, "sna", &r.sna, sna_leg);
    if r.sms.is_empty() && r.call.is_empty() && r.sna.is_empty() {
        out.push_str("no delivery legs reported\n");
    }
    out
}

/// A line of the summary: its label (indented under a leg's title), then what the provider said.
type Line = (&'static str, String);

/// Labels in a column of their own, so that the values line up whatever their label.
fn lines(rows: &[Line]) -> String {
    rows.iter()
        .map(|(label, value)| format!("{label:<10} {value}\n"))
        .collect()
}

/// Every leg of one kind, numbered from 1 as the operator counts them.
fn each_leg<T>(out: &mut String, kind: &str, items: &[T], leg_lines: fn(&T) -> Vec<Line>) {
    for (i, leg) in items.iter().enumerate() {
        out.push_str(&format!("{kind} #{}\n", i + 1));
        out.push_str(&lines(&leg_lines(leg)));
    }
}

fn verification_header(r: &Record) -> Vec<Line> {
    let none = Verification::default();
    let v = r.verifications.as_ref().unwrap_or(&none);
    // The page sends the order id twice, at the top and in `verifications`: either will do.
    let order = r.order_id.as_ref().or(v.order_id.as_ref()).cloned();
    let matched = format!("{} ({})", v.matched_in_words(), number(&v.matched));
    vec![
        ("order", shown(&order)),
        ("flow", number(&r.flow_id)),
        ("channel", shown(&v.channel)),
        ("receiver", shown(&v.ori_receiver)),
        ("matched", matched),
        // `verifiedDate` is the page's 校验时间, the time of the check, whatever its result.
        ("checked at", shown(&v.verified_date)),
    ]
}

fn sms_leg(s: &SmsLeg) -> Vec<Line> {
    let status = format!("{} ({})", s.status_in_words(), shown(&s.reason));
    let times = format!(
        "submitted {}, sent {}, done {}",
        shown(&s.submit_tm),
        shown(&s.send_tm),
        shown(&s.done_tm)
    );
    let sender = excerpt::clean(s.sender.as_deref().unwrap_or_default(), 64);
    let network = format!(
        "mcc {} mnc {}, sender {sender:?}",
        number(&s.mcc),
        number(&s.mnc)
    );
    let cost = format!(
        "{} in total for {} (currency not stated by the provider); {}",
        shown(&s.pay),
        counted(&s.charge_cnt, "charged part", "charged parts"),
        settled(&s.settlement)
    );
    vec![
        ("  status", status),
        ("  times", times),
        ("  network", network),
        ("  cost", cost),
    ]
}

fn call_leg(c: &CallLeg) -> Vec<Line> {
    // The page: terminationCode 0 success, any other a failure; terminationReason describes it.
    let status = match (*c.termination_code, c.termination_reason.as_deref()) {
        (Some(code), Some(why)) => {
            format!("{} (code {code}: {})", c.status_in_words(), shown_text(why))
        }
        (Some(code), None) => format!("{} (code {code})", c.status_in_words()),
        (None, _) => format!("{} ({})", c.status_in_words(), shown(&c.termination_reason)),
    };
    let times = format!(
        "submitted {}, called {}, ringing {}, answered {}, hung up {}",
        shown(&c.submit_time),
        shown(&c.call_time),
        shown(&c.ringing_time),
        shown(&c.answer_time),
        shown(&c.hangup_time)
    );
    // The page gives the durations no unit, the rate no time base, and `code` is the
    // "regional supplier" (地区供应商), not a region.
    let duration = format!(
        "call {}, charged {} (unit not stated by the provider), billing {}, display number {}",
        number(&c.call_duration),
        number(&c.charged_duration),
        shown(&c.bill_period),
        shown(&c.display_num)
    );
    let cost = format!(
        "{} USD, rate {} USD, regional supplier {}; {}",
        shown(&c.cost),
        shown(&c.rate),
        shown(&c.code),
        settled(&c.settlement)
    );
    vec![
        ("  status", status),
        ("  times", times),
        ("  duration", duration),
        ("  cost", cost),
    ]
}

fn sna_leg(s: &SnaLeg) -> Vec<Line> {
    let status = format!("{} ({})", s.status_in_words(), shown(&s.reason));
    let times = format!(
        "requested {}, answered {}",
        shown(&s.post_verification_time),
        shown(&s.verification_back_time)
    );
    let network = format!("mcc {} mnc {}", number(&s.mcc), number(&s.mnc));
    vec![
        ("  status", status),
        ("  times", times),
        ("  network", network),
        ("  cost", settled(&s.settlement)),
    ]
}

/// The settlement every leg carries, in the page's words: `settlePay` the total and
/// `settlePrice` the unit price in the settlement currency (`settleCurrency`), `quoteExchange`
/// the quoted exchange rate.
fn settled(s: &Settlement) -> String {
    let currency = shown(&s.settle_currency);
    format!(
        "settled {} {currency} in total (unit price {} {currency}, quoted exchange rate {})",
        shown(&s.settle_pay),
        shown(&s.settle_price),
        shown(&s.quote_exchange)
    )
}

/// A count with its noun in agreement ("1 charged part", "2 charged parts").
fn counted(n: &Option<i64>, one: &str, many: &str) -> String {
    match n {
        Some(1) => format!("1 {one}"),
        Some(n) => format!("{n} {many}"),
        None => format!("an unreported number of {many}"),
    }
}

/// Text from the provider for the terminal, [`excerpt::line`]d (at most 1,000 characters,
/// control and bidi characters escaped) so that it cannot drive it.
fn shown_text(text: &str) -> String {
    excerpt::line(text)
}

/// [`shown_text`], or "-" where there is none.
fn shown(text: &Option<String>) -> String {
    text.as_deref().map_or_else(|| "-".to_owned(), shown_text)
}

fn number(n: &Option<i64>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Probe {
        text: Lenient<String>,
        int: Lenient<i64>,
    }

    fn probe(json: serde_json::Value) -> (Option<String>, Option<i64>) {
        let p: Probe = serde_json::from_value(json).unwrap();
        (p.text.0, p.int.0)
    }

    #[test]
    fn lenient_reads_numbers_as_text_text_as_numbers_and_anything_else_as_absent() {
        use serde_json::json;
        let text = |s: &str| Some(s.to_owned());
        assert_eq!(probe(json!({"text": "a", "int": 7})), (text("a"), Some(7)));
        assert_eq!(
            probe(json!({"text": 12, "int": " 7 "})),
            (text("12"), Some(7))
        );
        assert_eq!(
            probe(json!({"text": 0.5, "int": 7.0})),
            (text("0.5"), Some(7))
        );
        assert_eq!(
            probe(json!({"text": true, "int": 7.5})),
            (text("true"), None)
        );
        assert_eq!(probe(json!({"text": null, "int": "x"})), (None, None));
        assert_eq!(probe(json!({"text": {}, "int": [7]})), (None, None));
        assert_eq!(probe(json!({"int": true})), (None, None));
        assert_eq!(probe(json!({})), (None, None));
    }

    #[test]
    fn each_leg_kind_words_its_own_codes() {
        let sms = |status| SmsLeg {
            status: Lenient(status),
            ..SmsLeg::default()
        };
        let sna = |status| SnaLeg {
            status: Lenient(status),
            ..SnaLeg::default()
        };
        let call = |code| CallLeg {
            termination_code: Lenient(code),
            ..CallLeg::default()
        };
        let matched = |m| Verification {
            matched: Lenient(m),
            ..Verification::default()
        };
        assert_eq!(sms(Some(-1)).status_in_words(), "sending");
        assert_eq!(sna(Some(-1)).status_in_words(), "not verified");
        assert_eq!(sms(Some(1)).status_in_words(), "failure");
        assert_eq!(sna(Some(7)).status_in_words(), "unknown (7)");
        assert_eq!(sms(None).status_in_words(), "not reported");
        assert_eq!(call(Some(0)).status_in_words(), "success");
        assert_eq!(call(Some(100_005)).status_in_words(), "failed");
        assert_eq!(call(None).status_in_words(), "not reported");
        assert_eq!(matched(Some(0)).matched_in_words(), "verified");
        assert_eq!(matched(Some(2)).matched_in_words(), "verification failed");
        assert_eq!(
            matched(Some(3)).matched_in_words(),
            "no such verificationId"
        );
        assert_eq!(matched(Some(9)).matched_in_words(), "unknown (9)");
        assert_eq!(matched(None).matched_in_words(), "not reported");
    }

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
        assert_eq!((*r.sms[0].status, *r.sms[0].mcc), (Some(0), None));
        assert_eq!(r.call.len(), 1);
        assert_eq!(r.call[0].rate.as_deref(), Some("0.1"));
        assert!(r.sna.is_empty());
        let empty: Record = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Record::default());
    }

    #[test]
    fn the_summary_lines_up_its_labels_and_numbers_each_leg_from_1() {
        let r: Record = serde_json::from_value(serde_json::json!({
            "orderId": "1234566",
            "flowId": 7,
            "verifications": {"matched": 0, "channel": "sms", "verifiedDate": "2022-07-12"},
            "sms": [
                {"status": 0, "reason": "ok", "chargeCnt": 1, "pay": "0.2", "mcc": 460, "mnc": 1,
                 "sender": "Shop", "settlePay": "0.1", "currency": "EUR"},
                {"status": -1, "chargeCnt": 3}
            ],
            "sna": {"status": -1, "mcc": "510"}
        }))
        .unwrap();

        let text = render_record(&r);

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..6],
            [
                "order      1234566",
                "flow       7",
                "channel    sms",
                "receiver   -",
                "matched    verified (0)",
                "checked at 2022-07-12",
            ],
            "{text}"
        );
        assert_eq!(lines[6], "sms #1", "{text}");
        assert_eq!(lines[7], "  status   success (ok)", "{text}");
        assert_eq!(
            lines[9], "  network  mcc 460 mnc 1, sender \"Shop\"",
            "{text}"
        );
        assert!(lines[10].starts_with("  cost     0.2 in total for 1 charged part (currency not stated by the provider); settled 0.1 EUR in total"), "{text}");
        assert_eq!(lines[11], "sms #2", "{text}");
        assert_eq!(lines[12], "  status   sending (-)", "{text}");
        assert!(text.contains("for 3 charged parts"), "{text}");
        assert!(
            text.contains("sna #1\n  status   not verified (-)\n"),
            "{text}"
        );
        assert!(!text.contains("call #"), "{text}");
        assert!(!text.contains("no delivery legs"), "{text}");
    }

    #[test]
    fn an_empty_record_says_so_and_provider_text_cannot_drive_the_terminal() {
        let empty = render_record(&Record::default());
        assert!(empty.starts_with("order      -\nflow       -\n"), "{empty}");
        assert!(empty.contains("matched    not reported (-)\n"), "{empty}");
        assert!(empty.ends_with("no delivery legs reported\n"), "{empty}");

        let r: Record = serde_json::from_value(serde_json::json!({
            "orderId": "a\u{1b}[2Jb",
            "call": [{"terminationCode": 5, "terminationReason": "x\u{202e}y"}],
            "sms": [{"sender": "\u{1b}]0;title\u{7}"}]
        }))
        .unwrap();
        let text = render_record(&r);
        assert!(
            !text
                .chars()
                .any(|c| c == '\u{1b}' || c == '\u{202e}' || c == '\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("status   failed (code 5: x"), "{text}");
    }
}

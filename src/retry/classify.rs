//! What an attempt's answer means. For its row: done, tried again after a wait, or failed
//! (the deadline is judged apart, by the database's clock, when the outcome is written). For
//! its account: whether the provider looks down (the circuit breaker counts that), and whether
//! the provider refused the account or this host, so that every further request of the run
//! would fail alike and its sending stops. The provider's status codes are read into a
//! [`Class`] by the provider layer; what to do about each class is decided here.

use std::time::Duration;

use crate::config::ProviderSettings;
use crate::provider::{Class, Exchange, Rejection, Transport};

use super::backoff::backoff;

/// What happens to the row next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Done,
    /// Due again after this wait.
    Retry(Duration),
    /// Failed for good, with a reason when the answer's own error does not say it all.
    Fail(Option<String>),
}

/// What an answer means for its row and its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub next: Next,
    /// The provider (or the way to it) looks down.
    pub outage: bool,
    /// The provider refused the account or this host: stop its sending for the run.
    pub stop: Option<Rejection>,
}

/// The settings the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts after which a transient failure fails the row; none: only the deadline ends it.
    pub max_attempts: Option<u32>,
    /// The first wait, doubled after each failure.
    pub retry_backoff: Duration,
}

impl From<&ProviderSettings> for Policy {
    fn from(p: &ProviderSettings) -> Self {
        Self {
            max_attempts: p.max_attempts,
            retry_backoff: p.retry_backoff,
        }
    }
}

/// Judges the answer to the `attempts`-th attempt of a row (1 for the first).
pub fn classify<T>(ex: &Exchange<T>, attempts: u32, policy: Policy) -> Verdict {
    let cause = ex.error.as_deref().unwrap_or("no error");
    Verdict {
        next: next(ex.class, attempts, policy, ex.retry_after, cause),
        outage: is_outage(ex),
        stop: match ex.class {
            Class::Rejected(r) if stops_the_cycle(r) => Some(r),
            _ => None,
        },
    }
}

/// The row's next step: a transient failure is tried again after the backoff (or the
/// provider's `Retry-After`, when longer) until `max_attempts`; a rejection fails it at once.
pub fn next(
    class: Class,
    attempts: u32,
    policy: Policy,
    retry_after: Option<Duration>,
    cause: &str,
) -> Next {
    match class {
        Class::Success => Next::Done,
        Class::Rejected(_) => Next::Fail(None),
        Class::Transient if policy.max_attempts.is_some_and(|max| attempts >= max) => {
            let plural = if attempts == 1 { "" } else { "s" };
            Next::Fail(Some(format!(
                "gave up after {attempts} attempt{plural}: {cause}"
            )))
        }
        Class::Transient => Next::Retry(
            backoff(policy.retry_backoff, attempts).max(retry_after.unwrap_or_default()),
        ),
    }
}

/// Whether this failure says the provider (or the way to it) is down, rather than that it
/// refused this request: no connection, a timeout, a broken connection, HTTP 5xx. A
/// rejection, a 429 or a -16 says the provider is up.
pub fn is_outage<T>(ex: &Exchange<T>) -> bool {
    matches!(
        ex.transport,
        Some(Transport::Connect | Transport::Timeout | Transport::Broken)
    ) || matches!(ex.http_status, Some(500..=599))
}

/// Whether the rejection is about the account or host rather than the one request: -1 (key,
/// secret or signature) and -2 (this host's address) fail every further request alike.
pub fn stops_the_cycle(rejection: Rejection) -> bool {
    matches!(
        rejection,
        Rejection::Authentication | Rejection::IpRestricted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(transport: Option<Transport>, http: Option<u16>) -> Exchange<()> {
        Exchange::transient_for_test(transport, http)
    }

    const POLICY: Policy = Policy {
        max_attempts: Some(3),
        retry_backoff: Duration::from_secs(1),
    };

    #[test]
    fn outages_are_no_connection_a_timeout_a_broken_link_and_5xx_not_429() {
        for t in [Transport::Connect, Transport::Timeout, Transport::Broken] {
            assert!(is_outage(&exchange(Some(t), None)), "{t:?}");
        }
        assert!(!is_outage(&exchange(Some(Transport::Local), None)));
        for http in [500, 502, 503, 504, 599] {
            assert!(is_outage(&exchange(None, Some(http))), "{http}");
        }
        for http in [200, 302, 400, 401, 403, 404, 408, 429] {
            assert!(!is_outage(&exchange(None, Some(http))), "{http}");
        }
    }

    #[test]
    fn only_a_rejection_of_the_account_or_host_stops_the_cycle() {
        assert!(stops_the_cycle(Rejection::Authentication));
        assert!(stops_the_cycle(Rejection::IpRestricted));
        assert!(!stops_the_cycle(Rejection::Parameters));
        assert!(!stops_the_cycle(Rejection::Other));
    }

    #[test]
    fn a_transient_failure_is_retried_until_max_attempts_then_fails_with_its_cause() {
        for attempts in 1..3 {
            let Next::Retry(wait) = next(Class::Transient, attempts, POLICY, None, "HTTP 503")
            else {
                panic!("attempt {attempts} is retried");
            };
            assert!(wait <= Duration::from_secs(1 << (attempts - 1)), "{wait:?}");
        }
        assert_eq!(
            next(Class::Transient, 3, POLICY, None, "HTTP 503"),
            Next::Fail(Some("gave up after 3 attempts: HTTP 503".into()))
        );
        let once = Policy {
            max_attempts: Some(1),
            ..POLICY
        };
        assert_eq!(
            next(Class::Transient, 1, once, None, "timed out"),
            Next::Fail(Some("gave up after 1 attempt: timed out".into()))
        );
    }

    #[test]
    fn without_max_attempts_only_the_deadline_ends_the_retries() {
        let endless = Policy {
            max_attempts: None,
            ..POLICY
        };
        assert!(matches!(
            next(Class::Transient, 1_000, endless, None, "x"),
            Next::Retry(_)
        ));
    }

    #[test]
    fn the_providers_retry_after_is_waited_when_longer_than_the_backoff() {
        let asked = Duration::from_secs(120);
        assert_eq!(
            next(Class::Transient, 1, POLICY, Some(asked), "HTTP 429"),
            Next::Retry(asked)
        );
    }

    #[test]
    fn success_is_done_and_a_rejection_fails_at_once_stopping_only_for_the_account() {
        let mut ex = exchange(None, Some(200));
        ex.class = Class::Success;
        assert_eq!(
            classify(&ex, 1, POLICY),
            Verdict {
                next: Next::Done,
                outage: false,
                stop: None
            }
        );
        ex.class = Class::Rejected(Rejection::Authentication);
        let v = classify(&ex, 1, POLICY);
        assert_eq!(v.next, Next::Fail(None));
        assert_eq!(v.stop, Some(Rejection::Authentication));
        ex.class = Class::Rejected(Rejection::Parameters);
        assert_eq!(classify(&ex, 1, POLICY).stop, None);
    }
}

//! Retries: the `retry` table of a source config, the exponential backoff with jitter it
//! implies, and how long a server asked us to wait.
//!
//! A server-given wait wins over our own backoff: a `429` with `rateLimit-reset: 12` means the
//! budget is back in 12 s, and retrying sooner only burns another request of it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a source retries a failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// How many times a request is tried in all, the first try included, before its window
    /// fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The pause before the first retry; it doubles with every further retry (with jitter),
    /// unless the server says how long to wait.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub initial_backoff: Duration,
    /// The longest pause between two tries that chatlake picks itself.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl RetryPolicy {
    /// Checks the policy; on error returns the offending key (relative to the `retry` table)
    /// and a message.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_attempts == 0 {
            return Err(("max_attempts", "must be at least 1 (the first try)".into()));
        }
        if self.initial_backoff > self.max_backoff {
            return Err((
                "initial_backoff",
                format!(
                    "must not be longer than max_backoff ({})",
                    humantime::format_duration(self.max_backoff)
                ),
            ));
        }
        Ok(())
    }

    /// True if a request that has been tried `attempts` times may be tried again.
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }

    /// The pause before retry number `retry` (1 for the first retry): the server's wait if it
    /// gave one, else exponential backoff with jitter.
    pub fn delay(&self, retry: u32, server_wait: Option<Duration>) -> Duration {
        match server_wait {
            Some(wait) => wait,
            None => self.backoff_with_jitter(retry, rand::random_range(0.0..=1.0)),
        }
    }

    /// The backoff ceiling of retry number `retry`: `initial_backoff * 2^(retry-1)`, capped at
    /// `max_backoff`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff)
    }

    /// "Equal jitter": half the ceiling for sure, plus `jitter` (0..=1) of the other half, so
    /// clients that failed together do not retry together, yet each still backs off.
    pub fn backoff_with_jitter(&self, retry: u32, jitter: f64) -> Duration {
        let ceiling = self.backoff(retry);
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// How long the server asked us to wait, from (in this order) `Retry-After` (seconds, an HTTP
/// date or an RFC 3339 time), `rateLimit-reset` (seconds until the budget resets, LINE WORKS)
/// or `X-RateLimit-Reset` (seconds, or a Unix time). Header names are case-insensitive.
pub fn server_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(wait) = text("retry-after").and_then(|v| parse_retry_after(v, now)) {
        return Some(wait);
    }
    if let Some(wait) = text("ratelimit-reset").and_then(parse_seconds) {
        return Some(wait);
    }
    let reset = text("x-ratelimit-reset")?;
    let seconds = reset.trim().parse::<f64>().ok()?;
    // Some providers send the Unix time of the reset rather than the seconds until it.
    if seconds > 1_000_000_000.0 {
        let at = DateTime::<Utc>::from_timestamp(seconds as i64, 0)?;
        return Some((at - now).to_std().unwrap_or(Duration::ZERO));
    }
    parse_seconds(reset)
}

/// A `Retry-After` value: delta seconds, an HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`) or an
/// RFC 3339 time. A time in the past means "now".
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Some(wait) = parse_seconds(value) {
        return Some(wait);
    }
    let at = DateTime::parse_from_rfc2822(value)
        .or_else(|_| DateTime::parse_from_rfc3339(value))
        .ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

fn parse_seconds(value: &str) -> Option<Duration> {
    let seconds = value.trim().parse::<f64>().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn defaults_and_humantime_strings() {
        let p: RetryPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, RetryPolicy::default());
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.initial_backoff, secs(1));
        assert_eq!(p.max_backoff, secs(60));
        let p: RetryPolicy =
            serde_json::from_str(r#"{"initial_backoff":"250ms","max_backoff":"2m"}"#).unwrap();
        assert_eq!(p.initial_backoff, Duration::from_millis(250));
        assert_eq!(p.max_backoff, secs(120));
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"max_attempt":3}"#).is_err());
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"max_backoff":"soon"}"#).is_err());
        let schema = serde_json::to_value(schemars::schema_for!(RetryPolicy)).unwrap();
        assert_eq!(schema["properties"]["initial_backoff"]["default"], "1s");
        assert_eq!(schema["properties"]["initial_backoff"]["type"], "string");
        assert_eq!(schema["properties"]["max_backoff"]["default"], "1m");
    }

    #[test]
    fn checks_its_values() {
        let mut p = RetryPolicy::default();
        assert!(p.check().is_ok());
        p.max_attempts = 0;
        assert_eq!(p.check().unwrap_err().0, "max_attempts");
        p.max_attempts = 1;
        p.initial_backoff = secs(120);
        assert_eq!(p.check().unwrap_err().0, "initial_backoff");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let ceilings: Vec<u64> = (1..=8).map(|r| p.backoff(r).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.backoff(1000), secs(60), "no overflow");
        assert_eq!(p.backoff_with_jitter(3, 0.0), secs(2));
        assert_eq!(p.backoff_with_jitter(3, 1.0), secs(4));
        for _ in 0..100 {
            let d = p.delay(4, None);
            assert!(d >= secs(4) && d <= secs(8), "{d:?}");
        }
        assert!(p.may_retry(4));
        assert!(!p.may_retry(5));
    }

    #[test]
    fn a_server_wait_wins_over_backoff() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, Some(secs(30))), secs(30));
        assert_eq!(p.delay(7, Some(Duration::ZERO)), Duration::ZERO);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn reads_every_kind_of_server_wait() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:30Z")
            .unwrap()
            .with_timezone(&Utc);
        // LINE WORKS spells it `rateLimit-reset`; names are case-insensitive on the wire.
        let lw = headers(&[("rateLimit-Reset", "12"), ("rateLimit-limit", "10")]);
        assert_eq!(server_wait(&lw, now), Some(secs(12)));
        assert_eq!(
            server_wait(&headers(&[("RATELIMIT-RESET", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            server_wait(&headers(&[("Retry-After", "7")]), now),
            Some(secs(7))
        );
        assert_eq!(
            server_wait(
                &headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
                now
            ),
            Some(secs(30))
        );
        assert_eq!(
            server_wait(&headers(&[("retry-after", "2015-10-21T07:28:10Z")]), now),
            Some(secs(40))
        );
        assert_eq!(
            server_wait(
                &headers(&[("retry-after", "Wed, 21 Oct 2015 07:00:00 GMT")]),
                now
            ),
            Some(Duration::ZERO),
            "a time in the past means now"
        );
        assert_eq!(
            server_wait(&headers(&[("x-ratelimit-reset", "1445412470")]), now),
            Some(secs(20)),
            "a Unix time"
        );
        assert_eq!(server_wait(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(
            server_wait(&headers(&[("ratelimit-reset", "-3")]), now),
            None
        );
        assert_eq!(server_wait(&HeaderMap::new(), now), None);
        // Retry-After wins when both are present.
        assert_eq!(
            server_wait(
                &headers(&[("ratelimit-reset", "9"), ("retry-after", "2")]),
                now
            ),
            Some(secs(2))
        );
    }
}

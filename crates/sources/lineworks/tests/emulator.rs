//! The LINE WORKS source against the real emulator over loopback HTTP: token flow, `%2B` on the
//! wire, 302 to a one-time file URL, trailers, 429/500 retries, token refresh, one download at a
//! time per domain, and a refused window that fails alone. Rows are compared byte for byte with
//! the emulator's own dataset (`messages_between`).

// `allow-unwrap-in-tests` covers `#[test]` functions only, not the helpers they share.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arrow::array::AsArray;
use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_core::stage::{EmulatorProfile, Output, RunInfo};
use chatlake_core::{BuildContext, Event, Secret, Source, SourceConfig, SourceContext, WindowRef};
use chatlake_emulator::lineworks::data::messages_between;
use chatlake_emulator::{Emulator, EmulatorConfig};
use chatlake_source_lineworks::{LineworksSourceConfig, RECORD_TYPE};
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const SEED: u64 = 7;
const SCALE: f64 = 1.0;
/// Fast retries for tests; the emulator's 429 carries its own `rateLimit-reset`.
fn fast_retry() -> Value {
    json!({"max_attempts": 5, "initial_backoff": "10ms", "max_backoff": "100ms"})
}

async fn emulator(faults: &str) -> Emulator {
    Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorConfig {
            seed: SEED,
            scale: SCALE,
            faults: faults.parse().unwrap(),
        },
    )
    .await
    .unwrap()
}

fn profile(em: &Emulator) -> EmulatorProfile {
    EmulatorProfile {
        root: em.base_url(),
        credentials: em
            .credentials()
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect(),
    }
}

fn build_context(name: &str, emulator: Option<EmulatorProfile>) -> BuildContext {
    BuildContext {
        name: name.into(),
        pipeline: "test".into(),
        emulator,
        start: None,
        end: None,
        now: Utc::now(),
        ..BuildContext::default()
    }
}

fn build(options: Value, cx: &BuildContext) -> Box<dyn Source> {
    let config: LineworksSourceConfig = serde_json::from_value(options).unwrap();
    config.build(cx).unwrap()
}

/// What one run of a source sent.
struct Run {
    rows: Vec<[String; 5]>,
    done: Vec<WindowRef>,
    failed: Vec<WindowRef>,
    result: chatlake_core::Result<()>,
    metrics: Arc<ComponentMetrics>,
    dead_letters: u64,
}

async fn run(source: Box<dyn Source>, name: &str) -> Run {
    let (tx, mut rx) = mpsc::channel(8);
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(ComponentMetrics::default());
    let dead_letters = DeadLetters::in_dir(dir.path());
    let cx = SourceContext {
        name: name.into(),
        out: Output::for_test(name, tx),
        metrics: metrics.clone(),
        dead_letters: dead_letters.clone(),
        run: Arc::new(RunInfo {
            pipeline: "test".into(),
            run_id: "run-1".into(),
            started_at: Utc::now(),
        }),
        windows_at_once: 2,
    };
    let task = tokio::spawn(source.run(cx));
    let mut out = Run {
        rows: Vec::new(),
        done: Vec::new(),
        failed: Vec::new(),
        result: Ok(()),
        metrics,
        dead_letters: 0,
    };
    while let Some(event) = rx.recv().await {
        match event {
            Event::Batch(b) => {
                assert_eq!(
                    chatlake_core::schema::record_type(&b.data.schema()),
                    Some(RECORD_TYPE)
                );
                for r in 0..b.num_rows() {
                    out.rows.push(std::array::from_fn(|c| {
                        b.data.column(c).as_string::<i32>().value(r).to_string()
                    }));
                }
            }
            Event::WindowDone(w) => out.done.push(w),
            Event::WindowFailed(w) => out.failed.push(w),
        }
    }
    out.result = task.await.unwrap();
    out.dead_letters = dead_letters.count();
    out
}

fn time(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

/// The rows the emulator serves for `[start, end]`, as the CSV writes them (local times in
/// start's offset).
fn expected(
    start: DateTime<FixedOffset>,
    end: DateTime<FixedOffset>,
    keep: impl Fn(bool) -> bool,
) -> Vec<[String; 5]> {
    let offset = *start.offset();
    messages_between(SEED, SCALE, start.to_utc(), end.to_utc())
        .filter(|m| keep(m.is_bot))
        .map(|m| {
            [
                m.at.with_timezone(&offset)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
                m.sender,
                m.recipient,
                m.room_id,
                m.text,
            ]
        })
        .collect()
}

fn assert_rows_equal(got: &[[String; 5]], want: &[[String; 5]]) {
    assert!(!want.is_empty(), "the test range should hold messages");
    assert_eq!(got.len(), want.len(), "row count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "row {i} differs");
    }
}

fn labels(windows: &[WindowRef]) -> Vec<&str> {
    windows.iter().map(|w| w.label.as_str()).collect()
}

const START: &str = "2025-01-01T00:00:00+09:00";
const END: &str = "2025-01-03T23:59:59+09:00";

fn three_days(extra: Value) -> Value {
    let mut options = json!({
        "start": START, "end": END, "window_days": 1, "language": "ja_JP",
        "requests_per_minute": 6000, "retry": fast_retry(),
    });
    for (k, v) in extra.as_object().unwrap() {
        options[k] = v.clone();
    }
    options
}

#[tokio::test]
async fn service_account_downloads_every_window_byte_exact() {
    let em = emulator("lineworks.rate_limit_per_min=0").await;
    let cx = build_context("lw", Some(profile(&em)));
    let source = build(three_days(json!({})), &cx);
    let plan = source.plan().unwrap();
    assert!(
        plan[0]
            .request
            .contains("startTime=2025-01-01T00:00:00%2B09:00")
    );
    let run = run(source, "lw").await;
    run.result.unwrap();

    assert_rows_equal(&run.rows, &expected(time(START), time(END), |_| true));
    assert!(run.failed.is_empty());
    assert_eq!(
        labels(&run.done),
        [
            "2025-01-01T00:00:00+09:00..2025-01-01T23:59:59+09:00",
            "2025-01-02T00:00:00+09:00..2025-01-02T23:59:59+09:00",
            "2025-01-03T00:00:00+09:00..2025-01-03T23:59:59+09:00",
        ]
    );
    assert!(
        run.done
            .iter()
            .all(|w| w.utc_offset.local_minus_utc() == 9 * 3600)
    );
    assert_eq!(run.dead_letters, 0);

    let stats = em.stats().lineworks;
    // The `+` went out as %2B: a literal `+` would have been a space and a 400.
    assert_eq!(stats.bad_requests, 0);
    assert_eq!(stats.token_requests, 1, "one token, cached");
    assert_eq!(stats.download_requests, 3);
    assert_eq!(stats.files_served, 3);
    assert_eq!(stats.unauthorized, 0);
    assert_eq!(stats.max_concurrent_downloads, 1);
    assert_eq!(stats.concurrent_rejections, 0);
    let m = run
        .metrics
        .summarize("lw", "source", "lineworks_message_contents", 0.0);
    assert_eq!(m.requests, 6, "3 download requests + 3 file GETs");
    assert_eq!(m.retries, 0);
    assert!(m.bytes > 100_000, "{} bytes", m.bytes);
    em.shutdown().await;
}

#[tokio::test]
async fn trailers_are_retried_with_a_new_url_and_never_leak_rows() {
    let em = emulator("lineworks.trailer=2,lineworks.rate_limit_per_min=0").await;
    let cx = build_context("lw", Some(profile(&em)));
    let run = run(build(three_days(json!({})), &cx), "lw").await;
    run.result.unwrap();
    // Every row exactly once: none of the three broken files reached the output.
    assert_rows_equal(&run.rows, &expected(time(START), time(END), |_| true));
    assert_eq!(run.done.len(), 3);
    assert!(run.failed.is_empty());
    let stats = em.stats().lineworks;
    assert_eq!(stats.trailers_served, 3, "the 1st, 3rd and 5th files");
    assert_eq!(stats.download_requests, 6, "a new URL for every attempt");
    assert_eq!(stats.files_served, 6);
    assert_eq!(stats.concurrent_rejections, 0);
    let m = run.metrics.summarize("lw", "source", "", 0.0);
    assert_eq!(m.retries, 3);
    em.shutdown().await;
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let em =
        emulator("lineworks.rate_limit=3,lineworks.server_error=4,lineworks.rate_limit_per_min=0")
            .await;
    let cx = build_context("lw", Some(profile(&em)));
    let run = run(build(three_days(json!({})), &cx), "lw").await;
    run.result.unwrap();
    assert_rows_equal(&run.rows, &expected(time(START), time(END), |_| true));
    assert_eq!(run.done.len(), 3);
    assert!(run.failed.is_empty());
    let stats = em.stats().lineworks;
    assert!(stats.rate_limited >= 1, "{stats:?}");
    assert!(stats.server_errors >= 1, "{stats:?}");
    assert_eq!(stats.files_served, 3);
    let m = run.metrics.summarize("lw", "source", "", 0.0);
    assert_eq!(m.retries, stats.rate_limited + stats.server_errors);
    em.shutdown().await;
}

#[tokio::test]
async fn two_sources_of_one_domain_never_download_at_once() {
    let em = emulator("lineworks.rate_limit_per_min=0,lineworks.slow_ms=5").await;
    let a = build(
        three_days(json!({})),
        &build_context("lw_a", Some(profile(&em))),
    );
    let b = build(
        three_days(json!({"language": "en_US", "bot_messages": "exclude"})),
        &build_context("lw_b", Some(profile(&em))),
    );
    let (ra, rb) = tokio::join!(run(a, "lw_a"), run(b, "lw_b"));
    ra.result.unwrap();
    rb.result.unwrap();
    assert_rows_equal(&ra.rows, &expected(time(START), time(END), |_| true));
    assert_rows_equal(&rb.rows, &expected(time(START), time(END), |bot| !bot));
    let stats = em.stats().lineworks;
    assert_eq!(stats.files_served, 6);
    assert_eq!(stats.max_concurrent_downloads, 1, "{stats:?}");
    assert_eq!(stats.concurrent_rejections, 0, "{stats:?}");
    em.shutdown().await;
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_before_they_expire() {
    // Each one-day window streams 24 hourly chunks 30 ms apart, so the four windows span more
    // than one 2 s token lifetime.
    let em =
        emulator("lineworks.token_ttl_s=2,lineworks.rate_limit_per_min=0,lineworks.slow_ms=30")
            .await;
    let cx = build_context("lw", Some(profile(&em)));
    let end = "2025-01-04T23:59:59+09:00";
    let options = three_days(json!({"end": end}));
    let run = run(build(options, &cx), "lw").await;
    run.result.unwrap();
    assert_rows_equal(&run.rows, &expected(time(START), time(end), |_| true));
    assert_eq!(run.done.len(), 4);
    let stats = em.stats().lineworks;
    assert!(stats.token_requests >= 2, "{stats:?}");
    assert_eq!(
        stats.unauthorized, 0,
        "refreshed ahead of expiry: {stats:?}"
    );
    em.shutdown().await;
}

#[tokio::test]
async fn a_refused_token_is_replaced_once_then_the_window_fails() {
    // `token_ttl_s=0` issues tokens that are already expired: every API call answers 401.
    let em = emulator("lineworks.token_ttl_s=0,lineworks.rate_limit_per_min=0").await;
    let cx = build_context("lw", Some(profile(&em)));
    let options = three_days(json!({"end": "2025-01-02T23:59:59+09:00"}));
    let run = run(build(options, &cx), "lw").await;
    // Not fatal: a service account can still get good tokens for later windows.
    run.result.unwrap();
    assert!(run.rows.is_empty());
    assert!(run.done.is_empty());
    assert_eq!(run.failed.len(), 2);
    let stats = em.stats().lineworks;
    assert_eq!(
        stats.token_requests, 4,
        "one new token per window: {stats:?}"
    );
    assert_eq!(stats.download_requests, 4, "{stats:?}");
    assert_eq!(stats.files_served, 0);
    em.shutdown().await;
}

#[tokio::test]
async fn a_refused_window_fails_alone_and_the_run_goes_on() {
    // The emulator answers 400 INVALID_PARAMETER to a time it cannot read: year -1 is written
    // `-0001-…`. The next window (year 0) is an ordinary one.
    let em = emulator("lineworks.rate_limit_per_min=0").await;
    let mut cx = build_context("lw", Some(profile(&em)));
    let offset = FixedOffset::east_opt(0).unwrap();
    let day = |y, m, d, h, mi, s| {
        let naive = NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap();
        offset.from_local_datetime(&naive).unwrap()
    };
    cx.start = Some(day(-1, 12, 31, 0, 0, 0));
    cx.end = Some(day(0, 1, 1, 23, 59, 59));
    let options = json!({"window_days": 1, "requests_per_minute": 6000, "retry": fast_retry()});
    let run = run(build(options, &cx), "lw").await;
    run.result.unwrap();
    assert_eq!(
        labels(&run.failed),
        ["-0001-12-31T00:00:00+00:00..-0001-12-31T23:59:59+00:00"]
    );
    assert_eq!(
        labels(&run.done),
        ["0000-01-01T00:00:00+00:00..0000-01-01T23:59:59+00:00"]
    );
    assert_rows_equal(
        &run.rows,
        &expected(day(0, 1, 1, 0, 0, 0), day(0, 1, 1, 23, 59, 59), |_| true),
    );
    let stats = em.stats().lineworks;
    assert_eq!(stats.bad_requests, 1, "a 400 is not retried: {stats:?}");
    assert_eq!(stats.download_requests, 2);
    em.shutdown().await;
}

#[tokio::test]
async fn a_bearer_token_and_a_negative_offset() {
    let em = emulator("lineworks.rate_limit_per_min=0").await;
    let token = em
        .credentials()
        .into_iter()
        .find(|(k, _)| k == "lineworks.token")
        .unwrap()
        .1;
    let start = "2025-06-30T20:00:00-05:00";
    let end = "2025-07-01T08:00:00-05:00";
    let options = json!({
        "base_url": format!("{}/v1.0", em.base_url()),
        "auth": {"type": "bearer", "token": token},
        "download_hosts": [em.lineworks_download_host()],
        "start": start, "end": end, "bot_messages": "only", "domain_id": 10000001,
        "requests_per_minute": 6000, "retry": fast_retry(),
    });
    let run = run(build(options, &build_context("lw", None)), "lw").await;
    run.result.unwrap();
    assert_rows_equal(&run.rows, &expected(time(start), time(end), |bot| bot));
    assert!(run.rows.iter().all(|r| r[1].starts_with("[Bot]")));
    assert_eq!(run.done[0].utc_offset.local_minus_utc(), -5 * 3600);
    let stats = em.stats().lineworks;
    assert_eq!(stats.token_requests, 0);
    assert_eq!(stats.bad_requests, 0);
    em.shutdown().await;
}

#[tokio::test]
async fn a_wrong_static_token_stops_the_source() {
    let em = emulator("lineworks.rate_limit_per_min=0").await;
    let options = json!({
        "base_url": format!("{}/v1.0", em.base_url()),
        "auth": {"type": "bearer", "token": "not-the-token"},
        "start": START, "end": END, "window_days": 1,
        "requests_per_minute": 6000, "retry": fast_retry(),
    });
    let run = run(build(options, &build_context("lw", None)), "lw").await;
    let error = run.result.unwrap_err().to_string();
    assert!(error.contains("HTTP 401 UNAUTHORIZED"), "{error}");
    assert!(error.contains("remaining windows are not tried"), "{error}");
    assert!(
        !error.contains("not-the-token"),
        "no secrets in errors: {error}"
    );
    assert_eq!(run.failed.len(), 1);
    assert_eq!(em.stats().lineworks.download_requests, 1);
    em.shutdown().await;
}

#[tokio::test]
async fn a_wrong_client_secret_stops_the_source_without_leaking_it() {
    let em = emulator("lineworks.rate_limit_per_min=0").await;
    let mut p = profile(&em);
    p.credentials.insert(
        "lineworks.client_secret".into(),
        Secret::new("wrong-secret-value"),
    );
    let run = run(
        build(three_days(json!({})), &build_context("lw", Some(p))),
        "lw",
    )
    .await;
    let error = run.result.unwrap_err().to_string();
    assert!(error.contains("POST"), "{error}");
    assert!(error.contains("/oauth2/v2.0/token"), "{error}");
    assert!(error.contains("invalid_client"), "{error}");
    assert!(!error.contains("wrong-secret-value"), "{error}");
    assert_eq!(run.failed.len(), 1);
    assert_eq!(em.stats().lineworks.download_requests, 0);
    em.shutdown().await;
}

#[tokio::test]
async fn the_file_host_gets_the_token_only_when_listed() {
    let em = emulator("lineworks.rate_limit_per_min=0").await;
    // Under `--emulate` the file host (another port) is listed for the source: every download
    // crosses to it with the token.
    let cx = build_context("lw", Some(profile(&em)));
    let run_ok = run(build(three_days(json!({})), &cx), "lw").await;
    run_ok.result.unwrap();
    let stats = em.stats().lineworks;
    assert_ne!(em.lineworks_files_url(), em.base_url());
    assert_eq!(stats.files_served, 3);
    assert_eq!(stats.file_requests, 3);
    assert_eq!(stats.file_requests_with_authorization, 3);

    // Configured by hand without the file host (the default lists only LINE WORKS' real one):
    // the redirect is refused before anything goes there, and the source stops.
    let em = emulator("lineworks.rate_limit_per_min=0").await;
    let token = em
        .credentials()
        .into_iter()
        .find(|(k, _)| k == "lineworks.token")
        .unwrap()
        .1;
    let options = three_days(json!({
        "base_url": format!("{}/v1.0", em.base_url()),
        "auth": {"type": "bearer", "token": token},
    }));
    let refused = run(build(options, &build_context("lw", None)), "lw").await;
    let error = refused.result.unwrap_err().to_string();
    let host = em.lineworks_download_host();
    assert!(error.contains(&format!("`{host}`")), "{error}");
    assert!(error.contains("`download_hosts`"), "{error}");
    assert!(error.contains("remaining windows are not tried"), "{error}");
    assert!(!error.contains(&token), "{error}");
    assert_eq!(refused.failed.len(), 1);
    assert!(refused.rows.is_empty());
    let stats = em.stats().lineworks;
    assert_eq!(stats.download_requests, 1);
    assert_eq!(stats.file_requests, 0, "the unlisted host is not asked");
    assert_eq!(stats.file_requests_with_authorization, 0);
    em.shutdown().await;
}

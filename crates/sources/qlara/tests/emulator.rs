//! The Qlara source against the real emulator over loopback HTTP: the export flow, checkpoints
//! reported as soon as a job is accepted, resuming a known export id instead of submitting, and
//! the API key never sent to the signed URL. Rows are compared with the emulator's own data.

// `allow-unwrap-in-tests` covers `#[test]` functions only, not the helpers they share.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray};
use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_core::stage::{EmulatorProfile, Output, RunInfo};
use chatlake_core::{BuildContext, Event, Secret, Source, SourceContext, WindowRef};
use chatlake_emulator::qlara::data::export_rows_secs;
use chatlake_emulator::{Emulator, EmulatorConfig};
use chatlake_source_qlara::{ExportCheckpoint, QlaraSource, QlaraSourceConfig, RECORD_TYPE};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const SEED: u64 = 42;

async fn emulator(faults: &str) -> Emulator {
    Emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorConfig {
            seed: SEED,
            scale: 1.0,
            faults: faults.parse().unwrap(),
        },
    )
    .await
    .unwrap()
}

fn cx(emulator: &Emulator) -> BuildContext {
    BuildContext {
        name: "sms".into(),
        pipeline: "test".into(),
        emulator: Some(EmulatorProfile {
            root: emulator.base_url(),
            credentials: emulator
                .credentials()
                .into_iter()
                .map(|(k, v)| (k, Secret::new(v)))
                .collect(),
        }),
        now: Utc::now(),
        ..BuildContext::default()
    }
}

fn options() -> Value {
    json!({
        "start": "2025-02-01T00:00:00+01:00",
        "end": "2025-02-02T23:59:59+01:00",
        "window_days": 1,
        "poll_interval": "10ms",
        "export_timeout": "2s",
        "retry": {"max_attempts": 5, "initial_backoff": "10ms", "max_backoff": "50ms"},
    })
}

fn build(options: Value, cx: &BuildContext) -> QlaraSource {
    let config: QlaraSourceConfig = serde_json::from_value(options).unwrap();
    config.check(cx).unwrap()
}

struct Run {
    ids: Vec<String>,
    done: Vec<WindowRef>,
    failed: Vec<WindowRef>,
    result: chatlake_core::Result<()>,
}

async fn run(source: QlaraSource) -> Run {
    let (tx, mut rx) = mpsc::channel(8);
    let dir = tempfile::tempdir().unwrap();
    let cx = SourceContext {
        name: "sms".into(),
        out: Output::for_test("sms", tx),
        metrics: Arc::new(ComponentMetrics::default()),
        dead_letters: DeadLetters::in_dir(dir.path()),
        run: Arc::new(RunInfo {
            pipeline: "test".into(),
            run_id: "run-1".into(),
            started_at: Utc::now(),
        }),
        windows_at_once: 2,
    };
    let task = tokio::spawn(Box::new(source).run(cx));
    let mut out = Run {
        ids: Vec::new(),
        done: Vec::new(),
        failed: Vec::new(),
        result: Ok(()),
    };
    while let Some(event) = rx.recv().await {
        match event {
            Event::Batch(b) => {
                assert_eq!(
                    chatlake_core::schema::record_type(&b.data.schema()),
                    Some(RECORD_TYPE)
                );
                let ids = b
                    .data
                    .column_by_name("messageId")
                    .unwrap()
                    .as_string::<i32>();
                out.ids
                    .extend((0..ids.len()).map(|i| ids.value(i).to_string()));
            }
            Event::WindowDone(w) => out.done.push(w),
            Event::WindowFailed(w) => out.failed.push(w),
        }
    }
    out.result = task.await.unwrap();
    out
}

fn secs(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp()
}

/// Every row the two one-day exports hold (in-flight versions included).
fn expected_ids() -> Vec<String> {
    let mut ids = Vec::new();
    for (a, b) in [
        ("2025-02-01T00:00:00+01:00", "2025-02-01T23:59:59+01:00"),
        ("2025-02-02T00:00:00+01:00", "2025-02-02T23:59:59+01:00"),
    ] {
        ids.extend(
            export_rows_secs(SEED, 1.0, secs(a), secs(b), None, None)
                .into_iter()
                .map(|r| r.message_id),
        );
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_every_window_and_reports_each_export_id_when_accepted() {
    let em = emulator("qlara.job_polls=2").await;
    let seen: Arc<Mutex<Vec<ExportCheckpoint>>> = Arc::default();
    let hook = seen.clone();
    let source = build(options(), &cx(&em))
        .on_export_accepted(move |c| hook.lock().unwrap().push(c.clone()));
    let windows: Vec<String> = source.api_windows().iter().map(|w| w.key()).collect();
    let checkpoints = source.checkpoints();
    let out = run(source).await;
    out.result.unwrap();
    assert_eq!(out.done.len(), 2);
    assert!(out.failed.is_empty());
    let mut ids = out.ids;
    ids.sort();
    assert_eq!(ids, expected_ids());

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen.iter()
            .map(|c| c.window_key.clone())
            .collect::<Vec<_>>(),
        windows
    );
    assert_eq!(*checkpoints.lock().unwrap(), seen);
    let stats = em.stats().qlara;
    assert_eq!(stats.exports_submitted, 2);
    assert_eq!(stats.signed_url_requests_with_key, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_export_id_is_polled_instead_of_submitted_again() {
    let em = emulator("").await;
    // A first run records the export ids...
    let first = build(options(), &cx(&em));
    let checkpoints = first.checkpoints();
    run(first).await.result.unwrap();
    let known: HashMap<String, String> = checkpoints
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.window_key.clone(), c.export_id.clone()))
        .collect();
    assert_eq!(known.len(), 2);
    assert_eq!(em.stats().qlara.exports_submitted, 2);

    // ...and a second run given them back submits nothing new.
    let second = build(options(), &cx(&em)).with_known_exports(known);
    let out = run(second).await;
    out.result.unwrap();
    assert_eq!(out.done.len(), 2);
    let mut ids = out.ids;
    ids.sort();
    assert_eq!(ids, expected_ids());
    assert_eq!(em.stats().qlara.exports_submitted, 2, "no new export");

    // An id the provider does not know is replaced by a fresh export.
    let stale: HashMap<String, String> = build(options(), &cx(&em))
        .api_windows()
        .iter()
        .map(|w| (w.key(), "no-such-export".to_string()))
        .collect();
    let out = run(build(options(), &cx(&em)).with_known_exports(stale)).await;
    out.result.unwrap();
    assert_eq!(out.done.len(), 2);
    assert_eq!(em.stats().qlara.exports_submitted, 4);
    assert_eq!(em.stats().qlara.signed_url_requests_with_key, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_whose_export_keeps_failing_fails_alone() {
    // Every job fails; with no resubmits left both windows fail, and the source goes on.
    let em = emulator("qlara.fail_job=1").await;
    let mut o = options();
    o["max_resubmits"] = json!(1);
    let out = run(build(o, &cx(&em))).await;
    out.result.unwrap();
    assert_eq!(out.failed.len(), 2);
    assert!(out.ids.is_empty());
    assert_eq!(em.stats().qlara.exports_submitted, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_stops_the_source() {
    let em = emulator("").await;
    let mut c = cx(&em);
    c.emulator
        .as_mut()
        .unwrap()
        .credentials
        .insert("qlara.api_key".into(), Secret::new("wrong"));
    let out = run(build(options(), &c)).await;
    let e = out.result.unwrap_err().to_string();
    assert!(e.contains("401"), "{e}");
    assert!(!e.contains("wrong"), "no key in errors: {e}");
    assert_eq!(out.failed.len(), 1, "the remaining windows are not tried");
}

//! `files = [globs]`: CSV files downloaded by hand load like API downloads, one window per file,
//! with no credentials.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use arrow::array::AsArray;
use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_core::stage::{Output, RunInfo};
use chatlake_core::{BuildContext, Event, Source, SourceConfig, SourceContext};
use chatlake_source_lineworks::LineworksSourceConfig;
use chrono::Utc;
use serde_json::json;
use tokio::sync::mpsc;

fn build(options: serde_json::Value) -> Box<dyn Source> {
    let config: LineworksSourceConfig = serde_json::from_value(options).unwrap();
    config
        .build(&BuildContext {
            name: "hand".into(),
            pipeline: "test".into(),
            emulator: None,
            start: None,
            end: None,
            now: Utc::now(),
            ..BuildContext::default()
        })
        .unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[tokio::test]
async fn one_window_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let header = "\u{feff}日時,送信者,受信者,トークルームID,トーク\r\n";
    write(
        dir.path(),
        "b.csv",
        format!(
            "{header}2025-01-02 10:00:00,a(a@x),b(b@x),1,\"multi\r\nline, \"\"quoted\"\"\"\r\n"
        )
        .as_bytes(),
    );
    write(
        dir.path(),
        "a.csv",
        format!("{header}2025-01-01 09:00:00,a(a@x),b(b@x),1,おはよう\r\n").as_bytes(),
    );
    write(
        dir.path(),
        "c.csv",
        format!(
            "{header}2025-01-03 09:00:00,a,b,1,kept\r\n\
             downloadLogs error\r\nInternal error while generating the file.\r\n"
        )
        .as_bytes(),
    );
    write(
        dir.path(),
        "d.csv",
        format!("{header}2025-01-04 09:00:00,a,b,1\r\n2025-01-04 09:00:01,a,b,1,ok\r\n").as_bytes(),
    );
    write(dir.path(), "notes.txt", b"not matched");
    let pattern = format!("{}/*.csv", dir.path().display());
    let source = build(json!({"files": [pattern], "language": "ja_JP", "utc_offset": "+09:00"}));

    let plan = source.plan().unwrap();
    let planned: Vec<_> = plan.iter().map(|p| p.window.index).collect();
    assert_eq!(planned, [0, 1, 2, 3]);
    assert!(plan[0].request.ends_with("a.csv"), "{}", plan[0].request);

    let (tx, mut rx) = mpsc::channel(8);
    let state = tempfile::tempdir().unwrap();
    let dead_letters = DeadLetters::in_dir(state.path());
    let metrics = Arc::new(ComponentMetrics::default());
    let cx = SourceContext {
        name: "hand".into(),
        out: Output::for_test("hand", tx),
        metrics: metrics.clone(),
        dead_letters: dead_letters.clone(),
        run: Arc::new(RunInfo {
            pipeline: "test".into(),
            run_id: "r".into(),
            started_at: Utc::now(),
        }),
        windows_at_once: 2,
    };
    let task = tokio::spawn(source.run(cx));
    let mut log = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Batch(b) => {
                let messages = b.data.column(4).as_string::<i32>();
                for r in 0..b.num_rows() {
                    log.push(format!(
                        "row {}: {}",
                        b.window.label.rsplit('/').next().unwrap(),
                        messages.value(r)
                    ));
                }
                assert_eq!(b.window.utc_offset.local_minus_utc(), 9 * 3600);
                assert_eq!(b.window.start, None);
            }
            Event::WindowDone(w) => {
                log.push(format!("done {}", w.label.rsplit('/').next().unwrap()))
            }
            Event::WindowFailed(w) => {
                log.push(format!("failed {}", w.label.rsplit('/').next().unwrap()))
            }
        }
    }
    task.await.unwrap().unwrap();
    // Files are read several at a time, so windows interleave; each window's own events keep
    // their order (rows, then its marker).
    let of = |file: &str| -> Vec<&str> {
        log.iter()
            .map(String::as_str)
            .filter(|e| e.contains(file))
            .collect()
    };
    assert_eq!(of("a.csv"), ["row a.csv: おはよう", "done a.csv"]);
    assert_eq!(
        of("b.csv"),
        ["row b.csv: multi\r\nline, \"quoted\"", "done b.csv"]
    );
    // The file with the trailer sends no row at all.
    assert_eq!(of("c.csv"), ["failed c.csv"]);
    assert_eq!(of("d.csv"), ["row d.csv: ok", "done d.csv"]);
    assert_eq!(log.len(), 7);
    assert_eq!(dead_letters.count(), 1);
    dead_letters.flush().unwrap();
    let letter = std::fs::read_to_string(dead_letters.path()).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letter.trim()).unwrap();
    assert_eq!(letter["component"], "hand");
    assert!(letter["window"].as_str().unwrap().ends_with("d.csv"));
    assert_eq!(letter["reason"], "expected 5 fields, found 4");
    assert_eq!(letter["raw"]["record"], 2);
    let summary = metrics.summarize("hand", "source", "", 0.0);
    assert_eq!(summary.files, 4);
}

#[tokio::test]
async fn a_glob_that_matches_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = format!("{}/*.csv", dir.path().display());
    let source = build(json!({"files": [pattern]}));
    let e = source.plan().unwrap_err().to_string();
    assert!(e.contains("files[0]: no file matches"), "{e}");
}

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::stage::RunInfo;
use chatlake_core::{
    Batch, BuildContext, Emitter, Transform, TransformConfig, TransformContext, Window, WindowRef,
};

use super::*;

fn cx() -> TransformContext {
    TransformContext {
        name: "unique".into(),
        metrics: Arc::default(),
        dead_letters: DeadLetters::in_dir(&std::env::temp_dir()),
        run: Arc::new(RunInfo {
            pipeline: "p".into(),
            run_id: "r".into(),
            started_at: chrono_now(),
        }),
    }
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(0, 0).unwrap()
}

fn window(i: u32) -> WindowRef {
    Arc::new(Window {
        source: "s".into(),
        stream: "x".into(),
        index: i,
        start: None,
        end: None,
        utc_offset: chrono::FixedOffset::east_opt(0).unwrap(),
        label: format!("w{i}"),
    })
}

fn batch(w: u32, rows: &[(&str, &str, i64)]) -> Batch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("provider", DataType::Utf8, false),
        Field::new("message_id", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
    ];
    Batch::new(window(w), RecordBatch::try_new(schema, cols).unwrap())
}

fn build(toml_keep: &str) -> Box<dyn Transform> {
    let config: DedupeConfig =
        serde_json::from_value(serde_json::json!({ "keep": toml_keep })).unwrap();
    config
        .build(&BuildContext {
            name: "unique".into(),
            pipeline: "p".into(),
            emulator: None,
            start: None,
            end: None,
            now: chrono_now(),
            ..BuildContext::default()
        })
        .unwrap()
}

fn rows(out: &mut Emitter) -> Vec<(String, i64, u32)> {
    let mut v = Vec::new();
    for b in out.drain() {
        let ids = b
            .data
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let ver = b
            .data
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for i in 0..b.num_rows() {
            v.push((ids.value(i).to_string(), ver.value(i), b.window.index));
        }
    }
    v.sort();
    v
}

#[test]
fn first_keeps_the_first_row_of_each_key_across_batches() {
    let cx = cx();
    let mut t = build("first");
    let mut out = Emitter::default();
    t.transform(
        batch(0, &[("a", "1", 1), ("a", "2", 1), ("a", "1", 9)]),
        &mut out,
        &cx,
    )
    .unwrap();
    t.transform(batch(1, &[("a", "2", 5), ("b", "2", 5)]), &mut out, &cx)
        .unwrap();
    assert_eq!(
        rows(&mut out),
        vec![("1".into(), 1, 0), ("2".into(), 1, 0), ("2".into(), 5, 1)]
    );
}

#[test]
fn latest_keeps_the_highest_version_and_its_window() {
    let cx = cx();
    let mut t = build("latest");
    assert!(t.holds_rows_until_finish());
    let mut out = Emitter::default();
    t.transform(batch(0, &[("a", "1", 1), ("a", "2", 7)]), &mut out, &cx)
        .unwrap();
    t.transform(
        batch(1, &[("a", "1", 3), ("a", "2", 7), ("a", "3", 1)]),
        &mut out,
        &cx,
    )
    .unwrap();
    assert!(rows(&mut out).is_empty(), "nothing before the end");
    t.finish(&mut out, &cx).unwrap();
    // Ties keep the first seen (window 0 for key 2).
    assert_eq!(
        rows(&mut out),
        vec![("1".into(), 3, 1), ("2".into(), 7, 0), ("3".into(), 1, 1)]
    );
}

#[test]
fn latest_ignores_rows_of_a_failed_window() {
    let cx = cx();
    let mut t = build("latest");
    let mut out = Emitter::default();
    t.transform(batch(0, &[("a", "1", 1)]), &mut out, &cx)
        .unwrap();
    t.transform(batch(1, &[("a", "1", 5)]), &mut out, &cx)
        .unwrap();
    t.window_failed(&window(1), &cx).unwrap();
    t.finish(&mut out, &cx).unwrap();
    assert_eq!(rows(&mut out), vec![("1".into(), 1, 0)]);
}

#[test]
fn key_parts_do_not_run_together() {
    let cx = cx();
    let mut t = build("first");
    let mut out = Emitter::default();
    t.transform(batch(0, &[("ab", "c", 1), ("a", "bc", 1)]), &mut out, &cx)
        .unwrap();
    assert_eq!(rows(&mut out).len(), 2);
}

#[test]
fn rejects_raw_input_and_bad_keys() {
    let t = build("first");
    assert!(
        t.output_kind(&chatlake_core::DataKind::raw("lineworks.message_contents"))
            .unwrap_err()
            .contains("normalize")
    );
    let bad: DedupeConfig = serde_json::from_value(serde_json::json!({ "key": [] })).unwrap();
    let cx = BuildContext {
        name: "u".into(),
        pipeline: "p".into(),
        emulator: None,
        start: None,
        end: None,
        now: chrono_now(),
        ..BuildContext::default()
    };
    assert_eq!(bad.build(&cx).err().unwrap().key, "key");
    let e =
        serde_json::from_value::<DedupeConfig>(serde_json::json!({ "keep": "last" })).unwrap_err();
    assert!(
        e.to_string().contains("expected `first` or `latest`"),
        "{e}"
    );
}

/// The figure the README states: bytes of the key set per distinct key, across table sizes.
#[test]
fn key_set_memory_per_distinct_key() {
    let mut seen: hashbrown::HashSet<u128> = hashbrown::HashSet::new();
    let (mut lo, mut hi) = (f64::MAX, 0f64);
    for i in 0..2_000_000u128 {
        seen.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
        if i > 1000 && i % 997 == 0 {
            let per_key = seen.allocation_size() as f64 / seen.len() as f64;
            lo = lo.min(per_key);
            hi = hi.max(per_key);
        }
    }
    println!("dedupe key set: {lo:.1} to {hi:.1} bytes per distinct key");
    assert!(lo >= 16.0 && hi <= 40.0, "{lo} {hi}");
}

fn across(dir: &std::path::Path, committed: &[String]) -> Box<dyn Transform> {
    let config: DedupeConfig =
        serde_json::from_value(serde_json::json!({ "across_runs": true })).unwrap();
    config
        .build(&BuildContext {
            name: "unique".into(),
            state_dir: dir.to_path_buf(),
            committed: Arc::new(committed.iter().cloned().collect()),
            ..BuildContext::default()
        })
        .unwrap()
}

#[test]
fn across_runs_remembers_exactly_the_keys_of_committed_windows() {
    let dir = std::env::temp_dir().join(format!("chatlake-dedupe-across-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cx = cx();
    let mut out = Emitter::default();

    // Run 1 loads keys 1 and 2 in window 0, and writes them when the window ends.
    let mut t = across(&dir, &[]);
    t.transform(batch(0, &[("a", "1", 1), ("a", "2", 1)]), &mut out, &cx)
        .unwrap();
    t.window_done(&window(0), &mut out, &cx).unwrap();
    assert_eq!(rows(&mut out).len(), 2);

    // Run 2, after the ledger committed window 0: key 2 was loaded before, key 3 is new.
    let mut t = across(&dir, &[window(0).key()]);
    t.transform(batch(1, &[("a", "2", 1), ("a", "3", 1)]), &mut out, &cx)
        .unwrap();
    assert_eq!(rows(&mut out), vec![("3".into(), 1, 1)]);

    // Had the run stopped before window 0 reached the ledger, its keys would not count (and the
    // file goes): key 2 loads again.
    let mut t = across(&dir, &[]);
    t.transform(batch(1, &[("a", "2", 1)]), &mut out, &cx)
        .unwrap();
    assert_eq!(rows(&mut out).len(), 1);
    assert!(
        !dir.join("dedupe/unique")
            .join(format!("{}.keys", window(0).key()))
            .exists()
    );

    let latest: DedupeConfig =
        serde_json::from_value(serde_json::json!({ "across_runs": true, "keep": "latest" }))
            .unwrap();
    assert_eq!(
        latest.build(&BuildContext::default()).err().unwrap().key,
        "across_runs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

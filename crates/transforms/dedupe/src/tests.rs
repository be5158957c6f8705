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
        key_name: None,
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
    while t.finish_next(&mut out, &cx).unwrap() {}
    // Ties keep the first seen (window 0 for key 2).
    assert_eq!(
        rows(&mut out),
        vec![("1".into(), 3, 1), ("2".into(), 7, 0), ("3".into(), 1, 1)]
    );
}

/// Columns that hold one value in a batch are remembered rather than spilled; batches in which
/// they vary (or hold another value) must come back as they went in.
#[test]
fn latest_brings_back_columns_that_were_constant_for_a_while() {
    let cx = cx();
    let mut t = build("latest");
    let mut out = Emitter::default();
    for b in [
        batch(0, &[("zoom", "a", 1)]),
        batch(1, &[("zoom", "b", 1), ("zoom", "c", 1)]),
        batch(2, &[("qlara", "a", 2), ("zoom", "a", 3)]),
        batch(3, &[("zoom", "b", 0), ("zoom", "d", 5)]),
        batch(4, &[("line", "e", 1), ("line", "f", 1)]),
    ] {
        t.transform(b, &mut out, &cx).unwrap();
    }
    t.finish(&mut out, &cx).unwrap();
    while t.finish_next(&mut out, &cx).unwrap() {}
    let got: Vec<Vec<(String, String, i64)>> = out
        .drain()
        .map(|b| {
            let (p, id, v) = (
                b.data.column(0).as_string::<i32>(),
                b.data.column(1).as_string::<i32>(),
                b.data.column(2).as_primitive::<Int64Type>(),
            );
            (0..b.num_rows())
                .map(|i| (p.value(i).into(), id.value(i).into(), v.value(i)))
                .collect()
        })
        .collect();
    let row = |p: &str, id: &str, v| (p.to_string(), id.to_string(), v);
    assert_eq!(
        got,
        vec![
            vec![row("zoom", "b", 1), row("zoom", "c", 1)],
            vec![row("qlara", "a", 2), row("zoom", "a", 3)],
            vec![row("zoom", "d", 5)],
            vec![row("line", "e", 1), row("line", "f", 1)],
        ]
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
    while t.finish_next(&mut out, &cx).unwrap() {}
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

fn across(dir: &std::path::Path, committed: &[String]) -> Box<dyn Transform> {
    across_with(dir, committed, serde_json::json!({ "across_runs": true }))
}

fn across_with(
    dir: &std::path::Path,
    committed: &[String],
    options: serde_json::Value,
) -> Box<dyn Transform> {
    let config: DedupeConfig = serde_json::from_value(options).unwrap();
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
            .join(format!("{}.keys64", window(0).key()))
            .exists()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn across_runs_writes_8_bytes_per_key_and_reads_the_earlier_16_byte_files() {
    let dir = std::env::temp_dir().join(format!("chatlake-dedupe-legacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keys_dir = dir.join("dedupe/unique");
    let cx = cx();
    let mut out = Emitter::default();

    let mut t = across(&dir, &[]);
    t.transform(
        batch(0, &[("a", "1", 1), ("a", "2", 1), ("a", "1", 1)]),
        &mut out,
        &cx,
    )
    .unwrap();
    t.window_done(&window(0), &mut out, &cx).unwrap();
    let file = keys_dir.join(format!("{}.keys64", window(0).key()));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 16, "two keys");
    assert_eq!(rows(&mut out).len(), 2);

    // A committed window of the earlier format (128-bit hashes) and a stray one of each.
    let hash = |id: &str| {
        let mut key = Vec::new();
        for part in ["a", id] {
            key.push(1);
            key.extend_from_slice(&(part.len() as u32).to_le_bytes());
            key.extend_from_slice(part.as_bytes());
        }
        xxhash_rust::xxh3::xxh3_128(&key)
    };
    std::fs::write(
        keys_dir.join(format!("{}.keys", window(1).key())),
        [hash("3").to_le_bytes(), hash("4").to_le_bytes()].concat(),
    )
    .unwrap();
    let stray_old = keys_dir.join(format!("{}.keys", window(7).key()));
    let stray_tmp = keys_dir.join(format!("{}.keys64.tmp", window(8).key()));
    std::fs::write(&stray_old, hash("5").to_le_bytes()).unwrap();
    std::fs::write(&stray_tmp, (hash("6") as u64).to_le_bytes()).unwrap();

    let mut t = across(&dir, &[window(0).key(), window(1).key()]);
    let input = [("a", "9", 1), ("a", "2", 1), ("a", "3", 1), ("a", "4", 1)];
    t.transform(batch(2, &input), &mut out, &cx).unwrap();
    t.transform(batch(2, &[("a", "5", 1), ("a", "6", 1)]), &mut out, &cx)
        .unwrap();
    assert_eq!(
        rows(&mut out).into_iter().map(|r| r.0).collect::<Vec<_>>(),
        vec!["5", "6", "9"]
    );
    assert!(!stray_old.exists() && !stray_tmp.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn across_runs_forgets_the_keys_of_a_failed_window() {
    let dir = std::env::temp_dir().join(format!("chatlake-dedupe-failed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cx = cx();
    let mut out = Emitter::default();
    let mut t = across(&dir, &[]);
    t.transform(batch(0, &[("a", "1", 1)]), &mut out, &cx)
        .unwrap();
    t.transform(batch(1, &[("a", "1", 1), ("a", "2", 1)]), &mut out, &cx)
        .unwrap();
    t.window_failed(&window(1), &cx).unwrap();
    // Key 2 came only with the failed window: it passes again; key 1 belongs to window 0.
    t.transform(batch(2, &[("a", "1", 2), ("a", "2", 2)]), &mut out, &cx)
        .unwrap();
    assert_eq!(
        rows(&mut out),
        vec![("1".into(), 1, 0), ("2".into(), 1, 1), ("2".into(), 2, 2)]
    );
    assert_eq!(
        std::fs::read_dir(dir.join("dedupe/unique"))
            .unwrap()
            .count(),
        2,
        "two open windows"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rows of one window with a nullable version.
fn batch_opt(w: u32, rows: &[(String, Option<i64>)]) -> Batch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("provider", DataType::Utf8, false),
        Field::new("message_id", DataType::Utf8, false),
        Field::new("version", DataType::Int64, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "p"))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
        Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
    ];
    Batch::new(window(w), RecordBatch::try_new(schema, cols).unwrap())
}

type Emitted = Vec<(u32, Vec<(String, Option<i64>)>)>;

/// What was emitted, batch by batch, in order.
fn emitted(out: &mut Emitter) -> Emitted {
    out.drain()
        .map(|b| {
            let ids = b.data.column(1).as_string::<i32>();
            let ver = b.data.column(2).as_primitive::<Int64Type>();
            let rows = (0..b.num_rows())
                .map(|i| {
                    (
                        ids.value(i).to_string(),
                        ver.is_valid(i).then(|| ver.value(i)),
                    )
                })
                .collect();
            (b.window.index, rows)
        })
        .collect()
}

/// What `keep = "latest"` held every batch in memory to compute: the highest version per key
/// (null lowest, first seen on a tie) over the batches of windows that did not fail, emitted
/// batch by batch in arrival order.
fn reference(input: &Emitted, failed: &[u32]) -> Emitted {
    let live = |w: &u32| !failed.contains(w);
    let mut best: std::collections::HashMap<&str, (i64, usize, usize)> = Default::default();
    for (b, (_, rows)) in input.iter().enumerate().filter(|(_, (w, _))| live(w)) {
        for (r, (id, v)) in rows.iter().enumerate() {
            let v = v.unwrap_or(i64::MIN);
            let e = best.entry(id).or_insert((v, b, r));
            if v > e.0 {
                *e = (v, b, r);
            }
        }
    }
    input
        .iter()
        .enumerate()
        .filter(|(_, (w, _))| live(w))
        .map(|(b, (w, rows))| {
            let kept = rows
                .iter()
                .enumerate()
                .filter(|(r, (id, _))| best[id.as_str()].1 == b && best[id.as_str()].2 == *r)
                .map(|(_, row)| row.clone())
                .collect::<Vec<_>>();
            (*w, kept)
        })
        .filter(|(_, rows)| !rows.is_empty())
        .collect()
}

fn latest_in(state_dir: &std::path::Path) -> Box<dyn Transform> {
    let config: DedupeConfig =
        serde_json::from_value(serde_json::json!({ "keep": "latest" })).unwrap();
    config
        .build(&BuildContext {
            name: "unique".into(),
            state_dir: state_dir.to_path_buf(),
            ..BuildContext::default()
        })
        .unwrap()
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random batches of interleaved windows: keys from a small universe, versions in random order
/// with ties and nulls, empty batches.
fn random_input(seed: u64, batches: usize, keys: u64) -> Emitted {
    let mut rng = seed;
    (0..batches)
        .map(|_| {
            let w = (splitmix(&mut rng) % 6) as u32;
            let n = splitmix(&mut rng) % 400;
            let rows = (0..n)
                .map(|_| {
                    let id = format!("m{}", splitmix(&mut rng) % keys);
                    let v = splitmix(&mut rng) % 12;
                    (id, (v != 0).then_some(v as i64 - 6))
                })
                .collect();
            (w, rows)
        })
        .collect()
}

#[test]
fn latest_matches_an_in_memory_reference() {
    let state = std::env::temp_dir().join(format!("chatlake-dedupe-latest-{}", std::process::id()));
    let cx = cx();
    for (seed, failed) in [(1, vec![]), (2, vec![3]), (3, vec![0, 5])] {
        let input = random_input(seed, 60, 3000);
        let mut t = latest_in(&state);
        let mut out = Emitter::default();
        for (w, rows) in &input {
            t.transform(batch_opt(*w, rows), &mut out, &cx).unwrap();
        }
        for w in &failed {
            t.window_failed(&window(*w), &cx).unwrap();
        }
        assert!(out.drain().next().is_none(), "nothing before the end");
        assert!(state.join("spill/unique").is_dir());
        t.finish(&mut out, &cx).unwrap();
        while t.finish_next(&mut out, &cx).unwrap() {}
        let got = emitted(&mut out);
        let want = reference(&input, &failed);
        assert!(want.len() > 20);
        assert_eq!(got, want, "seed {seed}");
        assert!(!state.join("spill/unique").exists(), "the spill is removed");
    }
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn latest_ties_keep_the_first_seen_and_null_versions_are_lowest() {
    let cx = cx();
    let mut t = build("latest");
    let mut out = Emitter::default();
    let r = |id: &str, v: Option<i64>| (id.to_string(), v);
    t.transform(
        batch_opt(
            0,
            &[
                r("tie", Some(2)),
                r("null", None),
                r("nulls", None),
                r("min", None),
            ],
        ),
        &mut out,
        &cx,
    )
    .unwrap();
    t.transform(
        batch_opt(
            1,
            &[
                r("tie", Some(2)),
                r("null", Some(-9)),
                r("nulls", None),
                r("min", Some(i64::MIN)),
            ],
        ),
        &mut out,
        &cx,
    )
    .unwrap();
    t.finish(&mut out, &cx).unwrap();
    while t.finish_next(&mut out, &cx).unwrap() {}
    // A null is lower than any version and equal to i64::MIN: the first seen wins that tie.
    assert_eq!(
        emitted(&mut out),
        vec![
            (0, vec![r("tie", Some(2)), r("nulls", None), r("min", None)]),
            (1, vec![r("null", Some(-9))]),
        ]
    );
}

#[test]
fn latest_rows_of_a_failed_window_never_win() {
    let cx = cx();
    let mut t = build("latest");
    let mut out = Emitter::default();
    let r = |id: &str, v: i64| (id.to_string(), Some(v));
    t.transform(batch_opt(0, &[r("a", 1), r("b", 1)]), &mut out, &cx)
        .unwrap();
    // Window 1 has the newest version of `a` and the only row of `c`, then fails.
    t.transform(batch_opt(1, &[r("a", 9), r("c", 9)]), &mut out, &cx)
        .unwrap();
    t.transform(batch_opt(2, &[r("a", 5), r("b", 0)]), &mut out, &cx)
        .unwrap();
    t.window_failed(&window(1), &cx).unwrap();
    t.finish(&mut out, &cx).unwrap();
    while t.finish_next(&mut out, &cx).unwrap() {}
    assert_eq!(
        emitted(&mut out),
        vec![(0, vec![r("b", 1)]), (2, vec![r("a", 5)])]
    );
}

#[test]
fn latest_spill_clears_leftovers_and_is_gone_after_finish() {
    let state = std::env::temp_dir().join(format!("chatlake-dedupe-spill-{}", std::process::id()));
    let spill = state.join("spill/unique");
    std::fs::create_dir_all(&spill).unwrap();
    std::fs::write(spill.join("keys-00.bin"), [7u8; 32]).unwrap();
    std::fs::write(spill.join("rows-00009.arrows"), b"killed").unwrap();
    let cx = cx();
    let mut out = Emitter::default();
    let mut t = latest_in(&state);
    t.finish(&mut out, &cx).unwrap();
    while t.finish_next(&mut out, &cx).unwrap() {}
    assert!(
        spill.join("rows-00009.arrows").exists(),
        "no input, nothing touched"
    );
    t.transform(batch(0, &[("a", "1", 1)]), &mut out, &cx)
        .unwrap();
    assert!(!spill.join("rows-00009.arrows").exists());
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 64 + 1);
    t.finish(&mut out, &cx).unwrap();
    while t.finish_next(&mut out, &cx).unwrap() {}
    assert_eq!(rows(&mut out), vec![("1".into(), 1, 0)]);
    assert!(!spill.exists());

    // Dropped before the end (the run failed): the spill goes too.
    let mut t = latest_in(&state);
    t.transform(batch(0, &[("a", "1", 1)]), &mut out, &cx)
        .unwrap();
    assert!(spill.exists());
    drop(t);
    assert!(!spill.exists());
    let _ = std::fs::remove_dir_all(&state);
}

/// Built without a state directory (as here): a fresh directory under the system's temporary one.
#[test]
fn latest_spill_without_a_state_dir_uses_a_temporary_dir() {
    let spill = latest::LatestSpill::new(std::path::Path::new(""), "unique");
    let other = latest::LatestSpill::new(std::path::Path::new(""), "unique");
    assert!(spill.dir().starts_with(std::env::temp_dir()));
    assert_ne!(spill.dir(), other.dir());
}

/// Batches of another schema start a new spill file; each comes back with its own schema.
#[test]
fn latest_keeps_each_batch_schema() {
    let cx = cx();
    let mut t = build("latest");
    let mut out = Emitter::default();
    let plain = batch(0, &[("a", "1", 1), ("a", "2", 1)]);
    let meta = {
        let b = batch(1, &[("a", "1", 2), ("a", "3", 1)]);
        let schema = Schema::new_with_metadata(
            b.data.schema().fields().clone(),
            [("origin".to_string(), "x".to_string())].into(),
        );
        Batch::new(
            b.window.clone(),
            b.data.with_schema(Arc::new(schema)).unwrap(),
        )
    };
    let schemas = [plain.data.schema(), meta.data.schema(), plain.data.schema()];
    t.transform(plain.clone(), &mut out, &cx).unwrap();
    t.transform(meta, &mut out, &cx).unwrap();
    t.transform(batch(2, &[("a", "4", 1)]), &mut out, &cx)
        .unwrap();
    t.finish(&mut out, &cx).unwrap();
    while t.finish_next(&mut out, &cx).unwrap() {}
    let got: Vec<_> = out.drain().map(|b| b.data.schema()).collect();
    assert_eq!(got, schemas);
}

/// A key partition bigger than the reduction threshold (a key repeated often) is reduced as it
/// is read, with the same winners.
#[test]
fn latest_spill_reduces_partitions_of_repeated_keys() {
    let input = random_input(9, 40, 5);
    for reduce_at in [1, 7, 1 << 20] {
        let mut spill = latest::LatestSpill::new(std::path::Path::new(""), "unique");
        spill.set_reduce_at(reduce_at);
        let mut t = DedupeTransform {
            config: serde_json::from_value(serde_json::json!({ "keep": "latest" })).unwrap(),
            seen: FingerprintSet::new(),
            latest: Some(spill),
            key_buf: Vec::new(),
            across: None,
        };
        let cx = cx();
        let mut out = Emitter::default();
        for (w, rows) in &input {
            t.transform(batch_opt(*w, rows), &mut out, &cx).unwrap();
        }
        t.finish(&mut out, &cx).unwrap();
        while t.finish_next(&mut out, &cx).unwrap() {}
        assert_eq!(
            emitted(&mut out),
            reference(&input, &[]),
            "reduce at {reduce_at}"
        );
    }
}

#[test]
fn latest_needs_an_int64_version() {
    let cx = cx();
    let config: DedupeConfig =
        serde_json::from_value(serde_json::json!({ "keep": "latest", "version_column": "nope" }))
            .unwrap();
    let mut t = config.build(&BuildContext::default()).unwrap();
    let e = t
        .transform(batch(0, &[("a", "1", 1)]), &mut Emitter::default(), &cx)
        .unwrap_err();
    assert!(e.to_string().contains("`nope` is missing"), "{e}");
}

#[test]
fn remember_loads_only_the_keys_of_recently_loaded_windows() {
    let dir = std::env::temp_dir().join(format!("chatlake-dedupe-remember-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cx = cx();
    let mut out = Emitter::default();
    // Window 0 loaded key 1 forty days ago, window 1 loaded key 2 yesterday.
    let mut t = across(&dir, &[]);
    t.transform(batch(0, &[("a", "1", 1)]), &mut out, &cx)
        .unwrap();
    t.window_done(&window(0), &mut out, &cx).unwrap();
    t.transform(batch(1, &[("a", "2", 1)]), &mut out, &cx)
        .unwrap();
    t.window_done(&window(1), &mut out, &cx).unwrap();
    rows(&mut out);
    let age = |w: u32, days: u64| {
        let file = dir
            .join("dedupe/unique")
            .join(format!("{}.keys64", window(w).key()));
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(
                std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400),
            )
            .unwrap();
        file
    };
    let old = age(0, 40);
    age(1, 1);
    let committed = [window(0).key(), window(1).key()];

    // remember = 30d: key 1 is not remembered (its row loads again), key 2 is.
    let mut t = across_with(
        &dir,
        &committed,
        serde_json::json!({ "across_runs": true, "remember": "30d" }),
    );
    t.transform(batch(2, &[("a", "1", 1), ("a", "2", 1)]), &mut out, &cx)
        .unwrap();
    assert_eq!(rows(&mut out), vec![("1".into(), 1, 2)]);
    assert!(old.exists(), "older key files stay on disk");

    // Without remember, both are.
    let mut t = across(&dir, &committed);
    t.transform(batch(2, &[("a", "1", 1), ("a", "2", 1)]), &mut out, &cx)
        .unwrap();
    assert!(rows(&mut out).is_empty());

    // remember without across_runs means nothing: refused.
    let config: DedupeConfig =
        serde_json::from_value(serde_json::json!({ "remember": "30d" })).unwrap();
    assert_eq!(
        config.build(&BuildContext::default()).err().unwrap().key,
        "remember"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run of `keep = "latest"` with `across_runs`, given the ledger's committed windows (window →
/// run): its input batches, every window done; returns what it emitted.
fn latest_run(
    dir: &std::path::Path,
    run_id: &str,
    committed_by: &[(WindowRef, &str)],
    input: Vec<Batch>,
) -> Vec<(String, i64, u32)> {
    let config: DedupeConfig =
        serde_json::from_value(serde_json::json!({ "keep": "latest", "across_runs": true }))
            .unwrap();
    let mut t = config
        .build(&BuildContext {
            name: "unique".into(),
            state_dir: dir.to_path_buf(),
            committed: Arc::new(committed_by.iter().map(|(w, _)| w.key()).collect()),
            committed_by: Arc::new(
                committed_by
                    .iter()
                    .map(|(w, r)| (w.key(), r.to_string()))
                    .collect(),
            ),
            ..BuildContext::default()
        })
        .unwrap();
    assert!(t.replaces_rows_of_earlier_runs());
    let mut cx = cx();
    cx.run = Arc::new(RunInfo {
        pipeline: "p".into(),
        run_id: run_id.into(),
        started_at: chrono_now(),
    });
    let mut out = Emitter::default();
    let mut windows: Vec<WindowRef> = Vec::new();
    for b in input {
        if !windows.iter().any(|w| w.index == b.window.index) {
            windows.push(b.window.clone());
        }
        t.transform(b, &mut out, &cx).unwrap();
    }
    for w in &windows {
        t.window_done(w, &mut out, &cx).unwrap();
    }
    t.finish(&mut out, &cx).unwrap();
    while t.finish_next(&mut out, &cx).unwrap() {}
    rows(&mut out)
}

/// The removal logs under `dir`: (run, replacing window, earlier window, message id), sorted.
fn removal_rows(
    dir: &std::path::Path,
    committed_by: &[(WindowRef, &str)],
) -> Vec<(String, String, String)> {
    let log = chatlake_core::removal::RemovalLog::new(dir);
    let committed: std::collections::HashMap<String, String> = committed_by
        .iter()
        .map(|(w, r)| (w.key(), r.to_string()))
        .collect();
    let mut out = Vec::new();
    for file in log.pending().unwrap() {
        for removal in file.read(&committed).unwrap() {
            let ids = removal
                .keys
                .column_by_name("message_id")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            for id in ids.iter().flatten() {
                out.push((file.run_id.clone(), removal.window.clone(), id.to_string()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn latest_across_runs_replaces_what_an_earlier_run_loaded_and_never_loads_a_row_twice() {
    let dir = std::env::temp_dir().join(format!("chatlake-dedupe-replace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Run 1 loads 1@1, 2@1 and 3@4 in window 0.
    let loaded = latest_run(
        &dir,
        "r1",
        &[],
        vec![batch(0, &[("a", "1", 1), ("a", "2", 1), ("a", "3", 4)])],
    );
    assert_eq!(loaded.len(), 3);
    assert!(
        removal_rows(&dir, &[(window(0), "r1")]).is_empty(),
        "nothing to replace in a first run"
    );

    // Run 2 fetches them again (a lookback): 1 was edited (version 2), 2 is unchanged, 3 comes
    // back older; 4 is new.
    let committed = [(window(0), "r1")];
    let loaded = latest_run(
        &dir,
        "r2",
        &committed,
        vec![batch(
            1,
            &[("a", "1", 2), ("a", "2", 1), ("a", "3", 3), ("a", "4", 1)],
        )],
    );
    assert_eq!(loaded, vec![("1".into(), 2, 1), ("4".into(), 1, 1)]);
    // The log names the row window 0 holds; it counts once window 1 is committed by run 2.
    assert!(removal_rows(&dir, &committed).is_empty());
    let committed = [(window(0), "r1"), (window(1), "r2")];
    assert_eq!(
        removal_rows(&dir, &committed),
        vec![("r2".into(), window(0).key(), "1".into())]
    );
    chatlake_core::removal::RemovalLog::new(&dir)
        .pending()
        .unwrap()
        .iter()
        .for_each(|f| f.delete().unwrap());

    // Run 3: key 1 edited again; the lake holds it in window 1 now (run 2's version), and only
    // that row is replaced.
    let loaded = latest_run(
        &dir,
        "r3",
        &committed,
        vec![batch(2, &[("a", "1", 5), ("a", "1", 2)])],
    );
    assert_eq!(loaded, vec![("1".into(), 5, 2)]);
    let committed = [(window(0), "r1"), (window(1), "r2"), (window(2), "r3")];
    assert_eq!(
        removal_rows(&dir, &committed),
        vec![("r3".into(), window(1).key(), "1".into())]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latest_across_runs_ignores_windows_not_committed_by_the_run_that_loaded_them() {
    let dir = std::env::temp_dir().join(format!("chatlake-dedupe-stale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    latest_run(&dir, "r1", &[], vec![batch(0, &[("a", "1", 3)])]);

    // Window 0 never reached the ledger: its row was never in the lake, so an older version
    // loads, and nothing is removed.
    let loaded = latest_run(&dir, "r2", &[], vec![batch(1, &[("a", "1", 1)])]);
    assert_eq!(loaded, vec![("1".into(), 1, 1)]);
    assert!(removal_rows(&dir, &[(window(1), "r2")]).is_empty());
    // And run 1's history, none of whose windows count, is gone.
    assert!(!dir.join("dedupe/unique/r1.latest").exists());

    // Window 0 committed by another run than the one whose history names it (loaded again
    // after a reset): that history is stale.
    latest_run(&dir, "r3", &[], vec![batch(0, &[("a", "9", 3)])]);
    let loaded = latest_run(
        &dir,
        "r4",
        &[(window(0), "r5")],
        vec![batch(1, &[("a", "9", 1)])],
    );
    assert_eq!(loaded, vec![("9".into(), 1, 1)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latest_across_runs_finds_replaced_rows_among_many_repeats() {
    let dir = std::env::temp_dir().join(format!("chatlake-dedupe-reduce-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first: Vec<(String, String, i64)> =
        (0..500).map(|i| ("a".into(), i.to_string(), 1)).collect();
    let refs: Vec<(&str, &str, i64)> = first
        .iter()
        .map(|(p, m, v)| (p.as_str(), m.as_str(), *v))
        .collect();
    latest_run(&dir, "r1", &[], vec![batch(0, &refs)]);
    // Run 2: many repeats of every key, the newest version of even keys higher than run 1's.
    let mut again = Vec::new();
    for round in 0..6 {
        for i in 0..500 {
            let v = if i % 2 == 0 && round == 5 { 2 } else { 1 };
            again.push(("a".to_string(), i.to_string(), v));
        }
    }
    let refs: Vec<(&str, &str, i64)> = again
        .iter()
        .map(|(p, m, v)| (p.as_str(), m.as_str(), *v))
        .collect();
    let loaded = latest_run(&dir, "r2", &[(window(0), "r1")], vec![batch(1, &refs)]);
    assert_eq!(loaded.len(), 250);
    assert!(
        loaded
            .iter()
            .all(|(id, v, _)| *v == 2 && id.parse::<u32>().unwrap() % 2 == 0)
    );
    assert_eq!(
        removal_rows(&dir, &[(window(0), "r1"), (window(1), "r2")]).len(),
        250
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn latest_across_runs_a_run_that_loads_nothing_leaves_no_history() {
    let dir = std::env::temp_dir().join(format!("chatlake-dedupe-nohist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    latest_run(&dir, "r1", &[], vec![batch(0, &[("a", "1", 3)])]);
    assert!(dir.join("dedupe/unique/r1.latest").exists());
    // Fetched again unchanged: nothing to load, nothing to remember.
    let loaded = latest_run(
        &dir,
        "r2",
        &[(window(0), "r1")],
        vec![batch(1, &[("a", "1", 3)])],
    );
    assert!(loaded.is_empty());
    let names: Vec<String> = std::fs::read_dir(dir.join("dedupe/unique"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["r1.latest".to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
}

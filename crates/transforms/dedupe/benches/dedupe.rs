//! `dedupe` on about a million canonical rows where a third of the rows repeat a key (as
//! overlapping windows do): `keep = "first"` (the fingerprint set, streaming) and `keep =
//! "latest"` (spilled to disk and read back once), plus the fingerprint set alone.
//! `cargo bench -p chatlake-transform-dedupe --bench dedupe`; prints the set's bytes per key.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::stage::RunInfo;
use chatlake_core::{Batch, BuildContext, Emitter, TransformConfig, TransformContext};
use chatlake_lake::testing::{canonical_batch, message, window};
use chatlake_transform_dedupe::{DedupeConfig, FingerprintSet};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const BATCH: usize = 8192;
const BATCHES: usize = 122;
const ROWS: usize = BATCH * BATCHES;
const DISTINCT: usize = ROWS * 2 / 3;

/// About a million rows: one canonical batch of realistic rows, with a fresh `message_id` and
/// `version` per row (ids repeat in a scattered order; versions rise in arrival order).
fn batches() -> Vec<RecordBatch> {
    let template = canonical_batch(
        &(0..BATCH)
            .map(|n| {
                message(
                    "lineworks",
                    "x",
                    &format!("2025-05-{:02}T{:02}:{:02}:00Z", 1 + n % 28, n % 24, n % 60),
                )
            })
            .collect::<Vec<_>>(),
    );
    let schema = template.schema();
    let id = schema.index_of("message_id").expect("canonical");
    let version = schema.index_of("version").expect("canonical");
    (0..BATCHES)
        .map(|b| {
            let rows = b * BATCH..(b + 1) * BATCH;
            let mut columns: Vec<ArrayRef> = template.columns().to_vec();
            columns[id] = Arc::new(StringArray::from_iter_values(rows.clone().map(|r| {
                let n = r * 7919 % DISTINCT;
                format!("{:032x}", n as u128 * 0x9E37_79B9_7F4A_7C15)
            })));
            columns[version] = Arc::new(Int64Array::from_iter_values(rows.map(|r| r as i64)));
            RecordBatch::try_new(schema.clone(), columns).expect("same schema")
        })
        .collect()
}

fn dedupe(c: &mut Criterion) {
    // The binary's allocator settings: without them, where a batch's fresh buffers land moves
    // these times by half (the same build measured 6.8 or 11.5 ms depending on how it was run).
    chatlake_allocator::tune();
    let input = batches();
    let w = window("lw", 0);
    let cx = TransformContext {
        name: "unique".into(),
        metrics: Arc::default(),
        dead_letters: DeadLetters::in_dir(&std::env::temp_dir()),
        run: Arc::new(RunInfo {
            pipeline: "bench".into(),
            run_id: "bench".into(),
            started_at: chrono::Utc::now(),
        }),
    };
    let mut group = c.benchmark_group("dedupe");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(ROWS as u64));
    for keep in ["first", "latest"] {
        group.bench_function(format!("keep_{keep}_1m_rows"), |b| {
            b.iter(|| {
                let mut t = serde_json::from_value::<DedupeConfig>(json!({ "keep": keep }))
                    .expect("a valid config")
                    .build(&BuildContext::default())
                    .expect("dedupe builds");
                let mut out = Emitter::default();
                let mut rows = 0;
                for batch in &input {
                    t.transform(Batch::new(w.clone(), batch.clone()), &mut out, &cx)
                        .expect("dedupe runs");
                    rows += out.drain().map(|b| black_box(b).num_rows()).sum::<usize>();
                }
                t.finish(&mut out, &cx).expect("dedupe finishes");
                while t.finish_next(&mut out, &cx).expect("dedupe finishes") {}
                rows += out.drain().map(|b| black_box(b).num_rows()).sum::<usize>();
                assert_eq!(rows, DISTINCT);
            })
        });
    }

    // The key set alone: a million random fingerprints, and what it allocated for them.
    let fps: Vec<u64> = (1..=1_000_000u64)
        .map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
        .collect();
    group.throughput(Throughput::Elements(fps.len() as u64));
    group.bench_function("fingerprint_set_insert_1m", |b| {
        b.iter(|| {
            let mut set = FingerprintSet::new();
            for &fp in &fps {
                set.insert(fp);
            }
            black_box(set.len())
        })
    });
    group.finish();
    let mut set = FingerprintSet::new();
    for &fp in &fps {
        set.insert(fp);
    }
    println!(
        "fingerprint set: {} keys in {} bytes, {:.2} bytes per key",
        set.len(),
        set.memory_bytes(),
        set.bytes_per_key()
    );
}

criterion_group!(benches, dedupe);
criterion_main!(benches);

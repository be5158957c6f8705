//! `dedupe` on canonical batches where a third of the rows repeat a key (as overlapping windows
//! do): `keep = "first"` (hash set of 128-bit key hashes, streaming) and `keep = "latest"`
//! (rows held until the end). `cargo bench -p chatlake-transform-dedupe`.

use std::hint::black_box;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::stage::RunInfo;
use chatlake_core::{Batch, BuildContext, Emitter, TransformConfig, TransformContext};
use chatlake_lake::testing::{canonical_batch, message, window};
use chatlake_transform_dedupe::DedupeConfig;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const BATCH: usize = 8192;
const BATCHES: usize = 6;
const DISTINCT: usize = BATCH * BATCHES * 2 / 3;

fn batches() -> Vec<RecordBatch> {
    (0..BATCHES)
        .map(|b| {
            let rows: Vec<_> = (0..BATCH)
                .map(|i| {
                    let n = (b * BATCH + i) * 7919 % DISTINCT;
                    let mut m = message(
                        "lineworks",
                        &format!("{:032x}", n as u128 * 0x9E37_79B9_7F4A_7C15),
                        &format!("2025-05-{:02}T{:02}:{:02}:00Z", 1 + n % 28, n % 24, n % 60),
                    );
                    m["version"] = json!(b * BATCH + i);
                    m
                })
                .collect();
            canonical_batch(&rows)
        })
        .collect()
}

fn dedupe(c: &mut Criterion) {
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
    group.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    for keep in ["first", "latest"] {
        group.bench_function(format!("keep_{keep}_49k_rows"), |b| {
            b.iter(|| {
                let mut t = serde_json::from_value::<DedupeConfig>(json!({ "keep": keep }))
                    .expect("a valid config")
                    .build(&BuildContext::default())
                    .expect("dedupe builds");
                let mut out = Emitter::default();
                for batch in &input {
                    t.transform(Batch::new(w.clone(), batch.clone()), &mut out, &cx)
                        .expect("dedupe runs");
                }
                t.finish(&mut out, &cx).expect("dedupe finishes");
                let rows: usize = out.drain().map(|b| black_box(b).num_rows()).sum();
                assert_eq!(rows, DISTINCT);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dedupe);
criterion_main!(benches);

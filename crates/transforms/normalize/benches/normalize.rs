//! The LINE WORKS mapping of `normalize`: raw rows → canonical messages (`Name(email)` split,
//! +09:00 → UTC, occurrence counting and the MD5 message id) on batches shaped like the reference
//! job's, with identical rows repeated as in overlapping windows.
//! `cargo bench -p chatlake-transform-normalize`.

use std::hint::black_box;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::record_batch::RecordBatch;
use chatlake_core::dead_letter::DeadLetters;
use chatlake_core::stage::RunInfo;
use chatlake_core::{Batch, BuildContext, Emitter, TransformConfig, TransformContext, Window};
use chatlake_transform_normalize::NormalizeConfig;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 8192;
const BATCHES: usize = 6;

/// `BATCHES` raw LINE WORKS batches; about one row in eight repeats an earlier one.
fn raw_batches() -> Vec<RecordBatch> {
    let mut x: u64 = 7;
    (0..BATCHES)
        .map(|b| {
            let mut cols: [Vec<String>; 5] = Default::default();
            for i in 0..BATCH {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) as usize;
                let n = if r.is_multiple_of(8) {
                    i / 2
                } else {
                    b * BATCH + i
                };
                cols[0].push(format!(
                    "2025-05-{:02} {:02}:{:02}:{:02}",
                    1 + n % 28,
                    n % 24,
                    n % 60,
                    n % 59
                ));
                cols[1].push(if r.is_multiple_of(33) {
                    "[Bot]Alert Bot(bot2000@works.example)".into()
                } else {
                    format!("Chris Park (Sales)(u{}@works.example)", 100_000 + n % 800)
                });
                cols[2].push(format!(
                    "営業部 #{}(room{}@group.works.example)",
                    n % 1500,
                    n % 1500
                ));
                cols[3].push((10_000_000 + (n % 1500) * 37).to_string());
                cols[4].push(format!("お疲れさまです。 Meeting moved to 3pm #{n}"));
            }
            let columns: Vec<ArrayRef> = cols
                .into_iter()
                .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
                .collect();
            RecordBatch::try_new(chatlake_source_lineworks::raw_schema(), columns)
                .expect("the raw schema has five Utf8 columns")
        })
        .collect()
}

fn lineworks_mapping(c: &mut Criterion) {
    // The binary's allocator settings: without them, where a batch's fresh buffers land moves
    // these times by half (the same build measured 6.8 or 11.5 ms depending on how it was run).
    chatlake_allocator::tune();
    let batches = raw_batches();
    let window = Arc::new(Window {
        source: "lw".into(),
        stream: "message_contents".into(),
        index: 0,
        start: None,
        end: None,
        utc_offset: chrono::FixedOffset::east_opt(9 * 3600).expect("+09:00"),
        label: "bench".into(),
        key_name: None,
    });
    let cx = TransformContext {
        name: "canonical".into(),
        metrics: Arc::default(),
        dead_letters: DeadLetters::in_dir(&std::env::temp_dir()),
        run: Arc::new(RunInfo {
            pipeline: "bench".into(),
            run_id: "bench".into(),
            started_at: chrono::Utc::now(),
        }),
    };
    let mut group = c.benchmark_group("normalize");
    group.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    group.bench_function("lineworks_49k_rows", |b| {
        b.iter(|| {
            let mut t = NormalizeConfig::default()
                .build(&BuildContext::default())
                .expect("normalize builds");
            let mut out = Emitter::default();
            for batch in &batches {
                t.transform(Batch::new(window.clone(), batch.clone()), &mut out, &cx)
                    .expect("the rows map");
            }
            t.window_done(&window, &mut out, &cx).expect("window ends");
            let rows: usize = out.drain().map(|b| black_box(b).num_rows()).sum();
            assert_eq!(rows, BATCH * BATCHES);
        })
    });
    group.finish();
}

criterion_group!(benches, lineworks_mapping);
criterion_main!(benches);

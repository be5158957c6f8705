//! Parquet encoding of canonical batches with the sink's defaults (zstd level 1, 120 Ki-row row
//! groups) into a temporary file. `cargo bench -p chatlake-sink-parquet`.

use std::hint::black_box;

use arrow::record_batch::RecordBatch;
use chatlake_core::schema;
use chatlake_lake::FileFormat;
use chatlake_lake::testing::{canonical_batch, message};
use chatlake_sink_parquet::{ParquetFormat, ParquetSinkConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const BATCH: usize = 8192;
const BATCHES: usize = 6;

fn batches() -> Vec<RecordBatch> {
    const TEXTS: [&str; 4] = [
        "お疲れさまです。",
        "Meeting moved to 3pm, room B",
        "詳細は以下の通りです：\n・A案\r\n・B案",
        "회의 자료 공유드립니다 🙏",
    ];
    (0..BATCHES)
        .map(|b| {
            let rows: Vec<_> = (0..BATCH)
                .map(|i| {
                    let n = b * BATCH + i;
                    let mut m = message(
                        "lineworks",
                        &format!("{:032x}", n as u128 * 0x9E37_79B9_7F4A_7C15),
                        &format!(
                            "2025-05-01T{:02}:{:02}:{:02}Z",
                            n / 3600 % 24,
                            n / 60 % 60,
                            n % 60
                        ),
                    );
                    m["text"] = json!(format!("{} #{}", TEXTS[n % 4], n % 997));
                    m["sender_id"] = json!(format!("u{}@works.example", 100_000 + n % 800));
                    m["conversation_id"] = json!((10_000_000 + (n % 1500) * 37).to_string());
                    m
                })
                .collect();
            canonical_batch(&rows)
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    // The binary's allocator settings: without them, where a batch's fresh buffers land moves
    // these times by half (the same build measured 6.8 or 11.5 ms depending on how it was run).
    chatlake_allocator::tune();
    let input = batches();
    // The sink's defaults: zstd level 1, no dictionary for ids, text and times.
    let config: ParquetSinkConfig =
        serde_json::from_value(json!({"path": "unused"})).expect("a valid config");
    let format = ParquetFormat::new(config.properties().expect("valid properties"));
    let mut group = c.benchmark_group("parquet");
    group.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    group.bench_function("encode_49k_canonical_rows_sink_defaults", |b| {
        b.iter(|| {
            let file = tempfile::tempfile().expect("a temporary file");
            let mut w = format.create(file, schema::canonical()).expect("a writer");
            for batch in &input {
                w.write(batch).expect("encodes");
            }
            black_box(w.finish().expect("footer written"));
        })
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);

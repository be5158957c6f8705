//! CSV → Arrow batches: the LINE WORKS download parser on a synthetic file shaped like the
//! reference job's (BOM, CRLF, quoted fields with commas, quotes and line breaks, CJK text).
//! `cargo bench -p chatlake-source-lineworks`; the full job is measured by `bench/run.py`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arrow::record_batch::RecordBatch;
use chatlake_source_lineworks::Language;
use chatlake_source_lineworks::parse::{ParseOptions, RowSink, parse};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ROWS: usize = 50_000;

/// A LINE WORKS download of `rows` rows; deterministic.
fn sample_csv(rows: usize) -> Vec<u8> {
    const TEXTS: [&str; 6] = [
        "お疲れさまです。",
        "Meeting moved to 3pm, room B",
        "Please check the \"Q2 report\"",
        "詳細は以下の通りです：\n・A案\r\n・B案",
        "회의 자료 공유드립니다 🙏",
        "(写真) IMG_0042.jpg",
    ];
    let mut out = b"\xEF\xBB\xBFDate,Sender,Recipient,Message room ID,Message\r\n".to_vec();
    let mut x: u64 = 42;
    for i in 0..rows {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (x >> 33) as usize;
        let sender = if r.is_multiple_of(33) {
            "[Bot]Alert Bot(bot2000@works.example)".to_string()
        } else {
            format!(
                "佐藤 太郎 ({})(u{}@works.example)",
                r % 7,
                100_000 + r % 800
            )
        };
        let text = format!("{} #{}", TEXTS[r % TEXTS.len()], r % 1000);
        let fields = [
            format!(
                "2025-05-{:02} {:02}:{:02}:{:02}",
                1 + i * 30 / rows,
                r % 24,
                r % 60,
                i % 60
            ),
            sender,
            format!("営業部 #{}(room{}@group.works.example)", r % 1500, r % 1500),
            (10_000_000 + (r % 1500) * 37).to_string(),
            text,
        ];
        for (j, f) in fields.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            if f.contains([',', '"', '\n', '\r']) {
                out.push(b'"');
                out.extend_from_slice(f.replace('"', "\"\"").as_bytes());
                out.push(b'"');
            } else {
                out.extend_from_slice(f.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

struct Count(usize);

impl RowSink for Count {
    fn batch(&mut self, batch: RecordBatch) -> Result<(), String> {
        self.0 += black_box(batch).num_rows();
        Ok(())
    }
    fn dead_letter(&mut self, reason: &str, _raw: serde_json::Value) -> Result<(), String> {
        Err(format!("unexpected dead letter: {reason}"))
    }
}

fn csv_to_batches(c: &mut Criterion) {
    // The binary's allocator settings: without them, where a batch's fresh buffers land moves
    // these times by half (the same build measured 6.8 or 11.5 ms depending on how it was run).
    chatlake_allocator::tune();
    let csv = sample_csv(ROWS);
    let options = ParseOptions {
        language: Language::EnUs,
        batch_size: 8192,
        origin: "bench".into(),
        header_warned: Arc::new(AtomicBool::new(false)),
        keep_raw: false,
    };
    let mut group = c.benchmark_group("lineworks_parse");
    group.throughput(Throughput::Bytes(csv.len() as u64));
    group.bench_function("csv_to_batches_50k_rows", |b| {
        b.iter(|| {
            let mut sink = Count(0);
            parse(std::io::Cursor::new(&csv[..]), &options, &mut sink).expect("the sample parses");
            assert_eq!(sink.0, ROWS);
        })
    });
    group.finish();
}

criterion_group!(benches, csv_to_batches);
criterion_main!(benches);

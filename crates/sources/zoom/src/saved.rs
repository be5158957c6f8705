//! Saved response pages (`files = [...]`): a JSON Lines file, one page per line, read on blocking
//! threads.
//!
//! Pages are independent, so a large file is cut at line boundaries into parts, one per core (at
//! most [`MAX_PARTS`], and none smaller than [`MIN_PART`]), each parsed by its own thread into its
//! own batches. A part is read in chunks and parsed in place: no copy of a line. A line that is
//! not a page becomes a dead letter whose reason gives its line number and byte offset in the
//! file.

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::path::Path;

use chatlake_source_kit::parsed::RowSink;

use crate::parse::RawBuilder;

/// Rows collected before a batch goes downstream.
const BATCH_ROWS: usize = 4096;
/// At most this many parser threads per file.
const MAX_PARTS: usize = 4;
/// A file is cut into parts of at least this many bytes.
const MIN_PART: u64 = 16 << 20;
/// Bytes read at a time (a longer line grows the buffer).
const CHUNK: usize = 1 << 20;

/// A byte range of a file that starts at a line's start and ends after a line's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    pub start: u64,
    pub end: u64,
}

/// Why a part was not read to its end.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    /// Downstream stopped, or a dead letter could not be written.
    Stopped(String),
}

/// How many threads parse a file of `len` bytes.
fn parts_for(len: u64) -> usize {
    let cores = chatlake_core::runtime::cores();
    let by_size = usize::try_from(len / MIN_PART).unwrap_or(usize::MAX).max(1);
    cores.min(MAX_PARTS).min(by_size)
}

/// Cuts the file at `path` into parts at line boundaries (see [`parts_for`]).
pub(crate) fn split_lines(path: &Path) -> io::Result<Vec<Part>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let parts = parts_for(len) as u64;
    let mut cuts = vec![0];
    for i in 1..parts {
        let from = (len * i / parts).max(*cuts.last().unwrap_or(&0));
        let Some(cut) = line_start_from(&mut file, from)? else {
            break;
        };
        if cut < len && cut > *cuts.last().unwrap_or(&0) {
            cuts.push(cut);
        }
    }
    cuts.push(len);
    Ok(cuts
        .windows(2)
        .map(|w| Part {
            start: w[0],
            end: w[1],
        })
        .collect())
}

/// The offset just after the first newline at or after `from`, or `None` at the end of the file.
fn line_start_from(file: &mut File, from: u64) -> io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(from))?;
    let mut reader = io::BufReader::with_capacity(64 << 10, file);
    let mut offset = from;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        let mut rest = buf;
        let n = rest.skip_until(b'\n')?;
        let found = buf[n - 1] == b'\n';
        reader.consume(n);
        offset += n as u64;
        if found {
            return Ok(Some(offset));
        }
    }
}

/// Reads the pages of `part` into batches for `sink`; returns the bytes read.
pub(crate) fn read_pages(
    path: &Path,
    part: Part,
    record_type: &'static str,
    keep_raw: bool,
    sink: &mut impl RowSink,
) -> Result<u64, ReadError> {
    let mut file = File::open(path).map_err(ReadError::Io)?;
    file.seek(SeekFrom::Start(part.start))
        .map_err(ReadError::Io)?;
    let mut input = file.take(part.end - part.start);
    let mut builder = RawBuilder::new(record_type).keeping_raw(keep_raw);
    let mut buf = vec![0u8; CHUNK];
    // `buf[from..filled]` is read and not parsed yet; it starts at file offset `offset`.
    let (mut from, mut filled, mut offset) = (0usize, 0usize, part.start);
    let mut line_no = 0u64;
    let mut lines_before: Option<u64> = (part.start == 0).then_some(0);
    let mut eof = false;
    while !eof {
        if from > 0 {
            buf.copy_within(from..filled, 0);
            filled -= from;
            from = 0;
        }
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = loop {
            match input.read(&mut buf[filled..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        };
        filled += n;
        eof = n == 0;
        loop {
            let mut rest = &buf[from..filled];
            if rest.is_empty() {
                break;
            }
            // `skip_until` finds the newline with the C library's memchr.
            let len = rest.skip_until(b'\n').map_err(ReadError::Io)?;
            let complete = buf[from + len - 1] == b'\n';
            if !complete && !eof {
                break;
            }
            line_no += 1;
            let line = &buf[from..from + len];
            let page = line.strip_suffix(b"\n").unwrap_or(line);
            if !page.iter().all(u8::is_ascii_whitespace)
                && let Err(e) = builder.append_json(page, None)
            {
                // The line number in the file: the lines of the parts before are counted only
                // now, for the rare bad line.
                let before = match lines_before {
                    Some(n) => n,
                    None => {
                        *lines_before.insert(count_lines(path, part.start).map_err(ReadError::Io)?)
                    }
                };
                let raw = serde_json::Value::String(String::from_utf8_lossy(page).into_owned());
                let reason = format!(
                    "line {} (byte {offset}): not a response page: {e}",
                    before + line_no
                );
                sink.dead_letter(&reason, raw).map_err(ReadError::Stopped)?;
            }
            from += len;
            offset += len as u64;
            if builder.len() >= BATCH_ROWS {
                send(&mut builder, sink)?;
            }
        }
    }
    send(&mut builder, sink)?;
    Ok(offset - part.start)
}

/// The lines of `path` before byte `end` (which follows a newline).
fn count_lines(path: &Path, end: u64) -> io::Result<u64> {
    let mut input = File::open(path)?.take(end);
    let mut buf = vec![0u8; CHUNK];
    let mut lines = 0;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(lines),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

fn send(builder: &mut RawBuilder, sink: &mut impl RowSink) -> Result<(), ReadError> {
    if builder.is_empty() {
        return Ok(());
    }
    let batch = builder
        .finish()
        .map_err(|e| ReadError::Stopped(e.to_string()))?;
    sink.batch(batch).map_err(ReadError::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::USER_MESSAGES;
    use arrow::array::{Array, AsArray};
    use arrow::record_batch::RecordBatch;

    #[derive(Default)]
    struct Collect {
        batches: Vec<RecordBatch>,
        dead: Vec<String>,
    }

    impl RowSink for Collect {
        fn batch(&mut self, batch: RecordBatch) -> Result<(), String> {
            self.batches.push(batch);
            Ok(())
        }

        fn dead_letter(&mut self, reason: &str, _raw: serde_json::Value) -> Result<(), String> {
            self.dead.push(reason.to_string());
            Ok(())
        }
    }

    fn page(channel: &str, ids: &[&str]) -> String {
        let items: Vec<String> = ids
            .iter()
            .map(|id| format!(r#"{{"id":"{id}","message":"a\nb","timestamp":1,"rich_text":[]}}"#))
            .collect();
        format!(
            r#"{{"user_id":"u","to_channel":"{channel}","messages":[{}]}}"#,
            items.join(",")
        )
    }

    #[test]
    fn parts_together_read_every_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages.jsonl");
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(&page(&format!("c{i}"), &["x", "y"]));
            text.push('\n');
        }
        text.push_str(&page("last", &["z"])); // no newline at the end
        std::fs::write(&path, &text).unwrap();
        let len = text.len() as u64;
        // Cut by hand into uneven parts.
        let mut file = File::open(&path).unwrap();
        let mut cuts = vec![0];
        for at in [1, len / 3, len / 3 + 1, len - 5] {
            if let Some(c) = line_start_from(&mut file, at).unwrap()
                && c > *cuts.last().unwrap()
                && c < len
            {
                cuts.push(c);
            }
        }
        cuts.push(len);
        let mut rows = 0;
        let mut bytes = 0;
        for w in cuts.windows(2) {
            let mut sink = Collect::default();
            bytes += read_pages(
                &path,
                Part {
                    start: w[0],
                    end: w[1],
                },
                USER_MESSAGES,
                false,
                &mut sink,
            )
            .unwrap();
            assert!(sink.dead.is_empty(), "{:?}", sink.dead);
            for b in &sink.batches {
                rows += b.num_rows();
                let text = b.column_by_name("message").unwrap().as_string::<i32>();
                assert_eq!(text.value(0), "a\nb");
            }
        }
        assert_eq!(rows, 401);
        assert_eq!(bytes, len);
        assert_eq!(
            split_lines(&path).unwrap().len(),
            1,
            "a small file is one part"
        );
    }

    #[test]
    fn a_bad_line_is_a_dead_letter_and_keeps_the_rows_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages.jsonl");
        let text = format!(
            "{}\n\n{}\n{}\n",
            page("c1", &["a", "b"]),
            // Fails on its second message, after the first was appended.
            r#"{"to_channel":"c2","messages":[{"id":"p"},{"id":3}]}"#,
            page("c3", &["c"])
        );
        std::fs::write(&path, &text).unwrap();
        let mut sink = Collect::default();
        let part = Part {
            start: 0,
            end: text.len() as u64,
        };
        read_pages(&path, part, USER_MESSAGES, false, &mut sink).unwrap();
        assert_eq!(sink.dead.len(), 1);
        let bad_at = text.find(r#"{"to_channel":"c2""#).unwrap();
        let reason = format!("line 3 (byte {bad_at}): not a response page");
        assert!(sink.dead[0].starts_with(&reason), "{}", sink.dead[0]);
        // Read as a later part of the file, the line keeps its number in the file.
        let mut later = Collect::default();
        let part = Part {
            start: text.find("\n\n").unwrap() as u64 + 1,
            end: text.len() as u64,
        };
        read_pages(&path, part, USER_MESSAGES, false, &mut later).unwrap();
        assert_eq!(later.dead.len(), 1);
        assert!(later.dead[0].starts_with(&reason), "{}", later.dead[0]);
        let rows: Vec<String> = sink
            .batches
            .iter()
            .flat_map(|b| {
                let ids = b.column_by_name("id").unwrap().as_string::<i32>().clone();
                let conv = b
                    .column_by_name("conversation_id")
                    .unwrap()
                    .as_string::<i32>()
                    .clone();
                (0..b.num_rows())
                    .map(|i| format!("{}@{}", ids.value(i), conv.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(rows, ["a@c1", "b@c1", "c@c3"]);
        for b in &sink.batches {
            for c in b.columns() {
                assert_eq!(c.len(), b.num_rows());
            }
        }
    }
}

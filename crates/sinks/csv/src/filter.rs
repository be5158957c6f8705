//! Taking rows out of a CSV file ([`chatlake_lake::FileFormat::filter_file`]). Records are
//! parsed with the `csv` crate (which arrow-csv writes through) only to read their key fields;
//! the header and every record kept are copied as the bytes they are in the file, so quoting,
//! delimiter and line ends stay exactly as the sink wrote them.
//!
//! Key columns are found by the header's names. An empty field is null: arrow-csv writes a null
//! as an empty field and an empty string the same way, so a key of empty text matches no row.

use std::fs::File;
use std::io::{self, Read, Write};

use chatlake_core::removal::encode_cell;
use chatlake_lake::text::{FileInput, FileOutput, TextCompression};
use chatlake_lake::{Filtered, FormatError, MissingKeyColumn};

/// Copies the header and the records of `input` whose key `goes` does not pick to `output`
/// (when given).
pub(crate) fn filter_records(
    input: File,
    compression: TextCompression,
    delimiter: u8,
    key_columns: &[&str],
    goes: &dyn Fn(&[u8]) -> bool,
    output: Option<File>,
) -> Result<Filtered, FormatError> {
    // The writer ends records with `\n` and quotes fields holding `\r` or `\n`; reading with the
    // same terminator makes each record's bytes end right after its `\n`.
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(Recorder::new(FileInput::new(input, compression)));
    let mut out = output.map(|f| FileOutput::new(f, compression));
    let mut record = csv::ByteRecord::new();
    let (mut kept, mut dropped) = (0, 0);
    if reader.read_byte_record(&mut record)? {
        let indices = key_columns
            .iter()
            .map(|column| {
                record
                    .iter()
                    .position(|name| name == column.as_bytes())
                    .ok_or_else(|| MissingKeyColumn {
                        column: column.to_string(),
                        available: record
                            .iter()
                            .map(String::from_utf8_lossy)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        copy(&mut reader, &mut out)?;
        let mut key = Vec::new();
        while reader.read_byte_record(&mut record)? {
            key.clear();
            for &i in &indices {
                // Every record has the header's length: the reader refuses any other.
                let field = record.get(i).unwrap_or_default();
                encode_cell(&mut key, (!field.is_empty()).then_some(field));
            }
            if goes(&key) {
                dropped += 1;
                let end = reader.position().byte();
                reader.get_mut().skip_to(end);
            } else {
                kept += 1;
                copy(&mut reader, &mut out)?;
            }
        }
    }
    Ok(Filtered {
        kept,
        dropped,
        output: out.map(FileOutput::finish).transpose()?,
    })
}

/// Writes the bytes of the record just read to `out` (when given).
fn copy(
    reader: &mut csv::Reader<Recorder<FileInput>>,
    out: &mut Option<FileOutput>,
) -> io::Result<()> {
    let end = reader.position().byte();
    let bytes = reader.get_mut().skip_to(end);
    match out {
        Some(out) => out.write_all(bytes),
        None => Ok(()),
    }
}

/// Keeps the bytes the CSV reader reads until it has parsed past them, so that the bytes of a
/// record can be copied as they are in the file.
struct Recorder<R> {
    inner: R,
    bytes: Vec<u8>,
    /// Where `bytes[0]` is in the stream.
    offset: u64,
    /// How much of `bytes` the parser has gone past.
    parsed: usize,
}

impl<R> Recorder<R> {
    fn new(inner: R) -> Self {
        Recorder {
            inner,
            bytes: Vec::new(),
            offset: 0,
            parsed: 0,
        }
    }

    /// The bytes from where the last call ended to `end` (a stream offset the parser reached).
    fn skip_to(&mut self, end: u64) -> &[u8] {
        let from = self.parsed;
        let to = usize::try_from(end.saturating_sub(self.offset))
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        self.parsed = to.max(from);
        &self.bytes[from..self.parsed]
    }
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Drop what was parsed now and then, not per record: only the reader's look-ahead and
        // the record being parsed need to stay.
        if self.parsed >= 64 * 1024 {
            self.bytes.drain(..self.parsed);
            self.offset += self.parsed as u64;
            self.parsed = 0;
        }
        let n = self.inner.read(buf)?;
        self.bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

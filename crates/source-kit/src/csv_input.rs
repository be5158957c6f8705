//! CSV records split by a SIMD tokenizer, with the `csv` crate's results.
//!
//! The `csv` crate reads a byte at a time through a state machine (≈ 1 GB/s here); `simd-csv`
//! finds separators, quotes and line ends with SIMD searches: splitting the 147 MB of the 1M-row
//! LINE WORKS input took 58 ms instead of 137 ms on one core. Parsers get each record's fields
//! where they lie in the reader's buffer ([`CsvRecords::for_each_record`]); only a field with
//! doubled quotes is copied out to unescape it. The two agree on well-formed RFC 4180 records, and differ on some malformed ones: a
//! quote inside an unquoted field (`ab"c`) or text after a closing quote starts a quoted section
//! for `simd-csv` but is a literal quote for `csv`, and a lone CR ends a record only for `csv`.
//! Readers of our files must get the same rows whatever the input, so every record is checked
//! against the dialect both agree on ([`within_common_dialect`]); at the first record outside it
//! the input is read again from that record's first byte by the `csv` crate, to the end.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::{ControlFlow, Range};
use std::rc::Rc;

/// Reads CSV records (no header handling, any number of fields per record) from a seekable
/// input; see the module docs.
pub struct CsvRecords<R: Read + Seek> {
    /// The input, and where the CSV starts in it (past a BOM).
    origin: Origin<R>,
    /// Where the `csv` crate took over, in bytes from the CSV's start: its positions count
    /// from there.
    exact_from: u64,
    fast: Option<simd_csv::ZeroCopyReader<Shared<R>>>,
    exact: Option<csv::Reader<Shared<R>>>,
    /// The fields of the record handed out, in its bytes.
    bounds: Vec<Range<usize>>,
    /// A record whose fields had to be copied: unescaped, or read by the `csv` crate.
    copied: csv::ByteRecord,
}

/// One record's fields, borrowed from the reader: each field a range of [`Self::as_slice`].
#[derive(Clone, Copy)]
pub struct CsvRecord<'a> {
    bytes: &'a [u8],
    bounds: &'a [Range<usize>],
    /// Where the record starts, in bytes from the start of the CSV (past a BOM).
    offset: u64,
    /// Whether a field may hold a line end: only a quoted one can, so a record the fast reader
    /// found without a quote cannot, and one that was copied may.
    quoted: bool,
    /// The input, to turn `offset` into a line number when one is asked for (rarely: for a
    /// dead letter).
    lines: &'a dyn LineOf,
}

impl<'a> CsvRecord<'a> {
    /// The number of fields.
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// Field `i`, unquoted and unescaped.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.bounds.get(i).map(|r| &self.bytes[r.clone()])
    }

    /// Where field `i` lies in [`Self::as_slice`].
    pub fn range(&self, i: usize) -> Option<Range<usize>> {
        self.bounds.get(i).cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        let bytes = self.bytes;
        self.bounds.iter().map(move |r| &bytes[r.clone()])
    }

    /// The bytes the fields lie in: the record as read (separators and the quotes around fields
    /// between them), or its fields side by side when they had to be copied. Every byte between
    /// two fields is ASCII.
    pub fn as_slice(&self) -> &'a [u8] {
        self.bytes
    }

    /// Where the record starts, in bytes from the start of the CSV (past a BOM).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether some field may hold a line end (false only when none can).
    pub fn may_span_lines(&self) -> bool {
        self.quoted
    }

    /// The line (from 1, past a BOM) the record starts on. Reads the input up to the record
    /// again to count its line ends, so it is for the rare record that is reported.
    pub fn line(&self) -> io::Result<u64> {
        self.lines.line_of(self.offset)
    }
}

/// Turns a byte offset of the CSV into the line it lies on.
trait LineOf {
    fn line_of(&self, offset: u64) -> io::Result<u64>;
}

/// The input and where the CSV starts in it: what [`CsvRecord::line`] reads.
struct Origin<R> {
    input: Shared<R>,
    base: u64,
}

impl<R: Read + Seek> LineOf for Origin<R> {
    fn line_of(&self, offset: u64) -> io::Result<u64> {
        let mut input = self.input.0.borrow_mut();
        // A reader's buffer runs ahead of the record it handed out: put the input back where
        // the reader left it.
        let resume = input.stream_position()?;
        input.seek(SeekFrom::Start(self.base))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = offset;
        let mut line_ends = 0u64;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let got = input.read(&mut buf[..want])?;
            if got == 0 {
                break;
            }
            line_ends += memchr::memchr_iter(b'\n', &buf[..got]).count() as u64;
            left -= got as u64;
        }
        input.seek(SeekFrom::Start(resume))?;
        Ok(line_ends + 1)
    }
}

impl<R: Read + Seek> CsvRecords<R> {
    /// Reads from `input`'s current position to its end.
    pub fn new(mut input: R) -> io::Result<Self> {
        let base = input.stream_position()?;
        let input = Shared(Rc::new(RefCell::new(input)));
        let fast = simd_csv::ZeroCopyReaderBuilder::with_capacity(256 * 1024)
            .has_headers(false)
            .flexible(true)
            .from_reader(input.clone());
        Ok(CsvRecords {
            origin: Origin { input, base },
            exact_from: 0,
            fast: Some(fast),
            exact: None,
            bounds: Vec::new(),
            copied: csv::ByteRecord::new(),
        })
    }

    /// Hands each record to `each`, in order, until the input ends or `each` breaks (the next
    /// call goes on from the record after). A callback rather than an iterator: the record
    /// borrows the reader's buffer, which a fallback to the `csv` crate replaces.
    pub fn for_each_record<E: From<csv::Error>>(
        &mut self,
        mut each: impl FnMut(CsvRecord<'_>) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        loop {
            if let Some(fast) = self.fast.as_mut() {
                let start = fast.position();
                let found = match fast.read_byte_record() {
                    Ok(Some(found)) => found,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(csv::Error::from(io::Error::other(e)).into()),
                };
                let record = match common_dialect(found.as_slice()) {
                    Some(Quotes::NoneDoubled { quoted }) => {
                        let raw = found.as_slice();
                        let base = raw.as_ptr() as usize;
                        self.bounds.clear();
                        self.bounds.extend(found.unquoted_iter().map(|field| {
                            let at = field.as_ptr() as usize - base;
                            at..at + field.len()
                        }));
                        CsvRecord {
                            bytes: raw,
                            bounds: &self.bounds,
                            offset: start,
                            quoted,
                            lines: &self.origin,
                        }
                    }
                    Some(Quotes::Doubled) => {
                        self.copied.clear();
                        for field in found.unescaped_iter() {
                            self.copied.push_field(&field);
                        }
                        copied_record(&self.copied, &mut self.bounds, start, &self.origin)
                    }
                    None => {
                        self.fast = None;
                        self.origin
                            .input
                            .0
                            .borrow_mut()
                            .seek(SeekFrom::Start(self.origin.base + start))
                            .map_err(csv::Error::from)?;
                        self.exact_from = start;
                        self.exact = Some(
                            csv::ReaderBuilder::new()
                                .has_headers(false)
                                .flexible(true)
                                .from_reader(self.origin.input.clone()),
                        );
                        continue;
                    }
                };
                if each(record)?.is_break() {
                    return Ok(());
                }
                continue;
            }
            let Some(exact) = self.exact.as_mut() else {
                return Ok(());
            };
            let start = self.exact_from + exact.position().byte();
            if !exact.read_byte_record(&mut self.copied)? {
                return Ok(());
            }
            let record = copied_record(&self.copied, &mut self.bounds, start, &self.origin);
            if each(record)?.is_break() {
                return Ok(());
            }
        }
    }

    /// The next record into `record`; false at the end.
    pub fn read_byte_record(&mut self, record: &mut csv::ByteRecord) -> Result<bool, csv::Error> {
        let mut read = false;
        self.for_each_record(|found| {
            record.clear();
            for field in found.iter() {
                record.push_field(field);
            }
            read = true;
            Ok::<_, csv::Error>(ControlFlow::Break(()))
        })?;
        Ok(read)
    }

    /// Whether a record outside the common dialect sent the rest of the input to the `csv`
    /// crate.
    pub fn fell_back(&self) -> bool {
        self.exact.is_some()
    }
}

/// What the first bytes of a text file say about its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bom {
    /// No byte-order mark.
    None,
    /// A UTF-8 BOM, now skipped.
    Utf8,
    /// A UTF-16 BOM (either byte order); the input is left where it was.
    Utf16,
}

/// Looks at the first bytes from `input`'s position and moves past a UTF-8 byte-order mark.
pub fn skip_bom<R: Read + Seek>(input: &mut R) -> io::Result<Bom> {
    let start = input.stream_position()?;
    let mut head = [0u8; 3];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    let head = &head[..got];
    let (bom, skip) = if head.starts_with(b"\xEF\xBB\xBF") {
        (Bom::Utf8, 3)
    } else if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
        (Bom::Utf16, 0)
    } else {
        (Bom::None, 0)
    };
    input.seek(SeekFrom::Start(start + skip))?;
    Ok(bom)
}

/// The input, read by one reader at a time: the fast one, then, after a fallback, the exact one.
struct Shared<R>(Rc<RefCell<R>>);

impl<R> Clone for Shared<R> {
    fn clone(&self) -> Self {
        Shared(Rc::clone(&self.0))
    }
}

impl<R: Read> Read for Shared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

/// The record `copied` holds (it started at `offset`), its bounds in `bounds`.
fn copied_record<'a>(
    copied: &'a csv::ByteRecord,
    bounds: &'a mut Vec<Range<usize>>,
    offset: u64,
    lines: &'a dyn LineOf,
) -> CsvRecord<'a> {
    bounds.clear();
    bounds.extend((0..copied.len()).filter_map(|i| copied.range(i)));
    CsvRecord {
        bytes: copied.as_slice(),
        bounds,
        offset,
        quoted: true,
        lines,
    }
}

/// How a record within the common dialect quotes.
#[derive(Debug, PartialEq, Eq)]
enum Quotes {
    /// No doubled quote: every field lies in the record's bytes as it is; `quoted` whether any
    /// field is quoted (and so may hold a line end).
    NoneDoubled { quoted: bool },
    /// A quoted field holds a doubled quote, to be unescaped.
    Doubled,
}

/// Whether both readers give the same fields for this record (its bytes without the line
/// end): every quote opens a field, closes it (followed by a separator or the end), or is one
/// of a doubled pair inside it; a CR only inside quotes; no quoted field left open. `None` if
/// not.
fn common_dialect(raw: &[u8]) -> Option<Quotes> {
    let mut quoted = false;
    let mut after_pair = None;
    let mut quotes = Quotes::NoneDoubled { quoted: false };
    for at in memchr::memchr2_iter(b'"', b'\r', raw) {
        if raw[at] == b'\r' {
            if !quoted {
                return None;
            }
            continue;
        }
        if after_pair == Some(at) {
            // The second quote of a doubled pair.
            after_pair = None;
            continue;
        }
        if !quoted {
            if at > 0 && raw[at - 1] != b',' {
                return None;
            }
            quoted = true;
            if quotes == (Quotes::NoneDoubled { quoted: false }) {
                quotes = Quotes::NoneDoubled { quoted: true };
            }
        } else if raw.get(at + 1) == Some(&b'"') {
            after_pair = Some(at + 1);
            quotes = Quotes::Doubled;
        } else if at + 1 == raw.len() || raw[at + 1] == b',' {
            quoted = false;
        } else {
            return None;
        }
    }
    (!quoted).then_some(quotes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn exact(bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes);
        let mut record = csv::ByteRecord::new();
        let mut out = Vec::new();
        while reader.read_byte_record(&mut record).unwrap() {
            out.push(record.iter().map(<[u8]>::to_vec).collect());
        }
        out
    }

    fn ours(bytes: &[u8]) -> (Vec<Vec<Vec<u8>>>, bool) {
        let mut reader = CsvRecords::new(Cursor::new(bytes)).unwrap();
        let mut out = Vec::new();
        reader
            .for_each_record(|record| {
                assert_eq!(record.len(), record.iter().count());
                out.push(record.iter().map(<[u8]>::to_vec).collect());
                Ok::<_, csv::Error>(ControlFlow::Continue(()))
            })
            .unwrap();
        (out, reader.fell_back())
    }

    /// Asserts that `text` reads as the `csv` crate reads it; whether it fell back.
    fn reads_as_the_csv_crate_reads(text: &[u8]) -> bool {
        let (records, fell_back) = ours(text);
        assert_eq!(records, exact(text), "{:?}", String::from_utf8_lossy(text));
        fell_back
    }

    #[test]
    fn a_break_goes_on_from_the_next_record_on_either_reader() {
        for text in [&b"a,b\nc,\"d\"\"\"\ne\nf,g\n"[..], b"a,b\nc,d\"\ne\nf,g\n"] {
            let mut reader = CsvRecords::new(Cursor::new(text)).unwrap();
            let mut taken = Vec::new();
            for _ in 0..5 {
                reader
                    .for_each_record(|record| {
                        taken.push(record.iter().map(<[u8]>::to_vec).collect::<Vec<_>>());
                        Ok::<_, csv::Error>(ControlFlow::Break(()))
                    })
                    .unwrap();
            }
            assert_eq!(taken, exact(text), "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn well_formed_input_stays_on_the_fast_reader() {
        let text = b"a,b,\"c, \"\"quoted\"\"\r\nline\"\r\n\r\n,\"\",x\n\"\"\"\"\nlast,no newline";
        let (records, fell_back) = ours(text);
        assert_eq!(records, exact(text));
        assert!(!fell_back);
        assert_eq!(records[0][2], b"c, \"quoted\"\r\nline");
    }

    #[test]
    fn malformed_records_are_read_as_the_csv_crate_reads_them() {
        for text in [
            &b"ok,1\nab\"c,d\n\"e\",f\n\"g\",\"h, i\"\n"[..],
            b"ok,1\n\"abc\"de\"f,g\nx,\"y\"\n",
            b"a,b\rc,d\re,f\n",
            b"a,\"unterminated\nb,c\n",
            b"\"x\"\"\",y\n\"a\"b\n",
        ] {
            let (records, fell_back) = ours(text);
            assert_eq!(records, exact(text), "{}", String::from_utf8_lossy(text));
            assert!(fell_back, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn any_mix_of_separators_quotes_and_line_ends_reads_as_the_csv_crate_reads_it() {
        // splitmix64: reproducible without a dependency.
        let mut state = 7u64;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let pieces: [&[u8]; 12] = [
            b"a",
            b"bc",
            b",",
            b"\"",
            b"\"\"",
            b"\r\n",
            b"\n",
            b"\r",
            b" ",
            "é".as_bytes(),
            b",\"x\"",
            b"\"q,\"\"r\"",
        ];
        let mut fast = 0;
        for _ in 0..3000 {
            let len = (next() % 40) as usize;
            let text: Vec<u8> = (0..len)
                .flat_map(|_| {
                    pieces[(next() % pieces.len() as u64) as usize]
                        .iter()
                        .copied()
                })
                .collect();
            fast += usize::from(!reads_as_the_csv_crate_reads(&text));
        }
        // Not every case falls back: the fast reader is what gets tested too.
        assert!(fast > 300, "{fast} of 3000 stayed on the fast reader");
        // Well-formed records only (quoted fields that contain everything), many per input.
        for _ in 0..500 {
            let mut text = Vec::new();
            for _ in 0..(next() % 20) {
                for f in 0..(1 + next() % 4) {
                    if f > 0 {
                        text.push(b',');
                    }
                    if next() % 2 == 0 {
                        text.push(b'"');
                        for _ in 0..(next() % 6) {
                            let p = pieces[(next() % pieces.len() as u64) as usize];
                            text.extend(
                                p.iter().flat_map(|&b| {
                                    if b == b'"' { vec![b'"', b'"'] } else { vec![b] }
                                }),
                            );
                        }
                        text.push(b'"');
                    } else {
                        text.extend_from_slice(b"plain");
                    }
                }
                text.extend_from_slice(if next() % 2 == 0 { b"\r\n" } else { b"\n" });
            }
            let fell_back = reads_as_the_csv_crate_reads(&text);
            assert!(!fell_back, "{:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn records_know_their_offset_and_line_on_either_reader() {
        // A quoted line end on line 2, a doubled quote on line 4, a fallback at line 5.
        let text = b"a,b\n\"c\nd\",e\nf,g\n\"h\"\"\",i\nbad\"x,1\nafter,2\n";
        let mut input = Cursor::new(text.to_vec());
        skip_bom(&mut input).unwrap();
        let mut reader = CsvRecords::new(input).unwrap();
        let mut seen = Vec::new();
        reader
            .for_each_record(|record| {
                seen.push((
                    String::from_utf8_lossy(record.get(0).unwrap()).into_owned(),
                    record.offset(),
                    record.line().unwrap(),
                    record.may_span_lines(),
                ));
                Ok::<_, csv::Error>(ControlFlow::Continue(()))
            })
            .unwrap();
        assert!(reader.fell_back());
        let want = [
            ("a", 0, 1, false),
            ("c\nd", 4, 2, true),
            ("f", 12, 4, false),
            ("h\"", 16, 5, true),
            ("bad\"x", 24, 6, true),
            ("after", 32, 7, true),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(f, o, l, q)| (f.to_string(), *o, *l, *q))
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn byte_order_marks() {
        let mut utf8 = Cursor::new(b"\xEF\xBB\xBFa,b".to_vec());
        assert_eq!(skip_bom(&mut utf8).unwrap(), Bom::Utf8);
        assert_eq!(utf8.position(), 3);
        for (bytes, bom) in [
            (&b"\xFF\xFEa\0"[..], Bom::Utf16),
            (b"\xFE\xFF\0a", Bom::Utf16),
            (b"ab", Bom::None),
            (b"", Bom::None),
        ] {
            let mut input = Cursor::new(bytes);
            assert_eq!(skip_bom(&mut input).unwrap(), bom);
            assert_eq!(input.position(), 0);
        }
    }

    #[test]
    fn a_fallback_resumes_at_the_record_in_a_file_past_a_bom() {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        let body = b"h1,h2\nok,1\nbad\"x,2\nafter,3\n";
        bytes.extend_from_slice(body);
        let mut input = Cursor::new(bytes);
        assert_eq!(skip_bom(&mut input).unwrap(), Bom::Utf8);
        let mut reader = CsvRecords::new(input).unwrap();
        let mut record = csv::ByteRecord::new();
        let mut out = Vec::new();
        while reader.read_byte_record(&mut record).unwrap() {
            out.push(record.iter().map(<[u8]>::to_vec).collect::<Vec<_>>());
        }
        assert_eq!(out, exact(body));
        assert!(reader.fell_back());
    }
}

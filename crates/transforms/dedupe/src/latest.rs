//! `keep = "latest"` in bounded memory: the input goes to disk as it arrives, the winners are
//! found a few key partitions at a time, and the input is read back once, filtered.
//!
//! * While input arrives, each batch is appended to an Arrow IPC stream (the arrival-order
//!   spill; a new file whenever the schema changes), without the columns that hold one value
//!   in every row (see `spill_shape.rs`), and each row gets a number in arrival order
//!   and a 32-byte record (128-bit key hash, version, row number) in one of 64 key-partition
//!   files picked by the top 6 bits of the hash. In memory: the 64 file buffers and one small
//!   entry per batch (its window and first row), nothing per row or per key.
//! * At the end, the key partitions are read by two threads, each sorted by (hash, version
//!   descending, row), and the first row of each hash is marked in a winner bitmap, 1 bit per
//!   input row (at most four partitions in memory at once). Records
//!   of failed windows are skipped. If one partition holds more than a million records (a key
//!   repeated very often), it is sorted and reduced to one record per key whenever it doubles,
//!   so memory stays at about twice the partition's distinct keys × 32 bytes.
//! * Then the arrival-order spill is read back batch by batch, filtered with its slice of the
//!   bitmap and emitted with its window, in the order it arrived.
//! * With `across_runs` ([`ReplaceEarlier`]), the rows earlier runs loaded join the key
//!   partitions at `finish` as *prior* records (hash, version, the window that holds them; see
//!   `history.rs`). A prior record wins a tie and is never emitted again; a new row that beats
//!   one is emitted and, as it is read back, its key columns go to the run's removal log with the
//!   earlier window (see `chatlake_core::removal`), so the sinks take the old version out after
//!   the new one is committed. This run's winners are written as the next run's history.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::buffer::{BooleanBuffer, Buffer};
use arrow::compute::filter_record_batch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use chatlake_core::durable;
use chatlake_core::removal::{RemovalLog, RemovalWriter};
use chatlake_core::{Emitter, WindowRef};

use crate::error::{Context, SpillError, spill_error};
use crate::history::{History, HistoryWriter};
use crate::spill_shape::SpillShape;

/// Key partitions: the top `PART_BITS` bits of the key hash pick one.
const PART_BITS: u32 = 6;
const PARTS: usize = 1 << PART_BITS;
/// Bytes of one key record: hash (16), version (8), row (8).
const RECORD: usize = 32;
/// Buffer of each spill file.
const IO_BUF: usize = 64 * 1024;
/// A key partition with more records than this is reduced to one record per key as it is read.
const REDUCE_AT: usize = 1 << 20;
/// The row field of a prior record has this bit set; the rest is its window's index.
const PRIOR: u64 = 1 << 63;

/// What is kept in memory of one spilled batch.
struct SpilledBatch {
    window: WindowRef,
    /// Arrival number of its first row.
    first_row: u64,
    rows: usize,
    /// Its window failed: none of its rows may win, and it is not read back.
    failed: bool,
}

/// One arrival-order file: batches of one schema and shape.
struct Segment {
    path: PathBuf,
    batches: usize,
    shape: SpillShape,
}

/// The open spill files, from the first batch to `finish`.
struct Open {
    segments: Vec<Segment>,
    /// The writer of the last segment, until it ends.
    writer: Option<StreamWriter<BufWriter<File>>>,
    parts: Vec<BufWriter<File>>,
}

/// The read-back, from `finish` until the last winner is out.
struct Reading {
    segments: std::vec::IntoIter<Segment>,
    /// The segment being read and how many of its batches are left.
    current: Option<(Segment, StreamReader<BufReader<File>>, usize)>,
    winners: Buffer,
    /// Index in `batches` of the next batch read back.
    next_batch: usize,
    /// Index in `ReplaceEarlier::supersedes` of the next entry.
    next_supersede: usize,
}

/// `across_runs`: what replacing rows of earlier runs needs.
pub(crate) struct ReplaceEarlier {
    pub(crate) history: History,
    pub(crate) removals: RemovalLog,
    /// The transform's name: its removal log is named after it.
    pub(crate) name: String,
    /// The key columns, written to the removal log.
    pub(crate) key: Vec<String>,
    /// Set at `finish`.
    state: Option<Replacing>,
}

impl ReplaceEarlier {
    pub(crate) fn new(history: History, removals: RemovalLog, name: &str, key: &[String]) -> Self {
        ReplaceEarlier {
            history,
            removals,
            name: name.to_string(),
            key: key.to_vec(),
            state: None,
        }
    }
}

/// From `finish` until the last winner is out.
struct Replacing {
    /// Windows holding prior rows, by the index in their records.
    prior_windows: Vec<String>,
    /// New winners that replace a prior row: (row, index of the prior row's window), by row.
    supersedes: Vec<(u64, u32)>,
    removals: RemovalWriter,
}

/// The spill of one `keep = "latest"` transform. See the module docs.
pub(crate) struct LatestSpill {
    dir: PathBuf,
    open: Option<Open>,
    reading: Option<Reading>,
    batches: Vec<SpilledBatch>,
    rows: u64,
    /// [`REDUCE_AT`], but for tests.
    reduce_at: usize,
    /// The directory exists and is ours to remove.
    created: bool,
    /// `across_runs`.
    replace: Option<ReplaceEarlier>,
}

/// Tells spill directories of transforms built without a state directory apart.
static UNNAMED: AtomicU64 = AtomicU64::new(0);

impl LatestSpill {
    /// Spills under `<state_dir>/spill/<name>/`, or a fresh directory under the system's
    /// temporary directory if `state_dir` is empty (a transform built for a test).
    pub(crate) fn new(state_dir: &Path, name: &str) -> Self {
        let dir = if state_dir.as_os_str().is_empty() {
            std::env::temp_dir().join(format!(
                "chatlake-dedupe-spill-{}-{}",
                std::process::id(),
                UNNAMED.fetch_add(1, Ordering::Relaxed)
            ))
        } else {
            state_dir.join("spill").join(name)
        };
        LatestSpill {
            dir,
            open: None,
            reading: None,
            batches: Vec::new(),
            rows: 0,
            reduce_at: REDUCE_AT,
            created: false,
            replace: None,
        }
    }

    /// Compares the input with the rows earlier runs loaded, too.
    pub(crate) fn replacing_earlier(mut self, replace: ReplaceEarlier) -> Self {
        self.replace = Some(replace);
        self
    }

    /// The history of earlier runs, with `across_runs`.
    pub(crate) fn history(&mut self) -> Option<&mut History> {
        self.replace.as_mut().map(|r| &mut r.history)
    }

    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the partition reduction run on small inputs.
    #[cfg(test)]
    pub(crate) fn set_reduce_at(&mut self, records: usize) {
        self.reduce_at = records;
    }

    /// Appends a batch and its rows' key hashes and versions.
    pub(crate) fn push(
        &mut self,
        window: &WindowRef,
        data: &RecordBatch,
        hashes: &[u128],
        versions: &Int64Array,
    ) -> Result<(), SpillError> {
        if data.num_rows() == 0 {
            return Ok(());
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                self.created = true;
                self.open.insert(Open::create(&self.dir)?)
            }
        };
        let last = open.segments.last().filter(|_| open.writer.is_some());
        if !last.is_some_and(|s| s.shape.fits(data)) {
            let shape = match last {
                Some(s) if s.shape.schema() == &data.schema() => s.shape.narrowed(data),
                _ => SpillShape::of(data),
            };
            open.start_segment(&self.dir, shape)?;
        }
        let writer = open.writer.as_mut().expect("a segment is open");
        let segment = open.segments.last_mut().expect("a segment is open");
        let written = segment.shape.strip(data).writing(&segment.path)?;
        writer.write(&written).writing(&segment.path)?;
        segment.batches += 1;

        let mut record = [0u8; RECORD];
        for (i, &hash) in hashes.iter().enumerate() {
            let version = if versions.is_null(i) {
                i64::MIN
            } else {
                versions.value(i)
            };
            record[..16].copy_from_slice(&hash.to_le_bytes());
            record[16..24].copy_from_slice(&version.to_le_bytes());
            record[24..].copy_from_slice(&(self.rows + i as u64).to_le_bytes());
            let p = (hash >> (128 - PART_BITS)) as usize;
            if let Err(e) = open.parts[p].write_all(&record) {
                // The path only on failure: formatting it per row cost 1 % of a run.
                return Err(spill_error(&part_path(&self.dir, p), false, e));
            }
        }
        self.batches.push(SpilledBatch {
            window: window.clone(),
            first_row: self.rows,
            rows: data.num_rows(),
            failed: false,
        });
        self.rows += data.num_rows() as u64;
        Ok(())
    }

    /// Rows of `window` that arrived so far may not win and are not emitted.
    pub(crate) fn window_failed(&mut self, window: &WindowRef) {
        let key = window.key();
        for b in &mut self.batches {
            if !b.failed && (std::sync::Arc::ptr_eq(&b.window, window) || b.window.key() == key) {
                b.failed = true;
            }
        }
    }

    /// Closes the spill and finds the winners; [`LatestSpill::emit_next`] then hands them out.
    /// `run_id` names this run's history and removal log (`across_runs`).
    pub(crate) fn finish(&mut self, run_id: &str) -> Result<(), SpillError> {
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        let mut history = None;
        if let Some(replace) = self.replace.as_mut() {
            let prior_windows = replace.history.load(|hash, version, window| {
                open.write_record(
                    &self.dir,
                    Record {
                        hash,
                        version,
                        row: PRIOR | u64::from(window),
                    },
                )
            })?;
            let mut windows: Vec<String> = Vec::new();
            let mut index: std::collections::HashMap<String, u32> = Default::default();
            for b in &self.batches {
                index.entry(b.window.key()).or_insert_with_key(|k| {
                    windows.push(k.clone());
                    (windows.len() - 1) as u32
                });
            }
            history = Some((replace.history.writer(run_id, &windows)?, index));
            replace.state = Some(Replacing {
                prior_windows,
                supersedes: Vec::new(),
                removals: replace.removals.writer(run_id, &replace.name),
            });
        }
        let segments = open.close(&self.dir)?;
        let winners = Buffer::from_vec(self.winners(history.as_mut())?);
        if let Some((writer, _)) = history {
            writer.commit()?;
        }
        self.reading = Some(Reading {
            segments: segments.into_iter(),
            current: None,
            winners,
            next_batch: 0,
            next_supersede: 0,
        });
        Ok(())
    }

    /// Reads the spill back until one batch of winners is emitted (in arrival order, with its
    /// window); `false` once everything is out and the spill directory is removed. One spilled
    /// batch in memory at a time.
    pub(crate) fn emit_next(&mut self, out: &mut Emitter) -> Result<bool, SpillError> {
        let Some(reading) = self.reading.as_mut() else {
            return Ok(false);
        };
        loop {
            if reading
                .current
                .as_ref()
                .is_none_or(|(_, _, left)| *left == 0)
            {
                let Some(segment) = reading.segments.next() else {
                    break;
                };
                let file = File::open(&segment.path).reading(&segment.path)?;
                let reader = trusted_reader(BufReader::with_capacity(IO_BUF, file))
                    .reading(&segment.path)?;
                let batches = segment.batches;
                reading.current = Some((segment, reader, batches));
                continue;
            }
            let (segment, reader, left) = reading.current.as_mut().expect("checked above");
            let (path, shape) = (&segment.path, &mut segment.shape);
            let written = reader
                .next()
                .ok_or("the file ends early")
                .reading(path)?
                .reading(path)?;
            *left -= 1;
            let b = &self.batches[reading.next_batch];
            reading.next_batch += 1;
            if b.failed {
                continue;
            }
            if let Some(replace) = self.replace.as_mut()
                && let Some(state) = replace.state.as_mut()
            {
                let end = b.first_row + b.rows as u64;
                let from = reading.next_supersede;
                while reading.next_supersede < state.supersedes.len()
                    && state.supersedes[reading.next_supersede].0 < end
                {
                    reading.next_supersede += 1;
                }
                let here = &state.supersedes[from..reading.next_supersede];
                if !here.is_empty() {
                    let windows = &state.prior_windows;
                    let data = shape.restore(&written).reading(path)?;
                    record_removals(&mut state.removals, windows, &replace.key, b, &data, here)
                        .reading(path)?;
                }
            }
            let mask = BooleanArray::new(
                BooleanBuffer::new(reading.winners.clone(), b.first_row as usize, b.rows),
                None,
            );
            // Filtered before the remembered columns are rebuilt: only for the winners.
            let winners = filter_record_batch(&written, &mask).reading(path)?;
            if winners.num_rows() > 0 {
                out.emit(b.window.clone(), shape.restore(&winners).reading(path)?);
                return Ok(true);
            }
        }
        // Durable before the runtime lets the windows' markers go on to the sinks.
        if let Some(state) = self.replace.as_mut().and_then(|r| r.state.take()) {
            let rows = state.removals.rows();
            state
                .removals
                .commit()
                .map_err(|e| spill_error(Path::new("removal log"), false, e))?;
            if rows > 0 {
                tracing::info!(
                    rows,
                    "rows earlier runs loaded are replaced by newer versions"
                );
            }
        }
        self.reading = None;
        self.batches = Vec::new();
        self.rows = 0;
        std::fs::remove_dir_all(&self.dir).writing(&self.dir)?;
        self.created = false;
        Ok(false)
    }

    /// The winner bitmap: bit `row` is set if that row is the latest of its key. With
    /// `across_runs`, also writes each winner to this run's history and notes which winners
    /// replace a prior row.
    fn winners(
        &mut self,
        mut history: Option<&mut (HistoryWriter, std::collections::HashMap<String, u32>)>,
    ) -> Result<Vec<u8>, SpillError> {
        let mut winners = vec![0u8; (self.rows as usize).div_ceil(8)];
        let failed: Vec<(u64, u64)> = self
            .batches
            .iter()
            .filter(|b| b.failed)
            .map(|b| (b.first_row, b.first_row + b.rows as u64))
            .collect();
        // The history's window index of each batch.
        let batch_window: Vec<u32> = match history.as_deref() {
            Some((_, index)) => self
                .batches
                .iter()
                .map(|b| index[&b.window.key()])
                .collect(),
            None => Vec::new(),
        };
        let (dir, reduce_at) = (&self.dir, self.reduce_at);
        let batches = &self.batches;
        let mut supersedes = self
            .replace
            .as_mut()
            .and_then(|x| x.state.as_mut())
            .map(|state| &mut state.supersedes);
        // Two threads read and reduce the partitions; this one marks the winners as they come.
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| -> Result<(), SpillError> {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            for _ in 0..2 {
                let (tx, next, failed) = (tx.clone(), &next, &failed);
                scope.spawn(move || {
                    loop {
                        let p = next.fetch_add(1, Ordering::Relaxed);
                        if p >= PARTS {
                            return;
                        }
                        let reduced = reduce_partition(dir, p, reduce_at, failed);
                        let stop = reduced.is_err();
                        if tx.send(reduced).is_err() || stop {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            for reduced in rx {
                let records = reduced?;
                for (i, r) in records.iter().enumerate() {
                    // A prior record either won (the lake has it) or follows the new winner
                    // that replaces it.
                    if r.is_prior() {
                        continue;
                    }
                    arrow::util::bit_util::set_bit(&mut winners, r.row as usize);
                    if let Some((writer, _)) = history.as_deref_mut() {
                        writer.push(r.hash, r.version, batch_window[batch_of(batches, r.row)])?;
                    }
                    if let Some(prior) = records.get(i + 1).filter(|p| p.hash == r.hash)
                        && let Some(supersedes) = supersedes.as_deref_mut()
                    {
                        supersedes.push((r.row, (prior.row & !PRIOR) as u32));
                    }
                }
            }
            Ok(())
        })?;
        if let Some(supersedes) = supersedes {
            supersedes.sort_unstable();
        }
        Ok(winners)
    }
}

/// The index in `batches` of the batch holding arrival row `row`.
fn batch_of(batches: &[SpilledBatch], row: u64) -> usize {
    batches.partition_point(|b| b.first_row + b.rows as u64 <= row)
}

/// Reads key partition `p` (skipping rows of `failed` arrival ranges) and reduces it to each
/// key's winner and the prior record it replaces (see [`reduce`]); deletes the file.
fn reduce_partition(
    dir: &Path,
    p: usize,
    reduce_at: usize,
    failed: &[(u64, u64)],
) -> Result<Vec<Record>, SpillError> {
    let is_failed = |row: u64| {
        let i = failed.partition_point(|r| r.1 <= row);
        i < failed.len() && failed[i].0 <= row
    };
    let path = part_path(dir, p);
    let file = File::open(&path).reading(&path)?;
    let count = file.metadata().reading(&path)?.len() as usize / RECORD;
    let mut reader = BufReader::with_capacity(IO_BUF, file);
    let mut records = Vec::with_capacity(count.min(reduce_at));
    let mut reduce_at = reduce_at;
    let mut buf = [0u8; RECORD];
    for _ in 0..count {
        reader.read_exact(&mut buf).reading(&path)?;
        let r = Record::decode(&buf);
        if !failed.is_empty() && !r.is_prior() && is_failed(r.row) {
            continue;
        }
        records.push(r);
        if records.len() >= reduce_at {
            reduce(&mut records);
            reduce_at = reduce_at.max(2 * records.len());
        }
    }
    reduce(&mut records);
    // Frees the disk early; the directory goes at the end anyway.
    let _ = std::fs::remove_file(&path);
    Ok(records)
}

/// Writes to the removal log the key columns of the rows of `b` (read back as `data`) that
/// replace prior rows, with the windows holding those.
fn record_removals(
    removals: &mut RemovalWriter,
    prior_windows: &[String],
    key: &[String],
    b: &SpilledBatch,
    data: &RecordBatch,
    supersedes: &[(u64, u32)],
) -> Result<(), String> {
    let schema = data.schema();
    let columns: Vec<usize> = key
        .iter()
        .map(|k| {
            schema
                .index_of(k)
                .map_err(|_| format!("key column `{k}` is not in the spilled rows"))
        })
        .collect::<Result<_, _>>()?;
    let keys = data.project(&columns).map_err(|e| e.to_string())?;
    let mut by_window: Vec<(u32, u32)> = supersedes
        .iter()
        .map(|(row, w)| (*w, (row - b.first_row) as u32))
        .collect();
    by_window.sort_unstable();
    let replaced_by = b.window.key();
    for group in by_window.chunk_by(|a, b| a.0 == b.0) {
        let rows = UInt32Array::from_iter_values(group.iter().map(|(_, r)| *r));
        let taken = arrow::compute::take_record_batch(&keys, &rows).map_err(|e| e.to_string())?;
        let window = &prior_windows[group[0].0 as usize];
        removals
            .append(&replaced_by, window, &taken)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

impl Drop for LatestSpill {
    /// A run that stops before `finish` ends, or whose `finish` fails, leaves no spill behind
    /// (if it is killed, the next run's first batch clears the directory).
    fn drop(&mut self) {
        if self.created {
            drop(self.open.take());
            drop(self.reading.take());
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Open {
    /// Clears what a killed run left in `dir` and opens the key partitions.
    fn create(dir: &Path) -> Result<Open, SpillError> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(spill_error(dir, false, e)),
        }
        // The spill holds message text: private, as all state (see `chatlake_core::durable`).
        durable::create_private_dir_all(dir).writing(dir)?;
        let parts = (0..PARTS)
            .map(|p| {
                let path = part_path(dir, p);
                let file = durable::create_private_file(&path).writing(&path)?;
                Ok(BufWriter::with_capacity(IO_BUF, file))
            })
            .collect::<Result<_, SpillError>>()?;
        Ok(Open {
            segments: Vec::new(),
            writer: None,
            parts,
        })
    }

    /// Appends a key record to its partition.
    fn write_record(&mut self, dir: &Path, r: Record) -> Result<(), SpillError> {
        let mut record = [0u8; RECORD];
        record[..16].copy_from_slice(&r.hash.to_le_bytes());
        record[16..24].copy_from_slice(&r.version.to_le_bytes());
        record[24..].copy_from_slice(&r.row.to_le_bytes());
        let p = (r.hash >> (128 - PART_BITS)) as usize;
        self.parts[p]
            .write_all(&record)
            .map_err(|e| spill_error(&part_path(dir, p), false, e))
    }

    /// Ends the current arrival-order file, if any, and starts one of `shape`.
    fn start_segment(&mut self, dir: &Path, shape: SpillShape) -> Result<(), SpillError> {
        self.end_segment()?;
        let path = dir.join(format!("rows-{:05}.arrows", self.segments.len()));
        let file = durable::create_private_file(&path).writing(&path)?;
        let writer = StreamWriter::try_new(
            BufWriter::with_capacity(IO_BUF, file),
            shape.written_schema(),
        )
        .writing(&path)?;
        self.segments.push(Segment {
            path,
            batches: 0,
            shape,
        });
        self.writer = Some(writer);
        Ok(())
    }

    fn end_segment(&mut self) -> Result<(), SpillError> {
        if let Some(mut writer) = self.writer.take() {
            let path = &self.segments.last().expect("a segment is open").path;
            writer.finish().writing(path)?;
            writer
                .into_inner()
                .writing(path)?
                .into_inner()
                .map_err(|e| e.into_error())
                .writing(path)?;
        }
        Ok(())
    }

    /// Flushes and closes every file; returns the arrival-order files.
    fn close(mut self, dir: &Path) -> Result<Vec<Segment>, SpillError> {
        self.end_segment()?;
        for (p, part) in self.parts.into_iter().enumerate() {
            part.into_inner()
                .map_err(|e| e.into_error())
                .writing(&part_path(dir, p))?;
        }
        Ok(self.segments)
    }
}

/// A reader of an arrival-order file that trusts it: the arrays were valid Arrow when this
/// transform wrote them moments ago, into a directory it cleared and owns. Re-validating every
/// string's UTF-8 cost ~8 % of the read-back's CPU; DataFusion reads its spill files the same way
/// (apache/datafusion#15454).
#[allow(unsafe_code)]
fn trusted_reader(
    input: BufReader<File>,
) -> Result<StreamReader<BufReader<File>>, arrow::error::ArrowError> {
    let reader = StreamReader::try_new(input, None)?;
    // SAFETY: the file holds only batches that `StreamWriter` wrote from valid arrays in this
    // run (see `Open::create`, which clears the directory first); nothing else writes there.
    Ok(unsafe { reader.with_skip_validation(true) })
}

fn part_path(dir: &Path, p: usize) -> PathBuf {
    dir.join(format!("keys-{p:02}.bin"))
}

/// One row's key record.
#[derive(Debug, Clone, Copy)]
struct Record {
    hash: u128,
    version: i64,
    row: u64,
}

impl Record {
    /// A row an earlier run loaded (see [`PRIOR`]).
    fn is_prior(&self) -> bool {
        self.row & PRIOR != 0
    }

    fn decode(b: &[u8; RECORD]) -> Record {
        let (hash, rest) = b.split_at(16);
        let (version, row) = rest.split_at(8);
        Record {
            hash: u128::from_le_bytes(hash.try_into().expect("16 bytes")),
            version: i64::from_le_bytes(version.try_into().expect("8 bytes")),
            row: u64::from_le_bytes(row.try_into().expect("8 bytes")),
        }
    }
}

/// Sorts by (hash, version descending, prior first, row) and keeps the first record of each
/// hash: the highest version, and of equal versions a prior row, else the first to arrive. If
/// that winner is new, the best prior record of its hash (the row the lake holds) is kept right
/// after it, so the caller knows what it replaces.
fn reduce(records: &mut Vec<Record>) {
    records.sort_unstable_by(|a, b| {
        a.hash
            .cmp(&b.hash)
            .then(b.version.cmp(&a.version))
            .then(b.is_prior().cmp(&a.is_prior()))
            .then(a.row.cmp(&b.row))
    });
    let mut kept = 0;
    let mut i = 0;
    while i < records.len() {
        let winner = records[i];
        records[kept] = winner;
        kept += 1;
        let mut prior_kept = winner.is_prior();
        i += 1;
        while i < records.len() && records[i].hash == winner.hash {
            if !prior_kept && records[i].is_prior() {
                records[kept] = records[i];
                kept += 1;
                prior_kept = true;
            }
            i += 1;
        }
    }
    records.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(hash: u128, version: i64, row: u64) -> Record {
        Record { hash, version, row }
    }

    fn prior(hash: u128, version: i64, window: u64) -> Record {
        Record {
            hash,
            version,
            row: PRIOR | window,
        }
    }

    fn rows(records: &[Record]) -> Vec<(u128, i64, u64)> {
        records.iter().map(|r| (r.hash, r.version, r.row)).collect()
    }

    #[test]
    fn reduce_keeps_the_winner_and_the_prior_row_it_replaces() {
        let mut records = vec![
            new(1, 5, 0),
            prior(1, 3, 7),
            prior(1, 2, 6), // already replaced by window 7's row in an earlier run
            new(1, 4, 1),
            new(2, 3, 2),
            prior(2, 3, 8), // a tie: the lake's row stays
            new(3, 1, 3),
            new(3, 1, 4),
            prior(4, 9, 9),
        ];
        reduce(&mut records);
        let expected = vec![
            (1, 5, 0),
            (1, 3, PRIOR | 7),
            (2, 3, PRIOR | 8),
            (3, 1, 3),
            (4, 9, PRIOR | 9),
        ];
        assert_eq!(rows(&records), expected);
        // Reducing again (a large partition is reduced whenever it doubles) changes nothing.
        records.push(new(1, 1, 5));
        records.push(prior(3, 0, 2));
        reduce(&mut records);
        let mut expected = expected;
        expected.insert(4, (3, 0, PRIOR | 2));
        assert_eq!(rows(&records), expected);
    }
}

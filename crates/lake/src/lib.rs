//! Lake layout for file sinks: Hive partitions, window-scoped atomic commits, rolling files.
//!
//! A file sink is a [`FileFormat`] (how rows become bytes) handed to a [`FileSink`], which does
//! everything about where those bytes go (spec section 4):
//!
//! * rows are split by the `partition_by` columns into Hive directories
//!   (`path/provider=zoom/sent_date=2025-05-01/`), and those columns are left out of the files;
//! * rows are written to `part-….<ext>.tmp` files, one set per window, and only `commit` of the
//!   window fsyncs them and renames them to their final names, so a `**/*.<ext>` glob never sees
//!   an unfinished file; `abort` deletes them;
//! * a file that reaches `max_rows_per_file` rows is finished and the next part begins;
//! * temporary files that a killed run left behind are removed before the first write;
//! * the sink's path is claimed for the run's state directory ([`owner`]) before anything in it
//!   is deleted, and another state directory's path is refused;
//! * rows a later run replaces are taken out of committed files ([`FileFormat::filter_file`]),
//!   each file replaced atomically.
//!
//! A `path` in an object store (`s3://…`, `gs://…`, `az://…`) is written the same way into a
//! local spool and uploaded at each window's commit (the `object` module has the protocol).
//!
//! Text formats share [`text::TextCompression`] and [`text::FileOutput`] (optional gzip) and
//! [`text::timestamps_as_utc_offset`] (RFC 3339 timestamps ending in `Z`).

mod error;
mod format;
mod layout;
mod object;
pub mod owner;
mod partition;
mod remove;
mod sink;
pub mod text;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result};
pub use format::{FileFormat, Filtered, FormatError, FormatWriter, MissingKeyColumn};
pub use layout::{FileKey, LakeOptions, file_name};
pub use object::{SPOOL_DIR, Spool};
pub use partition::{DEFAULT_PARTITION, Partitioner, escape_path_name};
pub use sink::{FileSink, MAX_OPEN_FILES, MEMORY_BUDGET_BYTES};

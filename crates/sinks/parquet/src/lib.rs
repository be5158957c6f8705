//! Parquet sink.

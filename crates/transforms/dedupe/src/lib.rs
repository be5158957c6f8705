//! dedupe: one row per key, first or latest version.

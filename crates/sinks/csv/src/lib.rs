//! CSV sink.

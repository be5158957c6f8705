//! JSON Lines sink.

//! normalize: provider records to the canonical message schema.

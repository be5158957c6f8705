//! bot_filter: keep, drop or keep only bot messages.

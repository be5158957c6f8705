//! LINE WORKS monitoring message-contents source.

//! The toolkit of chatlake's sources: what every provider's source needs and is not about that
//! provider's API (the request loop is `chatlake-http`'s). A new provider's crate should be mostly
//! its own API's facts plus calls into this crate.

pub mod csv_input;
pub mod files;
pub mod files_mode;
pub mod options;
pub mod parsed;
pub mod time;
pub mod windows;

pub use files_mode::FilesMode;

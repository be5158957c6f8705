//! The one place that knows every component: adding one is a crate plus a line here.

use chatlake_core::Registry;

/// Every built-in source, transform and sink.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_source::<chatlake_source_lineworks::LineworksSourceConfig>();
    r.register_source::<chatlake_source_qlara::QlaraSourceConfig>();
    r.register_source::<chatlake_source_zoom::ZoomUserMessagesConfig>();
    r.register_source::<chatlake_source_zoom::ZoomChatReportConfig>();
    r.register_transform::<chatlake_transform_normalize::NormalizeConfig>();
    r.register_transform::<chatlake_transform_dedupe::DedupeConfig>();
    r.register_transform::<chatlake_transform_bot_filter::BotFilterConfig>();
    r.register_transform::<chatlake_transform_select::SelectConfig>();
    r.register_sink::<chatlake_sink_parquet::ParquetSinkConfig>();
    r.register_sink::<chatlake_sink_csv::CsvSinkConfig>();
    r.register_sink::<chatlake_sink_jsonl::JsonlSinkConfig>();
    r.register_sink::<chatlake_sink_delta::DeltaSinkConfig>();
    r
}

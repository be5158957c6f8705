//! OTLP export of a run's figures, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) is set: the same metrics `--metrics-file` writes, sent
//! once at the end of the run to an OpenTelemetry collector over OTLP/HTTP — protobuf by
//! default, JSON with `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` (gRPC is not built in). Headers,
//! timeout and the other standard `OTEL_EXPORTER_OTLP_*` variables are the exporter's own.
//! Counters lose Prometheus' `_total` suffix, as OpenTelemetry names them.

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::metrics_file::{Family, Kind};

/// Whether the environment asks for an OTLP export.
pub fn wanted() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()))
}

/// Sends `families` once and waits for the collector's answer. Blocking: call it off the async
/// workers (the exporter runs its own HTTP client).
pub fn export(families: &[Family]) -> Result<(), String> {
    let mut builder = MetricExporter::builder().with_http();
    let protocol_set = [
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()));
    if !protocol_set {
        // The specification's default; the crate would otherwise pick JSON, the feature it
        // ranks first.
        builder = builder.with_protocol(Protocol::HttpBinary);
    }
    let exporter = builder
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter).build())
        .with_resource(Resource::builder().with_service_name("chatlake").build())
        .build();
    let meter = provider.meter("chatlake");
    for family in families {
        let attributes = |labels: &[(&'static str, String)]| -> Vec<KeyValue> {
            labels
                .iter()
                .map(|(k, v)| KeyValue::new(*k, v.clone()))
                .collect()
        };
        match family.kind {
            Kind::Gauge => {
                let gauge = meter
                    .f64_gauge(family.name)
                    .with_description(family.help)
                    .build();
                for (labels, value) in &family.samples {
                    gauge.record(*value, &attributes(labels));
                }
            }
            Kind::Counter => {
                let name = family.name.strip_suffix("_total").unwrap_or(family.name);
                let counter = meter
                    .f64_counter(name)
                    .with_description(family.help)
                    .build();
                for (labels, value) in &family.samples {
                    counter.add(*value, &attributes(labels));
                }
            }
        }
    }
    // Shutting the provider down collects and exports once, and says whether that worked.
    provider
        .shutdown()
        .map_err(|e| format!("the OTLP export failed: {e}"))
}

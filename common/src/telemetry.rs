//! Logs and traces (DESIGN §10). Logs: `tracing` to stdout, JSON (the default) or human-readable
//! (`LOG_FORMAT`), filtered by `RUST_LOG`; every JSON line inside a span carries its `trace_id`
//! and `span_id`. Traces: OpenTelemetry over OTLP, configured only by the standard `OTEL_*`
//! variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf`,
//! the default, or `grpc`, `OTEL_SERVICE_NAME`, `OTEL_BSP_*`...). Without an endpoint nothing is
//! exported, but spans still get ids, so logs carry trace ids and context still propagates.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{ConfigError, Env};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// What [`init`] needs, from the environment.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    pub filter: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-only variant) is set: export spans.
    pub export: bool,
    /// `OTEL_SERVICE_NAME` when set.
    pub service_name: Option<String>,
}

impl TelemetryConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let format = match env.get("LOG_FORMAT").unwrap_or("json") {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::Invalid {
                    name: "LOG_FORMAT",
                    reason: format!("{other:?}: expected json or pretty"),
                });
            }
        };
        let set = |name: &str| env.get(name).is_some_and(|v| !v.trim().is_empty());
        if let Some(p) = env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            && !["grpc", "http/protobuf", ""].contains(&p.trim())
        {
            return Err(ConfigError::Invalid {
                name: "OTEL_EXPORTER_OTLP_PROTOCOL",
                reason: format!("{p:?}: expected grpc or http/protobuf"),
            });
        }
        Ok(Self {
            format,
            filter: env.string_or("RUST_LOG", "info"),
            export: set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            service_name: env
                .get("OTEL_SERVICE_NAME")
                .filter(|v| !v.trim().is_empty())
                .map(str::to_owned),
        })
    }
}

/// Flushes and stops the span exporter when dropped; keep it alive for the process's life.
#[must_use = "telemetry is flushed when the guard drops"]
pub struct Guard {
    provider: SdkTracerProvider,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.force_flush() {
            eprintln!("parley: cannot flush traces: {e}");
        }
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber, propagator and tracer provider. Call once, inside the Tokio
/// runtime (the gRPC exporter needs it), with the role's name as the default service name.
pub fn init(config: &TelemetryConfig, default_service: &str) -> Guard {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(
            config
                .service_name
                .clone()
                .unwrap_or_else(|| default_service.to_owned()),
        )
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if config.export {
        // The transport, endpoint, headers and timeouts all come from the OTEL_* variables.
        match opentelemetry_otlp::SpanExporter::builder().build() {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => eprintln!("parley: traces will not be exported: {e}"),
        }
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    // No per-span busy/idle timing, thread or source-location attributes: they cost on every
    // span of the hot path (a few per message) and say little a trace does not.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("parley"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(LevelFilter::INFO);
    // RUST_LOG filters log lines only; spans reach OpenTelemetry whatever it says.
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(otel);
    match config.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(WithTraceId(
                        format()
                            .json()
                            .with_current_span(true)
                            .with_span_list(false),
                    ))
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_filter(filter))
            .init(),
    }
    Guard { provider }
}

fn format() -> format::Format {
    format::Format::default()
}

/// The stock JSON line with `"trace_id"` and `"span_id"` first, when the event happens inside
/// a span. The ids come from the OpenTelemetry context the span activated on entry (inside a
/// formatter `Span::current()` cannot be asked).
struct WithTraceId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let cx = Context::current();
        let span = cx.span();
        let sc = span.span_context();
        match line.strip_prefix('{') {
            Some(rest) if sc.is_valid() => {
                write!(
                    w,
                    "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",",
                    sc.trace_id(),
                    sc.span_id()
                )?;
                w.write_str(rest)
            }
            _ => w.write_str(&line),
        }
    }
}

/// For tests: logs to the test writer only when `TEST_LOG` is set; safe to call many times.
pub fn init_for_tests() {
    global::set_text_map_propagator(TraceContextPropagator::new());
    if std::env::var_os("TEST_LOG").is_none() {
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .try_init();
}

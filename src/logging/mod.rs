//! Log setup: human by default, JSON on request (docs/logging.md). Level from
//! `--log-level`/`-v`/`-q`, else `RUST_LOG`, else `info`.
//! With the `otlp` cargo feature, spans are also exported over OTLP/HTTP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set.

pub mod json;

use std::io::IsTerminal;

use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line (fields in docs/logging.md).
    Json,
}

/// `--color`: when to write ANSI colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Only when the stream is a terminal and NO_COLOR is not set.
    #[default]
    Auto,
    /// Always (even into files and pipes).
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour a stream that is (`is_terminal`) or is not a
    /// terminal, with `no_color` = the NO_COLOR variable is set and non-empty.
    pub fn decide(self, is_terminal: bool, no_color: bool) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => is_terminal && !no_color,
        }
    }

    /// [`ColorChoice::decide`] for standard error and the process environment.
    pub fn for_stderr(self) -> bool {
        self.decide(std::io::stderr().is_terminal(), no_color_env())
    }

    /// [`ColorChoice::decide`] for standard output and the process environment.
    pub fn for_stdout(self) -> bool {
        self.decide(std::io::stdout().is_terminal(), no_color_env())
    }
}

fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// How `serve` logs.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub format: LogFormat,
    /// A filter such as `debug` or `info,proxyguard::pool=trace`; None = the
    /// `RUST_LOG` variable, else `info`.
    pub level: Option<String>,
    pub color: ColorChoice,
}

/// The filter: the explicit level, else RUST_LOG, else `info`. An invalid
/// explicit level is an error (the caller reports it).
pub fn filter(level: Option<&str>) -> Result<EnvFilter, String> {
    match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| format!("invalid log level {l:?}: {e}")),
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

/// Installs the global subscriber (logs go to standard error).
pub fn init(opts: &LogOptions) -> Result<(), String> {
    let filter = filter(opts.level.as_deref())?;
    let fmt = match opts.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(opts.color.for_stderr())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(json::JsonLines)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    #[cfg(feature = "otlp")]
    let registry = registry.with(otlp::layer());
    let _ = registry.try_init();
    Ok(())
}

/// Flushes exported spans (call before exit).
pub fn shutdown() {
    #[cfg(feature = "otlp")]
    otlp::shutdown();
}

#[cfg(feature = "otlp")]
mod otlp {
    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    pub fn layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .ok()
            .or_else(|| {
                std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .ok()
                    .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
            })?;
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("proxyguard: OTLP exporter disabled: {e}");
                return None;
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("proxyguard")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("proxyguard");
        let _ = PROVIDER.set(provider);
        eprintln!("proxyguard: exporting spans over OTLP/HTTP to {endpoint}");
        Some(tracing_opentelemetry::layer().with_tracer(tracer).boxed())
    }

    pub fn shutdown() {
        if let Some(p) = PROVIDER.get() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color_unless_forced() {
        use ColorChoice::*;
        assert!(Auto.decide(true, false));
        assert!(!Auto.decide(false, false));
        assert!(!Auto.decide(true, true));
        assert!(Always.decide(false, true));
        assert!(!Never.decide(true, false));
    }

    #[test]
    fn explicit_level_wins_and_bad_level_is_an_error() {
        assert!(filter(Some("debug")).is_ok());
        assert!(filter(Some("info,proxyguard=trace")).is_ok());
        assert!(filter(Some("loud=[")).is_err());
    }
}

//! Log output: JSON lines with Google Cloud Logging's field names by default (`severity`,
//! `message`, `httpRequest`, `logging.googleapis.com/trace`), which most other collectors
//! ingest as well, or human-readable text for local use. `RUST_LOG` filters, as usual.
//!
//! Every line inside a request carries that request's fields (`request_id`, the trace, the
//! tenant's keyed fingerprint once known), taken from the request span.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt as tsfmt, EnvFilter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tsfmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(CloudJson)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests starting several gateways in one process) keeps the first subscriber.
    let _ = result;
}

/// One JSON object per line, in Cloud Logging's structure.
pub struct CloudJson;

fn severity(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "ERROR",
        tracing::Level::WARN => "WARNING",
        tracing::Level::INFO => "INFO",
        tracing::Level::DEBUG | tracing::Level::TRACE => "DEBUG",
    }
}

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

/// Moves `http_*` fields into Cloud Logging's `httpRequest` object.
fn http_request(fields: &mut Map<String, Value>) {
    let mut http = Map::new();
    for (from, to) in [
        ("http_method", "requestMethod"),
        ("http_url", "requestUrl"),
        ("http_status", "status"),
        ("http_remote_ip", "remoteIp"),
        ("http_user_agent", "userAgent"),
    ] {
        if let Some(v) = fields.remove(from) {
            http.insert(to.into(), v);
        }
    }
    if let Some(secs) = fields.remove("http_latency_secs").and_then(|v| v.as_f64()) {
        http.insert("latency".into(), Value::String(format!("{secs:.6}s")));
    }
    if !http.is_empty() {
        fields.insert("httpRequest".into(), Value::Object(http));
    }
}

impl<S, N> FormatEvent<S, N> for CloudJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(crate::clock::iso8601(crate::clock::now_ms() as i64)),
        );
        line.insert(
            "severity".into(),
            Value::String(severity(event.metadata().level()).into()),
        );
        // Span fields first (outermost to innermost), so the event's own fields win.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
                        line.extend(map);
                    }
                }
            }
        }
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut fields = fields.0;
        http_request(&mut fields);
        line.extend(fields);
        if let Some(trace) = line.remove("trace") {
            line.insert("logging.googleapis.com/trace".into(), trace);
        }
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().into()),
        );
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The trace a request belongs to, from Cloud Run's `X-Cloud-Trace-Context`
/// (`TRACE_ID/SPAN_ID;o=1`) or W3C `traceparent` (`00-TRACE_ID-SPAN_ID-01`), in Cloud Logging's
/// `projects/PROJECT/traces/TRACE_ID` form when the project is known.
pub fn trace_of(headers: &axum::http::HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = header("x-cloud-trace-context")
        .and_then(|v| v.split('/').next())
        .or_else(|| header("traceparent").and_then(|v| v.split('-').nth(1)))
        .filter(|id| {
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
        })?;
    Some(
        match std::env::var("GOOGLE_CLOUD_PROJECT").or_else(|_| std::env::var("GCP_PROJECT")) {
            Ok(project) if !project.is_empty() => format!("projects/{project}/traces/{id}"),
            _ => id.to_owned(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn traces_come_from_either_header_and_junk_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-cloud-trace-context",
            HeaderValue::from_static("105445aa7843bc8bf206b12000100000/1;o=1"),
        );
        assert!(trace_of(&h).is_some_and(|t| t.ends_with("105445aa7843bc8bf206b12000100000")));
        let mut w3c = HeaderMap::new();
        w3c.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert!(trace_of(&w3c).is_some_and(|t| t.ends_with("4bf92f3577b34da6a3ce929d0e0e4736")));
        let mut junk = HeaderMap::new();
        junk.insert("traceparent", HeaderValue::from_static("00-<script>-x-01"));
        assert_eq!(trace_of(&junk), None);
    }

    #[test]
    fn http_fields_become_an_http_request_object() {
        let mut fields = Map::new();
        fields.insert("http_status".into(), 200.into());
        fields.insert("http_latency_secs".into(), 0.25.into());
        fields.insert("other".into(), "x".into());
        http_request(&mut fields);
        assert_eq!(fields["httpRequest"]["status"], 200);
        assert_eq!(fields["httpRequest"]["latency"], "0.250000s");
        assert_eq!(fields["other"], "x");
    }
}

//! One JSON object per line, every key once: `timestamp`, `level`, `logger`
//! (the tracing target, e.g. `access`), `message`, then the event's fields,
//! then the fields of the spans around it. The built-in JSON formatter writes
//! the tracing target as `target`, which collides with our `target` field
//! (the request URL); here `target` is only ever the request target.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The keys every line starts with; an event field of the same name is
/// written as `field.<name>` instead.
pub const RESERVED: &[&str] = &["timestamp", "level", "logger", "message", "span"];

/// Ordered key/value pairs with unique keys.
#[derive(Default)]
struct Line(Vec<(String, Value)>);

impl Line {
    fn has(&self, k: &str) -> bool {
        self.0.iter().any(|(x, _)| x == k)
    }
    /// Adds `k`, or `prefix.k` when `k` is taken (then `prefix.k.2`, ...).
    fn add(&mut self, k: &str, v: Value, prefix: &str) {
        let mut key = k.to_string();
        if self.has(&key) {
            key = format!("{prefix}.{k}");
            let base = key.clone();
            let mut n = 2;
            while self.has(&key) {
                key = format!("{base}.{n}");
                n += 1;
            }
        }
        self.0.push((key, v));
    }
    fn write(&self, w: &mut Writer<'_>) -> fmt::Result {
        let mut out = String::from("{");
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::String(k.clone()).to_string());
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
        writeln!(w, "{out}")
    }
}

/// Collects an event's fields in order.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    rest: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, f: &Field, v: Value) {
        if f.name() == "message" {
            self.message = Some(match v {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.rest.push((f.name().to_string(), v));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f, Value::from(v));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.put(f, Value::from(v));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.put(f, Value::from(v));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.put(f, Value::from(v));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.put(f, Value::from(v));
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.put(f, Value::from(v.to_string()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.put(f, Value::from(format!("{v:?}")));
    }
}

/// The event formatter for `--log-format json`. Use it with
/// [`JsonFields`] as the field formatter so span fields are stored as JSON.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
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
        let meta = event.metadata();
        let mut line = Line::default();
        line.add(
            "timestamp",
            Value::from(humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()),
            "field",
        );
        line.add("level", Value::from(meta.level().as_str()), "field");
        line.add("logger", Value::from(meta.target()), "field");
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(m) = fields.message {
            line.add("message", Value::from(m), "field");
        }
        for (k, v) in fields.rest {
            line.add(&k, v, "field");
        }
        let mut names = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                names.push(span.name());
                let ext = span.extensions();
                let Some(ff) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                let Ok(map) = serde_json::from_str::<Map<String, Value>>(ff) else {
                    continue;
                };
                for (k, v) in map {
                    line.add(&k, v, span.name());
                }
            }
        }
        if !names.is_empty() {
            line.add("span", Value::from(names.join(":")), "field");
        }
        line.write(&mut writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_keys_get_a_prefix_not_a_duplicate() {
        let mut l = Line::default();
        l.add("level", Value::from("INFO"), "field");
        l.add("level", Value::from("x"), "field");
        l.add("level", Value::from("y"), "field");
        l.add("client", Value::from("a"), "conn");
        l.add("client", Value::from("b"), "conn");
        let keys: Vec<&str> = l.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "level",
                "field.level",
                "field.level.2",
                "client",
                "conn.client"
            ]
        );
    }
}

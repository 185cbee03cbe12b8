//! The JSON line format: `timestamp`, `level`, `target`, `message` and the
//! fields at the top level of one object per event — the event's own
//! fields and those of every span it happened in.
//!
//! tracing-subscriber's JSON format can flatten an event's fields but nests
//! span fields under `span`/`spans`; the contract wants one flat object, and
//! a request's span carries its `request_id`, which every line the request
//! causes (a `503`, a store error) must show where log queries look for it.
//! When a span and the event name the same field, the event's value wins.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats one event as one flat JSON object on one line.
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut object = Map::new();
        object.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        object.insert("level".into(), meta.level().as_str().into());
        // Outermost span first, so that an inner span's field overrides an
        // outer one's, and the event's own fields override both.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    object.extend(fields);
                }
            }
        }
        event.record(&mut Fields(&mut object));
        object.insert("target".into(), meta.target().into());
        let line = serde_json::to_string(&object).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields into the object.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        String::from_utf8(buffer.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn span_fields_are_at_the_top_level_of_every_line_inside_it() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "req-1", kind = "outer");
            let _entered = span.enter();
            tracing::warn!(reason = "database down", kind = "inner", "answering 503");
            tracing::info!(status_code = 503u64, ok = false, ms = 1.5f64, "request");
        });
        tracing::info!("outside any subscriber");
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first["request_id"], "req-1");
        assert_eq!(first["kind"], "inner", "the event's own field wins");
        assert_eq!(first["message"], "answering 503");
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["reason"], "database down");
        assert!(first["target"].as_str().unwrap().contains("telemetry"));
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(first.get("span").is_none() && first.get("fields").is_none());
        assert_eq!(lines[1]["request_id"], "req-1");
        assert_eq!(lines[1]["status_code"], 503);
        assert_eq!(lines[1]["ok"], false);
        assert_eq!(lines[1]["ms"], 1.5);
    }
}

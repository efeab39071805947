//! A run's history as numbered JSON events — what a live view replays from a given number
//! and then follows. The number of an event is its position in the run's append-only
//! journal, so it is stable across restarts of the owner.

use serde_json::{Map, Value, json};

use super::ControlError;
use crate::engine::Engine;
use crate::engine::records::{Event, EventRecord};

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Payloads the journal keeps as JSON bytes, shown as JSON again.
fn unbytes(value: Value) -> Value {
    let Value::Array(items) = &value else {
        return value;
    };
    let bytes: Option<Vec<u8>> = items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
        .collect();
    match bytes {
        Some(bytes) => serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        None => value,
    }
}

/// One event as `{seq, at, kind, …its fields}`.
pub fn describe(seq: u64, record: &EventRecord) -> Value {
    let at = chrono::DateTime::from_timestamp_micros(record.at_us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let mut out = Map::new();
    out.insert("seq".into(), json!(seq));
    out.insert("at".into(), json!(at));
    match serde_json::to_value(&record.event) {
        Ok(Value::String(kind)) => {
            out.insert("kind".into(), json!(snake(&kind)));
        }
        Ok(Value::Object(outer)) => {
            for (kind, fields) in outer {
                out.insert("kind".into(), json!(snake(&kind)));
                if let Value::Object(fields) = fields {
                    for (name, value) in fields {
                        let value = if matches!(name.as_str(), "output" | "data") {
                            unbytes(value)
                        } else {
                            value
                        };
                        out.insert(name, value);
                    }
                }
            }
        }
        _ => {
            out.insert("kind".into(), json!("unknown"));
        }
    }
    Value::Object(out)
}

/// The run's events numbered after `after`, oldest first. Bookkeeping that is not part of
/// the run's story (its trace ids) is neither shown nor numbered.
pub fn since(engine: &Engine, run: &str, after: u64) -> Result<Vec<Value>, ControlError> {
    Ok(engine
        .events(run)?
        .iter()
        .filter(|record| !matches!(record.event, Event::Traced { .. }))
        .enumerate()
        .map(|(i, record)| (i as u64 + 1, record))
        .filter(|(seq, _)| *seq > after)
        .map(|(seq, record)| describe(seq, record))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_named_in_snake_case_with_their_payloads_as_json() {
        let done = EventRecord {
            at_us: 1_700_000_000_000_000,
            event: Event::StepCompleted {
                step: "dump".into(),
                attempt: 2,
                output: br#"{"size": 42}"#.to_vec(),
            },
        };
        let v = describe(7, &done);
        assert_eq!(v["seq"], 7);
        assert_eq!(v["kind"], "step_completed");
        assert_eq!(v["step"], "dump");
        assert_eq!(v["output"]["size"], 42);
        assert_eq!(v["at"], "2023-11-14T22:13:20.000Z");
        let end = describe(
            8,
            &EventRecord {
                at_us: 0,
                event: Event::Succeeded,
            },
        );
        assert_eq!(end["kind"], "succeeded");
    }
}

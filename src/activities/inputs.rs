//! Reading a step's rendered inputs into an activity's typed input struct.
//!
//! Parameters are text (`--param attempts=30`), so numeric and boolean inputs also accept
//! their text form; durations are text like `"10s"`.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde_json::Value;

use crate::engine::ActivityError;
use crate::engine::duration::parse_duration;

/// Deserializes inputs, turning serde's complaint into an operator-facing error.
pub fn parse<T: DeserializeOwned>(activity: &str, inputs: Value) -> Result<T, ActivityError> {
    serde_json::from_value(inputs).map_err(|e| ActivityError::bad_input(activity, e))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient {
    Number(u64),
    Text(String),
    Bool(bool),
}

/// A non-negative integer given as a number or as text.
pub fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Lenient::deserialize(d)? {
        Lenient::Number(n) => Ok(n),
        Lenient::Text(t) => t
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("\"{t}\" is not a whole number"))),
        Lenient::Bool(b) => Err(de::Error::custom(format!("{b} is not a whole number"))),
    }
}

/// An optional non-negative integer given as a number or as text.
pub fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    lenient_u64(d).map(Some)
}

/// A boolean given as `true`/`false` or as text.
pub fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Lenient::deserialize(d)? {
        Lenient::Bool(b) => Ok(b),
        Lenient::Text(t) => match t.trim() {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            other => Err(de::Error::custom(format!(
                "\"{other}\" is not true or false"
            ))),
        },
        Lenient::Number(n) => Err(de::Error::custom(format!("{n} is not true or false"))),
    }
}

/// A duration given as text such as `"10s"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(de::Error::custom)
}

fn scalar_text<E: de::Error>(value: Value) -> Result<String, E> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(E::custom(format!(
            "expected text, a number or a boolean, got {other}"
        ))),
    }
}

/// A list of strings whose items may also be numbers or booleans (an argv built from
/// `${steps.ID.FIELD}` references keeps their JSON types).
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<Value>::deserialize(d)?
        .into_iter()
        .map(scalar_text)
        .collect()
}

/// An optional [`string_list`].
pub fn opt_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    string_list(d).map(Some)
}

/// An optional string that may also arrive as a number or boolean; `null` (a whole-value
/// `${steps.x.y}` whose output was null) is absent.
pub fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        value => scalar_text(value).map(Some),
    }
}

/// An optional duration given as text such as `"10s"`.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A map of strings whose values may also be numbers or booleans (environment variables).
pub fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let raw = std::collections::BTreeMap::<String, Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            scalar_text::<D::Error>(v)
                .map(|v| (k.clone(), v))
                .map_err(|e| de::Error::custom(format!("\"{k}\": {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize, Debug)]
    struct Sample {
        #[serde(deserialize_with = "lenient_u64")]
        attempts: u64,
        #[serde(deserialize_with = "lenient_bool")]
        fatal: bool,
        #[serde(deserialize_with = "duration")]
        interval: Duration,
    }

    #[test]
    fn numbers_and_booleans_may_arrive_as_text() {
        let s: Sample = parse(
            "t",
            json!({"attempts": "30", "fatal": "true", "interval": "10s"}),
        )
        .unwrap();
        assert_eq!(s.attempts, 30);
        assert!(s.fatal);
        assert_eq!(s.interval, Duration::from_secs(10));
        let s: Sample = parse(
            "t",
            json!({"attempts": 3, "fatal": false, "interval": "1m"}),
        )
        .unwrap();
        assert_eq!(s.attempts, 3);
    }

    #[test]
    fn bad_values_name_the_activity() {
        let err = parse::<Sample>(
            "t",
            json!({"attempts": "many", "fatal": true, "interval": "1s"}),
        )
        .unwrap_err();
        assert!(
            err.message.contains("bad inputs for activity \"t\""),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("\"many\" is not a whole number"),
            "{}",
            err.message
        );
    }
}

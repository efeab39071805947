//! `${...}` references inside a step's inputs: `${params.NAME}`, `${steps.ID.FIELD}` and
//! `${run.id}`.
//!
//! Inputs are rendered at the moment a step starts, from the run's parameters and the
//! journaled outputs of earlier steps, so a resumed run renders exactly what the first
//! attempt rendered. `$${` writes a literal `${`.

use std::collections::BTreeMap;

use serde_json::Value;

/// One `${...}` reference found in a workflow string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `${params.NAME}`: a run parameter.
    Param(String),
    /// `${steps.ID.FIELD[.MORE]}`: a field of an earlier step's output.
    Step { id: String, path: Vec<String> },
    /// `${run.id}`: the id of the run being executed.
    RunId,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Param(name) => write!(f, "${{params.{name}}}"),
            Reference::Step { id, path } => write!(f, "${{steps.{id}.{}}}", path.join(".")),
            Reference::RunId => write!(f, "${{run.id}}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Ref(Reference),
}

/// Splits a string into literal text and references; the error explains the bad reference.
fn parse_segments(text: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        literal.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(escaped) = after.strip_prefix("$${") {
            literal.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed reference in \"{text}\": missing '}}'"))?;
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(Segment::Ref(parse_reference(body[..end].trim())?));
            rest = &body[end + 1..];
        } else {
            literal.push('$');
            rest = &after[1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

fn parse_reference(body: &str) -> Result<Reference, String> {
    let parts: Vec<&str> = body.split('.').collect();
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if parts.iter().any(|p| !valid(p)) {
        return Err(format!(
            "bad reference \"${{{body}}}\": names may hold letters, digits, '_' and '-'"
        ));
    }
    match parts.as_slice() {
        ["params", name] => Ok(Reference::Param((*name).to_string())),
        ["steps", id, path @ ..] if !path.is_empty() => Ok(Reference::Step {
            id: (*id).to_string(),
            path: path.iter().map(|s| (*s).to_string()).collect(),
        }),
        ["steps", id] => Err(format!(
            "bad reference \"${{{body}}}\": name a field of the step's output, e.g. ${{steps.{id}.FIELD}}"
        )),
        ["run", "id"] => Ok(Reference::RunId),
        _ => Err(format!(
            "bad reference \"${{{body}}}\": use ${{params.NAME}}, ${{steps.ID.FIELD}} or ${{run.id}}"
        )),
    }
}

/// Every reference in a JSON tree of inputs (strings anywhere, including keys' values in
/// nested tables and arrays), in document order.
pub fn references(value: &Value) -> Result<Vec<Reference>, String> {
    let mut found = Vec::new();
    collect(value, &mut found)?;
    Ok(found)
}

fn collect(value: &Value, found: &mut Vec<Reference>) -> Result<(), String> {
    match value {
        Value::String(text) => {
            for segment in parse_segments(text)? {
                if let Segment::Ref(reference) = segment {
                    found.push(reference);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect(item, found)?;
            }
        }
        Value::Object(map) => {
            for item in map.values() {
                collect(item, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What references resolve against when a step's inputs are rendered.
pub struct Scope<'a> {
    /// The run's parameters, defaults applied.
    pub params: &'a BTreeMap<String, String>,
    /// Outputs of the steps completed so far, by step id.
    pub outputs: &'a BTreeMap<String, Value>,
    /// The run's id.
    pub run_id: &'a str,
}

impl Scope<'_> {
    fn resolve(&self, reference: &Reference) -> Result<Value, String> {
        match reference {
            Reference::Param(name) => self
                .params
                .get(name)
                .map(|v| Value::String(v.clone()))
                .ok_or_else(|| format!("parameter \"{name}\" has no value")),
            Reference::RunId => Ok(Value::String(self.run_id.to_string())),
            Reference::Step { id, path } => {
                let mut current = self.outputs.get(id).ok_or_else(|| {
                    format!("{reference} refers to step \"{id}\", which has not completed")
                })?;
                for field in path {
                    current = match current {
                        Value::Object(map) => map.get(field).ok_or_else(|| {
                            let known: Vec<&str> = map.keys().map(String::as_str).collect();
                            format!(
                                "{reference}: step \"{id}\" has no output field \"{field}\" (it has: {})",
                                known.join(", ")
                            )
                        })?,
                        _ => {
                            return Err(format!(
                                "{reference}: \"{field}\" is looked up in a value that is not a table"
                            ));
                        }
                    };
                }
                Ok(current.clone())
            }
        }
    }

    /// Renders a tree of inputs. A string that is exactly one reference takes the referenced
    /// value with its JSON type; any other string interpolates references as text.
    pub fn render(&self, value: &Value) -> Result<Value, String> {
        Ok(match value {
            Value::String(text) => {
                let segments = parse_segments(text)?;
                match segments.as_slice() {
                    [Segment::Ref(reference)] => self.resolve(reference)?,
                    _ => {
                        let mut out = String::new();
                        for segment in segments {
                            match segment {
                                Segment::Literal(lit) => out.push_str(&lit),
                                Segment::Ref(reference) => {
                                    out.push_str(&as_text(&self.resolve(&reference)?))
                                }
                            }
                        }
                        Value::String(out)
                    }
                }
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.render(item))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.render(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Renders a single string template (such as a workflow's `target`) to text.
    pub fn render_text(&self, text: &str) -> Result<String, String> {
        Ok(as_text(&self.render(&Value::String(text.to_string()))?))
    }
}

/// How a referenced value reads inside a larger string.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope<'a>(
        params: &'a BTreeMap<String, String>,
        outputs: &'a BTreeMap<String, Value>,
    ) -> Scope<'a> {
        Scope {
            params,
            outputs,
            run_id: "run-1",
        }
    }

    #[test]
    fn finds_references_in_nested_inputs() {
        let inputs = json!({
            "argv": ["pg_restore", "--dbname=${params.database}"],
            "env": { "FILE": "${steps.download.path}" },
            "note": "cost $5, literal $${x}",
        });
        let refs = references(&inputs).unwrap();
        assert_eq!(
            refs,
            vec![
                Reference::Param("database".into()),
                Reference::Step {
                    id: "download".into(),
                    path: vec!["path".into()]
                },
            ]
        );
    }

    #[test]
    fn whole_string_reference_keeps_json_type() {
        let params = BTreeMap::new();
        let outputs = BTreeMap::from([("count".to_string(), json!({"rows": 42, "ok": true}))]);
        let rendered = scope(&params, &outputs)
            .render(&json!({"n": "${steps.count.rows}", "msg": "rows=${steps.count.rows}"}))
            .unwrap();
        assert_eq!(rendered, json!({"n": 42, "msg": "rows=42"}));
    }

    #[test]
    fn renders_params_run_id_and_escapes() {
        let params = BTreeMap::from([("database".to_string(), "shop".to_string())]);
        let outputs = BTreeMap::new();
        let s = scope(&params, &outputs);
        assert_eq!(
            s.render_text("${params.database}_restored_${run.id} $${keep}")
                .unwrap(),
            "shop_restored_run-1 ${keep}"
        );
    }

    #[test]
    fn missing_output_field_names_the_fields_that_exist() {
        let params = BTreeMap::new();
        let outputs = BTreeMap::from([("dl".to_string(), json!({"path": "/x"}))]);
        let err = scope(&params, &outputs)
            .render(&json!("${steps.dl.size}"))
            .unwrap_err();
        assert!(err.contains("no output field \"size\""), "{err}");
        assert!(err.contains("path"), "{err}");
    }

    #[test]
    fn rejects_malformed_references() {
        assert!(references(&json!("${params}")).is_err());
        assert!(references(&json!("${steps.x}")).is_err());
        assert!(references(&json!("${nope.x}")).is_err());
        assert!(references(&json!("${params.a")).is_err());
        assert!(references(&json!("${params.a b}")).is_err());
    }
}

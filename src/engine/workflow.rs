//! Workflow definitions: loaded from TOML, validated against the activity registry, and
//! pinned (text and hash) into each run.
//!
//! Every problem is reported with the file, the line and the name at fault, all at once, so
//! a runbook with a typo is fixed in one edit rather than one error at a time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::activity::Registry;
use super::duration::parse_duration;
use super::params::ParamKind;
use super::suggest::did_you_mean;
use super::template::{Reference, references};

/// A validated workflow, ready to run.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Name from the file's `name`.
    pub name: String,
    /// One line saying what it is for.
    pub description: String,
    /// What the per-target lock protects, as a template over params (e.g. `${params.database}`).
    pub target: Option<String>,
    /// What happens when a step fails for good.
    pub on_failure: OnFailure,
    /// Declared parameters, in file order.
    pub params: Vec<Param>,
    /// Steps, in order of execution.
    pub steps: Vec<Step>,
    /// Where the text came from (a path or `builtin:NAME`), for messages.
    pub source: String,
    /// The exact text, pinned into each run.
    pub text: String,
    /// SHA-256 of the text, hex.
    pub hash: String,
}

/// A declared run parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The name used in `--param NAME=value` and `${params.NAME}`.
    pub name: String,
    /// Whether a run must give it.
    pub required: bool,
    /// Value used when a run does not give it.
    pub default: Option<String>,
    /// One line of help.
    pub help: Option<String>,
    /// A password or token: shown as `***` in reports and webhook payloads. (The journal in
    /// `state/` keeps it, since a resumed run needs it; keep `state/` private.)
    pub secret: bool,
    /// What the value is (`type = "..."`): checked before a run is created, and deciding
    /// how the value may be used and shown.
    pub kind: ParamKind,
}

impl Param {
    /// Checks a value given for this parameter. An empty value is accepted only where the
    /// default is empty (it means "none").
    pub fn check(&self, value: &str) -> Result<(), String> {
        if value.is_empty() && self.default.as_deref() == Some("") {
            return Ok(());
        }
        self.kind
            .check(value)
            .map_err(|e| format!("parameter \"{}\" ({}): {e}", self.name, self.kind.name()))
    }

    /// The value as people may see it (secrets and credentials as `***`).
    pub fn shown(&self, value: &str) -> String {
        self.kind.shown(value)
    }
}

/// What a run does when a step has failed all its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop and wait for a human (`resume` retries the step, `rollback` undoes).
    Halt,
    /// Undo the completed steps at once, newest first.
    Rollback,
}

/// One step of a workflow.
#[derive(Debug, Clone)]
pub struct Step {
    /// Unique id within the workflow.
    pub id: String,
    /// Registered activity name.
    pub activity: String,
    /// Inputs, possibly holding `${...}` references.
    pub with: Value,
    /// Retry policy for failed attempts.
    pub retry: RetryPolicy,
    /// Limit for one attempt.
    pub timeout: Option<Duration>,
    /// How to undo the step during rollback, if it can be undone.
    pub compensate: Option<Compensation>,
    /// A condition: the step runs only if this renders to `true`, or to `A == B` with equal
    /// sides, or to `A != B` with different sides; otherwise it is skipped (and journaled so).
    pub when: Option<String>,
    /// Line of the step in the file.
    pub line: usize,
}

/// How a completed step is undone.
#[derive(Debug, Clone)]
pub struct Compensation {
    /// Registered activity name.
    pub activity: String,
    /// Inputs; may reference this step's own output.
    pub with: Value,
}

/// Attempts and exponential backoff between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 means no retry).
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further failure.
    pub backoff: Duration,
    /// Cap on the wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failure (1-based): backoff × 2^(failures−1), capped.
    pub fn delay_after(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Evaluates a rendered `when`: `true`, `false`, `A == B`, `A != B`, or such terms joined
/// by `&&` (all must hold).
pub fn evaluate_condition(rendered: &str) -> Result<bool, String> {
    let mut all = true;
    for term in rendered.split("&&") {
        all &= evaluate_term(term)?;
    }
    Ok(all)
}

fn evaluate_term(rendered: &str) -> Result<bool, String> {
    if let Some((a, b)) = rendered.split_once("!=") {
        return Ok(a.trim() != b.trim());
    }
    if let Some((a, b)) = rendered.split_once("==") {
        return Ok(a.trim() == b.trim());
    }
    match rendered.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "condition \"{other}\" is not true, false, A == B or A != B (terms may be joined by &&)"
        )),
    }
}

/// Why a step whose `when` was false did not run, in words: `no app_restart given`,
/// `cutover is none` — not the template source.
pub fn skip_reason(condition: &str, evaluated: &str) -> String {
    let (terms, values): (Vec<&str>, Vec<&str>) = (
        condition.split("&&").collect(),
        evaluated.split("&&").collect(),
    );
    if terms.len() > 1 && terms.len() == values.len() {
        // The first term that does not hold is why.
        if let Some((term, value)) = terms
            .iter()
            .zip(&values)
            .find(|(_, value)| evaluate_term(value) == Ok(false))
        {
            return skip_reason(term, value);
        }
    }
    // `${params.a}${params.b}` reads as "a or b".
    let name = |side: &str| {
        let side = side.trim();
        let names: Option<Vec<&str>> = side
            .strip_prefix("${params.")
            .and_then(|s| s.strip_suffix('}'))
            .map(|inner| inner.split("}${params.").collect());
        match names.as_deref() {
            Some([one]) => one.to_string(),
            Some([rest @ .., last]) => format!("{} or {last}", rest.join(", ")),
            _ => side.to_string(),
        }
    };
    if let (Some((a, _)), Some((_, eb))) = (condition.split_once("!="), evaluated.split_once("!="))
    {
        let eb = eb.trim();
        return if eb.is_empty() {
            format!("no {} given", name(a))
        } else {
            format!("{} is {eb}", name(a))
        };
    }
    if let (Some((a, _)), Some((ea, eb))) = (condition.split_once("=="), evaluated.split_once("=="))
    {
        let ea = ea.trim();
        return format!(
            "{} is {}, not {}",
            name(a),
            if ea.is_empty() { "empty" } else { ea },
            eb.trim()
        );
    }
    format!("its condition {condition} is false")
}

/// Everything wrong with a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct WorkflowError {
    /// The file (or `builtin:NAME`).
    pub file: String,
    /// Each problem with its line (when known).
    pub problems: Vec<(Option<usize>, String)>,
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (line, message)) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match line {
                Some(line) => write!(f, "{}:{line}: {message}", self.file)?,
                None => write!(f, "{}: {message}", self.file)?,
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    target: Option<Spanned<String>>,
    on_failure: Option<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<RawParam>>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(default)]
    required: bool,
    default: Option<toml::Value>,
    help: Option<String>,
    #[serde(default)]
    secret: bool,
    #[serde(rename = "type")]
    kind: Option<String>,
    choices: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: Spanned<String>,
    activity: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    with: toml::Table,
    retry: Option<Spanned<RawRetry>>,
    timeout: Option<Spanned<String>>,
    compensate: Option<Spanned<RawCompensation>>,
    when: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<u32>,
    backoff: Option<String>,
    max_backoff: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompensation {
    activity: Spanned<String>,
    #[serde(default)]
    with: toml::Table,
}

/// Converts TOML to JSON for inputs (datetimes become their RFC 3339 text).
pub fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => table_to_json(t),
    }
}

fn table_to_json(table: &toml::Table) -> Value {
    Value::Object(
        table
            .iter()
            .map(|(k, v)| (k.clone(), toml_to_json(v)))
            .collect(),
    )
}

/// Turns a byte offset into a 1-based line number.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// SHA-256 of a workflow's text, hex.
pub fn hash_text(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

struct Checker<'a> {
    text: &'a str,
    problems: Vec<(Option<usize>, String)>,
}

impl Checker<'_> {
    fn at(&mut self, offset: usize, message: String) {
        let line = line_of(self.text, offset);
        self.problems.push((Some(line), message));
    }

    /// The line of `needle` inside `span`, or of the span's start.
    fn line_in(&self, span: &std::ops::Range<usize>, needle: &str) -> usize {
        let slice = self.text.get(span.clone()).unwrap_or_default();
        let offset = slice.find(needle).map_or(span.start, |p| span.start + p);
        line_of(self.text, offset)
    }
}

impl Workflow {
    /// Parses and validates workflow text. `source` names it in messages.
    pub fn parse(source: &str, text: &str, registry: &Registry) -> Result<Self, WorkflowError> {
        let raw: RawWorkflow = toml::from_str(text).map_err(|e| WorkflowError {
            file: source.to_string(),
            problems: vec![(
                e.span().map(|s| line_of(text, s.start)),
                e.message().trim().to_string(),
            )],
        })?;
        let mut check = Checker {
            text,
            problems: Vec::new(),
        };

        let name = raw.name.get_ref().clone();
        if !valid_name(&name) {
            check.at(
                raw.name.span().start,
                format!("workflow name \"{name}\" may hold only letters, digits, '_' and '-'"),
            );
        }

        let on_failure = match raw.on_failure.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("halt") => OnFailure::Halt,
            Some("rollback") => OnFailure::Rollback,
            Some(other) => {
                let span = raw.on_failure.as_ref().map_or(0, |s| s.span().start);
                check.at(
                    span,
                    format!("on_failure = \"{other}\" is not known; use \"halt\" or \"rollback\""),
                );
                OnFailure::Halt
            }
        };

        let mut params: Vec<(usize, Param)> = Vec::new();
        for (pname, spanned) in &raw.params {
            let start = spanned.span().start;
            if !valid_name(pname) {
                check.at(
                    start,
                    format!(
                        "parameter name \"{pname}\" may hold only letters, digits, '_' and '-'"
                    ),
                );
            }
            let p = spanned.get_ref();
            let default = match &p.default {
                None => None,
                Some(toml::Value::String(s)) => Some(s.clone()),
                Some(
                    v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
                ) => Some(v.to_string()),
                Some(_) => {
                    check.at(
                        start,
                        format!(
                            "parameter \"{pname}\": default must be a string, number or boolean"
                        ),
                    );
                    None
                }
            };
            if p.required && default.is_some() {
                check.at(
                    start,
                    format!(
                        "parameter \"{pname}\" is required and has a default; keep one of the two"
                    ),
                );
            }
            let kind = match (p.kind.as_deref(), p.secret) {
                (None, true) => Ok(ParamKind::Secret),
                (None, false) => ParamKind::parse("text", p.choices.as_deref()),
                (Some(name), false) => ParamKind::parse(name, p.choices.as_deref()),
                (Some("secret"), true) => Ok(ParamKind::Secret),
                (Some(_), true) => Err("secret = true goes with type = \"secret\" only".into()),
            };
            let kind = match kind {
                Ok(kind) => kind,
                Err(e) => {
                    check.at(start, format!("parameter \"{pname}\": {e}"));
                    ParamKind::Text
                }
            };
            let param = Param {
                name: pname.clone(),
                required: p.required,
                default,
                help: p.help.clone(),
                secret: matches!(kind, ParamKind::Secret),
                kind,
            };
            if let Some(d) = param.default.as_deref()
                && !d.contains("${")
                && let Err(e) = param.check(d)
            {
                check.at(start, format!("default of {e}"));
            }
            params.push((start, param));
        }
        params.sort_by_key(|(start, _)| *start);
        let params: Vec<Param> = params.into_iter().map(|(_, p)| p).collect();
        let param_names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();

        let target = raw.target.as_ref().map(|t| {
            let value = Value::String(t.get_ref().clone());
            match references(&value) {
                Err(e) => check.at(t.span().start, format!("target: {e}")),
                Ok(refs) => {
                    for r in refs {
                        match &r {
                            Reference::Param(p) if !param_names.contains(&p.as_str()) => check.at(
                                t.span().start,
                                format!(
                                    "target refers to unknown parameter \"{p}\"{}",
                                    did_you_mean(p, param_names.iter().copied())
                                ),
                            ),
                            Reference::Step { .. } => check.at(
                                t.span().start,
                                format!("target {r} cannot use a step's output: the lock is taken before any step runs"),
                            ),
                            _ => {}
                        }
                    }
                }
            }
            t.get_ref().clone()
        });

        if raw.steps.is_empty() {
            check
                .problems
                .push((None, "the workflow has no [[steps]]".to_string()));
        }

        // First pass: ids and their positions, so forward references can be named.
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        let mut step_lines: HashMap<String, usize> = HashMap::new();
        for (index, step) in raw.steps.iter().enumerate() {
            let id = step.get_ref().id.get_ref();
            let id_offset = step.get_ref().id.span().start;
            if !valid_name(id) {
                check.at(
                    id_offset,
                    format!("step id \"{id}\" may hold only letters, digits, '_' and '-'"),
                );
            }
            if let Some(first) = step_lines.get(id) {
                check.at(
                    id_offset,
                    format!("duplicate step id \"{id}\" (first used on line {first})"),
                );
            } else {
                step_lines.insert(id.clone(), line_of(text, id_offset));
                first_seen.insert(id.clone(), index);
            }
        }
        let all_ids: Vec<&str> = raw
            .steps
            .iter()
            .map(|s| s.get_ref().id.get_ref().as_str())
            .collect();

        let mut steps = Vec::new();
        // A step's span covers its `[[steps]]` header; its body runs to the next step.
        let starts: Vec<usize> = raw.steps.iter().map(|s| s.span().start).collect();
        for (index, spanned) in raw.steps.iter().enumerate() {
            let end = starts.get(index + 1).copied().unwrap_or(text.len());
            let span = spanned.span().start..end.max(spanned.span().end);
            let raw_step = spanned.get_ref();
            let id = raw_step.id.get_ref().clone();
            let step_activity = raw_step.activity.get_ref().clone();
            let with = table_to_json(&raw_step.with);

            let context = format!("step \"{id}\"");
            check_activity_use(
                &mut check,
                registry,
                &context,
                &raw_step.activity,
                &with,
                &span,
            );

            // References: params declared, steps earlier (or, for a compensation, itself).
            let check_refs = |check: &mut Checker, what: &str, value: &Value, may_self: bool| {
                let refs = match references(value) {
                    Ok(refs) => refs,
                    Err(e) => {
                        let line = check.line_in(&span, "${");
                        check.problems.push((Some(line), format!("{context}: {e}")));
                        return;
                    }
                };
                for r in refs {
                    let line = check.line_in(&span, &r.to_string());
                    let problem = match &r {
                        Reference::Param(p) if !param_names.contains(&p.as_str()) => Some(format!(
                            "{context}: {what} refers to unknown parameter \"{p}\"{}; declare it under [params]",
                            did_you_mean(p, param_names.iter().copied())
                        )),
                        Reference::Step { id: other, path } => match first_seen.get(other) {
                            None => Some(format!(
                                "{context}: {what} refers to unknown step \"{other}\"{}",
                                did_you_mean(other, all_ids.iter().copied())
                            )),
                            Some(pos) if *pos == index && !may_self => {
                                Some(format!("{context}: {what} refers to its own output {r}"))
                            }
                            Some(pos) if *pos > index => Some(format!(
                                "{context}: {what} refers to step \"{other}\" (line {}), which runs later; a step can only use outputs of steps before it",
                                step_lines.get(other).copied().unwrap_or(0)
                            )),
                            Some(pos) => {
                                let producer = raw.steps[*pos].get_ref().activity.get_ref();
                                registry.get(producer).and_then(|a| {
                                        let outputs = a.spec().outputs;
                                        let field = path[0].as_str();
                                        (!outputs.is_empty() && !outputs.contains(&field)).then(|| {
                                            format!(
                                                "{context}: {what} refers to {r}, but activity \"{producer}\" has no output \"{field}\"{} (outputs: {})",
                                                did_you_mean(field, outputs.iter().copied()),
                                                outputs.join(", ")
                                            )
                                        })
                                    })
                            }
                        },
                        _ => None,
                    };
                    if let Some(problem) = problem {
                        check.problems.push((Some(line), problem));
                    }
                }
            };
            check_refs(&mut check, "input", &with, false);
            if let Some(when) = &raw_step.when {
                check_refs(
                    &mut check,
                    "when",
                    &Value::String(when.get_ref().clone()),
                    false,
                );
            }

            let compensate = raw_step.compensate.as_ref().map(|c| {
                let comp = c.get_ref();
                let comp_with = table_to_json(&comp.with);
                let comp_context = format!("step \"{id}\" compensate");
                check_activity_use(
                    &mut check,
                    registry,
                    &comp_context,
                    &comp.activity,
                    &comp_with,
                    &c.span(),
                );
                check_refs(&mut check, "compensation input", &comp_with, true);
                Compensation {
                    activity: comp.activity.get_ref().clone(),
                    with: comp_with,
                }
            });

            let mut retry = RetryPolicy::default();
            if let Some(r) = &raw_step.retry {
                let rr = r.get_ref();
                let offset = r.span().start;
                if let Some(attempts) = rr.attempts {
                    if attempts == 0 {
                        check.at(
                            offset,
                            format!("{context}: retry.attempts must be at least 1"),
                        );
                    }
                    retry.attempts = attempts.max(1);
                }
                for (field, value, slot) in [
                    ("backoff", &rr.backoff, &mut retry.backoff),
                    ("max_backoff", &rr.max_backoff, &mut retry.max_backoff),
                ] {
                    if let Some(value) = value {
                        match parse_duration(value) {
                            Ok(d) => *slot = d,
                            Err(e) => check.at(
                                offset,
                                format!("{context}: bad duration for retry.{field}: {e}"),
                            ),
                        }
                    }
                }
                if retry.backoff > retry.max_backoff {
                    check.at(
                        offset,
                        format!("{context}: retry.backoff is longer than retry.max_backoff"),
                    );
                }
            }

            let timeout =
                raw_step
                    .timeout
                    .as_ref()
                    .and_then(|t| match parse_duration(t.get_ref()) {
                        Ok(d) if d.is_zero() => {
                            check.at(
                                t.span().start,
                                format!("{context}: timeout must be longer than zero"),
                            );
                            None
                        }
                        Ok(d) => Some(d),
                        Err(e) => {
                            check.at(
                                t.span().start,
                                format!("{context}: bad duration for timeout: {e}"),
                            );
                            None
                        }
                    });

            let _ = &raw_step.description;
            steps.push(Step {
                id,
                activity: step_activity,
                with,
                retry,
                timeout,
                compensate,
                when: raw_step.when.as_ref().map(|w| w.get_ref().clone()),
                line: line_of(text, span.start),
            });
        }

        if !check.problems.is_empty() {
            check.problems.sort_by_key(|(line, _)| line.unwrap_or(0));
            return Err(WorkflowError {
                file: source.to_string(),
                problems: check.problems,
            });
        }
        Ok(Workflow {
            name,
            description: raw.description,
            target,
            on_failure,
            params,
            steps,
            source: source.to_string(),
            text: text.to_string(),
            hash: hash_text(text),
        })
    }

    /// The step called `id`.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Checks a step id given on the command line (`--halt-before`), suggesting near misses.
    pub fn check_step_id(&self, id: &str) -> Result<(), String> {
        if self.step(id).is_some() {
            return Ok(());
        }
        let ids: Vec<&str> = self.steps.iter().map(|s| s.id.as_str()).collect();
        Err(format!(
            "workflow \"{}\" has no step \"{id}\"{}; its steps are: {}",
            self.name,
            did_you_mean(id, ids.iter().copied()),
            ids.join(", ")
        ))
    }

    /// The run's parameter values: the given ones checked against the declaration, defaults
    /// filled in, required ones demanded.
    pub fn resolve_params(
        &self,
        given: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, String> {
        let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        let mut problems = Vec::new();
        for key in given.keys() {
            if !names.contains(&key.as_str()) {
                let takes = if names.is_empty() {
                    "it takes no parameters".to_string()
                } else {
                    format!("it takes: {}", names.join(", "))
                };
                problems.push(format!(
                    "unknown parameter \"{key}\"{} for workflow \"{}\"; {takes}",
                    did_you_mean(key, names.iter().copied()),
                    self.name
                ));
            }
        }
        let mut values = BTreeMap::new();
        for param in &self.params {
            match (given.get(&param.name), &param.default) {
                (Some(v), _) => {
                    if let Err(e) = param.check(v) {
                        problems.push(e);
                    }
                    values.insert(param.name.clone(), v.clone());
                }
                (None, Some(d)) => {
                    values.insert(param.name.clone(), d.clone());
                }
                (None, None) if param.required => problems.push(format!(
                    "missing required parameter: --param {}=...{}",
                    param.name,
                    param
                        .help
                        .as_ref()
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default()
                )),
                (None, None) => {}
            }
        }
        if problems.is_empty() {
            Ok(values)
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// Checks that an activity exists and that its inputs are ones it accepts.
fn check_activity_use(
    check: &mut Checker,
    registry: &Registry,
    context: &str,
    activity: &Spanned<String>,
    with: &Value,
    span: &std::ops::Range<usize>,
) {
    let name = activity.get_ref();
    let Some(found) = registry.get(name) else {
        check.at(
            activity.span().start,
            format!(
                "{context}: unknown activity \"{name}\"{}; known activities: {}",
                did_you_mean(name, registry.names()),
                registry.names().join(", ")
            ),
        );
        return;
    };
    let spec = found.spec();
    let accepted: Vec<&str> = spec.inputs.iter().map(|i| i.name).collect();
    if let Value::Object(map) = with {
        for key in map.keys() {
            if !accepted.contains(&key.as_str()) {
                let line = check.line_in(span, key);
                check.problems.push((
                    Some(line),
                    format!(
                        "{context}: activity \"{name}\" has no input \"{key}\"{}; it accepts: {}",
                        did_you_mean(key, accepted.iter().copied()),
                        accepted.join(", ")
                    ),
                ));
            }
        }
        for input in spec.inputs.iter().filter(|i| i.required) {
            if !map.contains_key(input.name) {
                check.at(
                    span.start,
                    format!(
                        "{context}: activity \"{name}\" needs input \"{}\" ({})",
                        input.name, input.help
                    ),
                );
            }
        }
    }
    if let Err(e) = found.check_inputs(with) {
        check.at(span.start, format!("{context}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::activity::{
        Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec,
    };
    use async_trait::async_trait;
    use std::sync::Arc;

    struct Echo;
    static ECHO: ActivitySpec = ActivitySpec {
        name: "echo",
        summary: "returns its input",
        inputs: &[
            InputSpec {
                name: "text",
                required: true,
                help: "what to echo",
            },
            InputSpec {
                name: "times",
                required: false,
                help: "how often",
            },
        ],
        outputs: &["text"],
    };
    #[async_trait]
    impl Activity for Echo {
        fn spec(&self) -> &'static ActivitySpec {
            &ECHO
        }
        async fn run(&self, _: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
            Ok(inputs)
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register(Arc::new(Echo));
        r
    }

    fn parse(text: &str) -> Result<Workflow, WorkflowError> {
        Workflow::parse("wf.toml", text, &registry())
    }

    const GOOD: &str = r#"
name = "good"
description = "a test"
target = "${params.db}"
on_failure = "rollback"

[params]
db = { required = true, help = "database" }
n = { default = 3 }

[[steps]]
id = "one"
activity = "echo"
with = { text = "${params.db}" }
timeout = "2m"
retry = { attempts = 3, backoff = "1s", max_backoff = "3s" }

[[steps]]
id = "two"
activity = "echo"
with = { text = "got ${steps.one.text}", times = "${params.n}" }
compensate = { activity = "echo", with = { text = "undo ${steps.two.text}" } }
"#;

    #[test]
    fn skipped_steps_say_why_in_words() {
        assert_eq!(
            skip_reason("${params.app_restart} != ", " != "),
            "no app_restart given"
        );
        assert_eq!(
            skip_reason("${params.cutover} != none", "none != none"),
            "cutover is none"
        );
        assert_eq!(
            skip_reason(
                "${params.app_restart}${params.compose_file}${params.k8s_workload} != ",
                " != "
            ),
            "no app_restart, compose_file or k8s_workload given"
        );
        assert_eq!(
            skip_reason("${params.mode} == fast", "slow == fast"),
            "mode is slow, not fast"
        );
        assert_eq!(
            skip_reason(
                "${params.app_stop} != true && ${params.health_url} != ",
                "false != true &&  != "
            ),
            "no health_url given"
        );
    }

    #[test]
    fn parses_a_good_workflow() {
        let wf = parse(GOOD).unwrap();
        assert_eq!(wf.name, "good");
        assert_eq!(wf.on_failure, OnFailure::Rollback);
        assert_eq!(wf.target.as_deref(), Some("${params.db}"));
        assert_eq!(wf.params[0].name, "db");
        assert_eq!(wf.params[1].default.as_deref(), Some("3"));
        assert_eq!(wf.steps.len(), 2);
        assert_eq!(wf.steps[0].timeout, Some(Duration::from_secs(120)));
        assert_eq!(wf.steps[0].retry.attempts, 3);
        assert_eq!(wf.steps[1].line, 18);
        assert!(wf.steps[1].compensate.is_some());
        assert_eq!(wf.hash.len(), 64);
    }

    #[test]
    fn conditions_evaluate_equality_and_inequality() {
        assert_eq!(evaluate_condition("true"), Ok(true));
        assert_eq!(evaluate_condition(" false "), Ok(false));
        assert_eq!(evaluate_condition("pgbouncer != none"), Ok(true));
        assert_eq!(evaluate_condition("true != true && x != "), Ok(false));
        assert_eq!(evaluate_condition("false != true && x != "), Ok(true));
        assert_eq!(evaluate_condition("none != none"), Ok(false));
        assert_eq!(evaluate_condition("a == a"), Ok(true));
        assert_eq!(evaluate_condition("http://x != "), Ok(true));
        assert_eq!(evaluate_condition(" != "), Ok(false));
        assert!(evaluate_condition("maybe").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
        };
        assert_eq!(p.delay_after(1), Duration::from_secs(1));
        assert_eq!(p.delay_after(2), Duration::from_secs(2));
        assert_eq!(p.delay_after(3), Duration::from_secs(3));
        assert_eq!(p.delay_after(10), Duration::from_secs(3));
    }

    fn problems(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn toml_syntax_error_names_file_and_line() {
        let err = problems("name = \"x\"\n[[steps]]\nid = \"a\nactivity = \"echo\"\n");
        assert!(err.starts_with("wf.toml:3:"), "{err}");
    }

    #[test]
    fn unknown_activity_is_named_with_a_suggestion() {
        let err = problems(
            "name = \"x\"\n[[steps]]\nid = \"a\"\nactivity = \"ecoh\"\nwith = { text = \"t\" }\n",
        );
        assert!(err.contains("wf.toml:4:"), "{err}");
        assert!(
            err.contains("unknown activity \"ecoh\" (did you mean \"echo\"?)"),
            "{err}"
        );
    }

    #[test]
    fn unknown_top_level_key_is_a_typo() {
        let err = problems(
            "name = \"x\"\non_falure = \"halt\"\n[[steps]]\nid = \"a\"\nactivity = \"echo\"\nwith = { text = \"t\" }\n",
        );
        assert!(err.contains("wf.toml:2:"), "{err}");
        assert!(err.contains("on_falure"), "{err}");
    }

    #[test]
    fn unknown_and_forward_references_are_refused() {
        let text = r#"name = "x"
[params]
db = { required = true }
[[steps]]
id = "a"
activity = "echo"
with = { text = "${steps.b.text}" }
[[steps]]
id = "b"
activity = "echo"
with = { text = "${params.dbb} ${steps.zzz.text}" }
"#;
        let err = problems(text);
        assert!(
            err.contains(
                "wf.toml:7: step \"a\": input refers to step \"b\" (line 9), which runs later"
            ),
            "{err}"
        );
        assert!(err.contains("wf.toml:11: step \"b\": input refers to unknown parameter \"dbb\" (did you mean \"db\"?)"), "{err}");
        assert!(err.contains("unknown step \"zzz\""), "{err}");
    }

    #[test]
    fn unknown_output_field_and_input_are_refused() {
        let text = r#"name = "x"
[[steps]]
id = "a"
activity = "echo"
with = { text = "t", tmes = 2 }
[[steps]]
id = "b"
activity = "echo"
with = { text = "${steps.a.txet}" }
"#;
        let err = problems(text);
        assert!(err.contains("wf.toml:5: step \"a\": activity \"echo\" has no input \"tmes\" (did you mean \"times\"?)"), "{err}");
        assert!(
            err.contains("wf.toml:9:")
                && err.contains("no output \"txet\" (did you mean \"text\"?)"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_ids_and_bad_durations_are_refused() {
        let text = r#"name = "x"
[[steps]]
id = "a"
activity = "echo"
with = { text = "t" }
timeout = "5 minutes"
[[steps]]
id = "a"
activity = "echo"
with = { text = "t" }
retry = { attempts = 2, backoff = "10" }
"#;
        let err = problems(text);
        assert!(
            err.contains("wf.toml:6: step \"a\": bad duration for timeout"),
            "{err}"
        );
        assert!(
            err.contains("wf.toml:8: duplicate step id \"a\" (first used on line 3)"),
            "{err}"
        );
        assert!(err.contains("bad duration for retry.backoff"), "{err}");
    }

    #[test]
    fn missing_required_input_is_refused() {
        let err = problems("name = \"x\"\n[[steps]]\nid = \"a\"\nactivity = \"echo\"\n");
        assert!(err.contains("needs input \"text\""), "{err}");
    }

    #[test]
    fn params_are_resolved_with_defaults_and_checked() {
        let wf = parse(GOOD).unwrap();
        let given = BTreeMap::from([("db".to_string(), "shop".to_string())]);
        let values = wf.resolve_params(&given).unwrap();
        assert_eq!(values.get("n").map(String::as_str), Some("3"));
        let err = wf
            .resolve_params(&BTreeMap::from([("dbb".into(), "x".into())]))
            .unwrap_err();
        assert!(
            err.contains("unknown parameter \"dbb\" (did you mean \"db\"?)"),
            "{err}"
        );
        assert!(
            err.contains("missing required parameter: --param db=... (database)"),
            "{err}"
        );
    }
}

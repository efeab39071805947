//! What can be run: every visible workflow with its parameters, help and step ids — what the
//! `workflows` command prints and the API's recover form offers.

use serde_json::{Value, json};

use crate::engine::{Registry, Workflow};
use crate::runbooks;

/// Every workflow visible from the current directory (`./workflows/*.toml`, then the
/// built-ins), each as `{name, source, description, params, steps, valid}`, or
/// `{valid: false, error}` for a file that does not parse.
pub fn describe_all(registry: &Registry) -> Vec<Value> {
    runbooks::all()
        .into_iter()
        .map(|entry| match entry {
            Ok(located) => match Workflow::parse(&located.source, &located.text, registry) {
                Ok(wf) => describe(&wf),
                Err(e) => json!({
                    "name": located.source, "source": located.source, "valid": false, "error": e.to_string(),
                }),
            },
            Err(e) => json!({ "name": "?", "valid": false, "error": e.to_string() }),
        })
        .collect()
}

/// One parsed workflow, described.
pub fn describe(wf: &Workflow) -> Value {
    json!({
        "name": wf.name,
        "source": wf.source,
        "description": wf.description,
        "target": wf.target,
        "params": wf.params.iter().map(|p| json!({
            "name": p.name, "required": p.required, "default": p.default, "help": p.help,
            "secret": p.secret, "type": p.kind.name(),
            "choices": match &p.kind { crate::engine::params::ParamKind::Choice(list) => Some(list.clone()), _ => None },
            "admin_only": p.kind.admin_only(),
        })).collect::<Vec<_>>(),
        "steps": wf.steps.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        "valid": true,
    })
}

//! SQL checks of a restored database: `verify_restore` (every table of the manifest is there,
//! with about the rows it had) and `sql_check` (tables that must have rows, queries that must
//! return true) for health checks.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::dump::{pg_failure, tables};
use super::inputs;
use super::services::Services;
use crate::catalog::TableInfo;
use crate::engine::{Activity, ActivityContext, ActivityError, ActivitySpec, InputSpec};
use crate::pg::sql::{Sql, ident};

static VERIFY: ActivitySpec = ActivitySpec {
    name: "verify_restore",
    summary: "check a restored database against its backup's manifest (tables, row counts)",
    inputs: &[
        InputSpec {
            name: "database",
            required: true,
            help: "the restored database",
        },
        InputSpec {
            name: "tables",
            required: true,
            help: "the manifest's tables (${steps.select.tables})",
        },
        InputSpec {
            name: "tolerance",
            required: false,
            help: "allowed relative difference from the row estimates (default 0.1)",
        },
    ],
    outputs: &["tables_checked", "rows", "problems"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyInputs {
    database: String,
    tables: Vec<TableInfo>,
    tolerance: Option<f64>,
}

/// The `verify_restore` activity.
pub struct VerifyRestore {
    services: Arc<Services>,
}

impl VerifyRestore {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for VerifyRestore {
    fn spec(&self) -> &'static ActivitySpec {
        &VERIFY
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: VerifyInputs = inputs::parse("verify_restore", inputs)?;
        let tolerance = inputs.tolerance.unwrap_or(0.1).max(0.0);
        let sql = Sql::new(&self.services.pg_tools, &self.services.pg_server);
        let (present, counts) = tokio::task::block_in_place(|| {
            let present = tables(&sql, &inputs.database)?;
            let mut counts = Vec::new();
            for t in &inputs.tables {
                if present
                    .iter()
                    .any(|p| p.schema == t.schema && p.name == t.name)
                {
                    let n = sql
                        .scalar(
                            &inputs.database,
                            &format!(
                                "SELECT count(*) FROM {}.{}",
                                ident(&t.schema),
                                ident(&t.name)
                            ),
                        )?
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(-1);
                    counts.push((t.clone(), Some(n)));
                } else {
                    counts.push((t.clone(), None));
                }
            }
            Ok::<_, crate::pg::PgError>((present, counts))
        })
        .map_err(pg_failure)?;
        let mut problems = Vec::new();
        let mut rows = serde_json::Map::new();
        for (t, count) in &counts {
            let name = format!("{}.{}", t.schema, t.name);
            match count {
                None => problems.push(format!("table {name} is missing")),
                Some(n) => {
                    rows.insert(name.clone(), json!({ "rows": n, "estimate": t.rows }));
                    // Estimates are the planner's: allow a margin, and ignore unknown ones.
                    if t.rows >= 0 {
                        let slack = (t.rows as f64 * tolerance).max(10.0);
                        if (*n as f64 - t.rows as f64).abs() > slack {
                            problems.push(format!(
                                "table {name} has {n} rows, the backup's estimate was {}",
                                t.rows
                            ));
                        }
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(ActivityError::permanent(format!(
                "the restore of {} does not match its backup: {}",
                inputs.database,
                problems.join("; ")
            )));
        }
        Ok(json!({
            "tables_checked": counts.len(),
            "tables_present": present.len(),
            "rows": rows,
            "problems": problems,
        }))
    }
}

static SQL_CHECK: ActivitySpec = ActivitySpec {
    name: "sql_check",
    summary: "health checks in SQL: tables that must have rows, queries that must be true",
    inputs: &[
        InputSpec {
            name: "database",
            required: true,
            help: "database to check",
        },
        InputSpec {
            name: "table_has_rows",
            required: false,
            help: "tables that must not be empty",
        },
        InputSpec {
            name: "true_queries",
            required: false,
            help: "queries whose single value must be true",
        },
        InputSpec {
            name: "port",
            required: false,
            help: "check a server on this port of the configured host (a restored one)",
        },
        InputSpec {
            name: "host",
            required: false,
            help: "check a server on this host instead of the configured one (a restored server listens on 127.0.0.1)",
        },
    ],
    outputs: &["passed", "results"],
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlCheckInputs {
    database: String,
    #[serde(default)]
    table_has_rows: Vec<String>,
    #[serde(default)]
    true_queries: Vec<String>,
    #[serde(default, deserialize_with = "super::inputs::lenient_opt_u64")]
    port: Option<u64>,
    #[serde(default)]
    host: Option<String>,
}

/// The `sql_check` activity.
pub struct SqlCheck {
    services: Arc<Services>,
}

impl SqlCheck {
    /// The activity over these services.
    pub fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[async_trait]
impl Activity for SqlCheck {
    fn spec(&self) -> &'static ActivitySpec {
        &SQL_CHECK
    }

    async fn run(&self, _ctx: &ActivityContext, inputs: Value) -> Result<Value, ActivityError> {
        let inputs: SqlCheckInputs = inputs::parse("sql_check", inputs)?;
        let mut server = self.services.pg_server.clone();
        if let Some(host) = inputs.host.as_ref().filter(|h| !h.is_empty()) {
            server.host = Some(host.clone());
        }
        if let Some(port) = inputs.port.filter(|p| *p > 0) {
            server.port = Some(
                u16::try_from(port)
                    .map_err(|_| ActivityError::permanent(format!("port {port} is not a port")))?,
            );
        }
        let sql = Sql::new(&self.services.pg_tools, &server);
        let mut results = Vec::new();
        let mut failures = Vec::new();
        tokio::task::block_in_place(|| {
            for table in &inputs.table_has_rows {
                let quoted = match table.split_once('.') {
                    Some((schema, name)) => format!("{}.{}", ident(schema), ident(name)),
                    None => ident(table),
                };
                let check = format!("SELECT EXISTS (SELECT 1 FROM {quoted} LIMIT 1)");
                match sql.scalar(&inputs.database, &check) {
                    Ok(Some(v)) if v == "t" => {
                        results.push(json!({ "check": format!("{table} has rows"), "ok": true }))
                    }
                    Ok(_) => failures.push(format!("table {table} is empty")),
                    Err(e) => failures.push(format!("table {table}: {e}")),
                }
            }
            for query in &inputs.true_queries {
                match sql.scalar(&inputs.database, query) {
                    Ok(Some(v)) if v == "t" => results.push(json!({ "check": query, "ok": true })),
                    Ok(v) => failures.push(format!(
                        "`{query}` returned {}",
                        v.unwrap_or_else(|| "no row".into())
                    )),
                    Err(e) => failures.push(format!("`{query}`: {e}")),
                }
            }
        });
        if !failures.is_empty() {
            return Err(ActivityError::retryable(format!(
                "health checks on {} failed: {}",
                inputs.database,
                failures.join("; ")
            )));
        }
        Ok(json!({ "passed": results.len(), "results": results }))
    }
}

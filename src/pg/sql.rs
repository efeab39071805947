//! Running SQL through `psql`, with libpq's settings, and quoting names and values safely.

use std::process::Stdio;

use super::{PgError, Server, Tools, tail_lines};

/// Field separator in psql's unaligned output (ASCII unit separator).
const FIELD: char = '\u{1f}';

/// Runs SQL against a server.
pub struct Sql<'a> {
    tools: &'a Tools,
    server: &'a Server,
}

impl<'a> Sql<'a> {
    /// SQL through these tools to this server.
    pub fn new(tools: &'a Tools, server: &'a Server) -> Self {
        Self { tools, server }
    }

    /// Runs `sql` in `database` and returns the rows (fields as text; NULL as "").
    pub fn query(&self, database: &str, sql: &str) -> Result<Vec<Vec<String>>, PgError> {
        let mut cmd = self.tools.command("psql")?;
        self.server.apply(&mut cmd);
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            // A server that does not answer is an error in seconds, not a hang.
            cmd.env("PGCONNECT_TIMEOUT", "10");
        }
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(format!("--field-separator={FIELD}"))
            .arg("--dbname")
            .arg(super::conninfo::dbname_only(database))
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .map_err(|e| PgError::Io(format!("cannot run psql: {e}")))?;
        if !out.status.success() {
            return Err(PgError::Failed {
                tool: "psql".into(),
                status: out.status.to_string(),
                detail: format!(
                    "{} (server {}, database {database})",
                    tail_lines(&out.stderr, 3),
                    self.server.describe()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split(FIELD).map(String::from).collect())
            .collect())
    }

    /// Runs statements for their effect.
    pub fn execute(&self, database: &str, sql: &str) -> Result<(), PgError> {
        self.query(database, sql).map(|_| ())
    }

    /// The first field of the first row.
    pub fn scalar(&self, database: &str, sql: &str) -> Result<Option<String>, PgError> {
        Ok(self
            .query(database, sql)?
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next()))
    }

    /// Whether a database exists.
    pub fn database_exists(&self, name: &str) -> Result<bool, PgError> {
        Ok(self
            .scalar(
                "postgres",
                &format!(
                    "SELECT 1 FROM pg_database WHERE datname = {}",
                    literal(name)
                ),
            )?
            .is_some())
    }
}

/// Quotes an identifier (a database, schema or table name).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_characters() {
        assert_eq!(ident("shop"), "\"shop\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("o'clock"), "'o''clock'");
    }
}

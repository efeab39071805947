//! Finding and driving PostgreSQL's own tools (pg_dump, pg_restore, psql, initdb, pg_ctl) —
//! Lazarus talks to PostgreSQL the way an operator would, so libpq's settings (PGHOST,
//! PGPORT, PGUSER, PGPASSWORD, sslmode, .pgpass) all apply unchanged.

pub mod archive_layout;
pub mod archiver;
pub mod archiving;
pub mod bouncer_ini;
pub mod cluster;
pub mod conninfo;
pub mod dir_archive;
pub mod dump_blocks;
pub(crate) mod dump_format;
pub mod dump_toc;
pub mod reach;
pub mod sql;
pub mod untar;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A PostgreSQL tool failed or is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    /// The tool is not installed where we looked.
    #[error(
        "{tool} not found (looked in {searched}); install PostgreSQL's client and server tools (Debian: apt-get install postgresql) or set [postgres] bin_dir in lazarus.toml"
    )]
    MissingTool {
        /// The tool.
        tool: String,
        /// Where we looked.
        searched: String,
    },
    /// The tool ran and failed.
    #[error("{tool} failed ({status}): {detail}")]
    Failed {
        /// The tool.
        tool: String,
        /// Its exit status.
        status: String,
        /// The last lines it printed.
        detail: String,
    },
    /// It could not be started or talked to.
    #[error("{0}")]
    Io(String),
}

/// Where PostgreSQL's binaries are.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    /// An explicit directory (`[postgres] bin_dir` or `LAZARUS_PG_BIN`).
    pub bin_dir: Option<PathBuf>,
}

/// Debian keeps server binaries (initdb, pg_ctl, postgres) out of PATH, per major version.
fn debian_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, p)| p).collect()
}

impl Tools {
    /// Tools from `[postgres] bin_dir`, else `LAZARUS_PG_BIN`, else the usual places.
    pub fn new(bin_dir: Option<PathBuf>) -> Self {
        Self {
            bin_dir: bin_dir.or_else(|| std::env::var_os("LAZARUS_PG_BIN").map(PathBuf::from)),
        }
    }

    /// The path of a tool.
    pub fn path(&self, tool: &str) -> Result<PathBuf, PgError> {
        let mut searched = Vec::new();
        let mut dirs: Vec<PathBuf> = self.bin_dir.iter().cloned().collect();
        dirs.extend(debian_dirs());
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        for dir in dirs {
            let candidate = dir.join(tool);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
            searched.push(dir.display().to_string());
        }
        Err(PgError::MissingTool {
            tool: tool.to_string(),
            searched: searched.join(", "),
        })
    }

    /// A command for a tool.
    pub fn command(&self, tool: &str) -> Result<Command, PgError> {
        Ok(Command::new(self.path(tool)?))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How to reach a PostgreSQL server: the `[postgres]` section, or libpq's environment.
#[derive(Clone, Default)]
pub struct Server {
    /// Host or socket directory (PGHOST).
    pub host: Option<String>,
    /// Port (PGPORT).
    pub port: Option<u16>,
    /// User (PGUSER).
    pub user: Option<String>,
    /// Password (PGPASSWORD); never shown.
    pub password: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Server {
    /// Sets libpq's environment on a command; unset fields keep the caller's environment.
    pub fn apply(&self, cmd: &mut Command) {
        if let Some(host) = &self.host {
            cmd.env("PGHOST", host);
        }
        if let Some(port) = self.port {
            cmd.env("PGPORT", port.to_string());
        }
        if let Some(user) = &self.user {
            cmd.env("PGUSER", user);
        }
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
    }

    /// Where it is, for messages (never the password).
    pub fn describe(&self) -> String {
        let env = |k: &str| std::env::var(k).ok();
        format!(
            "{}@{}:{}",
            self.user
                .clone()
                .or_else(|| env("PGUSER"))
                .unwrap_or_else(|| "(default user)".into()),
            self.host
                .clone()
                .or_else(|| env("PGHOST"))
                .unwrap_or_else(|| "(default host)".into()),
            self.port
                .map(|p| p.to_string())
                .or_else(|| env("PGPORT"))
                .unwrap_or_else(|| "5432".into())
        )
    }
}

/// The last few lines of a tool's output, for an error message.
pub fn tail_lines(text: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether this process runs as root (PostgreSQL's server refuses to).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_named_with_where_we_looked() {
        let tools = Tools::new(Some(PathBuf::from("/nonexistent")));
        let err = tools.path("pg_nonesuch").unwrap_err().to_string();
        assert!(
            err.starts_with("pg_nonesuch not found (looked in /nonexistent"),
            "{err}"
        );
        assert!(err.contains("bin_dir"), "{err}");
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let server = Server {
            password: Some("hunter2".into()),
            ..Server::default()
        };
        assert!(!format!("{server:?}").contains("hunter2"));
        assert!(!server.describe().contains("hunter2"));
    }
}

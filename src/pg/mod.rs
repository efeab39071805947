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
pub mod versions;

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
    /// The tool is installed, but not of the major version the server needs.
    #[error("{tool} of PostgreSQL {major} is needed ({why}); found {found}: {hint}")]
    WrongVersion {
        /// The tool.
        tool: String,
        /// The major version needed.
        major: u32,
        /// Why that one (the server's version, the base backup's).
        why: String,
        /// What was found, with versions (or "none").
        found: String,
        /// What to install.
        hint: String,
    },
    /// It could not be started or talked to.
    #[error("{0}")]
    Io(String),
}

impl PgError {
    /// Whether the machine lacks a tool (not the run's or the backup's fault): the run
    /// halts until one is installed.
    pub fn is_missing_tool(&self) -> bool {
        matches!(
            self,
            PgError::MissingTool { .. } | PgError::WrongVersion { .. }
        )
    }
}

/// Where PostgreSQL's binaries are, and which major version they must be.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    /// Explicit directories (`[postgres] bin_dir` or `LAZARUS_PG_BIN`; several separated by
    /// `:`, one per major version say).
    pub bin_dir: Option<PathBuf>,
    /// The major version of the server these tools serve, once known (see
    /// [`versions`]); `None`: the first tool found.
    pub major: Option<(u32, String)>,
}

/// The PGDG RPMs keep each major's tools in `/usr/pgsql-N/bin`, outside PATH.
fn pgdg_rpm_dirs() -> Vec<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let v = name.strip_prefix("pgsql-")?.parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, p)| p).collect()
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
            major: None,
        }
    }

    /// These tools, of the major version `major` (a server's, a base backup's: `why` says
    /// which, for the error when none is installed).
    pub fn for_major(&self, major: u32, why: impl Into<String>) -> Tools {
        Tools {
            bin_dir: self.bin_dir.clone(),
            major: Some((major, why.into())),
        }
    }

    /// These tools, of the major version of the cluster in `data` (its `PG_VERSION`);
    /// unchanged when it has none.
    pub fn for_data_dir(&self, data: &Path) -> Tools {
        match versions::data_dir_major(data) {
            Some(major) => self.for_major(
                major,
                format!(
                    "the data directory {} is of PostgreSQL {major}",
                    data.display()
                ),
            ),
            None => self.clone(),
        }
    }

    /// These tools, of the major version of the server `server` reaches (asked through
    /// psql of any version: `server_version_num`), in `database`.
    pub fn for_server(&self, server: &Server, database: &str) -> Result<Tools, PgError> {
        let sql = sql::Sql::new(self, server);
        let num = sql
            .scalar(database, "SELECT current_setting('server_version_num')")?
            .and_then(|n| n.trim().parse::<u32>().ok())
            .ok_or_else(|| PgError::Io("the server did not say its server_version_num".into()))?;
        let major = versions::major_of_version_num(num);
        Ok(self.for_major(major, format!("the server is PostgreSQL {major}")))
    }

    /// The directories searched, in order: `bin_dir`, the major's conventional directories
    /// (when the major is known), PATH, then every Debian and PGDG RPM directory.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .bin_dir
            .iter()
            .flat_map(std::env::split_paths)
            .collect();
        if let Some((major, _)) = &self.major {
            dirs.extend(versions::conventional_dirs(*major));
        }
        dirs.extend(debian_dirs());
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.extend(pgdg_rpm_dirs());
        let mut seen = std::collections::HashSet::new();
        // A relative directory (PATH's "." or "bin") means whatever the working directory
        // holds: never searched.
        dirs.retain(|d| d.is_absolute() && seen.insert(d.clone()));
        dirs
    }

    /// The path of a tool: of the major version these tools are for, when it is known
    /// (each candidate asked its `--version`), else the first found.
    pub fn path(&self, tool: &str) -> Result<PathBuf, PgError> {
        let dirs = self.dirs();
        if let Some((major, why)) = &self.major {
            let found: Vec<(PathBuf, Option<u32>)> = dirs
                .iter()
                .map(|d| d.join(tool))
                .filter(|c| is_executable(c) && !is_version_wrapper(c))
                .map(|c| {
                    let m = versions::tool_major(&c);
                    (c, m)
                })
                .collect();
            if let Some(path) = versions::choose(tool, *major, &found) {
                return Ok(path);
            }
            let found_text = if found.is_empty() {
                "none".to_string()
            } else {
                found
                    .iter()
                    .map(|(p, m)| match m {
                        Some(m) => format!("{} ({m})", p.display()),
                        None => format!("{} (version unknown)", p.display()),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(PgError::WrongVersion {
                tool: tool.to_string(),
                major: *major,
                why: why.clone(),
                found: found_text,
                hint: versions::install_hint(tool, *major),
            });
        }
        let mut searched = Vec::new();
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

/// Debian's `/usr/bin/pg_dump` and friends are links to `pg_wrapper`, which picks a
/// version per call: its `--version` says nothing about the next call.
fn is_version_wrapper(path: &Path) -> bool {
    std::fs::canonicalize(path).is_ok_and(|p| p.file_name().is_some_and(|n| n == "pg_wrapper"))
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

//! `lazarus.toml`: the stores and where the keys are. With no file at all the embedded
//! default applies: one local store in `STATE/store`, keys from the environment.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::storage::local::LocalStore;
use crate::storage::s3::{S3Settings, S3Store};
use crate::storage::{ObjectStore, StoreSet};

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "LAZARUS_CONFIG";

/// A configuration problem, naming the file and what to change.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file (or "embedded default").
    pub file: String,
    /// What is wrong.
    pub message: String,
}

/// The `[keys]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// A file of Fernet keys, one per line (must not be readable by group or others).
    pub file: Option<PathBuf>,
}

/// One `[[stores]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Name used in reports and `stores = [...]` inputs.
    pub name: String,
    /// "s3" or "local".
    pub kind: String,
    /// local: the directory.
    pub path: Option<PathBuf>,
    /// s3: endpoint URL (R2: https://ACCOUNT.r2.cloudflarestorage.com).
    pub endpoint: Option<String>,
    /// s3: region (default "auto").
    pub region: Option<String>,
    /// s3: bucket.
    pub bucket: Option<String>,
    /// s3: key prefix inside the bucket.
    pub prefix: Option<String>,
    /// s3: path-style addressing (default true: what S3-compatible servers want).
    pub path_style: Option<bool>,
    /// s3: access key id, inline.
    pub access_key_id: Option<String>,
    /// s3: secret key, inline (then the file must be private).
    pub secret_access_key: Option<String>,
    /// s3: name of the environment variable holding the access key id.
    pub access_key_id_env: Option<String>,
    /// s3: name of the environment variable holding the secret key.
    pub secret_access_key_env: Option<String>,
    /// s3: how long the store may stay silent (no answer, or no bytes of a download)
    /// before it is given up for the next store ("10s" by default).
    pub timeout: Option<String>,
}

/// The `[postgres]` table: the server to back up and restore to. Unset fields fall back
/// to libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Host name or socket directory.
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// User.
    pub user: Option<String>,
    /// Name of the environment variable holding the password.
    pub password_env: Option<String>,
    /// Directories of PostgreSQL's tools, several separated by `:` (one per major version,
    /// say): searched first for tools of the server's major version (default: found on the
    /// machine).
    pub bin_dir: Option<PathBuf>,
}

/// One `[[tokens]]` entry: an API token by its hash (`lazarus token create` writes these).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The identity the token acts as.
    pub name: String,
    /// viewer, operator or admin.
    pub role: crate::ops::actor::Role,
    /// SHA-256 of the token, hex; the token itself is never stored.
    pub sha256: String,
}

/// The `[api]` table: where `lazarus serve` answers HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The address to listen on (default 127.0.0.1:7345; `--listen` overrides).
    pub listen: Option<String>,
    /// A PEM certificate chain: with `tls_key`, the API answers HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert` (keep it private: mode 0600).
    pub tls_key: Option<PathBuf>,
}

/// One `[[alerts]]` entry: a webhook and the events it wants.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Name used in reports and the audit trail (never the URL).
    pub name: String,
    /// The environment variable holding the webhook URL (it often holds a token).
    pub url_env: Option<String>,
    /// Or a file holding it.
    pub url_file: Option<PathBuf>,
    /// run_failed, run_halted, waiting_approval, run_succeeded, drill_failed,
    /// rpo_exceeded, backup_too_old (default: all but run_succeeded).
    pub events: Option<Vec<String>>,
    /// `serve` raises rpo_exceeded when the WAL archive lag is over this ("15m").
    pub rpo: Option<String>,
    /// `serve` raises backup_too_old when a database's newest backup is older ("26h").
    pub backup_max_age: Option<String>,
}

/// The `[watch]` table: how often `serve` checks the RPO and backup-age limits of alerts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Between two checks ("1m" by default).
    pub every: Option<String>,
    /// The recovery point objective: the newest archived transaction may be at most this
    /// old ("5m"); past it, `serve` logs it and `status` shows it (alerts have their own).
    pub rpo: Option<String>,
    /// The newest backup of every database may be at most this old ("26h").
    pub backup_max_age: Option<String>,
}

/// The `[kubernetes]` table: the Lease that fences a recovery target across pods and hosts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// "auto" (the default: on when running in a pod), "on", or "off".
    pub lease: Option<String>,
    /// Namespace of the Leases (default: the pod's, or the kubeconfig's).
    pub namespace: Option<String>,
    /// How long a Lease holds without renewal ("15s" by default).
    pub lease_duration: Option<String>,
    /// This runner's name in the Lease (default: `$POD_NAME` or the host name, with the
    /// state directory).
    pub holder: Option<String>,
}

/// The `[mirror]` table: runs' journals copied to the stores, and the lease per run that
/// lets one host at a time drive a run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Copy every run's journal to every store (default: on when `[[stores]]` are
    /// configured; the embedded default's store lives in the state directory, which a
    /// copy would not outlive).
    pub journal: Option<bool>,
    /// Take a lease per run in the stores before driving it (default: as `journal`).
    pub lease: Option<bool>,
    /// How long a run's lease holds without renewal ("30s" by default).
    pub lease_duration: Option<String>,
    /// This host's name in leases (default: the host name with the state directory).
    pub holder: Option<String>,
}

/// The `[retention]` table: how long backups and WAL are kept, for `lazarus expire`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Every moment this far back stays recoverable ("30d"): the default for every
    /// database and archive.
    pub recovery_window: Option<String>,
    /// Backups kept whatever their age, per database (base backups, per archive).
    pub min_backups: Option<usize>,
    /// How long the copies of ended runs' journals stay in the stores after they ended
    /// ("90d"; default: the recovery window). Each host's own journal is not touched.
    pub runs_window: Option<String>,
    /// Per database: overrides of the two.
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, RetentionRule>,
    /// Per WAL archive (its base backups and WAL): overrides of the two.
    #[serde(default)]
    pub archives: std::collections::BTreeMap<String, RetentionRule>,
}

/// A database's or an archive's own retention.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Its recovery window.
    pub recovery_window: Option<String>,
    /// Its minimum number of backups.
    pub min_backups: Option<usize>,
}

/// The `[telemetry]` table: where traces of runs are sent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OTLP/HTTP endpoint (`http://collector:4318`); `OTEL_EXPORTER_OTLP_ENDPOINT` does
    /// the same when this is unset.
    pub otlp_endpoint: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the keys are.
    #[serde(default)]
    pub keys: KeysConfig,
    /// The PostgreSQL server.
    #[serde(default)]
    pub postgres: PostgresConfig,
    /// The stores, in failover order.
    #[serde(default)]
    pub stores: Vec<StoreConfig>,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// API tokens, by hash.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Webhooks told about runs.
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    /// The RPO and backup-age watch of `serve`.
    #[serde(default)]
    pub watch: WatchConfig,
    /// Fencing with a Kubernetes Lease.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// OpenTelemetry traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Runs' journals in the stores, and their leases.
    #[serde(default)]
    pub mirror: MirrorConfig,
    /// How long backups and WAL are kept.
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
    /// Runs `serve` starts on a timetable.
    #[serde(default)]
    pub schedules: Vec<crate::ops::schedule::ScheduleConfig>,
}

/// A loaded configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file, or "embedded default".
    pub source: String,
    /// Directory relative paths are resolved against.
    pub base: PathBuf,
    /// The settings.
    pub config: Config,
    /// The file it was read from, absolute (none for the embedded default).
    pub file: Option<PathBuf>,
}

impl Loaded {
    /// Reads `explicit` (from `--config`), else `$LAZARUS_CONFIG`, else `./lazarus.toml`,
    /// else the embedded default.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        let chosen = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("lazarus.toml")).filter(|p| p.is_file()));
        let Some(path) = chosen else {
            return Ok(Loaded {
                source: "embedded default".into(),
                base: PathBuf::from("."),
                config: Config::default(),
                file: None,
            });
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            });
            ConfigError {
                file: match line {
                    Some(line) => format!("{file}:{line}"),
                    None => file.clone(),
                },
                message: e.message().trim().to_string(),
            }
        })?;
        let inline_secret = config.stores.iter().any(|s| s.secret_access_key.is_some());
        if inline_secret {
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(ConfigError {
                    file,
                    message: format!(
                        "holds a secret_access_key but is readable by group or others (mode {:o}); run `chmod 600 {}` or use secret_access_key_env",
                        mode & 0o777,
                        path.display()
                    ),
                });
            }
        }
        Ok(Loaded {
            source: file,
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            config,
            file: std::path::absolute(&path).ok(),
        })
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    /// The key file, resolved against the configuration's directory.
    pub fn keys_file(&self) -> Option<PathBuf> {
        self.config.keys.file.as_deref().map(|p| self.resolve(p))
    }

    /// PostgreSQL's tools and the server to use.
    pub fn postgres(&self) -> Result<(crate::pg::Tools, crate::pg::Server), ConfigError> {
        let p = &self.config.postgres;
        let password = match &p.password_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                self.err(format!(
                    "[postgres] password_env names ${var}, which is not set"
                ))
            })?),
            None => None,
        };
        Ok((
            crate::pg::Tools::new(p.bin_dir.as_deref().map(|d| self.resolve(d))),
            crate::pg::Server {
                host: p.host.clone(),
                port: p.port,
                user: p.user.clone(),
                password,
            },
        ))
    }

    fn err(&self, message: String) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            message,
        }
    }

    /// The stores, in order; the embedded default is one local store in `STATE/store`.
    pub fn stores(&self, state_dir: &Path) -> Result<StoreSet, ConfigError> {
        if self.config.stores.is_empty() {
            return Ok(StoreSet::new(vec![Arc::new(LocalStore::new(
                "local",
                state_dir.join("store"),
            ))]));
        }
        let mut stores: Vec<Arc<dyn ObjectStore>> = Vec::new();
        let mut names = Vec::new();
        for s in &self.config.stores {
            if names.contains(&s.name) {
                return Err(self.err(format!("two stores are named \"{}\"", s.name)));
            }
            names.push(s.name.clone());
            let store: Arc<dyn ObjectStore> = match s.kind.as_str() {
                "local" => {
                    let path = s.path.as_ref().ok_or_else(|| {
                        self.err(format!(
                            "store \"{}\" (kind local) needs path = \"DIR\"",
                            s.name
                        ))
                    })?;
                    Arc::new(LocalStore::new(s.name.clone(), self.resolve(path)))
                }
                "s3" => Arc::new(S3Store::new(self.s3_settings(s)?)),
                other => {
                    return Err(self.err(format!(
                        "store \"{}\" has kind \"{other}\"; use \"s3\" or \"local\"",
                        s.name
                    )));
                }
            };
            stores.push(store);
        }
        Ok(StoreSet::new(stores))
    }

    fn s3_settings(&self, s: &StoreConfig) -> Result<S3Settings, ConfigError> {
        let bucket = s.bucket.clone().ok_or_else(|| {
            self.err(format!(
                "store \"{}\" (kind s3) needs bucket = \"NAME\"",
                s.name
            ))
        })?;
        let from_env = |var: &Option<String>, what: &str| -> Result<Option<String>, ConfigError> {
            match var {
                None => Ok(None),
                Some(name) => std::env::var(name).map(Some).map_err(|_| {
                    self.err(format!(
                        "store \"{}\": {what}_env names ${name}, which is not set",
                        s.name
                    ))
                }),
            }
        };
        let id = match &s.access_key_id {
            Some(id) => Some(id.clone()),
            None => from_env(&s.access_key_id_env, "access_key_id")?,
        };
        let secret = match &s.secret_access_key {
            Some(secret) => Some(secret.clone()),
            None => from_env(&s.secret_access_key_env, "secret_access_key")?,
        };
        let credentials = match (id, secret) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            _ => {
                return Err(self.err(format!(
                    "store \"{}\": give both the access key id and the secret key, or neither (to use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
                    s.name
                )));
            }
        };
        let mut prefix = s.prefix.clone().unwrap_or_default();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let timeout = match &s.timeout {
            None => crate::storage::s3::DEFAULT_TIMEOUT,
            Some(text) => crate::engine::duration::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    self.err(format!(
                        "store \"{}\": timeout = \"{text}\" is not a duration such as \"10s\" or \"1m\"",
                        s.name
                    ))
                })?,
        };
        Ok(S3Settings {
            name: s.name.clone(),
            endpoint: s.endpoint.clone(),
            region: s.region.clone().unwrap_or_else(|| "auto".into()),
            bucket,
            prefix,
            path_style: s.path_style.unwrap_or(true),
            credentials,
            timeout,
        })
    }
}

/// The commented example `lazarus init` writes.
pub const EXAMPLE: &str = r#"# Lazarus configuration. Stores are tried in this order when reading; every store gets a
# byte-identical copy when writing. Relative paths are relative to this file.

[keys]
# Fernet keys, one per line: the first encrypts, all decrypt (rotation). The file must not
# be readable by group or others (chmod 600). LAZARUS_KEYS (comma-separated) overrides it.
# Make a key with `lazarus key generate`.
# file = "/etc/lazarus/keys"

# Cloudflare R2 (S3-compatible).
# [[stores]]
# name = "r2"
# kind = "s3"
# endpoint = "https://ACCOUNT_ID.r2.cloudflarestorage.com"
# region = "auto"
# bucket = "db-backups"
# prefix = "prod/"
# access_key_id_env = "R2_ACCESS_KEY_ID"
# secret_access_key_env = "R2_SECRET_ACCESS_KEY"
# timeout = "10s"   # silence (no answer, no bytes) before the next store is tried

# Backblaze B2 (S3-compatible).
# [[stores]]
# name = "b2"
# kind = "s3"
# endpoint = "https://s3.us-west-004.backblazeb2.com"
# region = "us-west-004"
# bucket = "db-backups"
# prefix = "prod/"
# access_key_id_env = "B2_KEY_ID"
# secret_access_key_env = "B2_APPLICATION_KEY"

# The PostgreSQL server to back up and restore to; unset fields fall back to PGHOST,
# PGPORT, PGUSER and PGPASSWORD.
# [postgres]
# host = "127.0.0.1"
# port = 5432
# user = "postgres"
# password_env = "PGPASSWORD"

# The HTTP API and web page of `lazarus serve`; tokens are made with
# `lazarus token create --name NAME --role viewer|operator|admin`, which appends their hash.
# [api]
# listen = "127.0.0.1:7345"
# tls_cert = "/etc/lazarus/tls/cert.pem"   # with tls_key: HTTPS only
# tls_key = "/etc/lazarus/tls/key.pem"

# A webhook told when a run fails, halts or waits for approval, and when a drill fails
# (generic JSON with a Slack-compatible "text"); the URL comes from the environment.
# [[alerts]]
# name = "oncall"
# url_env = "LAZARUS_ONCALL_WEBHOOK"
# events = ["run_failed", "run_halted", "waiting_approval", "drill_failed", "rpo_exceeded", "backup_too_old"]
# rpo = "15m"               # serve: rpo_exceeded when the archive lag is over this
# backup_max_age = "26h"    # serve: backup_too_old when a database's newest backup is older

# The last resort: a local directory.
[[stores]]
name = "local"
kind = "local"
path = "state/store"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("lazarus.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_example_loads() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = Loaded::load(Some(&write(dir.path(), EXAMPLE, 0o644))).unwrap();
        let stores = loaded.stores(Path::new("state")).unwrap();
        assert_eq!(stores.names(), ["local"]);
    }

    #[test]
    fn typos_and_missing_fields_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Loaded::load(Some(&write(
            dir.path(),
            "[[stores]]\nname = \"x\"\nkind = \"s3\"\nbuckt = \"b\"\n",
            0o600,
        )))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("lazarus.toml:4") && err.contains("buckt"),
            "{err}"
        );
        let loaded = Loaded::load(Some(&write(
            dir.path(),
            "[[stores]]\nname = \"x\"\nkind = \"s3\"\n",
            0o600,
        )))
        .unwrap();
        let err = loaded.stores(Path::new("s")).err().unwrap().to_string();
        assert!(err.contains("store \"x\" (kind s3) needs bucket"), "{err}");
    }

    #[test]
    fn inline_secrets_need_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[stores]]\nname = \"r2\"\nkind = \"s3\"\nbucket = \"b\"\naccess_key_id = \"a\"\nsecret_access_key = \"s3cr3t\"\n";
        let err = Loaded::load(Some(&write(dir.path(), text, 0o644)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chmod 600") && !err.contains("s3cr3t"),
            "{err}"
        );
        assert!(Loaded::load(Some(&write(dir.path(), text, 0o600))).is_ok());
    }

    #[test]
    fn no_file_means_one_local_store_in_the_state_directory() {
        let loaded = Loaded {
            source: "embedded default".into(),
            base: PathBuf::from("."),
            config: Config::default(),
            file: None,
        };
        let set = loaded.stores(Path::new("/tmp/st")).unwrap();
        assert_eq!(set.names(), ["local"]);
        assert!(set.stores()[0].describe().contains("/tmp/st/store"));
    }
}

//! The configuration a restored server's `restore_command` reads when Lazarus itself runs on
//! its embedded default (keys in `LAZARUS_KEYS`, the local store in the state directory):
//! PostgreSQL runs `lazarus wal fetch` as its own user, in its own environment, where neither
//! is visible. Written inside the new data directory, readable by the server's user alone,
//! and removed once the server has promoted.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::crypto::Keyring;
use crate::storage::StoreSet;

/// How long fetching one segment as the server's user may take before the check gives up.
const FETCH_CHECK_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// File names inside the data directory.
const CONFIG_NAME: &str = "lazarus-restore.toml";
/// The key file written for the restored server's restore_command, inside its data directory.
pub const KEYS_NAME: &str = "lazarus-restore.keys";

/// A written restore configuration.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    /// The configuration file `restore_command` is given.
    pub config: PathBuf,
    /// The key file it names.
    pub keys: PathBuf,
}

/// Writes `name` with `text`, mode 0600, owned by `owner` when given.
fn write_private(path: &Path, text: &str, owner: Option<(u32, u32)>) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} to the server's user: {e}", path.display()))?;
    }
    Ok(())
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

impl RestoreConfig {
    /// Writes the stores (local ones, as absolute paths) and the keys into `data_dir`.
    /// Remote stores need credentials this process may hold only in its environment, so
    /// they are refused: give the run a configuration file the server's user can read.
    pub fn write(
        data_dir: &Path,
        stores: &StoreSet,
        keys: &Keyring,
        owner: Option<(u32, u32)>,
    ) -> Result<RestoreConfig, String> {
        let config = data_dir.join(CONFIG_NAME);
        let keys_path = data_dir.join(KEYS_NAME);
        let mut text = format!(
            "# Written by Lazarus for this server's restore_command; removed after promotion.\n[keys]\nfile = {}\n",
            toml_string(&keys_path.display().to_string())
        );
        for store in stores.stores() {
            let Some(root) = store.local_root() else {
                return Err(format!(
                    "store {} is not a local directory, and without a configuration file its settings are not known to the server's restore_command: pass -p config=FILE (a lazarus.toml the server's user can read)",
                    store.name()
                ));
            };
            let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
            text.push_str(&format!(
                "\n[[stores]]\nname = {}\nkind = \"local\"\npath = {}\n",
                toml_string(store.name()),
                toml_string(&root.display().to_string())
            ));
        }
        let mut key_text = zeroize::Zeroizing::new(String::new());
        for key in keys.keys() {
            key_text.push_str(&key.to_text());
            key_text.push('\n');
        }
        write_private(&keys_path, &key_text, owner)?;
        write_private(&config, &text, owner)?;
        Ok(RestoreConfig {
            config,
            keys: keys_path,
        })
    }

    /// The configuration written in `data_dir` by an earlier attempt, if any.
    pub fn existing(data_dir: &Path) -> Option<RestoreConfig> {
        let config = data_dir.join(CONFIG_NAME);
        config.is_file().then(|| RestoreConfig {
            config,
            keys: data_dir.join(KEYS_NAME),
        })
    }

    /// Removes both files (the keys first); true when the keys are gone.
    pub fn remove(data_dir: &Path) -> bool {
        let keys = data_dir.join(KEYS_NAME);
        let _ = std::fs::remove_file(&keys);
        let _ = std::fs::remove_file(data_dir.join(CONFIG_NAME));
        !keys.exists()
    }
}

/// Fetches `segment` once the way the server's `restore_command` will — as the server's
/// user, with `config` — so a key file, store or permission the server cannot reach is
/// found before PostgreSQL starts (it would only log the failure and wait).
pub fn check_fetch(
    exe: &str,
    config: &Path,
    state: &Path,
    archive: &str,
    segment: &str,
    scratch: &Path,
) -> Result<(), String> {
    let dest = scratch.join(".lazarus-fetch-check");
    let mut cmd = if crate::pg::running_as_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", exe]);
        c
    } else {
        std::process::Command::new(exe)
    };
    let mut child = cmd
        .arg("--config")
        .arg(config)
        .arg("--state")
        .arg(state)
        .args(["wal", "fetch", "--archive", archive, segment])
        .arg(&dest)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {exe} to check restore_command: {e}"))?;
    // A store that hangs must not hang the step: one segment takes seconds, not minutes.
    let deadline = std::time::Instant::now() + FETCH_CHECK_LIMIT;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&dest);
            return Err(format!(
                "restore_command would hang: `lazarus wal fetch {segment}` run as the server's user did not finish in {}s; check that its stores answer (`lazarus storage check`)",
                FETCH_CHECK_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot read the check's output: {e}"))?;
    let _ = std::fs::remove_file(&dest);
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "restore_command would fail: `lazarus --config {} wal fetch {segment}` run as the server's user exited {}: {}; fix what it names (or pass -p config=FILE / -p lazarus=PATH the server's user can use)",
        config.display(),
        out.status,
        crate::pg::tail_lines(&out.stderr, 3)
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;
    use crate::storage::local::LocalStore;

    #[test]
    fn writes_a_private_config_with_absolute_store_paths_and_removes_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let stores = StoreSet::new(vec![Arc::new(LocalStore::new(
            "local",
            dir.path().join("store"),
        ))]);
        let keys = Keyring::parse(&crate::crypto::keys::generate(), "test").unwrap();
        let written = RestoreConfig::write(dir.path(), &stores, &keys, None).unwrap();
        for path in [&written.config, &written.keys] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let loaded = crate::config::Loaded::load(Some(&written.config)).unwrap();
        let from_file = Keyring::load(loaded.keys_file().as_deref()).unwrap();
        assert_eq!(from_file.ids(), keys.ids());
        let reread = loaded.stores(Path::new("/nowhere")).unwrap();
        assert_eq!(
            reread.stores()[0].local_root(),
            Some(dir.path().join("store").as_path())
        );
        assert!(RestoreConfig::remove(dir.path()));
        assert!(!written.keys.exists() && !written.config.exists());
    }
}

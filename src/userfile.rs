//! Rewriting a file that belongs to the user (pgbouncer.ini, a service's configuration):
//! atomically (readers see the old file or the new one), durably, and keeping the file's
//! owner, group and mode — a file left `root:root` after a cut-over is one its own service
//! can no longer read.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a user's file could not be rewritten; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum UserFileError {
    /// The file cannot be inspected.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its owner made it read-only: Lazarus does not edit it behind their back.
    #[error(
        "{path} is read-only (mode {mode:04o}): Lazarus keeps hands off a file its owner made read-only; make it writable (chmod u+w {path}) or change it by hand"
    )]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The replacement could not be written or put in place.
    #[error("cannot rewrite {path}: {what}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Who owns a file and how it may be used, as it was before Lazarus touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// Owner's uid.
    pub uid: u32,
    /// Group's gid.
    pub gid: u32,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
}

impl Ownership {
    /// The owner, group and mode of `path`.
    pub fn of(path: &Path) -> Result<Ownership, UserFileError> {
        let meta = std::fs::metadata(path).map_err(|source| UserFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Ownership {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        })
    }

    /// `user:group mode`, with names where the system knows them (for messages).
    pub fn describe(&self) -> String {
        let user = nix::unistd::User::from_uid(self.uid.into())
            .ok()
            .flatten()
            .map_or_else(|| self.uid.to_string(), |u| u.name);
        let group = nix::unistd::Group::from_gid(self.gid.into())
            .ok()
            .flatten()
            .map_or_else(|| self.gid.to_string(), |g| g.name);
        format!("{user}:{group} mode {:04o}", self.mode)
    }
}

/// Checks that `path` can be rewritten here, without changing anything: it exists, is not
/// read-only, and this process can write it and its directory.
pub fn check_rewritable(path: &Path) -> Result<Ownership, UserFileError> {
    let owner = Ownership::of(path)?;
    if owner.mode & 0o222 == 0 {
        return Err(UserFileError::ReadOnly {
            path: path.to_path_buf(),
            mode: owner.mode,
        });
    }
    let access = |p: &Path, what: &'static str| {
        nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).map_err(|e| UserFileError::Write {
            path: path.to_path_buf(),
            what,
            source: std::io::Error::from_raw_os_error(e as i32),
        })
    };
    access(path, "this user may not write it")?;
    access(&directory(path), "this user may not create files beside it")?;
    Ok(owner)
}

fn directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether this process may give a file `owner`'s user and group (root may; anyone else
/// only keeps their own).
fn can_give(owner: &Ownership) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    me == 0
        || (me == owner.uid
            && (nix::unistd::getegid().as_raw() == owner.gid
                || nix::unistd::getgroups()
                    .is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == owner.gid))))
}

/// Writes over the file itself: its owner, group and mode stay by construction. Used when
/// this process may write the file but not give a replacement its owner (not root, not
/// the owner); not atomic, so it is the fallback, not the rule.
fn rewrite_in_place(path: &Path, content: &[u8]) -> Result<(), UserFileError> {
    let fail = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| UserFileError::Write { path, what, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(fail("opening it for writing"))?;
    file.write_all(content).map_err(fail("writing it"))?;
    file.sync_all().map_err(fail("flushing it"))
}

/// Replaces the content of `path` with `content`, keeping its owner, group and mode: the
/// new text is written to a private temporary file beside it, given the old file's owner
/// and mode, flushed, and renamed over it; the directory is flushed too. A process that
/// may not give the file its owner writes over it in place instead.
pub fn rewrite(path: &Path, content: &[u8]) -> Result<(), UserFileError> {
    let owner = check_rewritable(path)?;
    if !can_give(&owner) {
        return rewrite_in_place(path, content);
    }
    let dir = directory(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.lazarus-{}", std::process::id()));
    let fail = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| UserFileError::Write { path, what, source }
    };
    let written = (|| {
        let _ = std::fs::remove_file(&tmp);
        // Private until it has the old file's owner: never readable by others meanwhile.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail("creating the replacement"))?;
        file.write_all(content)
            .map_err(fail("writing the replacement"))?;
        std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))
            .map_err(fail("giving the replacement the file's owner"))?;
        file.set_permissions(std::fs::Permissions::from_mode(owner.mode))
            .map_err(fail("giving the replacement the file's mode"))?;
        file.sync_all().map_err(fail("flushing the replacement"))?;
        std::fs::rename(&tmp, path).map_err(fail("putting the replacement in place"))?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_mode_and_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgbouncer.ini");
        std::fs::write(&path, "old\r\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        rewrite(&path, b"new\r\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\r\n");
        assert_eq!(Ownership::of(&path).unwrap().mode, 0o640);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");
    }

    #[test]
    fn a_read_only_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgbouncer.ini");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let err = rewrite(&path, b"new\n").unwrap_err().to_string();
        assert!(err.contains("read-only (mode 0444)"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old\n");
    }
}

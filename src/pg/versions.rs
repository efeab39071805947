//! Which PostgreSQL tools go with which server: a tool's major version from its
//! `--version`, and what each tool may be paired with.
//!
//! Every tool of a PostgreSQL install says its version (`pg_dump (PostgreSQL) 17.10`).
//! Lazarus asks the server its `server_version_num` (or reads a base backup's `PG_VERSION`)
//! and uses tools of that major version: the server tools (initdb, pg_ctl, postgres,
//! pg_waldump, pg_combinebackup) must match it exactly; pg_dump, pg_restore,
//! psql and pg_basebackup of a newer major work too (the same one is preferred).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A major version from a tool's `--version` line: `pg_dump (PostgreSQL) 17.10` → 17,
/// `psql (PostgreSQL) 18beta1` → 18, `9.6.24` → 9.
pub fn major_of_version_line(line: &str) -> Option<u32> {
    let version = match line.split_once("(PostgreSQL) ") {
        Some((_, rest)) => rest.split(' ').next()?,
        None => line.rsplit(' ').next()?,
    };
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The major version of `server_version_num` (170010 → 17; 90624 → 9).
pub fn major_of_version_num(num: u32) -> u32 {
    num / 10_000
}

/// Whether a tool of a newer major may serve a server of an older one.
pub fn newer_works(tool: &str) -> bool {
    matches!(
        tool,
        "pg_dump" | "pg_restore" | "psql" | "pg_dumpall" | "pg_basebackup"
    )
}

/// What identifies one installed file: its real path, size and modification time (an
/// upgrade in place or a switched symlink is a new file).
type FileKey = (PathBuf, u64, std::time::SystemTime);

/// Tools' majors already asked (only answers are kept: a tool that failed to say is asked
/// again next time, after an installation, say).
static KNOWN: Mutex<Option<HashMap<FileKey, u32>>> = Mutex::new(None);

/// How long a tool may take to print its version.
const VERSION_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

fn file_key(path: &Path) -> Option<FileKey> {
    let real = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&real).ok()?;
    Some((real, meta.len(), meta.modified().ok()?))
}

/// The major version of the tool at `path` (its `--version`, within a few seconds), `None`
/// if it does not say.
pub fn tool_major(path: &Path) -> Option<u32> {
    let key = file_key(path)?;
    if let Some(major) = KNOWN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return Some(*major);
    }
    let major = ask_version(&key.0)?;
    KNOWN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key, major);
    Some(major)
}

/// Runs `TOOL --version`, killed after [`VERSION_LIMIT`].
fn ask_version(path: &Path) -> Option<u32> {
    use std::io::Read;
    let mut child = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < VERSION_LIMIT => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    if !status.success() {
        return None;
    }
    out.lines().next().and_then(major_of_version_line)
}

/// Of the found tools (path, major), the one to use for a server of `major`: the same major
/// first; for a tool where [`newer_works`], else the nearest newer one.
pub fn choose(tool: &str, major: u32, found: &[(PathBuf, Option<u32>)]) -> Option<PathBuf> {
    if let Some((path, _)) = found.iter().find(|(_, m)| *m == Some(major)) {
        return Some(path.clone());
    }
    if !newer_works(tool) {
        return None;
    }
    found
        .iter()
        .filter_map(|(path, m)| Some((path, (*m)?)))
        .filter(|(_, m)| *m > major)
        .min_by_key(|(_, m)| *m)
        .map(|(path, _)| path.clone())
}

/// The directories where a major version's tools live by convention: Debian's and the
/// PGDG RPMs' layouts.
pub fn conventional_dirs(major: u32) -> [PathBuf; 2] {
    [
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        PathBuf::from(format!("/usr/pgsql-{major}/bin")),
    ]
}

/// What to install for a tool of a major version, for an error message.
pub fn install_hint(tool: &str, major: u32) -> String {
    let server_side = !matches!(
        tool,
        "pg_dump" | "pg_restore" | "psql" | "pg_dumpall" | "pg_basebackup"
    );
    let (debian, rpm) = if server_side {
        (
            format!("postgresql-{major}"),
            format!("postgresql{major}-server"),
        )
    } else {
        (
            format!("postgresql-client-{major}"),
            format!("postgresql{major}"),
        )
    };
    format!(
        "install PostgreSQL {major}'s {} (Debian/Ubuntu: apt-get install {debian}, from apt.postgresql.org where the distribution lacks it; RHEL and derivatives: dnf install {rpm}), or name its bin directory in [postgres] bin_dir (several directories, one per major, separated by ':')",
        if server_side {
            "server tools"
        } else {
            "client tools"
        }
    )
}

/// The major version of the cluster in a data directory (its `PG_VERSION` file).
pub fn data_dir_major(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("PG_VERSION"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The major version in `SHOW server_version` text (`17.10`, `15.18 (Debian 15.18-1)`).
pub fn major_of_server_version(text: &str) -> Option<u32> {
    let digits: String = text
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The oldest pg_restore major that reads a custom-format archive version 1.`minor`
/// (1.14: 14, 1.15: 16, 1.16: 17).
pub fn reader_major_of_archive(minor: u8) -> u32 {
    match minor {
        ..=14 => 14,
        15 => 16,
        _ => 17,
    }
}

/// The custom-format archive version (its minor) of a pg_dump archive: a file, or a
/// directory archive's `toc.dat`; `None` if it is not one.
pub fn archive_minor(archive: &Path) -> Option<u8> {
    use std::io::Read;
    let file = if archive.is_dir() {
        archive.join("toc.dat")
    } else {
        archive.to_path_buf()
    };
    let mut head = [0u8; 7];
    std::fs::File::open(file).ok()?.read_exact(&mut head).ok()?;
    (&head[..5] == b"PGDMP" && head[5] == 1).then_some(head[6])
}

/// The major version of pg_restore to restore `archive` into a server of `server_major`:
/// the server's, or the one the archive needs when newer; with the reason, for the error
/// when none is installed.
pub fn restore_major(server_major: u32, archive: &Path) -> (u32, String) {
    match archive_minor(archive).map(|m| (m, reader_major_of_archive(m))) {
        Some((minor, needed)) if needed > server_major => (
            needed,
            format!(
                "the server is PostgreSQL {server_major} and the backup's archive (format 1.{minor}) was written by a pg_dump of {needed} or later"
            ),
        ),
        _ => (
            server_major,
            format!("the server is PostgreSQL {server_major}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_are_read_from_version_lines_and_numbers() {
        assert_eq!(
            major_of_version_line("pg_dump (PostgreSQL) 17.10"),
            Some(17)
        );
        assert_eq!(
            major_of_version_line("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(
            major_of_version_line("postgres (PostgreSQL) 18beta1"),
            Some(18)
        );
        assert_eq!(major_of_version_num(170_010), 17);
        assert_eq!(major_of_version_num(150_018), 15);
    }

    #[test]
    fn pg_restore_follows_the_server_unless_the_archive_needs_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.dump");
        std::fs::write(&file, b"PGDMP\x01\x10\x00\x04\x08\x01").unwrap();
        assert_eq!(archive_minor(&file), Some(16));
        assert_eq!(restore_major(16, &file).0, 17);
        assert_eq!(restore_major(18, &file).0, 18);
        std::fs::write(&file, b"not an archive").unwrap();
        assert_eq!(restore_major(15, &file).0, 15);
    }

    #[test]
    fn the_same_major_is_chosen_and_a_newer_one_only_where_it_works() {
        let found = vec![
            (PathBuf::from("/a/pg_dump"), Some(15)),
            (PathBuf::from("/b/pg_dump"), Some(18)),
            (PathBuf::from("/c/pg_dump"), Some(17)),
            (PathBuf::from("/d/pg_dump"), None),
        ];
        assert_eq!(
            choose("pg_dump", 17, &found),
            Some(PathBuf::from("/c/pg_dump"))
        );
        assert_eq!(
            choose("pg_dump", 16, &found),
            Some(PathBuf::from("/c/pg_dump"))
        );
        assert_eq!(choose("pg_dump", 19, &found), None);
        assert_eq!(choose("pg_ctl", 16, &found), None);
        assert_eq!(
            choose("pg_ctl", 15, &found),
            Some(PathBuf::from("/a/pg_dump"))
        );
    }
}

//! Holding a restored server's WAL archiving until traffic is cut over to it.
//!
//! A restored server keeps the backed-up server's `archive_command`: promoted, it would push
//! its new timeline into the archive the live primary still writes, and every later plan
//! would follow the abandoned timeline. So recovery writes an empty `archive_command` (and
//! `archive_library`) into `postgresql.auto.conf`: PostgreSQL then keeps every segment
//! `.ready` in `pg_wal` and archives nothing. The cut-over releases the hold (the lines go,
//! the server reloads) and the held segments, its timeline history first, are archived: from
//! then on it is the primary.

use std::path::Path;

/// Marks the lines this module writes, so it removes exactly those.
pub const HOLD_MARK: &str = "# lazarus: archiving held until the cut-over";

/// The settings that hold archiving, as written into `postgresql.auto.conf`.
pub fn hold_lines() -> [String; 2] {
    [
        format!("archive_command = '' {HOLD_MARK}"),
        format!("archive_library = '' {HOLD_MARK}"),
    ]
}

/// Whether the data directory's settings hold archiving.
pub fn is_held(data_dir: &Path) -> bool {
    std::fs::read_to_string(data_dir.join("postgresql.auto.conf"))
        .is_ok_and(|text| text.lines().any(|l| l.ends_with(HOLD_MARK)))
}

/// Holds archiving again (a rolled-back cut-over: traffic went back to the old primary, and
/// the archive is its again): the hold's lines are appended, every other byte kept; whether
/// they were added (false: held already).
pub fn hold(data_dir: &Path) -> Result<bool, String> {
    let path = data_dir.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.lines().any(|l| l.ends_with(HOLD_MARK)) {
        return Ok(false);
    }
    let mut held = text;
    if !held.is_empty() && !held.ends_with('\n') {
        held.push('\n');
    }
    for line in hold_lines() {
        held.push_str(&line);
        held.push('\n');
    }
    crate::userfile::rewrite(&path, held.as_bytes()).map_err(|e| e.to_string())?;
    Ok(true)
}

/// Removes the hold from the settings (every other byte kept); whether there was one.
pub fn release(data_dir: &Path) -> Result<bool, String> {
    let path = data_dir.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !text.lines().any(|l| l.ends_with(HOLD_MARK)) {
        return Ok(false);
    }
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| !l.trim_end_matches(['\n', '\r']).ends_with(HOLD_MARK))
        .collect();
    crate::userfile::rewrite(&path, kept.as_bytes()).map_err(|e| e.to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releasing_the_hold_removes_only_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let before = "# Do not edit\nwork_mem = '8MB'\n";
        let held = format!(
            "{before}{}\n{}\nport = 5 # x\n",
            hold_lines()[0],
            hold_lines()[1]
        );
        std::fs::write(dir.path().join("postgresql.auto.conf"), &held).unwrap();
        assert!(is_held(dir.path()));
        assert!(release(dir.path()).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap(),
            format!("{before}port = 5 # x\n")
        );
        assert!(!is_held(dir.path()));
        assert!(!release(dir.path()).unwrap());
    }

    #[test]
    fn holding_again_appends_the_lines_once_and_releasing_restores_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let before = "# Do not edit\nwork_mem = '8MB'";
        std::fs::write(dir.path().join("postgresql.auto.conf"), before).unwrap();
        assert!(hold(dir.path()).unwrap());
        assert!(is_held(dir.path()));
        assert!(!hold(dir.path()).unwrap());
        assert!(release(dir.path()).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap(),
            format!("{before}\n")
        );
    }
}

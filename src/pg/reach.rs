//! Whether the server's user can reach a directory: PostgreSQL, run as `postgres`, must
//! pass through every directory above its data directory. A restored data directory under
//! a private state directory (mode 0700, owned by root) would otherwise fail to start with
//! a bare "Permission denied".

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Directories above `dir` (and `dir` itself) that user `uid`/group `gid` cannot pass
/// through, from the top down.
pub fn blocked_ancestors(dir: &Path, uid: u32, gid: u32) -> Vec<PathBuf> {
    let mut blocked = Vec::new();
    let mut chain: Vec<&Path> = dir.ancestors().collect();
    chain.reverse();
    for path in chain {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let mode = meta.mode();
        let passes = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !passes {
            blocked.push(path.to_path_buf());
        }
    }
    blocked
}

/// Lets user `uid`/`gid` reach `dir` by granting traverse-only permission (o+x, never read)
/// on the blocked directories at or below `within` that this process owns. Returns what it
/// changed; a blocked directory outside `within`, or not ours, is an error naming it.
pub fn grant_traverse(
    dir: &Path,
    within: &Path,
    uid: u32,
    gid: u32,
) -> Result<Vec<PathBuf>, String> {
    let me = nix::unistd::geteuid().as_raw();
    let mut granted = Vec::new();
    for path in blocked_ancestors(dir, uid, gid) {
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !path.starts_with(within) || meta.uid() != me {
            return Err(format!(
                "the server's user cannot reach {}: {} (mode {:04o}) blocks it; pass -p data_dir=DIR on a path that user can reach",
                dir.display(),
                path.display(),
                meta.mode() & 0o7777
            ));
        }
        let mode = (meta.mode() & 0o7777) | 0o001;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot let the server's user pass {}: {e}", path.display()))?;
        granted.push(path);
    }
    Ok(granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_traverse_only_inside_the_allowed_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = root.path().join("state");
        let data = state.join("work").join("run.data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // A user that is neither the owner nor in the group.
        let (uid, gid) = (me.wrapping_add(4242), u32::MAX - 7);
        assert!(blocked_ancestors(&data, uid, gid).contains(&state));
        let outside = grant_traverse(&data, &state.join("work"), uid, gid).unwrap_err();
        assert!(outside.contains("blocks it"), "{outside}");
        let granted = grant_traverse(&data, &state, uid, gid).unwrap();
        assert_eq!(granted, vec![state.clone()]);
        let mode = std::fs::metadata(&state).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o701, "traverse only, no listing");
        assert!(blocked_ancestors(&data, uid, gid).is_empty());
    }
}

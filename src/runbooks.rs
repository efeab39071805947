//! Finding a workflow by name or path: a file, `./workflows/NAME.toml`, or one of the
//! project's runbooks compiled into the binary.

use std::path::{Path, PathBuf};

use crate::engine::suggest::did_you_mean;

include!(concat!(env!("OUT_DIR"), "/runbooks.rs"));

/// A workflow's text and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// A path, or `builtin:NAME`.
    pub source: String,
    /// The file's text.
    pub text: String,
}

/// Why a workflow could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Nothing by that name.
    #[error(
        "no workflow \"{name}\": not a file, not ./workflows/{name}.toml, and not a built-in runbook{hint}; `lazarus workflows` lists them"
    )]
    NotFound { name: String, hint: String },
    /// The file exists but cannot be read.
    #[error("cannot read workflow file {path}: {message}")]
    Unreadable { path: PathBuf, message: String },
}

/// The built-in runbook called `name`.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn read(path: &Path) -> Result<Located, LocateError> {
    std::fs::read_to_string(path)
        .map(|text| Located {
            source: path.display().to_string(),
            text,
        })
        .map_err(|e| LocateError::Unreadable {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Finds a workflow: a path if one exists, else `./workflows/NAME.toml`, else a built-in.
pub fn locate(name_or_path: &str) -> Result<Located, LocateError> {
    let as_path = Path::new(name_or_path);
    if as_path.is_file() {
        return read(as_path);
    }
    let local = Path::new("workflows").join(format!("{name_or_path}.toml"));
    if local.is_file() {
        return read(&local);
    }
    if let Some(text) = builtin(name_or_path) {
        return Ok(Located {
            source: format!("builtin:{name_or_path}"),
            text: text.to_string(),
        });
    }
    let mut names: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
    names.extend(local_names());
    Err(LocateError::NotFound {
        name: name_or_path.to_string(),
        hint: did_you_mean(name_or_path, names.iter().map(String::as_str)),
    })
}

/// Names of `./workflows/*.toml`.
pub fn local_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("workflows")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .filter_map(|p| p.file_stem()?.to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every workflow visible from here: `./workflows/*.toml` first, then built-ins not
/// shadowed by a local file.
pub fn all() -> Vec<Result<Located, LocateError>> {
    let local = local_names();
    let mut out: Vec<Result<Located, LocateError>> = local
        .iter()
        .map(|n| read(&Path::new("workflows").join(format!("{n}.toml"))))
        .collect();
    for (name, text) in BUILTIN {
        if !local.iter().any(|n| n == name) {
            out.push(Ok(Located {
                source: format!("builtin:{name}"),
                text: (*text).to_string(),
            }));
        }
    }
    out
}

//! Typed run parameters: what a runbook's `[params]` entry says a value is, the one check
//! every value passes before a run is created (for every transport), and how a value is
//! shown to people (secrets and a URL's user-info as `***`).
//!
//! The type decides how a value may be used. A `database` is a name, never a connection
//! string; a `path` a non-admin chose must lie under `STATE/work` (checked by `ops`, which
//! knows the role); an `identifier` follows one grammar that can be part of a file name;
//! `command` and `conninfo` are for admins' runbooks only.

use std::path::{Component, Path, PathBuf};

/// The longest text a parameter (or a reason) may hold: enough for any real value, far
/// below what would bloat answers that every page polls.
pub const MAX_TEXT: usize = 4096;

/// What a parameter's value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamKind {
    /// One line of free text.
    Text,
    /// A PostgreSQL database name (at most 63 bytes), passed only as a database name.
    Database,
    /// A name that can be part of a file or object name: letters, digits, `.`, `_`, `-`,
    /// `:`, `+`, starting with a letter or digit.
    Identifier,
    /// A file or directory.
    Path,
    /// A duration (`30s`, `5m`, `1h`).
    Duration,
    /// A whole number, zero or more.
    Number,
    /// `true` or `false`.
    Boolean,
    /// One of a fixed list.
    Choice(Vec<String>),
    /// An `http://` or `https://` URL; its user-info is shown as `***`.
    Url,
    /// A libpq connection string (admins only); its password is shown as `***`.
    Conninfo,
    /// A password or token: shown as `***` everywhere.
    Secret,
    /// Shell text that Lazarus runs (admins only).
    Command,
}

impl ParamKind {
    /// The kind named in a runbook (`type = "..."`), with `choices` for a choice.
    pub fn parse(name: &str, choices: Option<&[String]>) -> Result<ParamKind, String> {
        let kind = match name {
            "text" => ParamKind::Text,
            "database" => ParamKind::Database,
            "identifier" => ParamKind::Identifier,
            "path" => ParamKind::Path,
            "duration" => ParamKind::Duration,
            "number" => ParamKind::Number,
            "boolean" => ParamKind::Boolean,
            "choice" => match choices {
                Some(list) if !list.is_empty() => ParamKind::Choice(list.to_vec()),
                _ => return Err("type \"choice\" needs choices = [\"a\", \"b\", ...]".into()),
            },
            "url" => ParamKind::Url,
            "conninfo" => ParamKind::Conninfo,
            "secret" => ParamKind::Secret,
            "command" => ParamKind::Command,
            other => {
                return Err(format!(
                    "unknown type \"{other}\"; one of: {}",
                    KIND_NAMES.join(", ")
                ));
            }
        };
        if choices.is_some() && !matches!(kind, ParamKind::Choice(_)) {
            return Err("choices are for type = \"choice\" only".into());
        }
        Ok(kind)
    }

    /// The kind's name as a runbook writes it.
    pub fn name(&self) -> &'static str {
        match self {
            ParamKind::Text => "text",
            ParamKind::Database => "database",
            ParamKind::Identifier => "identifier",
            ParamKind::Path => "path",
            ParamKind::Duration => "duration",
            ParamKind::Number => "number",
            ParamKind::Boolean => "boolean",
            ParamKind::Choice(_) => "choice",
            ParamKind::Url => "url",
            ParamKind::Conninfo => "conninfo",
            ParamKind::Secret => "secret",
            ParamKind::Command => "command",
        }
    }

    /// Whether only an admin may give this kind of value (it is run, or names a server).
    pub fn admin_only(&self) -> bool {
        matches!(self, ParamKind::Command | ParamKind::Conninfo)
    }

    /// Checks a value; the message says what was wrong and what is accepted.
    pub fn check(&self, value: &str) -> Result<(), String> {
        check_text(value, MAX_TEXT)?;
        match self {
            ParamKind::Text | ParamKind::Secret | ParamKind::Command | ParamKind::Conninfo => {
                Ok(())
            }
            ParamKind::Database => {
                if value.len() > 63 {
                    Err(format!(
                        "a database name has at most 63 bytes; this one has {}",
                        value.len()
                    ))
                } else if value.contains(['/', '\\']) || value.starts_with('.') {
                    Err("a database name here may not hold '/' or '\\' nor start with '.' (it names the backups' folder in the stores)".into())
                } else {
                    Ok(())
                }
            }
            ParamKind::Identifier => check_identifier(value),
            ParamKind::Path => Ok(()),
            ParamKind::Duration => super::duration::parse_duration(value)
                .map(|_| ())
                .map_err(|e| format!("{e} (a duration such as 30s, 5m or 1h)")),
            ParamKind::Number => value
                .parse::<u64>()
                .map(|_| ())
                .map_err(|_| "expected a whole number (0, 1, 2, ...)".to_string()),
            ParamKind::Boolean => match value {
                "true" | "false" => Ok(()),
                _ => Err("expected true or false".into()),
            },
            ParamKind::Choice(list) => {
                if list.iter().any(|c| c == value) {
                    Ok(())
                } else {
                    Err(format!("expected one of: {}", list.join(", ")))
                }
            }
            ParamKind::Url => {
                if value.starts_with("http://") || value.starts_with("https://") {
                    Ok(())
                } else {
                    Err("expected an http:// or https:// URL".into())
                }
            }
        }
    }

    /// The value as people may see it: a secret as `***`, any URL's user-info (and a
    /// connection string's password) as `***`, control characters escaped.
    pub fn shown(&self, value: &str) -> String {
        if matches!(self, ParamKind::Secret) && !value.is_empty() {
            return "***".into();
        }
        escape_controls(&redact_credentials(value))
    }
}

const KIND_NAMES: &[&str] = &[
    "text",
    "database",
    "identifier",
    "path",
    "duration",
    "number",
    "boolean",
    "choice",
    "url",
    "conninfo",
    "secret",
    "command",
];

/// Refuses control characters and text longer than `max` bytes: one check for every text a
/// person or a program hands Lazarus (parameters, reasons, comments).
pub fn check_text(value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{} bytes is too long: at most {max}", value.len()));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "control character {} is not allowed (newlines, escapes and tabs would forge what terminals and logs show)",
            c.escape_unicode()
        ));
    }
    Ok(())
}

/// Checks the identifier grammar shared by run ids, backup ids and archive names: 1 to 128
/// characters of letters, digits, `.`, `_`, `-`, `:` and `+`, starting with a letter or digit
/// (so never `-rf`, `--help`, `.hidden` or `..`).
pub fn check_identifier(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '+'));
    if ok {
        Ok(())
    } else {
        Err(
            "expected 1 to 128 letters, digits, '.', '_', '-', ':' or '+', starting with a letter or digit"
                .into(),
        )
    }
}

/// `path` made absolute against `base` and normalized without touching the filesystem, or
/// `None` when it climbs with `..`: what a non-admin's path is compared with.
pub fn normalized(path: &str, base: &Path) -> Option<PathBuf> {
    let path = Path::new(path);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => return None,
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// Whether `path` (absolute, or relative to `root`'s parent) lies at or under `root`, with no
/// `..` anywhere.
pub fn confined(path: &str, root: &Path) -> bool {
    let base = root.parent().unwrap_or(root);
    match (
        normalized(path, base),
        normalized(&root.to_string_lossy(), base),
    ) {
        (Some(p), Some(r)) => p.starts_with(&r),
        _ => false,
    }
}

/// Text with every URL's user-info (`scheme://user:pw@` → `scheme://***@`) and every
/// `password=...` value replaced by `***`.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                rest = &tail[user_end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    redact_password_pairs(&out)
}

/// `password=VALUE` (libpq key/value style, quoted or not) with VALUE replaced by `***`.
fn redact_password_pairs(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("password") {
        let key_start = pos + found;
        let boundary = key_start == 0
            || !lower.as_bytes()[key_start - 1].is_ascii_alphanumeric()
                && lower.as_bytes()[key_start - 1] != b'_';
        let mut cursor = key_start + "password".len();
        while text[cursor..].starts_with(' ') {
            cursor += 1;
        }
        if !boundary || !text[cursor..].starts_with('=') {
            out.push_str(&text[pos..key_start + "password".len()]);
            pos = key_start + "password".len();
            continue;
        }
        cursor += 1;
        while text[cursor..].starts_with(' ') {
            cursor += 1;
        }
        out.push_str(&text[pos..cursor]);
        let value_end = if text[cursor..].starts_with('\'') {
            let mut end = cursor + 1;
            let bytes = text.as_bytes();
            while end < bytes.len() && bytes[end] != b'\'' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            (end + 1).min(text.len())
        } else {
            text[cursor..]
                .find(|c: char| c.is_whitespace() || c == '&' || c == ';')
                .map_or(text.len(), |i| cursor + i)
        };
        if value_end > cursor {
            out.push_str("***");
        }
        pos = value_end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Text with control characters shown as escapes (`\n`, `\u{1b}`), so a value can never
/// move a terminal's cursor, clear its screen or forge a line.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_refused_by_their_type() {
        let cases: &[(ParamKind, &str)] = &[
            (ParamKind::Text, "ok\nforged row"),
            (ParamKind::Text, "\u{1b}[2J"),
            (ParamKind::Database, &"x".repeat(64)),
            (ParamKind::Database, "shop\0"),
            (ParamKind::Database, "../store"),
            (ParamKind::Identifier, "-rf"),
            (ParamKind::Identifier, "--help"),
            (ParamKind::Identifier, ".hidden"),
            (ParamKind::Identifier, ".."),
            (ParamKind::Identifier, "a/b"),
            (ParamKind::Identifier, ""),
            (ParamKind::Number, "-1"),
            (ParamKind::Number, "1; rm -rf /"),
            (ParamKind::Boolean, "yes please"),
            (ParamKind::Duration, "forever"),
            (ParamKind::Url, "file:///etc/passwd"),
            (ParamKind::Choice(vec!["a".into(), "b".into()]), "c"),
        ];
        for (kind, value) in cases {
            assert!(
                kind.check(value).is_err(),
                "{} accepted {value:?}",
                kind.name()
            );
        }
        assert!(ParamKind::Text.check(&"x".repeat(1 << 20)).is_err());
        assert!(
            ParamKind::Database
                .check("host=evil port=5432 dbname=shop")
                .is_ok()
        );
        assert!(ParamKind::Identifier.check("shop-20261204T101010Z").is_ok());
    }

    #[test]
    fn secrets_and_user_info_are_never_shown() {
        assert_eq!(ParamKind::Secret.shown("hunter2"), "***");
        assert_eq!(
            ParamKind::Url.shown("http://user:TOKEN@app:8080/health"),
            "http://***@app:8080/health"
        );
        assert_eq!(
            ParamKind::Text.shown("postgres://app:PASSWORD@db/shop and https://T@x"),
            "postgres://***@db/shop and https://***@x"
        );
        assert_eq!(
            ParamKind::Conninfo.shown("host=db password='a b\\'c' user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(ParamKind::Text.shown("a\nb\u{1b}"), "a\\nb\\u{1b}");
        assert_eq!(
            ParamKind::Text.shown("no_password_here=1"),
            "no_password_here=1"
        );
    }

    #[test]
    fn a_path_is_confined_only_without_climbing() {
        let root = Path::new("/var/lib/lazarus/work");
        assert!(confined("/var/lib/lazarus/work", root));
        assert!(confined("/var/lib/lazarus/work/a/b", root));
        assert!(!confined("/var/lib/lazarus/work/../store", root));
        assert!(!confined("/var/lib/lazarus/workshop", root));
        assert!(!confined("/var/lib/lazarus/store/backups/shop", root));
        assert!(!confined("/some/dir", root));
    }
}

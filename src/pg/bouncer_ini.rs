//! pgbouncer.ini's `[databases]` section: find an entry, and change one entry's value while
//! every other byte of the file (comments, order, spacing, line endings) stays as it was.

/// Where an entry's value sits in the text.
struct Found {
    /// Byte range of the value (after `=` and its spaces, before any trailing space and the
    /// line ending).
    value: std::ops::Range<usize>,
}

fn find(text: &str, name: &str) -> Option<Found> {
    let mut in_databases = false;
    let mut offset = 0usize;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim();
        if trimmed.starts_with('[') {
            in_databases = trimmed.eq_ignore_ascii_case("[databases]");
            continue;
        }
        if !in_databases || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        let Some(eq) = body.find('=') else { continue };
        if body[..eq].trim() != name {
            continue;
        }
        let after = &body[eq + 1..];
        let lead = after.len() - after.trim_start().len();
        let value_start = start + eq + 1 + lead;
        let value_end = start + body.trim_end().len();
        return Some(Found {
            value: value_start..value_end.max(value_start),
        });
    }
    None
}

/// The names of the `[databases]` section's entries, in order.
pub fn entries(text: &str) -> Vec<String> {
    let mut in_databases = false;
    let mut names = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_databases = trimmed.eq_ignore_ascii_case("[databases]");
        } else if in_databases
            && !trimmed.starts_with(';')
            && !trimmed.starts_with('#')
            && let Some((key, _)) = trimmed.split_once('=')
        {
            names.push(key.trim().to_string());
        }
    }
    names
}

/// The value of `name = ...` in the `[databases]` section.
pub fn entry(text: &str, name: &str) -> Option<String> {
    find(text, name).map(|f| text[f.value].to_string())
}

/// The text with the value of entry `name` replaced by `value`, and nothing else changed;
/// `None` when there is no such entry.
pub fn replace_entry(text: &str, name: &str, value: &str) -> Option<String> {
    let found = find(text, name)?;
    let mut out = String::with_capacity(text.len() + value.len());
    out.push_str(&text[..found.value.start]);
    out.push_str(value);
    out.push_str(&text[found.value.end..]);
    Some(out)
}

/// A `key=value` field of a connection string.
pub fn field(conn: &str, key: &str) -> Option<String> {
    conn.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

/// A connection string with some fields set (others kept, in order).
pub fn with_fields(conn: &str, set: &[(&str, Option<String>)]) -> String {
    let mut parts: Vec<(String, String)> = conn
        .split_whitespace()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    for (key, value) in set {
        let Some(value) = value else { continue };
        match parts.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => parts.push(((*key).to_string(), value.clone())),
        }
    }
    parts
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "[databases]\nshop = host=127.0.0.1 port=5432 dbname=shop pool_size=10\nother = host=x dbname=o\n\n[pgbouncer]\nlisten_port = 6432\n";

    #[test]
    fn entries_are_found_and_replaced_in_the_databases_section_only() {
        assert_eq!(
            entry(INI, "shop").as_deref(),
            Some("host=127.0.0.1 port=5432 dbname=shop pool_size=10")
        );
        assert_eq!(entry(INI, "listen_port"), None);
        let new = with_fields(
            &entry(INI, "shop").unwrap(),
            &[("dbname", Some("shop_restored".into())), ("port", None)],
        );
        assert_eq!(
            new,
            "host=127.0.0.1 port=5432 dbname=shop_restored pool_size=10"
        );
        let text = replace_entry(INI, "shop", &new).unwrap();
        assert_eq!(entry(&text, "shop").as_deref(), Some(new.as_str()));
        assert_eq!(entry(&text, "other").as_deref(), Some("host=x dbname=o"));
        assert!(text.contains("listen_port = 6432"));
        assert_eq!(replace_entry(INI, "missing", "x"), None);
        assert_eq!(entries(INI), ["shop", "other"]);
    }

    #[test]
    fn every_other_byte_is_kept() {
        let ini = "; Lazarus must not touch this\r\n[databases]\r\n;shop = commented\r\n  shop   =\thost=a dbname=shop  \r\nz=1\r\n\r\n[pgbouncer]\r\nshop = not an entry\r\nno_final_newline = 1";
        let out = replace_entry(ini, "shop", "host=a dbname=shop_r").unwrap();
        assert_eq!(
            out,
            "; Lazarus must not touch this\r\n[databases]\r\n;shop = commented\r\n  shop   =\thost=a dbname=shop_r  \r\nz=1\r\n\r\n[pgbouncer]\r\nshop = not an entry\r\nno_final_newline = 1"
        );
        assert_eq!(
            replace_entry(&out, "shop", "host=a dbname=shop").unwrap(),
            ini
        );
    }
}

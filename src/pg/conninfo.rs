//! Pointing a connection string at another database: the database name of a libpq URI
//! (`postgresql://user:pw@host:5432/shop?sslmode=require`) or key/value string
//! (`host=db dbname=shop user=app`) replaced, every other byte kept — the password, the
//! options and the spacing are the user's, and a cut-over must change only what it says.

/// A connection string whose database could not be found or replaced.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConninfoError {
    /// The text is neither a libpq URI nor key/value pairs.
    #[error(
        "the value is not a PostgreSQL connection string (postgresql://… or key=value pairs); give the whole new value instead"
    )]
    NotConninfo,
    /// The new name cannot be written into the string without quoting rules Lazarus does
    /// not apply.
    #[error("the database name \"{0}\" needs quoting; use plain letters, digits, _ and -")]
    Unsafe(String),
}

/// The string with its database replaced by `dbname`, or the database added when it names
/// none.
pub fn with_dbname(conninfo: &str, dbname: &str) -> Result<String, ConninfoError> {
    if dbname.is_empty()
        || !dbname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConninfoError::Unsafe(dbname.to_string()));
    }
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        return Ok(uri_with_dbname(conninfo, dbname));
    }
    keyvalue_with_dbname(conninfo, dbname)
}

/// A connection string that sets only the database, to hand libpq a name that it must never
/// read as a connection string: libpq expands a `dbname` holding `=` (or starting with
/// `postgresql://`) into connection settings, so `host=elsewhere dbname=shop` given as a
/// name would send the password elsewhere. Inside this string the name is a quoted value,
/// and libpq expands only the outer one.
pub fn dbname_only(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 9);
    quoted.push_str("dbname='");
    for c in name.chars() {
        if c == '\\' || c == '\'' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// The database named by a connection string, if it names one.
pub fn dbname(conninfo: &str) -> Option<String> {
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        let (start, end) = uri_path(conninfo);
        let name = &conninfo[start..end];
        return (!name.is_empty()).then(|| name.to_string());
    }
    keyvalue_span(conninfo).map(|(s, e)| conninfo[s..e].trim_matches('\'').to_string())
}

/// The connection string with its password (if any) replaced by `***`, for showing to
/// people and keeping in the journal; a text that is not a connection string is shown as is.
pub fn redacted(conninfo: &str) -> String {
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        let after_scheme = conninfo.find("://").map_or(0, |i| i + 3);
        let authority_end = conninfo[after_scheme..]
            .find(['/', '?', '#'])
            .map_or(conninfo.len(), |i| after_scheme + i);
        let authority = &conninfo[after_scheme..authority_end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
        {
            let start = after_scheme + colon + 1;
            let end = after_scheme + at;
            return format!("{}***{}", &conninfo[..start], &conninfo[end..]);
        }
        return conninfo.to_string();
    }
    match keyvalue_span_of(conninfo, "password") {
        Some((start, end)) => format!("{}***{}", &conninfo[..start], &conninfo[end..]),
        None => conninfo.to_string(),
    }
}

/// The byte range of a URI's database (empty, at the insertion point, when it has none).
fn uri_path(uri: &str) -> (usize, usize) {
    let after_scheme = uri.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &uri[after_scheme..];
    let authority_end = rest
        .find(['/', '?', '#'])
        .map(|i| after_scheme + i)
        .unwrap_or(uri.len());
    if uri[authority_end..].starts_with('/') {
        let start = authority_end + 1;
        let end = uri[start..]
            .find(['?', '#'])
            .map(|i| start + i)
            .unwrap_or(uri.len());
        (start, end)
    } else {
        (authority_end, authority_end)
    }
}

fn uri_with_dbname(uri: &str, dbname: &str) -> String {
    let (start, end) = uri_path(uri);
    let after_scheme = uri.find("://").map(|i| i + 3).unwrap_or(0);
    let has_slash = start > after_scheme && uri.as_bytes()[start - 1] == b'/';
    let slash = if has_slash { "" } else { "/" };
    format!("{}{slash}{dbname}{}", &uri[..start], &uri[end..])
}

/// The byte range of the value of `dbname=` in key/value form.
fn keyvalue_span(text: &str) -> Option<(usize, usize)> {
    keyvalue_span_of(text, "dbname")
}

/// The byte range of the value of `wanted=` in key/value form.
fn keyvalue_span_of(text: &str, wanted: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[key_start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            return None;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        if key == wanted {
            return Some((value_start, i));
        }
    }
    None
}

fn keyvalue_with_dbname(text: &str, dbname: &str) -> Result<String, ConninfoError> {
    if !text.contains('=') {
        return Err(ConninfoError::NotConninfo);
    }
    match keyvalue_span(text) {
        Some((start, end)) => Ok(format!("{}{dbname}{}", &text[..start], &text[end..])),
        None => {
            let body = text.trim_end();
            Ok(format!("{body} dbname={dbname}{}", &text[body.len()..]))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_that_looks_like_a_connection_string_stays_a_name() {
        assert_eq!(
            super::dbname_only("host=evil port=5432 dbname=shop"),
            "dbname='host=evil port=5432 dbname=shop'"
        );
        assert_eq!(super::dbname_only("it's\\"), "dbname='it\\'s\\\\'");
        assert_eq!(super::dbname_only("shop"), "dbname='shop'");
    }

    use super::*;

    #[test]
    fn a_uri_keeps_every_byte_but_its_database() {
        assert_eq!(
            with_dbname(
                "postgresql://app:s3cr%40t@db:5432/shop?sslmode=require",
                "shop_restored_ab12cd"
            )
            .unwrap(),
            "postgresql://app:s3cr%40t@db:5432/shop_restored_ab12cd?sslmode=require"
        );
        for (uri, expected) in [
            ("postgres://db/shop", "postgres://db/x"),
            ("postgres://db", "postgres://db/x"),
            ("postgres://db?sslmode=off", "postgres://db/x?sslmode=off"),
            ("postgres://db/", "postgres://db/x"),
        ] {
            assert_eq!(with_dbname(uri, "x").unwrap(), expected, "{uri}");
        }
        assert_eq!(
            dbname("postgresql://u@h:1/shop?x=1").as_deref(),
            Some("shop")
        );
    }

    #[test]
    fn passwords_are_hidden_and_nothing_else() {
        assert_eq!(
            redacted("postgresql://app:s3cr%40t@db:5432/shop?sslmode=require"),
            "postgresql://app:***@db:5432/shop?sslmode=require"
        );
        assert_eq!(redacted("postgres://app@db/shop"), "postgres://app@db/shop");
        assert_eq!(
            redacted("host=db password='a b' dbname=shop"),
            "host=db password=*** dbname=shop"
        );
        assert_eq!(redacted("db.internal"), "db.internal");
    }

    #[test]
    fn key_value_pairs_keep_their_spacing_and_quotes() {
        assert_eq!(
            with_dbname("host=db  dbname=shop user=app password='a b'\n", "new").unwrap(),
            "host=db  dbname=new user=app password='a b'\n"
        );
        assert_eq!(
            with_dbname("host=db dbname = 'shop' port=5432", "new").unwrap(),
            "host=db dbname = new port=5432"
        );
        assert_eq!(
            with_dbname("host=db user=app", "new").unwrap(),
            "host=db user=app dbname=new"
        );
        assert_eq!(dbname("host=db dbname='shop'").as_deref(), Some("shop"));
        assert_eq!(
            with_dbname("just some words", "x"),
            Err(ConninfoError::NotConninfo)
        );
        assert!(matches!(
            with_dbname("host=db", "a b"),
            Err(ConninfoError::Unsafe(_))
        ));
    }
}

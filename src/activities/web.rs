//! Shared HTTP client pieces for activities that speak HTTP.

use std::time::Duration;

use crate::engine::ActivityError;

/// A client with a per-request timeout.
pub fn client(timeout: Duration) -> Result<reqwest::Client, ActivityError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| ActivityError::permanent(format!("cannot build an HTTP client: {e}")))
}

/// A URL as it may be shown: scheme, host and port only, since paths and queries of
/// webhooks often carry tokens.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(port) => format!("{}://{host}:{port}/…", u.scheme()),
                None => format!("{}://{host}/…", u.scheme()),
            }
        }
        Err(_) => "(unparseable URL)".to_string(),
    }
}

/// A reqwest error without the URL it carries (which may hold a token).
pub fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_host_and_port() {
        assert_eq!(
            redact_url("https://hooks.example.com/services/T000/SECRET?token=abc"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/health"),
            "http://127.0.0.1:8080/…"
        );
    }
}

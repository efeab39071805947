//! The OpenAPI description of the API, served at `/api/openapi.json` without a token.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, kept beside the routes it describes (a test checks they agree).
pub const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`.
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_every_route_and_only_those() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let described: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
        let routes = include_str!("mod.rs");
        let mut routed: Vec<String> = routes
            .split(".route(\"")
            .skip(1)
            .filter_map(|s| s.split('"').next().map(String::from))
            .filter(|path| path != "/" && !path.starts_with("/app."))
            .collect();
        routed.sort();
        let mut described = described;
        described.sort();
        assert_eq!(routed, described);
    }
}

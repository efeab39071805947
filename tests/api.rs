//! The HTTP API of a real `lazarus serve`: every endpoint over real HTTP, who may do what,
//! the audit trail of accepted and refused actions from HTTP and the CLI, and `audit verify`
//! finding an entry edited in a store or in the journal.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::Duration;

use common::serve::{Server, token};
use common::{Sandbox, text};
use reqwest::StatusCode;
use serde_json::{Value, json};

const GATED: &str = r#"
name = "gated"
description = "a command, an approval, a command"
[[steps]]
id = "before"
activity = "command"
with = { shell = 'echo before >> log' }

[[steps]]
id = "gate"
activity = "approve"
with = { prompt = "go on?" }

[[steps]]
id = "after"
activity = "command"
with = { shell = 'echo after >> log' }
"#;

const CONFIG: &str =
    "# test configuration\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n";

/// An HTTP client holding one identity's token (or none).
struct As<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    token: Option<&'a str>,
    seen: &'a Mutex<String>,
}

impl As<'_> {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        self.seen.lock().unwrap().push_str(&text);
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

async fn wait_status(client: &As<'_>, run: &str, wanted: &str) -> Value {
    for _ in 0..1000 {
        let (code, report) = client.get(&format!("/api/runs/{run}")).await;
        if code == StatusCode::OK && report["status"] == wanted {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("run {run} never reached {wanted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_by_role_and_every_action_is_audited() {
    let sb = Sandbox::new();
    let config = sb.write("lazarus.toml", CONFIG);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    sb.write("workflows/gated.toml", GATED);
    let viewer = token(&sb, "vera", "viewer");
    let operator = token(&sb, "otto", "operator");
    let admin = token(&sb, "ada", "admin");

    // The configuration keeps its mode and every byte it had, and holds hashes, not tokens.
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.starts_with(CONFIG), "{written}");
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o640
    );
    for t in [&viewer, &operator, &admin] {
        assert!(!written.contains(t.as_str()));
    }

    let server = Server::start(&sb);
    let http = reqwest::Client::new();
    let seen = Mutex::new(String::new());
    let nobody = As {
        http: &http,
        base: &server.base,
        token: None,
        seen: &seen,
    };
    let wrong = As {
        http: &http,
        base: &server.base,
        token: Some("lzr_0000"),
        seen: &seen,
    };
    let vera = As {
        http: &http,
        base: &server.base,
        token: Some(&viewer),
        seen: &seen,
    };
    let otto = As {
        http: &http,
        base: &server.base,
        token: Some(&operator),
        seen: &seen,
    };
    let ada = As {
        http: &http,
        base: &server.base,
        token: Some(&admin),
        seen: &seen,
    };

    // The description needs no token; everything else does.
    let (code, doc) = nobody.get("/api/openapi.json").await;
    assert_eq!(code, StatusCode::OK);
    assert!(doc["paths"]["/api/runs/{run}/approve"]["post"].is_object());
    let (code, body) = nobody.get("/api/runs").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    assert_eq!(wrong.get("/api/runs").await.0, StatusCode::UNAUTHORIZED);
    let (code, me) = otto.get("/api/whoami").await;
    assert_eq!(
        (code, me["identity"].as_str(), me["role"].as_str()),
        (StatusCode::OK, Some("otto"), Some("operator"))
    );

    // Starting: a custom runbook needs an admin; a reason is required.
    let start = |id: &str, halt: &[&str]| {
        json!({
            "workflow": "gated", "reason": "api test", "id": id, "halt_before": halt,
        })
    };
    assert_eq!(
        vera.post("/api/runs", start("g0", &[])).await.0,
        StatusCode::FORBIDDEN
    );
    let (code, body) = otto.post("/api/runs", start("g0", &[])).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("needs the admin role"),
        "{body}"
    );
    let (code, body) = ada
        .post("/api/runs", json!({"workflow": "gated", "reason": " "}))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, body) = ada
        .post("/api/runs", json!({"workflow": "gatd", "reason": "x"}))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().contains("gated"),
        "a suggestion: {body}"
    );
    let (code, body) = ada.post("/api/runs", json!({"workflow": "gated"})).await;
    assert_eq!(
        code,
        StatusCode::BAD_REQUEST,
        "a missing field is a JSON error: {body}"
    );
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("reason") && error.contains("/api/openapi.json"),
        "{error}"
    );
    let (code, body) = ada.post("/api/runs", start("g1", &[])).await;
    assert_eq!(
        (code, body["run"].as_str()),
        (StatusCode::CREATED, Some("g1")),
        "{body}"
    );

    // Approving: the approver is the token's identity.
    wait_status(&vera, "g1", "waiting_approval").await;
    assert_eq!(
        vera.post("/api/runs/g1/approve", json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (code, body) = otto
        .post("/api/runs/g1/approve", json!({"comment": "looks right"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let report = wait_status(&vera, "g1", "succeeded").await;
    assert_eq!(
        Sandbox::step(&report, "gate")["output"]["approved_by"],
        "otto"
    );

    // Cancel and rollback need an admin; the engine's own refusal is a 409 with its message.
    assert_eq!(
        otto.post("/api/runs/g1/cancel", json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        otto.post("/api/runs/g1/rollback", json!({"reason": "r"}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (code, body) = ada.post("/api/runs/g1/cancel", json!({})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(ada.get("/api/runs/nope").await.0, StatusCode::NOT_FOUND);

    // Halt and resume, by an operator.
    ada.post("/api/runs", start("g2", &["gate"])).await;
    wait_status(&vera, "g2", "halted").await;
    assert_eq!(
        vera.post("/api/runs/g2/resume", json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (code, body) = otto.post("/api/runs/g2/resume", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    wait_status(&vera, "g2", "waiting_approval").await;
    let (code, body) = otto.post("/api/runs/g2/halt", json!({"now": true})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    wait_status(&vera, "g2", "halted").await;
    let (code, body) = ada.post("/api/runs/g2/cancel", json!({})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    wait_status(&vera, "g2", "cancelled").await;

    // An approval from the CLI releases a run started over HTTP, and the reverse.
    ada.post("/api/runs", start("g3", &[])).await;
    wait_status(&vera, "g3", "waiting_approval").await;
    sb.ok(&["approve", "g3", "--by", "carol"]);
    wait_status(&vera, "g3", "succeeded").await;
    let mut cli_run = sb.spawn(&["run", "gated", "--id", "g4", "--reason", "from the cli"]);
    wait_status(&vera, "g4", "waiting_approval").await;
    assert_eq!(
        otto.post("/api/runs/g4/approve", json!({})).await.0,
        StatusCode::OK
    );
    wait_status(&vera, "g4", "succeeded").await;
    let _ = cli_run.wait();

    // Reads, for every role.
    for who in [&vera, &otto, &ada] {
        let (code, page) = who
            .get("/api/runs?workflow=gated&status=succeeded&limit=1")
            .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            (
                page["total"].as_u64(),
                page["runs"].as_array().map(Vec::len)
            ),
            (Some(3), Some(1)),
            "{page}"
        );
        assert_eq!(page["next_offset"], 1);
        let (code, list) = who.get("/api/workflows").await;
        assert_eq!(code, StatusCode::OK);
        let gated = list["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "gated")
            .cloned();
        assert_eq!(gated.unwrap()["steps"], json!(["before", "gate", "after"]));
        assert_eq!(who.get("/api/backups").await.0, StatusCode::OK);
        assert_ne!(who.get("/api/wal/status").await.0, StatusCode::FORBIDDEN);
        assert_ne!(
            who.get("/api/wal/check?local=true").await.0,
            StatusCode::FORBIDDEN
        );
        assert_ne!(
            who.post("/api/pitr/plan", json!({"to": "immediate"}))
                .await
                .0,
            StatusCode::FORBIDDEN
        );
    }
    for path in [
        "/api/whoami",
        "/api/workflows",
        "/api/backups",
        "/api/wal/status",
        "/api/runs/g1",
        "/api/audit",
    ] {
        assert_eq!(nobody.get(path).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(
        nobody.post("/api/runs/g1/halt", json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (code, body) = ada.get("/api/runs?since=yesterday").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("RFC 3339"));

    // The audit trail: operators read it, viewers may not.
    assert_eq!(vera.get("/api/audit").await.0, StatusCode::FORBIDDEN);
    let (code, audit) = otto.get("/api/audit").await;
    assert_eq!(code, StatusCode::OK);
    let entries = audit["entries"].as_array().unwrap().clone();
    let has = |identity: &str, action: &str, run: Option<&str>, outcome: &str, via: &str| {
        entries.iter().any(|e| {
            e["identity"] == identity
                && e["action"] == action
                && run.is_none_or(|r| e["run"] == r)
                && e["outcome"] == outcome
                && e["via"].as_str().unwrap_or_default().contains(via)
        })
    };
    // Accepted and refused, by role and by the engine, from HTTP and from the CLI.
    let expected: [(&str, &str, Option<&str>, &str, &str); 10] = [
        // A wrong token is audited too (refused, with the peer).
        (
            "(unknown token)",
            "authenticate",
            None,
            "refused",
            "http from 127.0.0.1:",
        ),
        (
            "ada",
            "start gated",
            Some("g1"),
            "accepted",
            "http from 127.0.0.1:",
        ),
        ("otto", "start gated", None, "refused", "http"),
        ("vera", "approve", Some("g1"), "refused", "http"),
        ("otto", "approve", Some("g1"), "accepted", "http"),
        ("otto", "cancel", Some("g1"), "refused", "http"),
        ("ada", "cancel", Some("g1"), "refused", "http"),
        ("otto", "halt now", Some("g2"), "accepted", "http"),
        ("carol", "approve", Some("g3"), "accepted", "cli, os user "),
        ("tester", "start gated", Some("g4"), "accepted", "cli"),
    ];
    for (identity, action, run, outcome, via) in expected {
        assert!(
            has(identity, action, run, outcome, via),
            "no audit entry {identity} {action} {run:?} {outcome} via {via}: {audit}"
        );
    }
    let first = &entries[0];
    assert_eq!(first["prev"], "0".repeat(64));
    assert_eq!(
        entries.iter().find(|e| e["run"] == "g1").unwrap()["reason"],
        "api test"
    );

    // Mirrored to the store; an entry edited there is found.
    let mirrored = sb.path().join("store/audit/000000000002.json");
    sb.wait_for("the audit mirror", Duration::from_secs(20), || {
        mirrored.exists()
    });
    let (code, verified) = otto.get("/api/audit/verify").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(verified["problems"], json!([]), "{verified}");
    let out = sb.run(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("the chain is intact"), "{}", text(&out));
    let original = std::fs::read_to_string(&mirrored).unwrap();
    std::fs::write(
        &mirrored,
        original.replace("\"outcome\":\"refused\"", "\"outcome\":\"accepted\""),
    )
    .unwrap();
    assert_ne!(
        std::fs::read_to_string(&mirrored).unwrap(),
        original,
        "entry 2 is a refusal"
    );
    let out = sb.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("BROKEN at entry 2 (local)"),
        "{}",
        text(&out)
    );
    std::fs::write(&mirrored, &original).unwrap();

    let served = server.stop();
    let everything = format!("{served}{}", seen.lock().unwrap());
    for t in [&viewer, &operator, &admin] {
        assert!(!everything.contains(t.as_str()), "a token leaked");
    }

    // An entry edited in the journal breaks the link from the next one.
    {
        let journal = lazarus::engine::SledJournal::open(&sb.state()).unwrap();
        let tree = journal.tree("audit").unwrap();
        let bytes = tree.get(1u64.to_be_bytes()).unwrap().unwrap();
        let edited = String::from_utf8_lossy(&bytes).replace("\"refused\"", "\"accepted\"");
        tree.insert(1u64.to_be_bytes(), edited.as_bytes()).unwrap();
        tree.flush().unwrap();
    }
    let out = sb.run(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found["problems"][0]["seq"], 1, "{found}");
    assert!(
        found["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["what"].as_str().unwrap().contains("entry 1 was changed")),
        "{found}"
    );
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    kind: String,
    data: Value,
}

/// Reads events from a streaming response until `stop` says so (or the stream ends).
async fn read_events(response: reqwest::Response, mut stop: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut out = Vec::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = Sse {
                id: None,
                kind: "message".into(),
                data: Value::Null,
            };
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    event.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event.kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            event.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            let done = stop(&event);
            out.push(event);
            if done {
                return out;
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), body.next()).await {
            Ok(Some(Ok(chunk))) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(_) => return out,
            Err(_) => panic!("no event for 30 s; so far: {out:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_a_runs_steps_in_order_and_resumes_after_a_reconnect() {
    let sb = Sandbox::new();
    sb.write("lazarus.toml", CONFIG);
    sb.write("workflows/gated.toml", GATED);
    let admin = token(&sb, "ada", "admin");
    let viewer = token(&sb, "vera", "viewer");
    let server = Server::start(&sb);
    let http = reqwest::Client::new();
    let seen = Mutex::new(String::new());
    let ada = As {
        http: &http,
        base: &server.base,
        token: Some(&admin),
        seen: &seen,
    };
    let (code, _) = ada
        .post(
            "/api/runs",
            json!({"workflow": "gated", "reason": "sse", "id": "s1"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);

    let events_url = format!("{}/api/runs/s1/events", server.base);
    assert_eq!(
        http.get(&events_url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let response = http
        .get(&events_url)
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let before = read_events(response, |e| {
        e.kind == "step" && e.data["kind"] == "approval_requested"
    })
    .await;
    let steps: Vec<&Sse> = before.iter().filter(|e| e.kind == "step").collect();
    let seqs: Vec<u64> = steps.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "numbered from 1, in order"
    );
    let kinds: Vec<String> = steps
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.data["kind"].as_str().unwrap(),
                e.data["step"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        kinds[..2],
        [
            "step_started before".to_string(),
            "step_completed before".to_string()
        ],
        "{kinds:?}"
    );
    assert_eq!(kinds.last().unwrap(), "approval_requested gate");
    let last = *seqs.last().unwrap();

    // Disconnected; the run goes on; the reconnect gets exactly what it missed.
    let (code, _) = ada.post("/api/runs/s1/approve", json!({})).await;
    assert_eq!(code, StatusCode::OK);
    let response = http
        .get(&events_url)
        .bearer_auth(&viewer)
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    let after = read_events(response, |e| e.kind == "end").await;
    let steps: Vec<&Sse> = after.iter().filter(|e| e.kind == "step").collect();
    assert_eq!(steps[0].id, Some(last + 1), "{after:?}");
    for pair in steps.windows(2) {
        assert_eq!(pair[1].id.unwrap(), pair[0].id.unwrap() + 1);
    }
    let kinds: Vec<&str> = steps
        .iter()
        .map(|e| e.data["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"approved"));
    assert_eq!(kinds.last(), Some(&"succeeded"), "{kinds:?}");
    assert_eq!(after.last().unwrap().data["status"], "succeeded");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_runs_started_through_the_api_each_finish_every_step_exactly_once() {
    let sb = Sandbox::new();
    sb.write("lazarus.toml", CONFIG);
    let mut workflow = String::from("name = \"ten\"\n");
    for n in 1..=10 {
        workflow.push_str(&format!(
            "\n[[steps]]\nid = \"s{n}\"\nactivity = \"command\"\nwith = {{ shell = 'echo \"${{run.id}} s{n}\" >> effects' }}\n"
        ));
    }
    sb.write("workflows/ten.toml", &workflow);
    let admin = token(&sb, "ada", "admin");
    let server = Server::start(&sb);
    let http = reqwest::Client::new();
    let seen = Mutex::new(String::new());
    let ada = As {
        http: &http,
        base: &server.base,
        token: Some(&admin),
        seen: &seen,
    };
    let starts = (0..50).map(|i| {
        let ada = &ada;
        async move {
            ada.post(
                "/api/runs",
                json!({"workflow": "ten", "reason": "many at once", "id": format!("m{i:02}")}),
            )
            .await
        }
    });
    for (code, body) in futures::future::join_all(starts).await {
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    for i in 0..50 {
        wait_status(&ada, &format!("m{i:02}"), "succeeded").await;
    }
    let effects = sb.read("effects");
    let mut lines: Vec<&str> = effects.lines().collect();
    assert_eq!(lines.len(), 500, "every step of every run ran once");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 500, "no step ran twice");
    let (_, page) = ada
        .get("/api/runs?workflow=ten&status=succeeded&limit=500")
        .await;
    assert_eq!(page["total"], 50);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_configured_the_api_answers_https_only() {
    let sb = Sandbox::new();
    // A CA and a server certificate it signed, made with the openssl command.
    sb.write(
        "ext.cnf",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for args in [
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-subj",
                "/CN=test-ca",
                "-days",
                "1",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=lazarus",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
    ] {
        let made = std::process::Command::new("openssl")
            .current_dir(sb.path())
            .args(&args)
            .output()
            .expect("this test makes its certificates with the openssl command (Debian: apt-get install openssl)");
        assert!(
            made.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    sb.write(
        "lazarus.toml",
        &format!("{CONFIG}\n[api]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n"),
    );
    let admin = token(&sb, "ada", "admin");
    let server = Server::start(&sb);
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    // A client that trusts the CA alone (a preconfigured rustls client).
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls_pki_types::pem::PemObject;
        for cert in
            rustls_pki_types::CertificateDer::pem_file_iter(sb.path().join("ca.pem")).unwrap()
        {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let trusting = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let me: Value = trusting
        .get(format!("{}/api/whoami", server.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["identity"], "ada");
    assert!(
        me["via"]
            .as_str()
            .unwrap()
            .starts_with("http from 127.0.0.1:"),
        "{me}"
    );
    // Plain HTTP on the same port gets no answer, and a client that does not trust the
    // certificate does not connect.
    let plain = server.base.replace("https://", "http://");
    assert!(
        reqwest::Client::new()
            .get(format!("{plain}/api/whoami"))
            .send()
            .await
            .is_err()
    );
    assert!(
        reqwest::Client::new()
            .get(format!("{}/api/whoami", server.base))
            .send()
            .await
            .is_err()
    );
    server.stop();
}

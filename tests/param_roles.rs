//! Every parameter of every built-in runbook × every role, through a real `lazarus serve`'s
//! API, with hostile values: a role is only as strong as the parameters it may set.
//!
//! What must hold: a viewer starts nothing; an operator starts only the operator runbooks and
//! gives a path only under `STATE/work`; a value that is not of its parameter's type (control
//! characters, 1 MB of text, a number that is not one) is a 400 for everyone; a run id that
//! could be read as a flag or a hidden file is a 400; no secret given in a parameter appears
//! in any answer or in the audit trail; nothing outside the state directory is touched.

mod common;

use std::sync::Mutex;

use common::Sandbox;
use common::serve::{Server, token};
use reqwest::StatusCode;
use serde_json::{Value, json};

const CONFIG: &str = "[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n";
const OPERATOR_RUNBOOKS: &[&str] = &["backup", "base-backup", "drill"];
const SECRET: &str = "S3CRETtoken";

struct Client<'a> {
    http: reqwest::Client,
    base: &'a str,
    seen: &'a Mutex<String>,
}

impl Client<'_> {
    async fn call(&self, token: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let request = match body {
            Some(body) => self.http.post(url).json(&body),
            None => self.http.get(url),
        };
        let response = request.bearer_auth(token).send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        self.seen.lock().unwrap().push_str(&text);
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Client<'_> {
    /// Waits until a cancelled run has ended (and let go of its target).
    async fn wait_ended(&self, token: &str, run: &str) {
        for _ in 0..500 {
            let (_, report) = self.call(token, &format!("/api/runs/{run}"), None).await;
            if report["status"] == "cancelled" && report["active"] == false {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("run {run} was not cancelled");
    }
}

/// Values that are wrong for a parameter of this type, whoever gives them.
fn wrong_for(kind: &str) -> Vec<String> {
    let mut values = vec![
        "ok\nforged row".to_string(),
        "\u{1b}[2J".to_string(),
        "x".repeat(1 << 20),
    ];
    values.extend(
        match kind {
            "number" => vec!["-1", "1; rm -rf /", "lots"],
            "boolean" => vec!["yes please", "1"],
            "duration" => vec!["forever", "-5m"],
            "choice" => vec!["everything"],
            "url" => vec!["file:///etc/passwd", "javascript:alert(1)"],
            "identifier" => vec!["-rf", "--help", ".hidden", "..", "a/b"],
            "database" => vec!["../store", "x".repeat(64).leak()],
            _ => vec![],
        }
        .into_iter()
        .map(String::from),
    );
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_parameter_of_every_builtin_runbook_is_checked_for_every_role() {
    let sb = Sandbox::new();
    sb.write("lazarus.toml", CONFIG);
    // Files an attacker would aim at: a backup's data and a directory named like a dump.
    let victim = sb.path().join("victim");
    std::fs::create_dir_all(victim.join("important.dump")).unwrap();
    std::fs::write(victim.join("important.lzr"), "backup bytes").unwrap();
    let viewer = token(&sb, "vera", "viewer");
    let operator = token(&sb, "otto", "operator");
    let admin = token(&sb, "ada", "admin");
    let server = Server::start(&sb);
    let seen = Mutex::new(String::new());
    let api = Client {
        http: reqwest::Client::new(),
        base: &server.base,
        seen: &seen,
    };
    let work = sb.state().join("work");

    let (code, listed) = api.call(&viewer, "/api/workflows", None).await;
    assert_eq!(code, StatusCode::OK);
    let builtins: Vec<&Value> = listed["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["source"].as_str().unwrap_or("").starts_with("builtin:"))
        .collect();
    assert!(builtins.len() >= 8, "built-in runbooks: {listed}");

    let mut serial = 0;
    let mut checked = 0;
    for wf in &builtins {
        let name = wf["name"].as_str().unwrap();
        let first_step = wf["steps"][0].as_str().unwrap();
        let params = wf["params"].as_array().unwrap();
        for param in params {
            let pname = param["name"].as_str().unwrap();
            let kind = param["type"].as_str().unwrap_or("");
            assert!(!kind.is_empty(), "{name}.{pname} declares no type");
            let mut cases: Vec<(String, &str)> = wrong_for(kind)
                .into_iter()
                .map(|v| (v, "wrong type"))
                .collect();
            if kind == "path" {
                cases.push((victim.display().to_string(), "outside work"));
                cases.push((format!("{}/../../victim", work.display()), "outside work"));
                cases.push((work.join("mine").display().to_string(), "inside work"));
            }
            for (value, case) in &cases {
                for (role, tok) in [
                    ("viewer", &viewer),
                    ("operator", &operator),
                    ("admin", &admin),
                ] {
                    serial += 1;
                    let id = format!("p{serial}");
                    let mut given = serde_json::Map::new();
                    for required in params.iter().filter(|p| p["required"] == true) {
                        let rname = required["name"].as_str().unwrap();
                        let base = match rname {
                            "to" => "immediate".to_string(),
                            "file" => work.join("in.dump.gz.enc").display().to_string(),
                            _ => format!("db{serial}"),
                        };
                        given.insert(rname.into(), json!(base));
                    }
                    given.insert(pname.into(), json!(value));
                    let body = json!({
                        "workflow": name, "reason": "param matrix", "id": id,
                        "params": given, "halt_before": [first_step],
                    });
                    let (code, answer) = api.call(tok, "/api/runs", Some(body)).await;
                    let may_start = role == "admin"
                        || (role == "operator" && OPERATOR_RUNBOOKS.contains(&name));
                    let expected = if !may_start {
                        StatusCode::FORBIDDEN
                    } else if *case == "wrong type" {
                        StatusCode::BAD_REQUEST
                    } else if *case == "outside work" && role == "operator" {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::CREATED
                    };
                    let shown: String = value.chars().take(40).collect();
                    assert_eq!(
                        code, expected,
                        "{role} starting {name} with {pname}={shown:?} ({kind}, {case}): {answer}"
                    );
                    if code == StatusCode::CREATED {
                        let (code, body) = api
                            .call(&admin, &format!("/api/runs/{id}/cancel"), Some(json!({})))
                            .await;
                        assert_eq!(code, StatusCode::OK, "cancel {id}: {body}");
                        api.wait_ended(&admin, &id).await;
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 500, "only {checked} combinations checked");

    // Run ids that a shell or a directory listing would misread.
    for bad in ["-rf", "--help", ".hidden", "...", ".", "..", "a/b", "x\ny"] {
        let body = json!({
            "workflow": "backup", "reason": "id", "id": bad,
            "params": {"database": "shop"}, "halt_before": ["dump"],
        });
        let (code, answer) = api.call(&operator, "/api/runs", Some(body)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "id {bad:?}: {answer}");
    }
    // A reason is one line of readable size.
    for reason in ["two\nlines", "\u{1b}[2J", &"r".repeat(1 << 20)] {
        let body = json!({
            "workflow": "backup", "reason": reason, "params": {"database": "shop"},
        });
        let (code, answer) = api.call(&operator, "/api/runs", Some(body)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    }

    // Secrets given by an admin are *** to everyone, in every answer and in the audit trail.
    let body = json!({
        "workflow": "disaster-recovery", "reason": "secrets", "id": "sec1",
        "halt_before": ["preflight"],
        "params": {
            "database": "shop",
            "health_url": format!("http://user:{SECRET}@app:8080/health"),
            "k8s_cutover_value": format!("postgres://app:{SECRET}@db/shop"),
        },
    });
    let (code, answer) = api.call(&admin, "/api/runs", Some(body)).await;
    assert_eq!(code, StatusCode::CREATED, "{answer}");
    for tok in [&viewer, &operator, &admin] {
        let (code, report) = api.call(tok, "/api/runs/sec1", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            report["params"]["health_url"], "http://***@app:8080/health",
            "{report}"
        );
        assert_eq!(report["params"]["k8s_cutover_value"], "***");
        api.call(tok, "/api/runs", None).await;
        api.call(tok, "/api/audit", None).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.contains(SECRET), "a secret reached an API answer");
    let audit = sb.ok(&["audit", "--json"]);
    assert!(!audit.contains(SECRET), "a secret reached the audit trail");
    assert!(
        !audit.contains('\u{1b}'),
        "an escape reached the audit trail"
    );

    // Nothing outside the state directory was touched.
    assert!(victim.join("important.dump").is_dir());
    assert_eq!(
        std::fs::read_to_string(victim.join("important.lzr")).unwrap(),
        "backup bytes"
    );
    drop(server);
}

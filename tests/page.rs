//! The web page in a real headless Chromium against a real `lazarus serve` and a real
//! PostgreSQL: sign in, recover a database from a picked backup with a reason and the typed
//! confirmation and watch it succeed, halt and resume another run, preview a PITR plan; a
//! viewer sees no action buttons, and a request forged from the viewer's page gets 403.

mod common;

use std::path::PathBuf;

use common::pg::Pg;
use common::serve::{Server, token};
use common::webdriver::Browser;
use common::{Sandbox, text};
use serde_json::json;

const SLOW: &str = r#"
name = "slow"
description = "two commands with a pause between"
[[steps]]
id = "first"
activity = "command"
with = { shell = 'sleep 6; echo first >> log' }

[[steps]]
id = "second"
activity = "command"
with = { shell = 'echo second >> log' }
"#;

const GATE: &str = r#"
name = "gate"
description = "an approval"
[[steps]]
id = "gate"
activity = "approve"
with = { prompt = "go on?" }
"#;

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artifacts")
        .join(name)
}

async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/")).await;
    browser.type_into("#token", token).await;
    browser.click("#login-submit").await;
    browser.wait_for("#identity").await;
}

async fn wait_status(browser: &Browser, status: &str) {
    browser
        .wait_for(&format!("#run-top [data-status=\"{status}\"]"))
        .await;
}

/// Presses Start on a PITR form whose plan was not previewed (or changed since): the page
/// must refuse and say why.
async fn start_refused_until_previewed(browser: &Browser, database: &str) {
    browser.type_into("#rec-reason", "pitr preview").await;
    browser.type_into("#rec-confirm", database).await;
    browser.click("#rec-start").await;
    browser.wait_for("#flash:not([hidden])").await;
    let said = browser.text("#flash").await;
    assert!(said.contains("Preview the plan first"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_recovers_from_the_page_and_a_viewer_can_only_look() {
    let pg = Pg::start();
    pg.load_sample("shop", 1);
    let sb = Sandbox::new();
    let keys = sb.path().join("keys");
    sb.ok(&["key", "generate", "--file", keys.to_str().unwrap()]);
    sb.write(
        "lazarus.toml",
        &format!(
            "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n",
            keys.display(),
            pg.port()
        ),
    );
    sb.write("workflows/slow.toml", SLOW);
    let out = sb.run(&["backup", "--database", "shop"]);
    assert!(out.status.success(), "{}", text(&out));
    let admin = token(&sb, "ada", "admin");
    let viewer = token(&sb, "vera", "viewer");
    let server = Server::start(&sb);
    let browser = Browser::start().await;

    // Sign in as an admin.
    sign_in(&browser, &server.base, &admin).await;
    assert_eq!(browser.text("#identity").await, "ada (admin)");

    // Recover shop from the backup picked in the list, beside the live database.
    browser.goto(&format!("{}/#recover", server.base)).await;
    browser.type_into("#rec-database", "shop").await;
    browser.choose("#rec-source", "backup").await;
    browser
        .wait_for("#rec-backup option[value^=\"shop-\"]")
        .await;
    let listed = browser.text("#rec-backup").await;
    assert!(
        listed.contains("UNVERIFIED") && listed.contains("old"),
        "{listed}"
    );
    browser.choose("#rec-cutover", "none").await;
    browser
        .type_into("#rec-reason", "browser test: restore beside")
        .await;
    // The confirmation must be the database's name.
    browser.type_into("#rec-confirm", "shap").await;
    browser.click("#rec-start").await;
    browser.wait_for("#flash:not([hidden])").await;
    assert!(
        browser
            .text("#flash")
            .await
            .contains("Type the database name")
    );
    browser.type_into("#rec-confirm", "shop").await;
    browser.click("#rec-start").await;
    browser.wait_for("#run-id").await;
    let run = browser.text("#run-id").await;
    assert!(run.starts_with("disaster-recovery"), "{run}");
    wait_status(&browser, "succeeded").await;
    browser
        .wait_for("#steps tr[data-step=\"restore\"] [data-status=\"completed\"]")
        .await;
    browser.screenshot(&artifact("run-page.png")).await;
    let report = sb.status(&run);
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["operator"], "ada");
    assert_eq!(report["reason"], "browser test: restore beside");
    let restored = report["results"]["restored_database"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        pg.psql(&restored, "SELECT count(*) FROM notes"),
        pg.psql("shop", "SELECT count(*) FROM notes")
    );

    // Halt a running run at its next boundary, then resume it, from its page.
    let http = reqwest::Client::new();
    let started: serde_json::Value = http
        .post(format!("{}/api/runs", server.base))
        .bearer_auth(&admin)
        .json(&json!({"workflow": "slow", "reason": "halt from the page", "id": "slow1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(started["run"], "slow1");
    browser.goto(&format!("{}/#run/slow1", server.base)).await;
    browser.click("#action-halt").await;
    browser.click("#dialog-ok").await;
    wait_status(&browser, "halted").await;
    browser.wait_for("#next-action").await;
    browser.click("#action-resume").await;
    browser.click("#dialog-ok").await;
    wait_status(&browser, "succeeded").await;
    assert_eq!(sb.read("log"), "first\nsecond\n");

    // Every dialog is clicked through. Roll back: its reason field is a field, and the
    // reason reaches the run.
    browser.click("#action-roll-back").await;
    browser.wait_for("#dialog-reason").await;
    browser
        .type_into("#dialog-reason", "rolled back from the page")
        .await;
    browser.type_into("#dialog-confirm", "slow1").await;
    browser.click("#dialog-ok").await;
    wait_status(&browser, "rolled_back").await;
    assert_eq!(
        sb.status("slow1")["rollback"]["reason"],
        "rolled back from the page"
    );
    // Approve, with a comment kept with the approval.
    sb.write("workflows/gate.toml", GATE);
    let started: serde_json::Value = http
        .post(format!("{}/api/runs", server.base))
        .bearer_auth(&admin)
        .json(&json!({"workflow": "gate", "reason": "approve from the page", "id": "gate1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(started["run"], "gate1", "{started}");
    browser.goto(&format!("{}/#run/gate1", server.base)).await;
    wait_status(&browser, "waiting_approval").await;
    browser.click("#action-approve").await;
    browser.wait_for("#dialog-comment").await;
    browser
        .type_into("#dialog-comment", "checked the restore")
        .await;
    browser.click("#dialog-ok").await;
    wait_status(&browser, "succeeded").await;
    let gate = sb.status("gate1");
    let approval = &gate["steps"][0]["approval"];
    assert_eq!(approval["comment"], "checked the restore", "{gate}");
    // Cancel, after Esc has closed a first dialog without doing anything.
    http.post(format!("{}/api/runs", server.base))
        .bearer_auth(&admin)
        .json(&json!({"workflow": "gate", "reason": "cancel from the page", "id": "gate2"}))
        .send()
        .await
        .unwrap();
    browser.goto(&format!("{}/#run/gate2", server.base)).await;
    wait_status(&browser, "waiting_approval").await;
    browser.click("#action-cancel").await;
    browser.wait_for("#dialog-confirm").await;
    browser.press_escape("#dialog-confirm").await;
    assert_eq!(browser.count("#dialog").await, 0, "Esc closes the dialog");
    assert_eq!(sb.status("gate2")["status"], "waiting_approval");
    browser.click("#action-cancel").await;
    browser.type_into("#dialog-confirm", "gate2").await;
    browser.click("#dialog-ok").await;
    wait_status(&browser, "cancelled").await;

    // A PITR plan is previewed before anything can start; without an archive it says why.
    browser.goto(&format!("{}/#recover", server.base)).await;
    browser.type_into("#rec-database", "shop").await;
    browser.choose("#rec-source", "time").await;
    browser.type_into("#rec-to", "immediate").await;
    start_refused_until_previewed(&browser, "shop").await;
    browser.click("#rec-preview").await;
    let refusal = browser.text("#plan-error").await;
    assert!(refusal.to_lowercase().contains("base backup"), "{refusal}");
    let runs_before = sb.ok(&["runs", "--json"]);

    // A viewer: no buttons, no recover form, and a forged request is refused.
    browser.click("#logout").await;
    sign_in(&browser, &server.base, &viewer).await;
    browser.goto(&format!("{}/#run/slow1", server.base)).await;
    wait_status(&browser, "rolled_back").await;
    assert_eq!(browser.count("#actions button").await, 0);
    browser.goto(&format!("{}/#recover", server.base)).await;
    browser.wait_for("main .next").await;
    assert_eq!(browser.count("#recover").await, 0);
    let forged = browser
        .script(
            "return fetch('/api/runs/slow1/rollback', {method: 'POST', headers: {'Authorization': 'Bearer ' + sessionStorage.getItem('lazarus.token'), 'Content-Type': 'application/json'}, body: JSON.stringify({reason: 'forged'})}).then(r => r.status)",
            json!([]),
        )
        .await;
    assert_eq!(forged, 403);
    // Without the tab's token (another site's page has none), nothing is let in.
    let anonymous = browser
        .script(
            "return fetch('/api/runs/slow1/cancel', {method: 'POST'}).then(r => r.status)",
            json!([]),
        )
        .await;
    assert_eq!(anonymous, 401);
    assert_eq!(
        sb.ok(&["runs", "--json"]),
        runs_before,
        "no run started or changed"
    );

    browser.quit().await;
    server.stop();
}

/// The PITR preview of the Recover form with a real archive: the plan names the base backup,
/// the chain and the covered window before the start button will do anything, and it is the
/// plan `lazarus pitr plan` makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_previews_a_pitr_plan_with_its_window_before_starting() {
    let archiving = common::wal::Archiving::start(&[]);
    archiving.psql("CREATE TABLE ticks (id int); INSERT INTO ticks VALUES (1)");
    let sb = Sandbox::new();
    sb.write(
        "lazarus.toml",
        &std::fs::read_to_string(&archiving.config).unwrap(),
    );
    let workdir = format!("workdir={}", sb.path().join("work").display());
    sb.ok(&[
        "run",
        "base-backup",
        "--reason",
        "page test",
        "--param",
        &workdir,
    ]);
    archiving.psql("INSERT INTO ticks VALUES (2)");
    let target = archiving.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    archiving.psql("INSERT INTO ticks VALUES (3)");
    archiving.switch_and_wait();
    let admin = token(&sb, "ada", "admin");
    let server = Server::start(&sb);
    let browser = Browser::start().await;
    sign_in(&browser, &server.base, &admin).await;

    browser.goto(&format!("{}/#recover", server.base)).await;
    browser.type_into("#rec-database", "postgres").await;
    browser.choose("#rec-source", "time").await;
    browser.type_into("#rec-to", &target).await;
    browser.click("#rec-preview").await;
    browser.wait_for("#plan-ok").await;
    let shown = browser.text("#plan-ok").await;
    let cli: serde_json::Value =
        serde_json::from_str(&sb.ok(&["pitr", "plan", "--to", &target, "--json"]))
            .unwrap_or_else(|e| panic!("pitr plan --json: {e}"));
    let backup = cli["backup"]["id"].as_str().unwrap();
    assert!(shown.contains(&format!("base backup {backup}")), "{shown}");
    assert!(
        shown.contains(&format!("{} WAL segments", cli["segments"])),
        "{shown}\n{cli}"
    );
    assert!(shown.contains("Covered window:"), "{shown}");
    assert!(
        shown.contains("Changes after the target are lost"),
        "{shown}"
    );
    browser.screenshot(&artifact("pitr-preview.png")).await;

    // Changing the time throws the preview away: nothing starts on a plan not shown.
    let runs_before = sb.ok(&["runs", "--json"]);
    browser.type_into("#rec-to", "immediate").await;
    assert_eq!(browser.count("#plan-ok").await, 0);
    start_refused_until_previewed(&browser, "postgres").await;
    assert_eq!(
        sb.ok(&["runs", "--json"]),
        runs_before,
        "no run started on a plan not shown"
    );

    browser.quit().await;
    server.stop();
}

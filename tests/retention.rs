//! `lazarus expire` on real backups of a real PostgreSQL, time-shifted: it keeps the
//! recovery window, the minimum and the newest VERIFIED backup, removes the rest from the
//! store and the catalog as a journaled run, and a dry run removes nothing; then the
//! copies of ended runs' journals older than their window go from the store.

mod common;

use common::pg::Pg;
use common::{Sandbox, text};
use serde_json::Value;

fn backups(sb: &Sandbox) -> Vec<Value> {
    sb.ok(&["catalog", "sync"]);
    let listed: Value = serde_json::from_str(&sb.ok(&["backups", "--json"])).unwrap();
    listed.as_array().cloned().unwrap_or_default()
}

/// Moves a backup's times `days` into the past, in its manifest in the store.
fn age(sb: &Sandbox, id: &str, days: i64) {
    let path = sb
        .path()
        .join("store/backups/shop")
        .join(format!("{id}.manifest.json"));
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let then = (chrono::Utc::now() - chrono::Duration::days(days))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    manifest["created_at"] = Value::from(then.clone());
    manifest["finished_at"] = Value::from(then);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

#[test]
fn expire_keeps_the_window_the_minimum_and_the_newest_verified_backup() {
    let pg = Pg::start();
    pg.load_sample("shop", 1);
    let sb = Sandbox::new();
    common::pg::write_config(&sb, &pg, "");
    let work = format!("workdir={}", sb.path().join("work").display());

    // Without a policy, expire refuses and removes nothing.
    sb.ok(&["backup", "--database", "shop", "-p", &work]);
    let refused = sb.run(&["expire"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("[retention]"), "{}", text(&refused));

    std::thread::sleep(std::time::Duration::from_millis(1100));
    sb.ok(&["backup", "--database", "shop", "-p", &work]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sb.ok(&["backup", "--database", "shop", "-p", &work]);
    let ids: Vec<String> = backups(&sb)
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    // The middle one is drilled (VERIFIED); then the first two are made 40 and 20 days old.
    sb.ok(&[
        "drill",
        "--database",
        "shop",
        "--backup",
        &ids[1],
        "-p",
        &work,
    ]);
    age(&sb, &ids[0], 40);
    age(&sb, &ids[1], 20);
    common::pg::write_config(
        &sb,
        &pg,
        "[retention]\nrecovery_window = \"7d\"\nmin_backups = 1\nruns_window = \"1s\"\n",
    );

    // A dry run says what would go, and removes nothing.
    let dry = sb.run(&["expire", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains(&ids[0]), "{}", text(&dry));
    assert_eq!(backups(&sb).len(), 3);
    assert!(
        sb.path()
            .join("store/backups/shop")
            .join(format!("{}.dump.lzr", ids[0]))
            .exists()
    );

    // The real run removes the 40-day-old backup from the store and the catalog, keeps
    // the 20-day-old one (the newest VERIFIED) and today's (inside the window).
    // (Every run so far ends more than runs_window before this one decides.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = sb.run(&["expire", "--reason", "monthly retention"]);
    assert!(out.status.success(), "{}", text(&out));
    let left: Vec<String> = backups(&sb)
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![ids[1].clone(), ids[2].clone()]);
    for suffix in [".dump.lzr", ".manifest.json"] {
        assert!(
            !sb.path()
                .join("store/backups/shop")
                .join(format!("{}{suffix}", ids[0]))
                .exists(),
            "{}{suffix} is gone from the store",
            ids[0]
        );
    }
    // It was a journaled run like any other.
    let runs = sb.ok(&["runs", "--json"]);
    assert!(runs.contains("\"expire\""), "{runs}");
    assert!(runs.contains("monthly retention"), "{runs}");

    // The copies of runs that ended more than runs_window ago went from the store: only
    // this expire run's own copy is left (it was still going when it decided); this
    // host's journal keeps them all.
    let listed: Value = serde_json::from_str(&sb.ok(&["runs", "--json"])).unwrap();
    let this = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "monthly retention")
        .expect("the expire run")["id"]
        .clone();
    let report = sb.status(this.as_str().unwrap());
    let pruned = &Sandbox::step(&report, "runs")["output"];
    assert!(
        pruned["runs_removed"] == 6,
        "the backups, the drill and the two earlier expires: {pruned}"
    );
    let in_store: Value =
        serde_json::from_str(&sb.ok(&["runs", "--from-stores", "--json"])).unwrap();
    let ids: Vec<&Value> = in_store
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, vec![&this], "{in_store}");
    assert!(listed.as_array().unwrap().len() >= 6, "{listed}");
}

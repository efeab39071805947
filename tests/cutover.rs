//! The pgbouncer cut-over edits a file that belongs to the user: on a real pgbouncer, the
//! rewrite keeps pgbouncer.ini's owner, group, mode and every other byte, and a file that
//! cannot be rewritten is refused before traffic is paused.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::pg::{Bouncer, Pg};
use common::{Sandbox, text};

const WORKFLOW: &str = r#"name = "cut"
target = "shop"
on_failure = "halt"

[params]
ini = { required = true }
port = { required = true }
dbname = { required = true }

[[steps]]
id = "cutover"
activity = "pgbouncer"
with = { ini = "${params.ini}", database = "shop", dbname = "${params.dbname}", admin_port = "${params.port}", admin_user = "postgres" }
"#;

/// pgbouncer.ini as an operator leaves it: comments, CRLF line endings and no newline at
/// the end, which a rewrite must keep.
fn operator_ini(bouncer: &Bouncer) -> String {
    let generated = std::fs::read_to_string(&bouncer.ini).unwrap();
    let mut ini = String::from("; managed by hand; keep this comment\r\n");
    ini.push_str(&generated.replace('\n', "\r\n"));
    ini.push_str(";; last line, no newline");
    ini
}

fn cut(sb: &Sandbox, bouncer: &Bouncer, run: &str, dbname: &str) -> std::process::Output {
    let workflow = sb.write("cut.toml", WORKFLOW);
    sb.run(&[
        "run",
        workflow.to_str().unwrap(),
        "--reason",
        "cut-over test",
        "--id",
        run,
        "-p",
        &format!("ini={}", bouncer.ini.display()),
        "-p",
        &format!("port={}", bouncer.port),
        "-p",
        &format!("dbname={dbname}"),
    ])
}

#[test]
fn the_cutover_keeps_the_ini_owner_mode_and_every_other_byte() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("postgres", "CREATE DATABASE shop_restored");
    let bouncer = Bouncer::start(pg.port(), "shop");
    let original = operator_ini(&bouncer);
    let owner = std::fs::metadata(&bouncer.ini).unwrap();
    let sb = Sandbox::new();
    for (round, mode) in [0o640u32, 0o600].into_iter().enumerate() {
        std::fs::write(&bouncer.ini, &original).unwrap();
        std::fs::set_permissions(&bouncer.ini, std::fs::Permissions::from_mode(mode)).unwrap();
        let run = format!("cut{round}");
        let out = cut(&sb, &bouncer, &run, "shop_restored");
        assert!(out.status.success(), "mode {mode:o}: {}", text(&out));
        let after = std::fs::metadata(&bouncer.ini).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode() & 0o7777),
            (owner.uid(), owner.gid(), mode),
            "owner, group and mode {mode:o} kept"
        );
        let expected = original.replace("dbname=shop\r\n", "dbname=shop_restored\r\n");
        assert_eq!(
            std::fs::read_to_string(&bouncer.ini).unwrap(),
            expected,
            "only the entry changed"
        );
        assert_eq!(
            pg.psql_at(bouncer.port, "shop", "SELECT current_database()"),
            "shop_restored",
            "pgbouncer (running as the file's owner) read the new file"
        );
        sb.ok(&["rollback", &run, "--reason", "back"]);
        assert_eq!(
            std::fs::read_to_string(&bouncer.ini).unwrap(),
            original,
            "the rollback puts back every byte"
        );
        let back = std::fs::metadata(&bouncer.ini).unwrap();
        assert_eq!(
            (back.uid(), back.gid(), back.mode() & 0o7777),
            (owner.uid(), owner.gid(), mode)
        );
        assert_eq!(
            pg.psql_at(bouncer.port, "shop", "SELECT current_database()"),
            "shop"
        );
    }
}

#[test]
fn a_read_only_ini_is_refused_before_traffic_is_paused() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("postgres", "CREATE DATABASE shop_restored");
    let bouncer = Bouncer::start(pg.port(), "shop");
    let original = std::fs::read(&bouncer.ini).unwrap();
    std::fs::set_permissions(&bouncer.ini, std::fs::Permissions::from_mode(0o444)).unwrap();
    let sb = Sandbox::new();
    let out = cut(&sb, &bouncer, "ro", "shop_restored");
    assert!(!out.status.success());
    let error = sb.status("ro")["error"].as_str().unwrap_or("").to_string();
    assert!(error.contains("is read-only (mode 0444)"), "{error}");
    assert!(error.contains("nothing was changed"), "{error}");
    assert_eq!(std::fs::read(&bouncer.ini).unwrap(), original);
    assert_eq!(
        std::fs::metadata(&bouncer.ini).unwrap().mode() & 0o7777,
        0o444
    );
    assert_eq!(
        pg.psql_at(bouncer.port, "shop", "SELECT current_database()"),
        "shop",
        "traffic still flows to the live database"
    );
}

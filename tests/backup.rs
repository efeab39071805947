//! `lazarus backup` on a real PostgreSQL: a backup that lands in fewer stores than are
//! configured succeeds, but says so loudly — on stderr, in its exit status and in `backups`.

mod common;

use common::pg::Pg;
use common::{Sandbox, text};

#[test]
fn a_backup_missing_from_a_store_says_so_in_its_exit_status_and_listing() {
    let pg = Pg::start();
    pg.load_sample("shop", 1);
    let sb = Sandbox::new();
    let keys = sb.path().join("keys");
    sb.ok(&["key", "generate", "--file", keys.to_str().unwrap()]);
    // "down" is an S3 store nobody listens on.
    let config = sb.write(
        "lazarus.toml",
        &format!(
            "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"local-store\"\n\n[[stores]]\nname = \"down\"\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nregion = \"us-east-1\"\nbucket = \"backups\"\naccess_key_id = \"a\"\nsecret_access_key = \"b\"\n",
            keys.display(),
            pg.port()
        ),
    );
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = sb.run(&["backup", "--database", "shop"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("landed in 1 of 2 stores (local); missing from down"),
        "{stderr}"
    );
    let listing = sb.ok(&["backups"]);
    assert!(listing.contains("NOT IN down"), "{listing}");
    let json: serde_json::Value = serde_json::from_str(&sb.ok(&["backups", "--json"])).unwrap();
    let backup = &json.as_array().unwrap()[0];
    assert_eq!(backup["copies"], serde_json::json!(["local"]));
    assert!(
        backup["missing_copies"][0]
            .as_str()
            .unwrap()
            .starts_with("down ("),
        "{backup}"
    );
}

#[test]
fn a_database_name_that_looks_like_a_connection_string_is_only_a_name() {
    let pg = Pg::start();
    pg.load_sample("shop", 1);
    let sb = Sandbox::new();
    let keys = sb.path().join("keys");
    sb.ok(&["key", "generate", "--file", keys.to_str().unwrap()]);
    sb.write(
        "lazarus.toml",
        &format!(
            "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"local-store\"\n",
            keys.display(),
            pg.port()
        ),
    );
    // Where an attacker would like the password sent.
    let attacker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    attacker.set_nonblocking(true).unwrap();
    let port = attacker.local_addr().unwrap().port();
    let hostile = format!("host=127.0.0.1 port={port} dbname=shop");
    let out = sb.run(&["backup", "--database", &hostile]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        attacker.accept().is_err(),
        "Lazarus connected to the host named inside a database name"
    );
    let said = text(&out);
    assert!(said.contains("does not exist"), "{said}");
    // The name was looked up as a name, on the configured server: shop itself still backs up.
    let out = sb.run(&["backup", "--database", "shop"]);
    assert!(out.status.success(), "{}", text(&out));
}

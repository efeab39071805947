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

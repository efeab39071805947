//! A `pg_dump -Fc` written to a pipe gets the same data offsets pg_dump writes when it can
//! seek, so `pg_restore --jobs` goes straight to each table.

mod common;

use std::process::{Command, Stdio};

use common::pg::Pg;
use lazarus::pg::Tools;
use lazarus::pg::dump_toc::fill_data_offsets;

#[test]
fn streamed_dump_gets_the_offsets_pg_dump_writes_to_a_file() {
    let pg = Pg::start();
    pg.load_sample("shop", 1);
    let tools = Tools::new(None);
    let dir = tempfile::tempdir().unwrap();
    let seekable = dir.path().join("seekable.dump");
    let streamed = dir.path().join("streamed.dump");
    let mut cmd = Command::new(tools.path("pg_dump").unwrap());
    pg.env(&mut cmd);
    assert!(
        cmd.args(["-Fc", "-Z0", "-f"])
            .arg(&seekable)
            .arg("shop")
            .status()
            .unwrap()
            .success()
    );
    let mut cmd = Command::new(tools.path("pg_dump").unwrap());
    pg.env(&mut cmd);
    let out = cmd
        .args(["-Fc", "-Z0", "shop"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&streamed, &out.stdout).unwrap();

    let filled = fill_data_offsets(&streamed).unwrap();
    assert!(filled >= 4, "filled {filled}");
    // Same bytes as pg_dump's own seekable output, apart from the creation time in the header.
    let a = std::fs::read(&seekable).unwrap();
    let b = std::fs::read(&streamed).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a[100..] == b[100..], "offsets differ from pg_dump's");
    // Idempotent, and a seekable archive is left alone.
    assert_eq!(fill_data_offsets(&streamed).unwrap(), 0);
    assert_eq!(fill_data_offsets(&seekable).unwrap(), 0);

    // And it restores in parallel to the same content.
    pg.psql("postgres", "CREATE DATABASE copy TEMPLATE template0");
    let mut cmd = Command::new(tools.path("pg_restore").unwrap());
    pg.env(&mut cmd);
    let out = cmd
        .args(["--jobs=2", "--exit-on-error", "--dbname=copy"])
        .arg(&streamed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.checksums("shop"), pg.checksums("copy"));
}

#[test]
fn something_that_is_not_a_dump_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    std::fs::write(&path, b"hello world, not a dump").unwrap();
    let err = fill_data_offsets(&path).unwrap_err().to_string();
    assert!(err.contains("not a pg_dump custom-format archive"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"hello world, not a dump");
}

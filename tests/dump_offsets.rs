//! A `pg_dump -Fc` written to a pipe gets the same data offsets pg_dump writes when it can
//! seek, so `pg_restore --jobs` goes straight to each table.

mod common;

use std::process::Command;

use common::pg::Pg;
use lazarus::pg::Tools;
use lazarus::pg::archive_layout::ArchiveLayout;
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
    std::fs::write(&streamed, pg.streamed_dump("shop")).unwrap();

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

/// pg_restore into a new database; panics with pg_restore's errors.
fn restore(pg: &Pg, archive: &std::path::Path, database: &str, jobs: u32) {
    pg.psql(
        "postgres",
        &format!("CREATE DATABASE {database} TEMPLATE template0"),
    );
    let mut cmd = Command::new(Tools::new(None).path("pg_restore").unwrap());
    pg.env(&mut cmd);
    let out = cmd
        .arg(format!("--jobs={jobs}"))
        .args(["--exit-on-error", "--dbname", database])
        .arg(archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore -j{jobs}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn big_tables_cut_into_parts_restore_identically_with_their_keys_and_indexes() {
    let pg = Pg::start();
    pg.load_sample("shop", 2);
    pg.psql(
        "shop",
        "CREATE INDEX accounts_by_branch ON pgbench_accounts (bid); \
         ALTER TABLE pgbench_accounts ADD FOREIGN KEY (bid) REFERENCES pgbench_branches; \
         UPDATE pgbench_accounts SET filler = E'line\\nbreak\\ttab' WHERE aid % 1000 = 0",
    );
    let tools = Tools::new(None);
    let dump = pg.streamed_dump("shop");
    // Parts of 1 MiB: pgbench_accounts (200,000 rows, ~20 MB) becomes many.
    let dir = tempfile::tempdir().unwrap();
    let laid_out = dir.path().join("parts.dump");
    let mut layout = ArchiveLayout::new(std::fs::File::create(&laid_out).unwrap(), 1 << 20);
    for piece in dump.chunks(100_003) {
        std::io::Write::write_all(&mut layout, piece).unwrap();
    }
    let (file, finished) = layout.finish().unwrap();
    let toc = finished
        .toc
        .clone()
        .expect("an archive this module lays out");
    std::os::unix::fs::FileExt::write_all_at(&file, &toc, 0).unwrap();
    assert!(finished.split_tables >= 1);
    assert!(finished.parts_added >= 10, "{finished:?}");

    let mut cmd = Command::new(tools.path("pg_restore").unwrap());
    let listing = cmd.arg("-l").arg(&laid_out).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let parts = listing
        .lines()
        .filter(|l| l.contains("TABLE DATA PART public pgbench_accounts"))
        .count();
    assert_eq!(
        parts,
        finished.parts_added + finished.split_tables,
        "{listing}"
    );

    // In parallel (parts side by side) and in one job (parts in order): same content, and
    // the key, index and foreign key built after the data.
    restore(&pg, &laid_out, "parallel", 4);
    restore(&pg, &laid_out, "serial", 1);
    let original = pg.checksums("shop");
    assert_eq!(original, pg.checksums("parallel"));
    assert_eq!(original, pg.checksums("serial"));
    let schema = "SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'pgbench_accounts'";
    let constraints = "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'pgbench_accounts'::regclass";
    for db in ["parallel", "serial"] {
        assert_eq!(pg.psql("shop", schema), pg.psql(db, schema));
        assert_eq!(pg.psql("shop", constraints), pg.psql(db, constraints));
    }
}

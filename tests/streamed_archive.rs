//! The pieces of a streamed restore against real pg_dump and pg_restore: the data blocks found
//! while a dump streams past, and the directory archive rewritten from its table of contents,
//! restore the database identically — keys, indexes, foreign keys, sequences and
//! materialized views included. (The named pipes around them are tested in tests/recovery.rs.)

mod common;

use std::path::Path;
use std::process::Command;

use common::pg::Pg;
use lazarus::pg::Tools;
use lazarus::pg::dir_archive;
use lazarus::pg::dump_blocks::{BlockRows, BlockScanner, DataBlock};

fn scan(dump: &[u8]) -> Vec<DataBlock> {
    let mut scanner = BlockScanner::new();
    // Odd pieces, as a pipe hands them over.
    for piece in dump.chunks(65_537) {
        scanner.feed(piece);
    }
    scanner.finish().expect("a dump this build reads")
}

fn pg_restore(pg: &Pg, args: &[&str], archive: &Path) -> String {
    let mut cmd = Command::new(Tools::new(None).path("pg_restore").unwrap());
    pg.env(&mut cmd);
    let out = cmd.args(args).arg(archive).output().unwrap();
    assert!(
        out.status.success(),
        "pg_restore {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn data_blocks_found_while_streaming_restore_as_a_directory_archive() {
    let pg = Pg::start();
    pg.load_sample("shop", 2);
    pg.psql(
        "shop",
        "CREATE INDEX accounts_by_branch ON pgbench_accounts (bid); \
         ALTER TABLE pgbench_accounts ADD FOREIGN KEY (bid) REFERENCES pgbench_branches; \
         UPDATE pgbench_accounts SET filler = E'line\\nbreak\\ttab\\\\slash' WHERE aid % 1000 = 0; \
         CREATE TABLE empty (id int); \
         CREATE SEQUENCE tickets START 40; SELECT nextval('tickets'); \
         CREATE MATERIALIZED VIEW busy_branches AS SELECT bid, count(*) FROM pgbench_accounts GROUP BY bid",
    );
    let dump = pg.streamed_dump("shop");
    let blocks = scan(&dump);

    // The blocks tile the archive after its table of contents, to its last byte.
    let mut at = blocks.iter().map(|b| b.offset).min().unwrap();
    for block in &blocks {
        assert_eq!(block.offset, at, "blocks are contiguous");
        assert_eq!(dump[block.offset as usize], 1, "a data block starts there");
        at += block.length;
    }
    assert_eq!(at, dump.len() as u64);

    let head = &dump[..blocks[0].offset as usize];
    let dir_archive = dir_archive::rewrite(head, &blocks).unwrap();
    assert_eq!(dir_archive.files.len(), blocks.len());
    assert_eq!(
        dir_archive.files[0].block.length,
        blocks.iter().map(|b| b.length).max().unwrap(),
        "the biggest table's data comes first"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("toc.dat"), &dir_archive.toc).unwrap();
    for file in &dir_archive.files {
        let block = file.block;
        let out = std::fs::File::create(dir.path().join(&file.name)).unwrap();
        let mut rows = BlockRows::new(out, block, dir_archive.int_size);
        let bytes = &dump[block.offset as usize..(block.offset + block.length) as usize];
        for piece in bytes.chunks(4099) {
            rows.feed(piece).unwrap();
        }
        rows.finish().unwrap();
    }

    let listing = pg_restore(&pg, &["-l"], dir.path());
    assert!(listing.contains("Format: DIRECTORY"), "{listing}");
    let data_entries = listing
        .lines()
        .filter(|l| l.contains(" TABLE DATA "))
        .count();
    assert_eq!(data_entries, blocks.len(), "{listing}");

    for (database, jobs) in [("parallel", "--jobs=3"), ("serial", "--jobs=1")] {
        pg.psql(
            "postgres",
            &format!("CREATE DATABASE {database} TEMPLATE template0"),
        );
        pg_restore(
            &pg,
            &[jobs, "--exit-on-error", &format!("--dbname={database}")],
            dir.path(),
        );
    }
    let original = pg.checksums("shop");
    let sequence = "SELECT last_value FROM tickets";
    let view = "SELECT string_agg(bid || ':' || count, ',' ORDER BY bid) FROM busy_branches";
    let indexes = "SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'";
    let constraints = "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE connamespace = 'public'::regnamespace";
    for database in ["parallel", "serial"] {
        assert_eq!(pg.checksums(database), original, "{database}");
        for query in [sequence, view, indexes, constraints] {
            assert_eq!(pg.psql(database, query), pg.psql("shop", query), "{query}");
        }
    }
}

#[test]
fn large_objects_are_left_to_the_written_out_restore() {
    let pg = Pg::start();
    pg.psql("postgres", "CREATE DATABASE blobs");
    pg.psql(
        "blobs",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1); SELECT lo_from_bytea(0, 'hello')",
    );
    let dump = pg.streamed_dump("blobs");
    let mut scanner = BlockScanner::new();
    scanner.feed(&dump);
    assert!(
        scanner.finish().is_none(),
        "no data blocks recorded: the backup restores from a written-out archive"
    );
}

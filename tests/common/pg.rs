//! Real PostgreSQL and pgbouncer for tests: a throwaway cluster with sample data, and a
//! pgbouncer in front of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use lazarus::pg::cluster::{Cluster, free_port};
use lazarus::pg::{Tools, running_as_root};

/// A running cluster.
pub struct Pg {
    pub cluster: Cluster,
}

/// The majors every test of the core runs on.
pub const MAJORS: [u32; 4] = [15, 16, 17, 18];

/// The bin directory of a PostgreSQL major's tools: Debian's for 15, else a toolkit that
/// scripts/setup.sh installs under /opt/lazarus-pg/N (LAZARUS_PG_ROOT moves it).
pub fn pg_bin(major: u32) -> PathBuf {
    let dir = if major == 15 {
        PathBuf::from("/usr/lib/postgresql/15/bin")
    } else {
        std::env::var_os("LAZARUS_PG_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/opt/lazarus-pg"))
            .join(major.to_string())
            .join("bin")
    };
    assert!(
        dir.join("postgres").is_file() && dir.join("pg_dump").is_file(),
        "this test needs PostgreSQL {major}'s tools in {}: run scripts/setup.sh",
        dir.display()
    );
    dir
}

/// Every major's bin directory, as one `bin_dir` (15 first: Lazarus must pick by version).
pub fn all_pg_bins() -> String {
    MAJORS
        .iter()
        .map(|m| pg_bin(*m).display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

impl Pg {
    /// initdb + start; fails naming the tools if PostgreSQL is not installed.
    pub fn start() -> Pg {
        Self::start_with_tools(Tools::new(None))
    }

    /// A cluster of one PostgreSQL major version (see [`pg_bin`]).
    pub fn start_version(major: u32) -> Pg {
        Self::start_with_tools(Tools::new(Some(pg_bin(major))))
    }

    fn start_with_tools(tools: Tools) -> Pg {
        let mut cluster = Cluster::create(tools, "test").unwrap_or_else(|e| {
            panic!("this test needs PostgreSQL's server binaries (Debian: apt-get install postgresql): {e}")
        });
        cluster
            .configure(&["fsync = off".into(), "max_connections = 50".into()])
            .unwrap();
        cluster
            .start()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
        Pg { cluster }
    }

    pub fn port(&self) -> u16 {
        self.cluster.port
    }

    /// libpq environment for a command.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port().to_string())
            .env("PGUSER", "postgres")
            .env_remove("PGDATABASE")
            .env_remove("PGPASSWORD");
    }

    /// Runs SQL and returns psql's unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.psql_at(self.port(), database, sql)
    }

    /// Runs SQL on a port (the server's, or pgbouncer's).
    pub fn psql_at(&self, port: u16, database: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &port.to_string(), "-d", database, "-c", sql])
            .output()
            .expect("this test needs psql (Debian: apt-get install postgresql-client)");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A pgbench-style database plus a table of random md5 text, analysed.
    pub fn load_sample(&self, database: &str, scale: u32) {
        self.psql("postgres", &format!("CREATE DATABASE {database}"));
        let mut cmd = Command::new(
            self.cluster
                .tools()
                .bin_dir
                .as_ref()
                .map_or_else(|| PathBuf::from("pgbench"), |d| d.join("pgbench")),
        );
        self.env(&mut cmd);
        let out = cmd
            .args(["-i", "-q", "-s", &scale.to_string(), database])
            .output()
            .expect("this test needs pgbench (Debian: apt-get install postgresql-contrib)");
        assert!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.psql(
            database,
            "CREATE TABLE notes (id int primary key, body text); \
             INSERT INTO notes SELECT g, md5(g::text || random()::text) FROM generate_series(1, 20000) g; \
             ANALYZE",
        );
    }

    /// `pg_dump -Fc -Z0` of `database` written to a pipe, as Lazarus's backups take it.
    pub fn streamed_dump(&self, database: &str) -> Vec<u8> {
        let mut cmd = Command::new(Tools::new(None).path("pg_dump").unwrap());
        self.env(&mut cmd);
        let out = cmd
            .args(["-Fc", "-Z0", database])
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// md5 of each table's rows in a fixed order: equal checksums, identical content.
    pub fn checksums(&self, database: &str) -> BTreeMap<String, String> {
        let tables = self.psql(
            database,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        );
        tables
            .lines()
            .map(|t| {
                let sum = self.psql(
                    database,
                    &format!("SELECT md5(string_agg(x::text, '' ORDER BY x::text)) FROM {t} x"),
                );
                (t.to_string(), sum)
            })
            .collect()
    }
}

/// A pgbouncer in front of a cluster, with one entry.
pub struct Bouncer {
    pub port: u16,
    pub ini: PathBuf,
    dir: PathBuf,
}

impl Bouncer {
    /// Starts pgbouncer with `[databases] name = host=127.0.0.1 port=PG dbname=name`.
    pub fn start(pg_port: u16, name: &str) -> Bouncer {
        let dir = std::env::temp_dir().join(format!(
            "lz-bouncer-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port().unwrap();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n{name} = host=127.0.0.1 port={pg_port} dbname={name}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {d}\nauth_type = trust\nauth_file = {d}/userlist.txt\nadmin_users = postgres\npool_mode = session\nquery_wait_timeout = 3\nserver_login_retry = 1\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
                d = dir.display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let installed = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([std::path::PathBuf::from("/usr/sbin")])
            .any(|d| d.join("pgbouncer").is_file());
        assert!(
            installed,
            "this test needs pgbouncer, which is not installed: run scripts/setup.sh (Debian: apt-get install pgbouncer)"
        );
        let mut cmd = if running_as_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            for path in [&dir, &ini, &dir.join("userlist.txt")] {
                nix::unistd::chown(path.as_path(), Some(user.uid), Some(user.gid)).unwrap();
            }
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "pgbouncer"]);
            c
        } else {
            Command::new("pgbouncer")
        };
        let status = cmd
            .arg("-d")
            .arg(&ini)
            .status()
            .expect("this test needs pgbouncer (Debian: apt-get install pgbouncer)");
        assert!(status.success(), "pgbouncer did not start");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer is not listening"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Bouncer { port, ini, dir }
    }

    /// Where the entry points now.
    pub fn target(&self, name: &str) -> String {
        std::fs::read_to_string(&self.ini)
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("{name} =")))
            .and_then(|l| l.split("dbname=").nth(1))
            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// Stops it.
    pub fn stop(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `lazarus.toml` for a sandbox backing up `pg` to one local store (`store/`), with
/// a key made on first use and `extra` (tables such as `[retention]` or `[[schedules]]`)
/// after the store; owner-only, as Lazarus requires.
pub fn write_config(sb: &super::Sandbox, pg: &Pg, extra: &str) {
    let keys = sb.path().join("keys");
    if !keys.exists() {
        sb.ok(&["key", "generate", "--file", keys.to_str().unwrap()]);
    }
    let path = sb.write(
        "lazarus.toml",
        &format!(
            "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n\n{extra}",
            keys.display(),
            pg.port()
        ),
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

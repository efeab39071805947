//! Helpers the benchmarks share: running tools, measuring a child's time and peak memory.
#![allow(dead_code)] // each benchmark uses its own subset

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lazarus::pg::running_as_root;

/// Runs a command to completion, panicking with its output when it fails; returns stdout.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A command run as the server's user when the benchmark runs as root.
pub fn as_postgres(program: &str) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--", program]);
        cmd
    } else {
        Command::new(program)
    }
}

/// The full path of a program on PATH.
pub fn which(program: &str) -> Option<String> {
    std::env::var("PATH").ok()?.split(':').find_map(|dir| {
        let p = Path::new(dir).join(program);
        p.is_file().then(|| p.display().to_string())
    })
}

/// Runs a command once; its wall time and peak RSS (bytes). Panics when it fails.
pub fn measure(cmd: &mut Command) -> (Duration, u64) {
    let started = Instant::now();
    // Reaped below with wait4, which also reports the child's peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = cmd.stdout(Stdio::null()).spawn().expect("spawn");
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = started.elapsed();
    assert_eq!(waited, pid, "wait4 failed");
    let exit = std::process::ExitStatus::from_raw(status);
    assert!(exit.success(), "{cmd:?} failed: {exit}");
    (took, usage.ru_maxrss as u64 * 1024)
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Lazarus as a benchmark runs it: a key file and a configuration in `root` with one local
/// store and the server on `port`; commands use them and no key from the environment.
pub struct BenchLazarus {
    /// Where it works.
    pub root: PathBuf,
    /// lazarus.toml.
    pub config: PathBuf,
    /// The key file it names.
    pub key_file: PathBuf,
}

impl BenchLazarus {
    /// Writes the configuration and generates the key.
    pub fn new(root: &Path, port: u16) -> BenchLazarus {
        let key_file = root.join("keys");
        let config = root.join("lazarus.toml");
        std::fs::write(
            &config,
            format!(
                "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"postgres\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n",
                key_file.display()
            ),
        )
        .unwrap();
        let lazarus = BenchLazarus {
            root: root.to_path_buf(),
            config,
            key_file,
        };
        let key = lazarus.key_file.display().to_string();
        run_ok(
            &mut lazarus.cmd(&["key", "generate", "--file", &key]),
            "key generate",
        );
        lazarus
    }

    /// `lazarus ARGS` with this state directory and configuration; stderr discarded.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazarus"));
        cmd.current_dir(&self.root)
            .arg("--state")
            .arg(self.root.join("state"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("LAZARUS_KEYS")
            .stderr(Stdio::null());
        cmd
    }
}

/// The recovery benchmarks' data in a new database `db`: `pgbench -i -s SCALE` plus a `notes`
/// table of `rows` rows of four random md5s (about 1.4 GB at scale 60 and 3 million rows).
pub fn load_dataset(
    tools: &lazarus::pg::Tools,
    sql: &lazarus::pg::sql::Sql,
    port: u16,
    db: &str,
    scale: u32,
    rows: u32,
) {
    sql.execute("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    let ok = Command::new(tools.path("pgbench").unwrap())
        .args(["-i", "-q", "-s", &scale.to_string(), db])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "postgres")
        .env_remove("PGDATABASE")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "pgbench -i failed");
    sql.execute(
        db,
        &format!(
            "CREATE TABLE notes (id int PRIMARY KEY, body text); \
             INSERT INTO notes SELECT g, md5(g::text || random()::text) || md5(random()::text) \
             || md5(random()::text) || md5(random()::text) FROM generate_series(1, {rows}) g; ANALYZE"
        ),
    )
    .unwrap();
}

//! `lazarus demo`: a whole recovery on throwaway parts — a PostgreSQL cluster with sample
//! data behind pgbouncer, a backup and a drill, the database "lost", then the
//! disaster-recovery runbook with live progress, killed with SIGKILL once along the way and
//! resumed, ending with traffic through pgbouncer on the restored data and the report.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;

use super::Context;
use crate::owner::find_owner;
use crate::pg::cluster::{Cluster, free_port};
use crate::pg::sql::Sql;
use crate::pg::{Tools, running_as_root};

/// Arguments of `lazarus demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's directory (state, config, logs) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

const DB: &str = "shop";

const SAMPLE: &str = "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, created_at timestamptz); \
INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com', now() - g * interval '1 minute' FROM generate_series(1, 200000) g; \
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int REFERENCES customers, amount numeric(10,2), note text); \
INSERT INTO orders SELECT g, 1 + g % 200000, (g % 10000) / 100.0, md5(g::text) FROM generate_series(1, 600000) g; \
CREATE INDEX ON orders (customer_id); ANALYZE";

const FINGERPRINT: &str = "SELECT (SELECT count(*) FROM customers) || ' customers, ' || (SELECT count(*) FROM orders) || ' orders, checksum ' || (SELECT left(md5(string_agg(id::text || amount::text, ',' ORDER BY id)), 12) FROM orders)";

/// pgbouncer in front of the demo cluster.
struct Bouncer {
    dir: PathBuf,
    port: u16,
}

impl Bouncer {
    fn start(dir: &Path, pg_port: u16) -> Result<Bouncer> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n{DB} = host=127.0.0.1 port={pg_port} dbname={DB}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {d}\nauth_type = trust\nauth_file = {d}/userlist.txt\nadmin_users = postgres\npool_mode = session\nquery_wait_timeout = 3\nserver_login_retry = 1\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
                d = dir.display()
            ),
        )?;
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n")?;
        let mut cmd = if running_as_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or_else(|| anyhow!("running as root needs a postgres user for pgbouncer"))?;
            for path in [dir.to_path_buf(), ini.clone(), dir.join("userlist.txt")] {
                nix::unistd::chown(&path, Some(user.uid), Some(user.gid))?;
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
            .stdout(Stdio::null())
            .status()
            .context("pgbouncer is needed for the demo (Debian: apt-get install pgbouncer)")?;
        if !status.success() {
            bail!(
                "pgbouncer did not start; see {}",
                dir.join("pgbouncer.log").display()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("pgbouncer is not listening on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Bouncer {
            dir: dir.to_path_buf(),
            port,
        })
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Asks the application's way in (pgbouncer) what it sees.
fn through_bouncer(tools: &Tools, port: u16, sql: &str) -> String {
    let Ok(psql) = tools.path("psql") else {
        return "psql not found".into();
    };
    match Command::new(psql)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port.to_string(),
            "-d",
            DB,
            "-c",
            sql,
        ])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => format!("ERROR: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("cannot run psql: {e}"),
    }
}

fn lazarus(exe: &Path, root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.current_dir(root)
        .arg("--state")
        .arg(root.join("state"))
        .arg("--config")
        .arg(root.join("lazarus.toml"))
        .args(args)
        .env_remove("LAZARUS_KEYS")
        .stdin(Stdio::null());
    cmd
}

fn step(title: &str) {
    println!("\n== {title} ==");
}

/// Where the web page is: the running `serve`'s, or how to start one.
async fn page_hint(ctx: &Context) -> String {
    let addr = ctx
        .loaded_config()
        .ok()
        .and_then(|l| l.config.api.listen)
        .unwrap_or_else(|| crate::api::DEFAULT_LISTEN.to_string());
    let answering = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    if answering {
        format!(
            "The web page of the running `lazarus serve` is at http://{addr}/ (sign in with a token from `lazarus token create`)."
        )
    } else {
        format!(
            "To run recoveries from a browser: `lazarus token create --name YOU --role admin`, then `lazarus serve`, and open http://{addr}/"
        )
    }
}

/// `lazarus demo`.
pub async fn demo(ctx: &Context, args: DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!("lazarus-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = run_demo(ctx, &root).await;
    if args.keep {
        println!("kept {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    let ok = result?;
    println!("\n(demo took {:.0}s)", started.elapsed().as_secs_f64());
    println!("{}", page_hint(ctx).await);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_demo(ctx: &Context, root: &Path) -> Result<bool> {
    let exe = std::env::current_exe().context("cannot find the lazarus executable")?;
    let tools = Tools::new(None);

    step("a throwaway PostgreSQL with sample data, behind pgbouncer");
    let mut cluster = Cluster::create(tools.clone(), "demo")?;
    cluster.start()?;
    let server = cluster.server();
    let sql = Sql::new(&tools, &server);
    tokio::task::block_in_place(|| -> Result<()> {
        sql.execute("postgres", &format!("CREATE DATABASE {DB}"))?;
        sql.execute(DB, SAMPLE)?;
        Ok(())
    })?;
    let bouncer = Bouncer::start(&root.join("pgbouncer"), cluster.port)?;
    let before = through_bouncer(&tools, bouncer.port, FINGERPRINT);
    println!(
        "   PostgreSQL on 127.0.0.1:{}, pgbouncer on 127.0.0.1:{}",
        cluster.port, bouncer.port
    );
    println!("   the application sees (through pgbouncer): {before}");

    let keys = root.join("keys");
    std::fs::write(
        root.join("lazarus.toml"),
        format!(
            "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n",
            keys.display(),
            cluster.port
        ),
    )?;
    let work = format!("workdir={}", root.join("work").display());
    let quiet = |mut cmd: Command, what: &str| -> Result<()> {
        let out = cmd
            .output()
            .with_context(|| format!("cannot run lazarus {what}"))?;
        if !out.status.success() {
            bail!(
                "lazarus {what} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    quiet(
        lazarus(
            &exe,
            root,
            &[
                "key",
                "generate",
                "--file",
                keys.to_str().unwrap_or_default(),
            ],
        ),
        "key generate",
    )?;

    step("lazarus backup --database shop   (pg_dump -Fc -Z0 → zstd → encrypted → every store)");
    quiet(
        lazarus(&exe, root, &["backup", "--database", DB, "-p", &work]),
        "backup",
    )?;
    step("lazarus drill --database shop   (restore into a scratch database, check, mark VERIFIED)");
    quiet(
        lazarus(&exe, root, &["drill", "--database", DB, "-p", &work]),
        "drill",
    )?;
    let out = lazarus(&exe, root, &["backups"]).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    step("the disaster: the database is lost");
    tokio::task::block_in_place(|| {
        sql.execute("postgres", &format!("DROP DATABASE {DB} WITH (FORCE)"))
    })?;
    println!(
        "   the application sees: {}",
        through_bouncer(&tools, bouncer.port, FINGERPRINT)
    );

    step(
        "lazarus recover --database shop   (and a kill -9 of the runner in the middle of pg_restore)",
    );
    let ini = bouncer.dir.join("pgbouncer.ini");
    let run = "recovery-demo";
    let params = [
        work.clone(),
        format!("pgbouncer_ini={}", ini.display()),
        format!("pgbouncer_port={}", bouncer.port),
        "pgbouncer_admin=postgres".to_string(),
        "check_tables=orders".to_string(),
    ];
    let mut recover_args = vec![
        "recover",
        "--database",
        DB,
        "--reason",
        "demo: the shop database was lost",
        "--id",
        run,
    ];
    for p in &params {
        recover_args.push("-p");
        recover_args.push(p);
    }
    let mut runner = lazarus(&exe, root, &recover_args)
        .spawn()
        .context("cannot start the recovery")?;
    let state = root.join("state");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(owner) = find_owner(&state).await
            && let Ok(report) = crate::owner::control::Control::report(&owner, Some(run)).await
            && report
                .steps
                .iter()
                .any(|s| s.id == "restore" && s.status == "running")
        {
            break;
        }
        if let Ok(Some(status)) = runner.try_wait() {
            bail!("the recovery ended ({status}) before the demo could interrupt it");
        }
        if Instant::now() > deadline {
            let _ = runner.kill();
            bail!("the recovery did not reach pg_restore within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Into pg_restore itself, not just the step's start.
    let until = Instant::now() + Duration::from_secs(20);
    while !pg_restore_running() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let _ = runner.wait();
    println!(
        "\n== kill -9 sent to the runner (pid {}) while pg_restore was running ==",
        runner.id()
    );

    let shown = lazarus(&exe, root, &["status", run]).status()?;
    if !shown.success() {
        bail!("the journal could not be read after the kill");
    }

    step(&format!("lazarus resume {run}"));
    let resumed = lazarus(&exe, root, &["resume", run]).status()?;
    let out = lazarus(&exe, root, &["status", run, "--json"]).output()?;
    let report: crate::engine::RunReport = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("cannot read the report of {run}"))?;
    let _ = (ctx, resumed);

    step("after the recovery");
    let after = through_bouncer(&tools, bouncer.port, FINGERPRINT);
    let db = through_bouncer(&tools, bouncer.port, "SELECT current_database()");
    println!("   the application sees (through pgbouncer, database {db}): {after}");
    let same = after == before;
    println!(
        "   {}",
        if same && report.success {
            "identical to before the disaster: recovered"
        } else {
            "NOT identical to before the disaster"
        }
    );
    drop(bouncer);
    cluster.stop()?;
    Ok(same && report.success)
}

/// Whether a pg_restore process is running on this machine (Linux /proc).
fn pg_restore_running() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                c.split(|&b| b == 0)
                    .next()
                    .is_some_and(|arg0| arg0.ends_with(b"pg_restore"))
            })
            .unwrap_or(false)
    })
}

//! Docker Compose adapter: the exact `docker compose` invocations for stop, start and
//! restart, the wait for healthchecks, and the errors when the command or a service fails —
//! through a `docker` on PATH that records its arguments (no daemon can run here).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::Sandbox;

/// A `docker` that logs each invocation; `ps` answers "starting" twice, then `$HEALTH`.
const FAKE_DOCKER: &str = r#"#!/bin/bash
echo "$*" >> "$DOCKER_LOG"
case " $* " in
  *" ps "*)
    n=$(grep -c ' ps ' "$DOCKER_LOG")
    if [ "$n" -lt 3 ]; then h=starting; else h="$HEALTH"; fi
    echo "{\"Service\":\"web\",\"State\":\"running\",\"Health\":\"$h\"}"
    echo '{"Service":"worker","State":"running","Health":""}'
    ;;
  *" restart "*)
    if [ -n "$FAIL" ]; then echo "$FAIL" >&2; exit 1; fi
    ;;
esac
exit 0
"#;

struct Compose {
    sb: Sandbox,
    log: std::path::PathBuf,
    file: String,
}

impl Compose {
    fn new() -> Self {
        let sb = Sandbox::new();
        let docker = sb.write("bin/docker", FAKE_DOCKER);
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = sb
            .write("app/compose.yaml", "services: {}\n")
            .display()
            .to_string();
        let log = sb.path().join("docker.log");
        Compose { sb, log, file }
    }

    fn cmd(&self, health: &str, fail: &str) -> Command {
        let mut cmd = self.sb.cmd();
        let path = format!(
            "{}:{}",
            self.sb.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path)
            .env("DOCKER_LOG", &self.log)
            .env("HEALTH", health)
            .env("FAIL", fail);
        cmd
    }

    fn run(&self, steps: &[(&str, &str)], health: &str, fail: &str) -> Output {
        let mut text = String::from("name = \"c\"\n");
        for (id, action) in steps {
            text.push_str(&format!(
                "[[steps]]\nid = \"{id}\"\nactivity = \"restart_app\"\nwith = {{ adapter = \"auto\", action = \"{action}\", file = \"{}\", services = \"web,worker\", timeout = \"20s\" }}\n",
                self.file
            ));
        }
        let wf = self.sb.write("c.toml", &text).display().to_string();
        Sandbox::run_in(
            self.cmd(health, fail),
            &["run", &wf, "--id", "r1", "--reason", "test"],
        )
    }

    fn invocations(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[test]
fn stop_then_start_runs_compose_stop_and_up_and_waits_for_healthchecks() {
    let c = Compose::new();
    let out = c.run(&[("stop", "stop"), ("start", "start")], "healthy", "");
    assert!(out.status.success(), "{}", common::text(&out));
    let f = &c.file;
    let ps = format!("compose -f {f} ps -a --format json web worker");
    assert_eq!(
        c.invocations(),
        vec![
            format!("compose -f {f} stop web worker"),
            format!("compose -f {f} up -d web worker"),
            ps.clone(),
            ps.clone(),
            ps,
        ],
        "stop, up -d, then ps until web's healthcheck says healthy"
    );
    let report = c.sb.status("r1");
    let services = &Sandbox::step(&report, "start")["output"]["services"];
    assert_eq!(services[0]["health"], "healthy", "{services}");
    assert_eq!(services[1]["state"], "running");
}

#[test]
fn a_service_that_turns_unhealthy_halts_the_run_naming_it() {
    let c = Compose::new();
    let out = c.run(&[("restart", "restart")], "unhealthy", "");
    assert_eq!(out.status.code(), Some(3), "{}", common::text(&out));
    let report = c.sb.status("r1");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("service web reports unhealthy")
            && error.contains("docker compose logs web"),
        "{error}"
    );
}

#[test]
fn a_failing_compose_command_is_reported_with_its_error() {
    let c = Compose::new();
    let out = c.run(&[("restart", "restart")], "healthy", "no such service: web");
    assert!(!out.status.success());
    let report = c.sb.status("r1");
    let error = report.to_string();
    assert!(error.contains("no such service: web"), "{error}");
    assert_eq!(
        c.invocations().len(),
        1,
        "no health wait after a failed restart"
    );
}

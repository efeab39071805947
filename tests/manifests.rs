//! The files users deploy with: docker/k8s/ read into k8s-openapi's types and held to what
//! the adapters rely on (the Role grants exactly the verbs they call; pods carry the Lease
//! holder's name; every command line parses and names real runbook parameters), and
//! docker/compose.yaml's services and configuration.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every document of every YAML file under docker/k8s, by kind.
fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("docker/k8s"))
        .expect("docker/k8s")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", file.display()))
                .to_string();
            out.push((kind, doc));
        }
    }
    out
}

fn of_kind<T: serde::de::DeserializeOwned>(all: &[(String, Value)], kind: &str) -> Vec<T> {
    all.iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, v)| {
            serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{kind}: {e}\n{v}"))
        })
        .collect()
}

#[test]
fn the_role_grants_exactly_the_verbs_the_adapters_call() {
    let all = manifests();
    let roles: Vec<Role> = of_kind(&all, "Role");
    assert_eq!(roles.len(), 1);
    let mut granted = BTreeSet::new();
    for rule in roles[0].rules.clone().unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let needed: BTreeSet<(String, String, String)> = lazarus::k8s::PERMISSIONS
        .iter()
        .map(|p| {
            (
                p.group.to_string(),
                p.resource.to_string(),
                p.verb.to_string(),
            )
        })
        .collect();
    assert_eq!(
        granted, needed,
        "docker/k8s/rbac.yaml and k8s::PERMISSIONS differ"
    );
    let bindings: Vec<RoleBinding> = of_kind(&all, "RoleBinding");
    assert_eq!(bindings[0].role_ref.name, "lazarus");
    let subject = &bindings[0].subjects.as_ref().expect("subjects")[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("ServiceAccount", "lazarus")
    );
}

/// Checks a pod that runs Lazarus: its account, its user, its Lease name, its state and
/// configuration; returns its command line.
fn lazarus_pod(spec: &PodSpec, what: &str) -> Vec<String> {
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("lazarus"),
        "{what}"
    );
    let security = spec.security_context.as_ref().expect("securityContext");
    assert_eq!(security.run_as_non_root, Some(true), "{what}");
    assert_eq!(
        security.run_as_user,
        Some(10001),
        "{what}: the image's user"
    );
    let container = &spec.containers[0];
    let mounts: Vec<&str> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(
        mounts.contains(&"/var/lib/lazarus/state"),
        "{what}: the image's LAZARUS_STATE"
    );
    assert!(
        container.env_from.iter().flatten().any(|e| e
            .secret_ref
            .as_ref()
            .is_some_and(|s| s.name == "lazarus-secrets")),
        "{what}: keys (LAZARUS_KEYS) and credentials come from the Secret"
    );
    let env = container.env.clone().unwrap_or_default();
    let config = env
        .iter()
        .find(|e| e.name == "LAZARUS_CONFIG")
        .expect("LAZARUS_CONFIG");
    assert!(
        mounts.contains(&config.value.as_deref().unwrap_or_default()),
        "{what}: the configuration is mounted where LAZARUS_CONFIG says"
    );
    container.args.clone().unwrap_or_default()
}

/// The Lease holder's name (`POD_NAME`) comes from the pod's own name.
fn holder_is_the_pod_name(spec: &PodSpec, what: &str) {
    let env = spec.containers[0].env.clone().unwrap_or_default();
    let holder = env
        .iter()
        .find(|e| e.name == "POD_NAME")
        .unwrap_or_else(|| panic!("{what}: POD_NAME, the Lease holder"));
    assert_eq!(
        holder
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.name"),
        "{what}"
    );
}

/// The command line parses as lazarus's, and every `-p NAME=` is a parameter of the runbook.
fn parses(args: &[String], runbook: &str) {
    let mut argv = vec!["lazarus".to_string()];
    argv.extend(args.iter().cloned());
    if let Err(e) = lazarus::cli::Cli::try_parse_from(&argv) {
        panic!("{argv:?} does not parse: {e}");
    }
    let text = lazarus::runbooks::builtin(runbook).expect("built-in runbook");
    let workflow =
        lazarus::engine::Workflow::parse(runbook, text, &lazarus::activities::builtin_registry())
            .expect("runbook");
    for pair in args.windows(2).filter(|w| w[0] == "-p") {
        let name = pair[1].split('=').next().unwrap_or_default();
        assert!(
            workflow.params.iter().any(|p| p.name == name),
            "{argv:?}: {runbook} has no parameter {name}"
        );
    }
}

#[test]
fn serve_the_recovery_job_and_the_schedules_run_lazarus_as_the_adapters_expect() {
    let all = manifests();
    let deployments: Vec<Deployment> = of_kind(&all, "Deployment");
    let serve = deployments[0].spec.as_ref().expect("spec");
    assert_eq!(serve.replicas, Some(1), "one writer of the journal");
    assert_eq!(
        serve.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate")
    );
    let pod = serve.template.spec.as_ref().expect("pod");
    assert_eq!(lazarus_pod(pod, "serve")[0], "serve");
    holder_is_the_pod_name(pod, "serve");

    let jobs: Vec<Job> = of_kind(&all, "Job");
    let job = jobs[0]
        .spec
        .as_ref()
        .expect("job")
        .template
        .spec
        .as_ref()
        .expect("pod");
    let args = lazarus_pod(job, "recover job");
    parses(&args, "disaster-recovery");
    assert!(
        job.containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "POD_NAME")
    );

    let crons: Vec<CronJob> = of_kind(&all, "CronJob");
    let mut commands = Vec::new();
    for cron in &crons {
        let spec = cron.spec.as_ref().expect("spec");
        assert_eq!(
            spec.concurrency_policy.as_deref(),
            Some("Forbid"),
            "a schedule never overlaps itself"
        );
        let pod = spec
            .job_template
            .spec
            .as_ref()
            .and_then(|j| j.template.spec.as_ref())
            .expect("pod");
        let args = lazarus_pod(pod, "cronjob");
        let runbook = match args[0].as_str() {
            "run" => args[1].clone(),
            "backup" => "backup".into(),
            "drill" => "drill".into(),
            other => panic!("unexpected command {other}"),
        };
        parses(&args, &runbook);
        commands.push(runbook);
    }
    commands.sort();
    assert_eq!(commands, ["backup", "base-backup", "drill"]);

    let maps: Vec<ConfigMap> = of_kind(&all, "ConfigMap");
    let text = &maps[0].data.as_ref().expect("data")["lazarus.toml"];
    let config: lazarus::config::Config =
        toml::from_str(text).expect("lazarus.toml in the ConfigMap");
    assert_eq!(config.kubernetes.lease.as_deref(), Some("on"));
}

#[test]
fn the_compose_file_runs_the_whole_demo() {
    let text = std::fs::read_to_string(repo("docker/compose.yaml")).expect("compose.yaml");
    let compose: Value = serde_saphyr::from_str(&text).expect("compose.yaml parses");
    let services = compose["services"].as_object().expect("services");
    for name in ["postgres", "pgbouncer", "app", "s3", "lazarus"] {
        assert!(services.contains_key(name), "service {name}");
    }
    assert_eq!(
        compose["services"]["lazarus"]["build"]["dockerfile"],
        "docker/Dockerfile"
    );
    assert!(
        compose["services"]["app"]["healthcheck"].is_object(),
        "the app has a healthcheck"
    );
    // Every file the services mount is in the repository.
    for service in services.values() {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume
                .as_str()
                .unwrap_or_default()
                .split(':')
                .next()
                .unwrap_or_default();
            if source.starts_with("./") {
                assert!(repo("docker").join(source).exists(), "{source} is missing");
            }
        }
    }
    let config: lazarus::config::Config =
        toml::from_str(&std::fs::read_to_string(repo("docker/demo/lazarus.toml")).unwrap())
            .expect("docker/demo/lazarus.toml");
    assert_eq!(config.stores.len(), 2);
    let ini = std::fs::read_to_string(repo("docker/demo/pgbouncer.ini")).unwrap();
    assert!(
        ini.contains("shop = host=postgres"),
        "the entry the cut-over repoints"
    );
}

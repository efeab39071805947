//! Kubernetes adapters against a fake API server speaking real HTTP/JSON to kube-rs:
//! rollout restart and its wait, scale to zero and back, cut-over of a Service, ConfigMap
//! or Secret with a rollback that refuses to overwrite someone else's change.

mod common;

use std::process::Output;

use common::Sandbox;
use common::kube_api::FakeKube;
use serde_json::{Value, json};

const NS: &str = "shop";

/// A sandbox whose lazarus commands talk to the fake cluster.
struct Cluster {
    sb: Sandbox,
    kube: FakeKube,
    kubeconfig: std::path::PathBuf,
}

impl Cluster {
    fn new() -> Self {
        let sb = Sandbox::new();
        let kube = FakeKube::start();
        let kubeconfig = kube.kubeconfig(sb.path(), NS);
        Cluster {
            sb,
            kube,
            kubeconfig,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.sb.cmd();
        cmd.env("KUBECONFIG", &self.kubeconfig);
        Sandbox::run_in(cmd, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lazarus {args:?} failed ({:?}):\n{}",
            out.status,
            common::text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn workflow(&self, steps: &str) -> String {
        self.sb
            .write(
                "k.toml",
                &format!("name = \"k\"\ntarget = \"shop\"\n{steps}"),
            )
            .display()
            .to_string()
    }
}

fn restart_step(id: &str, with: &str) -> String {
    format!(
        "[[steps]]\nid = \"{id}\"\nactivity = \"restart_app\"\nwith = {{ adapter = \"kubernetes\", namespace = \"{NS}\", {with} }}\n"
    )
}

#[test]
fn rollout_restart_patches_restarted_at_and_waits_until_the_rollout_completes() {
    let c = Cluster::new();
    c.kube.deployment(NS, "web", 2, false);
    c.kube.statefulset(NS, "cache", 3);
    let file = c.workflow(
        &(restart_step("web", "workload = \"deployment/web\", timeout = \"30s\"")
            + &restart_step(
                "cache",
                "workload = \"statefulset/cache\", timeout = \"30s\"",
            )),
    );
    c.ok(&["run", &file, "--id", "r1", "--reason", "test"]);

    let patches: Vec<_> = c.kube.requests_of("PATCH");
    assert_eq!(patches.len(), 2, "{patches:?}");
    for (patch, path) in patches.iter().zip([
        "/apis/apps/v1/namespaces/shop/deployments/web",
        "/apis/apps/v1/namespaces/shop/statefulsets/cache",
    ]) {
        assert_eq!(patch.path, path);
        assert_eq!(patch.content_type, "application/strategic-merge-patch+json");
        assert!(
            patch.query.contains("fieldManager=lazarus"),
            "{}",
            patch.query
        );
        let at = patch.body["spec"]["template"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/restartedAt"]
            .as_str()
            .unwrap_or_else(|| panic!("restartedAt in {}", patch.body));
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
        // Exactly the annotation, nothing else.
        let mut expected = json!({"spec": {"template": {"metadata": {"annotations": {}}}}});
        expected["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] =
            json!(at);
        assert_eq!(patch.body, expected);
    }
    // The wait watched the workloads rather than polling them.
    assert!(
        c.kube
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.query.contains("watch=true")),
        "no watch request"
    );
    let report = c.sb.status("r1");
    let web = &Sandbox::step(&report, "web")["output"];
    assert_eq!(web["revision"], "2", "{web}");
    assert_eq!(
        (web["replicas"].as_i64(), web["ready"].as_i64()),
        (Some(2), Some(2))
    );
    let cache = &Sandbox::step(&report, "cache")["output"];
    assert_eq!(cache["revision"], "cache-2", "{cache}");
    let live = c.kube.get("deployments", NS, "web").expect("web");
    assert_eq!(live["status"]["updatedReplicas"], 2);
}

#[test]
fn a_rollout_that_never_completes_fails_with_the_deployment_name_and_replica_counts() {
    let c = Cluster::new();
    c.kube.deployment(NS, "web", 2, true);
    let file = c.workflow(&restart_step(
        "web",
        "workload = \"deployment/web\", timeout = \"2s\"",
    ));
    let out = c.run(&["run", &file, "--id", "r1", "--reason", "test"]);
    assert!(!out.status.success());
    let report = c.sb.status("r1");
    assert_eq!(report["status"], "halted", "{report}");
    let error = report["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("deployment/web in namespace shop did not finish rolling out within 2.0s")
            && error.contains("0 of 2 replicas updated"),
        "{error}"
    );
}

#[test]
fn stop_scales_to_zero_remembering_the_replicas_and_start_brings_them_back() {
    let c = Cluster::new();
    c.kube.deployment(NS, "web", 3, false);
    let file = c.workflow(
        &(restart_step("stop", "workload = \"deployment/web\", action = \"stop\"")
            + "[[steps]]\nid = \"check\"\nactivity = \"command\"\nwith = { argv = [\"true\"] }\n"
            + &restart_step("start", "workload = \"deployment/web\", action = \"start\"")),
    );
    let out = c.run(&[
        "run",
        &file,
        "--id",
        "r1",
        "--reason",
        "test",
        "--halt-after",
        "stop",
    ]);
    assert_eq!(out.status.code(), Some(3), "halted: {}", common::text(&out));
    let stopped = c.kube.get("deployments", NS, "web").expect("web");
    assert_eq!(stopped["spec"]["replicas"], 0);
    assert_eq!(stopped["status"]["readyReplicas"], 0);
    assert_eq!(
        stopped["metadata"]["annotations"]["lazarus.io/replicas-before-stop"],
        "3"
    );
    c.ok(&["resume", "r1"]);
    let patches: Vec<Value> = c
        .kube
        .requests_of("PATCH")
        .into_iter()
        .map(|r| {
            assert_eq!(r.content_type, "application/merge-patch+json");
            r.body
        })
        .collect();
    assert_eq!(
        patches,
        vec![
            json!({"metadata": {"annotations": {"lazarus.io/replicas-before-stop": "3"}}, "spec": {"replicas": 0}}),
            json!({"metadata": {"annotations": {"lazarus.io/replicas-before-stop": null}}, "spec": {"replicas": 3}}),
        ]
    );
    let live = c.kube.get("deployments", NS, "web").expect("web");
    assert_eq!(live["spec"]["replicas"], 3);
    assert_eq!(live["status"]["readyReplicas"], 3);
    assert!(live["metadata"]["annotations"]["lazarus.io/replicas-before-stop"].is_null());
    let report = c.sb.status("r1");
    assert_eq!(
        Sandbox::step(&report, "stop")["output"]["previous_replicas"],
        3
    );
}

fn cutover_step(with: &str) -> String {
    format!(
        "[[steps]]\nid = \"cutover\"\nactivity = \"cutover\"\nwith = {{ adapter = \"kubernetes\", namespace = \"{NS}\", {with} }}\n"
    )
}

fn config_map() -> Value {
    json!({
        "metadata": {"name": "app-db", "labels": {"app": "web"}},
        "data": {
            "DATABASE_URL": "postgresql://app:hunter2@db.shop.svc:5432/shop?sslmode=disable",
            "OTHER": "kept as it is"
        }
    })
}

#[test]
fn a_configmap_cutover_changes_only_the_database_and_rollback_puts_back_the_previous_object() {
    let c = Cluster::new();
    c.kube.deployment(NS, "web", 2, false);
    c.kube.insert("configmaps", NS, config_map());
    let before = c.kube.get("configmaps", NS, "app-db").expect("cm");
    let file = c.workflow(&cutover_step(
        "object = \"configmap/app-db\", key = \"DATABASE_URL\", dbname = \"shop_restored_ab12cd\", restart = \"deployment/web\"",
    ));
    c.ok(&["run", &file, "--id", "r1", "--reason", "test"]);

    let puts: Vec<_> = c.kube.requests_of("PUT");
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(puts[0].path, "/api/v1/namespaces/shop/configmaps/app-db");
    assert_eq!(
        puts[0].body["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "the write is conditioned on the version read"
    );
    let after = c.kube.get("configmaps", NS, "app-db").expect("cm");
    assert_eq!(
        after["data"],
        json!({
            "DATABASE_URL": "postgresql://app:hunter2@db.shop.svc:5432/shop_restored_ab12cd?sslmode=disable",
            "OTHER": "kept as it is"
        })
    );
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    let restarts = c.kube.requests_of("PATCH").len();
    assert_eq!(
        restarts, 1,
        "the application was restarted to read the new value"
    );

    c.ok(&["rollback", "r1", "--reason", "wrong backup"]);
    let back = c.kube.get("configmaps", NS, "app-db").expect("cm");
    assert_eq!(back["data"], before["data"]);
    assert_eq!(back["metadata"]["labels"], before["metadata"]["labels"]);
    let restarts = c.kube.requests_of("PATCH").len();
    assert_eq!(restarts, 2, "restarted again after the undo");
    assert!(
        c.kube
            .get("secrets", NS, "app-db-lazarus-undo-r1")
            .is_none()
    );
    assert_eq!(c.sb.status("r1")["status"], "rolled_back");
}

#[test]
fn rollback_refuses_to_overwrite_a_change_made_after_the_cutover() {
    let c = Cluster::new();
    c.kube.insert("configmaps", NS, config_map());
    let file = c.workflow(&cutover_step(
        "object = \"configmap/app-db\", key = \"DATABASE_URL\", dbname = \"shop_restored\"",
    ));
    c.ok(&["run", &file, "--id", "r1", "--reason", "test"]);
    c.kube.edit("configmaps", NS, "app-db", |cm| {
        cm["data"]["DATABASE_URL"] = json!("postgresql://app:hunter2@elsewhere:5432/shop");
    });
    let out = c.run(&["rollback", "r1", "--reason", "undo"]);
    assert!(!out.status.success(), "{}", common::text(&out));
    let report = c.sb.status("r1");
    let text = report.to_string();
    assert!(
        text.contains("was changed after the cut-over")
            && text.contains("does not overwrite someone else's change"),
        "{text}"
    );
    let live = c.kube.get("configmaps", NS, "app-db").expect("cm");
    assert_eq!(
        live["data"]["DATABASE_URL"], "postgresql://app:hunter2@elsewhere:5432/shop",
        "the other change is kept"
    );
}

#[test]
fn a_service_selector_cutover_is_undone_exactly() {
    let c = Cluster::new();
    c.kube.insert(
        "services",
        NS,
        json!({"metadata": {"name": "db"}, "spec": {"selector": {"app": "pg", "role": "primary"}, "ports": [{"port": 5432}]}}),
    );
    let before = c.kube.get("services", NS, "db").expect("svc");
    let file = c.workflow(&cutover_step(
        "object = \"service/db\", value = \"app=pg-restored\"",
    ));
    c.ok(&["run", &file, "--id", "r1", "--reason", "test"]);
    let after = c.kube.get("services", NS, "db").expect("svc");
    assert_eq!(after["spec"]["selector"], json!({"app": "pg-restored"}));
    assert_eq!(after["spec"]["ports"], before["spec"]["ports"]);
    let report = c.sb.status("r1");
    assert_eq!(
        Sandbox::step(&report, "cutover")["output"]["previous"],
        "app=pg,role=primary"
    );
    c.ok(&["rollback", "r1", "--reason", "undo"]);
    let back = c.kube.get("services", NS, "db").expect("svc");
    assert_eq!(back["spec"], before["spec"]);
}

#[test]
fn a_secret_cutover_keeps_the_old_value_in_the_cluster_never_in_the_journal() {
    let c = Cluster::new();
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let url = "postgresql://app:s3cretpass@db:5432/shop";
    c.kube.insert(
        "secrets",
        NS,
        json!({"metadata": {"name": "app-db"}, "type": "Opaque", "data": {"DATABASE_URL": b64(url), "API_KEY": b64("k-123")}}),
    );
    let file = c.workflow(&cutover_step(
        "object = \"secret/app-db\", key = \"DATABASE_URL\", dbname = \"shop_restored\"",
    ));
    let out = c.ok(&["run", &file, "--id", "r1", "--reason", "test"]);
    let live = c.kube.get("secrets", NS, "app-db").expect("secret");
    assert_eq!(
        live["data"]["DATABASE_URL"],
        b64("postgresql://app:s3cretpass@db:5432/shop_restored")
    );
    assert_eq!(live["data"]["API_KEY"], b64("k-123"));
    let companion = c
        .kube
        .get("secrets", NS, "app-db-lazarus-undo-r1")
        .expect("the old value is kept in a companion secret");
    assert_eq!(companion["data"]["DATABASE_URL"], b64(url));
    let status = c.ok(&["status", "r1", "--json"]);
    let events = c.ok(&["status", "r1"]);
    for text in [&out, &status, &events] {
        assert!(
            !text.contains("s3cretpass") && !text.contains(&b64(url)),
            "{text}"
        );
    }
    c.ok(&["rollback", "r1", "--reason", "undo"]);
    let back = c.kube.get("secrets", NS, "app-db").expect("secret");
    assert_eq!(back["data"]["DATABASE_URL"], b64(url));
    assert!(
        c.kube
            .get("secrets", NS, "app-db-lazarus-undo-r1")
            .is_none(),
        "companion removed"
    );
}

/// A runner's configuration: Leases on, short, under its own name.
fn lease_config(sb: &Sandbox, holder: &str) -> std::path::PathBuf {
    sb.write(
        &format!("{holder}.toml"),
        &format!(
            "[kubernetes]\nlease = \"on\"\nnamespace = \"{NS}\"\nlease_duration = \"3s\"\nholder = \"{holder}\"\n"
        ),
    )
}

fn lazarus(
    sb: &Sandbox,
    kubeconfig: &std::path::Path,
    config: &std::path::Path,
) -> std::process::Command {
    let mut cmd = sb.cmd();
    cmd.env("KUBECONFIG", kubeconfig)
        .env("LAZARUS_CONFIG", config);
    cmd
}

/// Starts run r1 of the fenced workflow in the background and waits until its third step
/// (which waits for `go`) has begun.
fn run_until_step_3(
    mut cmd: std::process::Command,
    host: &Sandbox,
    wf: &std::path::Path,
    work: &std::path::Path,
) -> std::process::Child {
    let child = cmd
        .args([
            "run",
            &wf.display().to_string(),
            "--id",
            "r1",
            "--reason",
            "recover it",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runner");
    host.wait_for(
        "step 3 to start",
        std::time::Duration::from_secs(60),
        || std::fs::read_to_string(work.join("log")).is_ok_and(|l| l.contains("s3-start")),
    );
    child
}

#[test]
fn a_second_runner_is_refused_by_the_lease_and_takes_over_after_the_holder_dies() {
    let kube = FakeKube::start();
    let host_a = Sandbox::new();
    let host_b = Sandbox::new();
    let kubeconfig = kube.kubeconfig(host_a.path(), NS);
    let (pod_a, pod_b) = (
        lease_config(&host_a, "pod-a"),
        lease_config(&host_a, "pod-b"),
    );
    let work = host_a.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let wf = host_a.write(
        "fenced.toml",
        &common::five_effects_workflow("fenced", &work),
    );
    let wf_b = host_b.write(
        "fenced.toml",
        &common::five_effects_workflow("fenced", &work),
    );

    // Runner A takes the target and stops inside step 3.
    let mut a = run_until_step_3(lazarus(&host_a, &kubeconfig, &pod_a), &host_a, &wf, &work);
    let lease_name = |reqs: &[common::kube_api::Recorded]| {
        reqs.iter()
            .find(|r| r.method == "POST" && r.path.ends_with("/leases"))
            .map(|r| r.body.clone())
    };
    let created = lease_name(&kube.requests()).expect("the Lease was created");
    assert_eq!(created["spec"]["holderIdentity"], "pod-a");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 3);
    assert_eq!(created["metadata"]["annotations"]["lazarus.io/run"], "r1");
    let name = created["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    // It is renewed while the run goes on.
    host_a.wait_for("a renewal", std::time::Duration::from_secs(10), || {
        kube.requests()
            .iter()
            .any(|r| r.method == "PUT" && r.path.ends_with(&format!("/leases/{name}")))
    });

    // Another host is refused, with the holder named, and journals nothing.
    let refused = Sandbox::run_in(
        lazarus(&host_b, &kubeconfig, &pod_b),
        &[
            "run",
            &wf_b.display().to_string(),
            "--id",
            "r2",
            "--reason",
            "me too",
        ],
    );
    assert!(!refused.status.success());
    let said = common::text(&refused);
    assert!(
        said.contains("held by pod-a (run r1)") && said.contains("expired"),
        "{said}"
    );
    let runs = host_b.ok(&["runs", "--json"]);
    assert!(!runs.contains("r2"), "{runs}");

    // A second run of the same target on the holder's own runner is refused too, and
    // costs the first run nothing: its Lease stays as it was.
    let again = Sandbox::run_in(
        lazarus(&host_a, &kubeconfig, &pod_a),
        &[
            "run",
            &wf.display().to_string(),
            "--id",
            "r3",
            "--reason",
            "twice",
        ],
    );
    assert!(!again.status.success(), "{}", common::text(&again));
    assert!(
        common::text(&again).contains("run r1"),
        "{}",
        common::text(&again)
    );
    let lease = kube
        .get("leases", NS, &name)
        .expect("the Lease is still there");
    assert_eq!(lease["spec"]["holderIdentity"], "pod-a");
    assert_eq!(lease["metadata"]["annotations"]["lazarus.io/run"], "r1");

    // The holder dies. A new pod (pod-b) with the same volume is refused until the Lease
    // expires, then takes it over and finishes the run.
    common::kill9(&mut a);
    let early = Sandbox::run_in(lazarus(&host_a, &kubeconfig, &pod_b), &["resume", "r1"]);
    assert!(!early.status.success(), "{}", common::text(&early));
    assert!(
        common::text(&early).contains("held by pod-a"),
        "{}",
        common::text(&early)
    );
    std::fs::write(work.join("go"), "").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let resumed = Sandbox::run_in(lazarus(&host_a, &kubeconfig, &pod_b), &["resume", "r1"]);
    assert!(resumed.status.success(), "{}", common::text(&resumed));
    let report = host_a.status("r1");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        std::fs::read_to_string(work.join("effects")).unwrap(),
        "s1\ns2\ns3\ns4\ns5\n",
        "every step's effect exactly once"
    );
    let takeover = kube
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT" && r.body["spec"]["holderIdentity"] == "pod-b")
        .expect("pod-b took the Lease over");
    assert_eq!(takeover.body["spec"]["leaseTransitions"], 1);
    assert!(
        kube.get("leases", NS, &name).is_none(),
        "the Lease is let go when the run ends"
    );
}

#[test]
fn a_runner_that_loses_its_lease_runs_no_further_step_and_says_why() {
    let kube = FakeKube::start();
    let host = Sandbox::new();
    let kubeconfig = kube.kubeconfig(host.path(), NS);
    let config = lease_config(&host, "pod-a");
    let work = host.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let wf = host.write(
        "fenced.toml",
        &common::five_effects_workflow("fenced", &work),
    );
    let mut a = run_until_step_3(lazarus(&host, &kubeconfig, &config), &host, &wf, &work);
    let lease = kube
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/leases"))
        .expect("lease created");
    let name = lease.body["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    // Someone else takes the target (as after a renewal this runner could not make).
    kube.edit("leases", NS, &name, |l| {
        l["spec"]["holderIdentity"] = json!("pod-x");
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::fs::write(work.join("go"), "").unwrap();
    let status = a.wait().expect("runner ends");
    assert_eq!(status.code(), Some(3), "halted");
    let report = host.status("r1");
    assert_eq!(report["status"], "halted", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("now held by pod-x") && error.contains("runs no further step"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("effects")).unwrap(),
        "s1\ns2\ns3\n",
        "the step in flight finished; nothing after it ran"
    );
    assert_eq!(
        kube.get("leases", NS, &name).expect("lease")["spec"]["holderIdentity"],
        "pod-x",
        "the other holder's Lease is left alone"
    );
}

/// A real database with a VERIFIED backup in a local store, and a fake cluster running its
/// application: `deployment/web` reading `configmap/app-db`.
struct Recovery {
    c: Cluster,
    pg: common::pg::Pg,
    work: String,
}

impl Recovery {
    fn new() -> Self {
        let c = Cluster::new();
        let pg = common::pg::Pg::start();
        pg.load_sample("shop", 1);
        let keys = c.sb.path().join("keys");
        c.ok(&["key", "generate", "--file", keys.to_str().unwrap()]);
        let config = c.sb.write(
            "lazarus.toml",
            &format!(
                "[keys]\nfile = \"{}\"\n\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n\n[[stores]]\nname = \"local\"\nkind = \"local\"\npath = \"store\"\n",
                keys.display(),
                pg.port()
            ),
        );
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let work = format!("workdir={}", c.sb.path().join("work").display());
        c.ok(&["backup", "--database", "shop", "-p", &work]);
        c.ok(&["drill", "--database", "shop", "-p", &work]);
        c.kube.deployment(NS, "web", 3, false);
        c.kube.insert("configmaps", NS, config_map());
        Recovery { c, pg, work }
    }

    fn recover(&self, run: &str, object: &str) -> Output {
        self.c.run(&[
            "recover",
            "--database",
            "shop",
            "--reason",
            "primary lost",
            "--id",
            run,
            "-p",
            &self.work,
            "-p",
            "cutover=kubernetes",
            "-p",
            &format!("k8s_cutover_object={object}"),
            "-p",
            "k8s_cutover_key=DATABASE_URL",
            "-p",
            "k8s_workload=deployment/web",
            "-p",
            &format!("k8s_namespace={NS}"),
            "-p",
            "app_stop=true",
            "-p",
            "app_timeout=30s",
        ])
    }
}

#[test]
fn disaster_recovery_stops_the_app_restores_cuts_the_configmap_over_and_rolls_back() {
    let r = Recovery::new();
    let c = &r.c;
    let out = r.recover("r1", "configmap/app-db");
    assert!(out.status.success(), "{}", common::text(&out));
    let report = c.sb.status("r1");
    let restored = Sandbox::step(&report, "restore")["output"]["database"]
        .as_str()
        .expect("restored database")
        .to_string();
    // The application was at zero from before the restore until after the cut-over.
    let ended = |id: &str| {
        Sandbox::step(&report, id)["ended_at"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let started = |id: &str| {
        Sandbox::step(&report, id)["started_at"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(ended("stop_app") <= started("restore") && ended("cutover") <= started("start_app"));
    assert_eq!(Sandbox::step(&report, "restart")["status"], "skipped");
    let writes: Vec<(String, Value)> = c
        .kube
        .writes()
        .into_iter()
        .filter(|r| !r.path.contains("/secrets"))
        .map(|r| (format!("{} {}", r.method, r.path), r.body))
        .collect();
    let kinds: Vec<&str> = writes.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "PATCH /apis/apps/v1/namespaces/shop/deployments/web",
            "PUT /api/v1/namespaces/shop/configmaps/app-db",
            "PATCH /apis/apps/v1/namespaces/shop/deployments/web",
            "PATCH /apis/apps/v1/namespaces/shop/deployments/web",
        ],
        "stop, cut over, restart (to read the new value), start"
    );
    assert_eq!(writes[0].1["spec"]["replicas"], 0);
    assert_eq!(writes[3].1["spec"]["replicas"], 3);
    let cm = c.kube.get("configmaps", NS, "app-db").expect("cm");
    assert_eq!(
        cm["data"]["DATABASE_URL"],
        format!("postgresql://app:hunter2@db.shop.svc:5432/{restored}?sslmode=disable")
    );
    assert_eq!(
        r.pg.psql(&restored, "SELECT count(*) FROM notes"),
        "20000",
        "the database the application now reads is the restored one"
    );
    c.ok(&["rollback", "r1", "--reason", "wrong moment"]);
    let back = c.kube.get("configmaps", NS, "app-db").expect("cm");
    assert_eq!(back["data"], config_map()["data"]);
    let web = c.kube.get("deployments", NS, "web").expect("web");
    assert_eq!(
        web["spec"]["replicas"], 3,
        "the application runs after the rollback"
    );
}

#[test]
fn a_mistyped_cutover_object_is_refused_before_anything_is_downloaded() {
    let r = Recovery::new();
    let out = r.recover("r1", "configmap/app-dbb");
    assert_eq!(out.status.code(), Some(4), "{}", common::text(&out));
    let report = r.c.sb.status("r1");
    assert_eq!(report["status"], "failed", "{report}");
    assert!(
        report
            .to_string()
            .contains("configmap/app-dbb in namespace shop was not found"),
        "{report}"
    );
    assert_eq!(Sandbox::step(&report, "download")["status"], "pending");
    assert!(
        r.c.kube.writes().is_empty(),
        "nothing in the cluster was touched"
    );
}

#[test]
fn two_runners_racing_for_an_expired_lease_never_both_win() {
    use lazarus::engine::fence::{Fence, FenceError};
    use lazarus::k8s::lease::{KubeLeaseFence, lease_name};
    let kube = FakeKube::start();
    let fence = |holder: &str| {
        let config = kube::Config::new(format!("http://{}", kube.addr).parse().expect("url"));
        KubeLeaseFence::with_config(config, Some(NS), holder, std::time::Duration::from_secs(30))
            .expect("fence")
    };
    let (a, b) = (fence("runner-a"), fence("runner-b"));
    for round in 0..20 {
        let target = format!("db{round}");
        // A Lease left by a runner that died long ago.
        kube.insert(
            "leases",
            NS,
            json!({
                "metadata": {"name": lease_name(&target)},
                "spec": {"holderIdentity": "dead-runner", "leaseDurationSeconds": 15,
                         "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 4}
            }),
        );
        let barrier = std::sync::Barrier::new(2);
        let (ra, rb) = std::thread::scope(|s| {
            let ta = s.spawn(|| {
                barrier.wait();
                a.claim(&target, "run-a")
            });
            let tb = s.spawn(|| {
                barrier.wait();
                b.claim(&target, "run-b")
            });
            (ta.join().expect("a"), tb.join().expect("b"))
        });
        let (winner, loser) = match (&ra, &rb) {
            (Ok(()), Err(FenceError::Held(m))) => ("runner-a", m.clone()),
            (Err(FenceError::Held(m)), Ok(())) => ("runner-b", m.clone()),
            other => panic!("round {round}: exactly one must win: {other:?}"),
        };
        assert!(loser.contains(&format!("held by {winner}")), "{loser}");
        let lease = kube.get("leases", NS, &lease_name(&target)).expect("lease");
        assert_eq!(lease["spec"]["holderIdentity"], winner);
        assert_eq!(lease["spec"]["leaseTransitions"], 5, "one takeover");
        let (w, run) = if winner == "runner-a" {
            (&a, "run-a")
        } else {
            (&b, "run-b")
        };
        w.release(&target, run);
        assert!(
            kube.get("leases", NS, &lease_name(&target)).is_none(),
            "released"
        );
    }
    // More writes than rounds: some losers wrote too, with the version they had read, and
    // were refused (409) by the conditional write — the race was real.
    let writes = kube
        .requests_of("PUT")
        .iter()
        .filter(|r| r.path.contains("/leases/"))
        .count();
    eprintln!("{writes} conditional Lease writes in 20 rounds");
    assert!(writes > 20, "no round raced to the write ({writes} PUTs)");
}

#[test]
fn a_cutover_that_would_change_nothing_is_refused_and_touches_nothing() {
    let c = Cluster::new();
    c.kube.insert("configmaps", NS, config_map());
    let file = c.workflow(&cutover_step(
        "object = \"configmap/app-db\", key = \"DATABASE_URL\", dbname = \"shop\"",
    ));
    let out = c.run(&["run", &file, "--id", "r1", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(4), "{}", common::text(&out));
    let report = c.sb.status("r1");
    assert!(
        report["error"]
            .as_str()
            .unwrap_or_default()
            .contains("would change nothing"),
        "{report}"
    );
    assert_eq!(
        c.kube.get("configmaps", NS, "app-db").expect("cm")["data"],
        config_map()["data"]
    );
    assert!(
        c.kube
            .get("secrets", NS, "app-db-lazarus-undo-r1")
            .is_none(),
        "no companion left behind"
    );
    assert!(
        c.kube.writes().iter().all(|w| w.path.contains("/secrets")),
        "only the companion came and went"
    );
}

//! The Kubernetes manifests and the Dockerfile agree with the daemon: each kustomization's
//! serve.toml and fleet.toml parse, resolve against the embedded catalogue and actually
//! start a daemon that serves a request; the pods' termination grace period covers the
//! drain budget; container ports and probes match the configured listeners; and the
//! Dockerfile's config rewrite, exposed ports and HEALTHCHECK work against a real daemon.

mod deploy_support;

use deploy_support::*;
use dujiang::serve::{ServeConfig, DEFAULT_CONFIG_TOML};
use std::time::Duration;

/// After the grace period the daemon ends what is left, flushes it (2 s) and closes its
/// listeners (up to 2 s more): see `src/serve/mod.rs`.
const AFTER_GRACE_S: u64 = 4;

/// `key: value` on a line of a manifest, as a number.
fn yaml_number(text: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{key}: {v}")))
        .collect()
}

fn config(dir: &str) -> ServeConfig {
    let file = format!("deploy/k8s/{dir}/serve.toml");
    ServeConfig::parse(&read(&file), &file).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn fleets_resolve_against_the_catalogue() {
    let catalogue = dujiang::profile::Catalogue::embedded();
    for dir in ["gateway", "sidecar"] {
        let file = format!("deploy/k8s/{dir}/fleet.toml");
        let spec =
            dujiang::fleet::FleetSpec::parse(&read(&file), &file).unwrap_or_else(|e| panic!("{e}"));
        let pools = spec.resolve(&catalogue).unwrap_or_else(|e| panic!("{e}"));
        assert!(!pools.is_empty(), "{file}");
        // The ConfigMap mounts at /etc/dujiang, and serve.toml must point there.
        assert_eq!(
            config(dir).fleet.to_str(),
            Some("/etc/dujiang/fleet.toml"),
            "{dir}"
        );
    }
}

#[test]
fn termination_grace_covers_the_drain() {
    for (dir, before_sigterm_s) in [
        // preStop sleep before SIGTERM reaches the gateway.
        ("gateway", 5),
        // A native sidecar gets SIGTERM after the app's own drain (30 s in the example).
        ("sidecar", 30),
    ] {
        let file = format!("deploy/k8s/{dir}/deployment.yaml");
        let manifest = read(&file);
        let grace = yaml_number(&manifest, "terminationGracePeriodSeconds");
        assert_eq!(grace.len(), 1, "{file}: one terminationGracePeriodSeconds");
        let drain_s = config(dir).grace_period_ms.div_ceil(1000);
        let needed = before_sigterm_s + drain_s + AFTER_GRACE_S;
        assert!(
            grace[0] > needed,
            "{file}: terminationGracePeriodSeconds {} must exceed {before_sigterm_s} + {drain_s} + {AFTER_GRACE_S} = {needed}",
            grace[0]
        );
        if dir == "gateway" {
            assert!(
                manifest.contains(&format!("command: [\"sleep\", \"{before_sigterm_s}\"]")),
                "{file}: preStop sleep of {before_sigterm_s} s"
            );
        }
    }
}

#[test]
fn container_ports_match_the_listeners() {
    for dir in ["gateway", "sidecar"] {
        let file = format!("deploy/k8s/{dir}/deployment.yaml");
        let ports = yaml_number(&read(&file), "containerPort");
        let c = config(dir);
        assert!(
            ports.contains(&u64::from(c.http_addr.port())),
            "{file}: {ports:?}"
        );
        // The HTTP side must be reachable by the kubelet's probes and by Prometheus.
        assert!(
            c.http_addr.ip().is_unspecified(),
            "{dir}: http_addr {}",
            c.http_addr
        );
        if dir == "gateway" {
            assert!(
                ports.contains(&u64::from(c.grpc_addr.port())),
                "{file}: {ports:?}"
            );
            // The OpenAI-compatible API is a data plane too.
            assert!(
                ports.contains(&u64::from(c.openai_addr.port()))
                    && c.openai_addr.ip().is_unspecified(),
                "{file}: openai_addr {} not among {ports:?}",
                c.openai_addr
            );
            assert!(
                c.grpc_addr.ip().is_unspecified(),
                "gateway grpc_addr {}",
                c.grpc_addr
            );
        } else {
            // Only the app in the same pod calls the sidecar.
            assert!(
                c.grpc_addr.ip().is_loopback() && c.openai_addr.ip().is_loopback(),
                "sidecar grpc_addr {}, openai_addr {}",
                c.grpc_addr,
                c.openai_addr
            );
        }
    }
}

/// Admin can remove pools and inject faults: no shipped config may expose it. It stays on
/// loopback (or carries a token), no container port or Service port names it, and the
/// image does not EXPOSE it.
#[test]
fn the_admin_port_is_not_exposed() {
    for dir in ["gateway", "sidecar"] {
        let c = config(dir);
        assert!(
            c.admin_addr.ip().is_loopback() || !c.admin_token_file.as_os_str().is_empty(),
            "{dir}: admin_addr {} without a token",
            c.admin_addr
        );
        let port = u64::from(c.admin_addr.port());
        assert_ne!(port, u64::from(c.grpc_addr.port()), "{dir}");
        let file = format!("deploy/k8s/{dir}/deployment.yaml");
        let ports = yaml_number(&read(&file), "containerPort");
        assert!(
            !ports.contains(&port),
            "{file} exposes the admin port: {ports:?}"
        );
    }
    let service = read("deploy/k8s/gateway/service.yaml");
    let gateway = config("gateway");
    let service_ports: Vec<u64> = yaml_number(&service, "port");
    assert!(
        service_ports.contains(&u64::from(gateway.grpc_addr.port()))
            && service_ports.contains(&u64::from(gateway.openai_addr.port())),
        "{service_ports:?}"
    );
    assert!(
        !service_ports.contains(&u64::from(gateway.admin_addr.port())),
        "the Service must not carry the admin port: {service_ports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_configs_start_a_daemon_that_serves() {
    for dir in ["gateway", "sidecar"] {
        let mut c = config(dir);
        c.grpc_addr = "127.0.0.1:0".parse().unwrap();
        c.admin_addr = "127.0.0.1:0".parse().unwrap();
        c.http_addr = "127.0.0.1:0".parse().unwrap();
        c.openai_addr = "127.0.0.1:0".parse().unwrap();
        c.fleet = repo(&format!("deploy/k8s/{dir}/fleet.toml"));
        c.time_scale = 20.0;
        let d = dujiang::serve::start(c, None)
            .await
            .unwrap_or_else(|e| panic!("{dir}: {e:#}"));
        assert_eq!(http_get(d.http_addr, "/readyz").await.0, 200, "{dir}");
        let mut client = inference(d.grpc_addr).await;
        let seen = generate(&mut client, tonic::Request::new(request(200, 8))).await;
        assert_eq!(seen.tokens, 8, "{dir}: {seen:?}");
        d.shutdown();
        d.wait().await.unwrap();
    }
}

/// The Dockerfile's `RUN ... | sed ...` rewrite of the default config, applied here the same
/// way: its output must parse and listen on all interfaces on the default ports.
#[test]
fn dockerfile_config_rewrite_opens_the_default_listeners() {
    let dockerfile = read("deploy/Dockerfile");
    let mut rewritten = DEFAULT_CONFIG_TOML.to_string();
    for key in ["grpc_addr", "http_addr", "openai_addr"] {
        let from = format!("{key} = \"127.0.0.1:");
        assert!(
            dockerfile.contains(&format!(
                "s/^{key} = \"127\\.0\\.0\\.1:/{key} = \"0.0.0.0:/"
            )),
            "Dockerfile rewrites {key}"
        );
        assert!(rewritten.contains(&from), "default config has {from}");
        rewritten = rewritten.replace(&from, &format!("{key} = \"0.0.0.0:"));
    }
    let c = ServeConfig::parse(&rewritten, "image serve.toml").unwrap();
    let default = ServeConfig::default();
    // The image opens the data plane, never Admin.
    assert_eq!(c.admin_addr, default.admin_addr);
    assert!(c.admin_addr.ip().is_loopback(), "{}", c.admin_addr);
    assert_eq!(
        c.grpc_addr.to_string(),
        format!("0.0.0.0:{}", default.grpc_addr.port())
    );
    assert_eq!(
        c.http_addr.to_string(),
        format!("0.0.0.0:{}", default.http_addr.port())
    );
    assert_eq!(
        c.openai_addr.to_string(),
        format!("0.0.0.0:{}", default.openai_addr.port())
    );
    let expose = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE line");
    assert_eq!(
        expose.trim(),
        format!(
            "{} {} {}",
            default.grpc_addr.port(),
            default.http_addr.port(),
            default.openai_addr.port()
        )
    );
}

/// Runs the Dockerfile's HEALTHCHECK command (with the port pointed at a test daemon): it
/// must pass against a live daemon and fail against a closed port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_healthcheck_command_works() {
    let dockerfile = read("deploy/Dockerfile");
    let line = dockerfile
        .lines()
        .find(|l| l.trim_start().starts_with("CMD [\"bash\", \"-c\""))
        .expect("HEALTHCHECK CMD line");
    let json = line.trim_start().strip_prefix("CMD ").unwrap();
    let argv: Vec<String> = serde_json::from_str(json).expect("exec-form JSON array");
    let script = &argv[2];
    let port = ServeConfig::default().http_addr.port().to_string();
    assert!(
        script.contains(&format!("/dev/tcp/127.0.0.1/{port}")),
        "{script}"
    );

    let d = dujiang::serve::start(
        ServeConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            openai_addr: "127.0.0.1:0".parse().unwrap(),
            ..ServeConfig::default()
        },
        None,
    )
    .await
    .unwrap();
    let run = |p: u16| {
        let s = script.replace(&format!("/{port} "), &format!("/{p} "));
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.arg(&argv[1]).arg(s).stderr(std::process::Stdio::null());
        async move {
            tokio::time::timeout(Duration::from_secs(10), cmd.status())
                .await
                .expect("healthcheck finishes")
                .expect("bash runs")
                .success()
        }
    };
    assert!(run(d.http_addr.port()).await, "healthy daemon passes");
    assert!(!run(closed_port()).await, "closed port fails");
    d.shutdown();
    d.wait().await.unwrap();
}

/// The shell command a Job's container runs, with line continuations joined.
fn job_script(yaml: &str) -> String {
    yaml.replace("\\\n", " ")
}

/// The replay Job runs the CLI as documented: its arguments (replay.args plus each pod's
/// shard flags, and the merge's) parse as `dujiang replay`, the fleet it mounts resolves
/// and has enough cells for the shards, and the two Jobs agree on SHARDS.
#[test]
fn replay_job_args_parse_and_its_shards_fit_the_fleet() {
    use clap::Parser;
    use dujiang::cli::{Cli, Command};
    let dir = "deploy/k8s/replay-job";
    let shard_job = read(&format!("{dir}/shard-job.yaml"));
    let merge_job = read(&format!("{dir}/merge-job.yaml"));
    let completions = yaml_number(&shard_job, "completions");
    let parallelism = yaml_number(&shard_job, "parallelism");
    assert_eq!(completions.len(), 1);
    assert_eq!(parallelism, completions);
    let shards = completions[0];
    for (file, yaml) in [("shard-job", &shard_job), ("merge-job", &merge_job)] {
        assert!(
            yaml.contains(&format!(
                "- name: SHARDS\n              value: \"{shards}\""
            )),
            "{file}.yaml: SHARDS must equal completions ({shards})"
        );
    }
    let args_text = read(&format!("{dir}/replay.args"));
    let args: Vec<&str> = args_text.split_whitespace().collect();
    // The ConfigMap mounts at /etc/dujiang-replay; the args name the fleet there.
    let fleet_at = args.iter().position(|a| *a == "--fleet").expect("--fleet");
    assert_eq!(args[fleet_at + 1], "/etc/dujiang-replay/fleet.toml");
    let fleet_file = format!("{dir}/fleet.toml");
    let spec = dujiang::fleet::FleetSpec::parse(&read(&fleet_file), &fleet_file)
        .unwrap_or_else(|e| panic!("{e}"));
    spec.resolve(&dujiang::profile::Catalogue::embedded())
        .unwrap_or_else(|e| panic!("{e}"));
    let cells = u64::from(spec.cells.count);
    assert!(
        cells >= shards && cells % shards == 0,
        "{cells} cells over {shards} shards: every pod should replay as many cells"
    );

    let script = job_script(&shard_job);
    assert!(
        script.contains("dujiang replay $(cat /etc/dujiang-replay/replay.args)"),
        "shard-job.yaml runs replay.args"
    );
    for flag in [
        "--shard \"${JOB_COMPLETION_INDEX}/${SHARDS}\"",
        "--partial-out \"/data/results/part-${JOB_COMPLETION_INDEX}.json\"",
    ] {
        assert!(script.contains(flag), "shard-job.yaml: {flag}");
    }
    // What the last pod runs, as the shell expands it.
    let last = format!("{}/{shards}", shards - 1);
    let part = format!("/data/results/part-{}.json", shards - 1);
    let mut argv = vec!["dujiang", "replay"];
    argv.extend(&args);
    argv.extend(["--shard", &last, "--partial-out", &part]);
    let cli = Cli::try_parse_from(argv.clone()).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(matches!(cli.command, Command::Replay(_)));

    let merge = job_script(&merge_job);
    assert!(merge.contains("dujiang replay merge /data/results/part-*.json"));
    let merge_argv = [
        "dujiang",
        "replay",
        "merge",
        "/data/results/part-0.json",
        "/data/results/part-1.json",
        "--json",
        "/data/results/report.json",
        "--html",
        "/data/results/report.html",
    ];
    for flag in &merge_argv[5..] {
        assert!(merge.contains(flag), "merge-job.yaml: {flag}");
    }
    Cli::try_parse_from(merge_argv).unwrap_or_else(|e| panic!("{e}"));
}

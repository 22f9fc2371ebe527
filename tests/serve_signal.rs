//! The real binary under SIGTERM: an in-flight stream finishes within the grace period, new
//! work is refused while draining, and the process exits 0. Also `--print-default-config`.

mod cli_support;
mod serve_support;

use cli_support::{dujiang, fails, ok, s, tmp, FREE_PORTS};
use serve_support::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the daemon if the test fails before it exits on its own.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_and_exits_zero() {
    let (child, serving, _stdout) = spawn_serve(
        Command::new(env!("CARGO_BIN_EXE_dujiang"))
            .arg("serve")
            .args(["--time-scale", "2", "--grace-period-ms", "10000"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped()),
    )
    .await;
    let mut daemon = Daemon(child);
    let (grpc, http) = (serving.grpc, serving.http);
    let up = eventually(Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(http).await.is_ok()
            && http_get(http, "/readyz").await.0 == 200
    })
    .await;
    assert!(up, "daemon became ready");

    let mut c = inference(grpc).await;
    let mut stream = c.generate(request(300, 150)).await.unwrap().into_inner();
    // Wait for the first tokens, then ask the process to stop.
    let mut tokens = 0;
    while tokens == 0 {
        if let Some(wire::generate_response::Event::Tokens(t)) =
            stream.message().await.unwrap().unwrap().event
        {
            tokens += t.count;
        }
    }
    let kill = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(
        eventually(Duration::from_secs(5), async || http_get(http, "/readyz")
            .await
            .0
            == 503)
        .await,
        "readiness turns NOT_SERVING"
    );
    let refused = c
        .generate(request(10, 10))
        .await
        .expect_err("new work refused while draining");
    assert_eq!(refused.code(), tonic::Code::Unavailable);

    let mut finished = false;
    while let Some(msg) = stream.message().await.expect("stream ends cleanly") {
        match msg.event.unwrap() {
            wire::generate_response::Event::Tokens(t) => tokens += t.count,
            wire::generate_response::Event::Finished(_) => finished = true,
            wire::generate_response::Event::Started(_) => {}
        }
    }
    assert!(
        finished && tokens == 150,
        "in-flight stream finished: {tokens} tokens"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "daemon did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.0.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(0), "exit status; log:\n{log}");
    assert!(
        log.contains("SIGTERM received") && log.contains("shut down"),
        "{log}"
    );
}

use dujiang::wire;

#[test]
fn print_default_config_round_trips() {
    let out = Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(["serve", "--print-default-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed = dujiang::serve::ServeConfig::parse(&text, "printed").unwrap();
    assert_eq!(parsed, dujiang::serve::ServeConfig::default());
    assert_eq!(parsed.grpc_addr.to_string(), "127.0.0.1:50051");
    assert_eq!(parsed.http_addr.to_string(), "127.0.0.1:9464");
}

#[test]
fn bad_config_file_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("dujiang-serve-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serve.toml");
    std::fs::write(&path, "time_scale = 2.0\ngrcp_addr = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serve.toml:2") && err.contains("grcp_addr"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A policy the daemon cannot build is blamed on the file and line that name it: the fleet
/// file's `[policy]` (a parameter typo) and the config file's `policy` key (a name typo).
#[test]
fn bad_policy_in_fleet_or_config_names_file_and_line() {
    let fleet = tmp("serve-policy", "fleet.toml");
    std::fs::write(
        &fleet,
        "name = \"x\"\nmodel = \"llama-3-8b\"\n[policy]\nname = \"least-work\"\n[policy.params]\nsampel = 2\n[pools.h20]\nchip = \"h20\"\ncount = 1\n",
    )
    .unwrap();
    let config = tmp("serve-policy", "serve.toml");
    std::fs::write(&config, "time_scale = 2.0\npolicy = \"least_work\"\n").unwrap();
    for (flag, file, place) in [
        (
            "--fleet",
            &fleet,
            "fleet.toml:6:1: field `policy.params.sampel`",
        ),
        (
            "--config",
            &config,
            "serve.toml:2:1: field `policy`: unknown policy `least_work`",
        ),
    ] {
        fails(&[&["serve", flag, s(file)], FREE_PORTS].concat(), place);
    }
    let _ = std::fs::remove_dir_all(fleet.parent().unwrap());
}

/// A fleet file the config file names and that cannot be read is blamed on the config
/// file's `fleet` line, saying relative paths are from the current directory; a `--fleet`
/// flag replaces it, so then it is not read at all.
#[test]
fn a_missing_fleet_named_by_the_config_names_the_config_line() {
    let config = tmp("serve-cfgfleet", "serve.toml");
    std::fs::write(
        &config,
        "time_scale = 2.0\nfleet = \"no-such-fleet.toml\"\n",
    )
    .unwrap();
    let out = dujiang(&[&["serve", "--config", s(&config)], FREE_PORTS].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serve.toml:2:1: field `fleet`: no-such-fleet.toml: cannot read: ")
            && err.contains("(a relative path is taken from the current directory)"),
        "{err}"
    );
    // With --fleet the config's fleet is not used: replay runs.
    ok(&[
        "replay",
        "--config",
        s(&config),
        "--fleet",
        "config/fleets/demo.toml",
        "--trace",
        "tests/data/azure-llm-2023-conv-head300.csv",
    ]);
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

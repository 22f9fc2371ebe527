//! The daemon's own state under admin operations and clients that leave early: a failed
//! backend that an operator resumes serves again (one state, read by router and driver
//! alike), a backend that stops serving between routing and taking a request does not
//! fail it but has it routed elsewhere, a client that goes away while its request is
//! being handed to a backend leaves nothing running, and switching or reloading the
//! routing policy keeps the fleet's parameters and, when the policy stays, its state.

mod serve_support;

use dujiang::serve::{Daemon, ServeConfig};
use dujiang::wire::{self, inject_fault_request::Fault};
use serve_support::*;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

fn fleet(file: &str) -> ServeConfig {
    ServeConfig {
        fleet: data(file),
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_backend_resumed_by_the_operator_serves_again() {
    let d = start(ServeConfig {
        time_scale: 10.0,
        ..fleet("serve_four_h20.toml")
    })
    .await;
    let mut a = admin(d.admin_addr).await;
    a.inject_fault(wire::InjectFaultRequest {
        backend: "h20-0".into(),
        fault: Some(Fault::Fail(true)),
    })
    .await
    .unwrap();
    let info = a
        .resume_backend(wire::BackendRef {
            backend: "h20-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.state, wire::BackendState::Serving as i32);
    // least-outstanding sees the resumed backend idle and sends it its share.
    let mut streams = Vec::new();
    for _ in 0..12 {
        let mut c = inference(d.grpc_addr).await;
        streams.push(tokio::spawn(async move {
            generate(&mut c, tonic::Request::new(request(100, 100))).await
        }));
    }
    let mut on_resumed = 0;
    for s in streams {
        let seen = s.await.unwrap();
        assert!(seen.status.is_none(), "{:?}", seen.status);
        assert_eq!(seen.tokens, 100);
        if seen.started.unwrap().backend == "h20-0" {
            on_resumed += 1;
        }
    }
    assert!(
        on_resumed > 0,
        "the resumed backend took none of 12 requests"
    );
    let stats = a
        .get_stats(wire::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.outcomes["ok"], 12);
    assert_eq!(stats.accepted, 12);
    d.shutdown();
    d.wait().await.unwrap();
}

/// Polls a future once, as a runtime would before it waits.
fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// The backend a request was just routed to: the only one with a claim on the board.
fn claimed(daemon: &Daemon) -> String {
    let view = daemon.board.view();
    let claimed: Vec<_> = daemon
        .backends()
        .into_iter()
        .filter(|b| dujiang::fleet::LoadView::load(&view, b.id).waiting > 0)
        .map(|b| b.name.to_string())
        .collect();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    claimed[0].clone()
}

/// One thread, so the test decides what runs between routing and the driver's answer.
#[tokio::test(flavor = "current_thread")]
async fn a_backend_that_fails_after_routing_has_the_request_routed_elsewhere() {
    let daemon = Daemon::start(&fleet("serve_two_h20.toml"), None, None).unwrap();
    let mut submit = pin!(daemon.submit(request(100, 20), Instant::now(), None));
    // Routed and handed to the driver, which has not run yet.
    assert!(poll_once(submit.as_mut()).is_pending());
    let routed_to = claimed(&daemon);
    daemon.inject_fail(&routed_to).unwrap();
    let mut accepted = submit.await.expect("routed again, not refused");
    assert_ne!(&*accepted.backend.name, routed_to);
    let mut tokens = 0;
    while let Some(d) = accepted.deliveries.recv().await {
        match d {
            dujiang::serve::Delivery::Tokens { count, .. } => tokens += count,
            dujiang::serve::Delivery::Finished(_) => break,
            _ => {}
        }
    }
    assert_eq!(tokens, 20);
    accepted
        .permit
        .finish(dujiang::admission::Outcome::Completed);
    daemon.retire_all(dujiang::metrics::Outcome::Shutdown);
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_gone_while_its_request_is_handed_over_leaves_nothing_running() {
    let daemon = Daemon::start(&fleet("serve_two_h20.toml"), None, None).unwrap();
    {
        let mut submit = pin!(daemon.submit(request(500, 4000), Instant::now(), None));
        // Routed and handed to the driver; the client goes away before the answer.
        assert!(poll_once(submit.as_mut()).is_pending());
    }
    let view = daemon.board.view();
    let mut idle = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !idle && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        idle = daemon.backends().iter().all(|b| {
            let l = dujiang::fleet::LoadView::load(&view, b.id);
            l.running == 0 && l.waiting == 0 && l.kv_used_blocks == 0
        });
    }
    assert!(
        idle,
        "the request still runs, holding KV, for a client that left"
    );
    let stats = daemon.admission_stats();
    assert!(stats.balanced(), "{stats:?}");
    assert_eq!(stats.outstanding, 0, "{stats:?}");
    assert_eq!(daemon.in_flight(), 0);
    assert_eq!(daemon.metrics.accepted_count(), 0);
    daemon.retire_all(dujiang::metrics::Outcome::Shutdown);
}

fn placements(pools: &[&str]) -> String {
    pools.join(" ")
}

async fn route_one(
    c: &mut wire::inference_client::InferenceClient<tonic::transport::Channel>,
) -> String {
    c.complete(request(100, 10))
        .await
        .unwrap()
        .into_inner()
        .started
        .unwrap()
        .pool
}

/// The fleet's policy: `domestic-share` at a target of 0.5 over a `weighted` inner policy
/// that sends everything to the H20 when allowed. Equal requests then alternate: Ascend
/// (an empty window allows no foreign tokens), H20, Ascend, H20…
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_policies_keeps_the_fleets_parameters() {
    let d = start(fleet("serve_domestic_share.toml")).await;
    let mut a = admin(d.admin_addr).await;
    let mut c = inference(d.grpc_addr).await;
    for name in ["round-robin", "domestic-share"] {
        a.set_policy(wire::SetPolicyRequest {
            policy: name.into(),
        })
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(route_one(&mut c).await);
    }
    // With the defaults (target 0.6, inner least-work) the second would go to Ascend too.
    assert_eq!(
        placements(&seen.iter().map(String::as_str).collect::<Vec<_>>()),
        "ascend-910b h20 ascend-910b h20"
    );
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_keeps_the_policy_keeps_its_state() {
    let dir = std::env::temp_dir().join(format!("dujiang-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serve.toml");
    std::fs::write(&path, "policy = \"domestic-share\"\n").unwrap();
    let d = dujiang::serve::start(
        ServeConfig {
            policy: "domestic-share".into(),
            ..fleet("serve_domestic_share.toml")
        },
        Some(path),
    )
    .await
    .unwrap();
    let mut a = admin(d.admin_addr).await;
    let mut c = inference(d.grpc_addr).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(route_one(&mut c).await);
    }
    a.reload_config(wire::ReloadConfigRequest {}).await.unwrap();
    // The window still holds two Ascend requests and one H20: the H20 may take the next.
    // A fresh window would allow no foreign tokens and send it to Ascend.
    seen.push(route_one(&mut c).await);
    // Naming the policy in force through SetPolicy keeps it too.
    let r = a
        .set_policy(wire::SetPolicyRequest {
            policy: "domestic-share".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.previous.as_str(), r.policy.as_str()),
        ("domestic-share", "domestic-share")
    );
    seen.push(route_one(&mut c).await);
    assert_eq!(
        placements(&seen.iter().map(String::as_str).collect::<Vec<_>>()),
        "ascend-910b h20 ascend-910b h20 ascend-910b"
    );
    d.shutdown();
    d.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

//! The daemon over gRPC when backends fail, drain or slow down, and the Admin service that
//! lists, switches and resizes: a part of `serve_grpc.rs`, whose fixtures it shares.

use super::*;

#[tokio::test]
async fn failed_backends_make_requests_unavailable() {
    let d = start(two_h20()).await;
    let mut c = inference(d.grpc_addr).await;
    let mut a = admin(d.admin_addr).await;
    let mut running = c.generate(request(100, 4000)).await.unwrap().into_inner();
    let first = running.message().await.unwrap().unwrap();
    let backend = match first.event.unwrap() {
        wire::generate_response::Event::Started(s) => s.backend,
        other => panic!("expected Started, got {other:?}"),
    };
    for b in ["h20-0", "h20-1"] {
        let info = a
            .inject_fault(wire::InjectFaultRequest {
                backend: b.into(),
                fault: Some(Fault::Fail(true)),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.state, wire::BackendState::Failed as i32);
    }
    // The in-flight stream on a failed backend ends with UNAVAILABLE.
    let status = loop {
        match running.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream on failed backend {backend} ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = c.generate(request(100, 10)).await.expect_err("no backend");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The serving gauges (what the no-healthy-backend alert reads) drop to zero.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http_get(d.http_addr, "/metrics").await;
        let serving: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("dujiang_backend_serving{"))
            .collect();
        if serving.len() == 2 && serving.iter().all(|l| l.ends_with(" 0")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{serving:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Clearing one fault brings service back.
    a.clear_fault(wire::BackendRef {
        backend: "h20-1".into(),
    })
    .await
    .unwrap();
    let seen = generate(&mut c, tonic::Request::new(request(100, 5))).await;
    assert_eq!(seen.tokens, 5, "{:?}", seen.status);
    assert_eq!(seen.started.unwrap().backend, "h20-1");
    let stats = a
        .get_stats(wire::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.outcomes["failed"], 1);
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test]
async fn drained_backends_finish_their_work_and_take_no_more() {
    let d = start(dujiang::serve::ServeConfig {
        time_scale: 5.0,
        ..two_h20()
    })
    .await;
    let mut c = inference(d.grpc_addr).await;
    let mut a = admin(d.admin_addr).await;
    let info = a
        .drain_backend(wire::BackendRef {
            backend: "h20-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.state, wire::BackendState::Draining as i32);
    for _ in 0..6 {
        let seen = generate(&mut c, tonic::Request::new(request(100, 3))).await;
        assert_eq!(seen.started.unwrap().backend, "h20-1");
    }
    a.resume_backend(wire::BackendRef {
        backend: "h20-0".into(),
    })
    .await
    .unwrap();
    let err = a
        .drain_backend(wire::BackendRef {
            backend: "h20-9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test]
async fn admin_lists_switches_policy_and_changes_pools() {
    let d = start(two_h20()).await;
    let mut a = admin(d.admin_addr).await;
    let pools = a
        .list_pools(wire::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pools.policy, "least-outstanding");
    assert_eq!(pools.pools.len(), 1);
    assert_eq!(pools.pools[0].backends, 2);
    let r = a
        .set_policy(wire::SetPolicyRequest {
            policy: "round-robin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.previous.as_str(), r.policy.as_str()),
        ("least-outstanding", "round-robin")
    );
    let err = a
        .set_policy(wire::SetPolicyRequest {
            policy: "fastest".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let added = a
        .add_pool(wire::AddPoolRequest {
            pool: "ascend".into(),
            chip: "ascend-910b".into(),
            model: String::new(),
            tp: 1,
            backends: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((added.backends, added.domestic), (3, true));
    let listed = a
        .list_backends(wire::ListBackendsRequest {
            pool: "ascend".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed.backends.iter().map(|b| b.backend.as_str()).collect();
    assert_eq!(names, ["ascend-0", "ascend-1", "ascend-2"]);
    // Round-robin now reaches the new pool.
    let mut c = inference(d.grpc_addr).await;
    let mut pools_seen = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let seen = generate(&mut c, tonic::Request::new(request(50, 2))).await;
        pools_seen.insert(seen.started.unwrap().pool);
    }
    assert!(pools_seen.contains("ascend"), "{pools_seen:?}");
    let removed = a
        .remove_pool(wire::RemovePoolRequest {
            pool: "ascend".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.backends_removed, 3);
    assert_eq!(
        a.list_pools(wire::ListPoolsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pools
            .len(),
        1
    );

    let slowed = a
        .inject_fault(wire::InjectFaultRequest {
            backend: "h20-0".into(),
            fault: Some(Fault::Slowdown(3.0)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(slowed.slowdown, 3.0);
    let stats = a
        .get_stats(wire::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.accepted, 5);
    let reload = a
        .reload_config(wire::ReloadConfigRequest {})
        .await
        .unwrap_err();
    assert_eq!(reload.code(), Code::FailedPrecondition);
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test]
async fn slowdown_stretches_step_times() {
    let d = start(dujiang::serve::ServeConfig {
        time_scale: 10.0,
        ..two_h20()
    })
    .await;
    let mut a = admin(d.admin_addr).await;
    let mut c = inference(d.grpc_addr).await;
    // Keep both requests on h20-0.
    a.drain_backend(wire::BackendRef {
        backend: "h20-1".into(),
    })
    .await
    .unwrap();
    let base = generate(&mut c, tonic::Request::new(request(500, 20)))
        .await
        .finished
        .unwrap()
        .timings
        .unwrap();
    a.inject_fault(wire::InjectFaultRequest {
        backend: "h20-0".into(),
        fault: Some(Fault::Slowdown(3.0)),
    })
    .await
    .unwrap();
    let slow = generate(&mut c, tonic::Request::new(request(500, 20)))
        .await
        .finished
        .unwrap()
        .timings
        .unwrap();
    let ratio = slow.e2e_seconds / base.e2e_seconds;
    assert!((ratio - 3.0).abs() < 0.15, "slowdown ratio {ratio}");
    d.shutdown();
    d.wait().await.unwrap();
}

//! Pools of real engines changed at run time: Admin `AddEndpoint`, `RemoveEndpoint`,
//! `DrainBackend` and `AddPool` with endpoints, and a config reload that applies a fleet
//! file's changed endpoint list; each refusal names its field or says why.

mod upstream_support;

use dujiang::wire;
use std::collections::HashSet;
use tonic::Code;
use upstream_support::*;

async fn backends_used(d: &dujiang::serve::RunningDaemon, n: usize) -> HashSet<String> {
    let mut client = inference(d.grpc_addr).await;
    let mut used = HashSet::new();
    for _ in 0..n {
        let seen = generate(&mut client, tonic::Request::new(request(16, 2))).await;
        assert!(seen.status.is_none(), "{:?}", seen.status);
        used.insert(seen.started.unwrap().backend);
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_added_removed_drained_and_reloaded_at_run_time() {
    let dir = scratch("admin");
    let a = Engine::start(&dir, "127.0.0.1:0").await;
    let b = Engine::start(&dir, "127.0.0.1:0").await;
    let c = Engine::start(&dir, "127.0.0.1:0").await;
    // Started with a config file naming the fleet file, so it can be reloaded.
    let fleet = dir.join("front.toml");
    std::fs::write(&fleet, proxy_fleet(&[a.url()], "round-robin")).unwrap();
    let cfg_path = dir.join("serve.toml");
    std::fs::write(
        &cfg_path,
        format!("fleet = {:?}\n", fleet.display().to_string()),
    )
    .unwrap();
    let mut cfg = config();
    cfg.fleet = fleet.clone();
    let d = dujiang::serve::start(cfg, Some(cfg_path)).await.unwrap();
    let mut adm = admin(d.admin_addr).await;

    let added = adm
        .add_endpoint(wire::EndpointRef {
            pool: "real".into(),
            endpoint: b.url(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.backend, "real-1");
    assert_eq!(added.endpoint, format!("{}/v1", b.url()));
    assert_eq!(
        backends_used(&d, 4).await,
        HashSet::from(["real-0".into(), "real-1".into()])
    );

    // Refusals: a duplicate, a bad URL, a simulated pool, an unknown pool.
    let err = |pool: &str, endpoint: &str| wire::EndpointRef {
        pool: pool.into(),
        endpoint: endpoint.into(),
    };
    let e = adm.add_endpoint(err("real", &b.url())).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = adm.add_endpoint(err("real", "ftp://x")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("endpoint:"), "{e:?}");
    let e = adm.add_endpoint(err("nope", &c.url())).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Drain one: the other takes everything; resume.
    adm.drain_backend(wire::BackendRef {
        backend: "real-0".into(),
    })
    .await
    .unwrap();
    assert_eq!(backends_used(&d, 3).await, HashSet::from(["real-1".into()]));
    adm.resume_backend(wire::BackendRef {
        backend: "real-0".into(),
    })
    .await
    .unwrap();

    // Remove the first endpoint; the last one cannot be removed.
    let removed = adm
        .remove_endpoint(err("real", &a.url()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.backend, "real-0");
    assert_eq!(backends_used(&d, 3).await, HashSet::from(["real-1".into()]));
    let e = adm
        .remove_endpoint(err("real", &b.url()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let listed = adm
        .list_backends(wire::ListBackendsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.backends.iter().map(|b| b.backend.as_str()).collect();
    assert_eq!(names, ["real-1"]);

    // The fleet file now lists a and c: reload adds both and removes b.
    std::fs::write(&fleet, proxy_fleet(&[a.url(), c.url()], "round-robin")).unwrap();
    let r = adm
        .reload_config(wire::ReloadConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.message.contains("endpoints: 2 added, 1 removed"),
        "{}",
        r.message
    );
    let used = backends_used(&d, 4).await;
    assert_eq!(used, HashSet::from(["real-2".into(), "real-3".into()]));

    // A new pool of real engines by AddPool; its endpoints need a served model name.
    let mut add = wire::AddPoolRequest {
        pool: "more".into(),
        chip: "ascend-910b".into(),
        endpoints: vec![b.url()],
        ..Default::default()
    };
    let e = adm.add_pool(add.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("served_model:"), "{e:?}");
    add.served_model = "llama-3-8b".into();
    let pool = adm.add_pool(add).await.unwrap().into_inner();
    assert_eq!((pool.pool.as_str(), pool.backends), ("more", 1));
    let m = metrics(d.http_addr).await;
    assert_eq!(
        series(
            &m,
            "dujiang_backend_prediction_ratio",
            &["backend=\"more-0\"", "phase=\"decode\""]
        ),
        Some(1.0),
        "{m}"
    );
    d.shutdown();
    d.wait().await.unwrap();
}

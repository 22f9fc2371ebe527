//! The admin plane is closed: `dujiang.v1.Admin` answers only on its own listener, never
//! on the data-plane port that clients send prompts to; a non-loopback admin address is
//! refused without a token; and with a token, every Admin call without the exact bearer
//! token is UNAUTHENTICATED while the data plane needs none.

mod serve_support;

use dujiang::wire::{self, admin_client::AdminClient};
use serve_support::*;
use tonic::metadata::MetadataValue;
use tonic::Code;

#[tokio::test]
async fn admin_answers_on_its_own_port_only() {
    let d = start(config()).await;
    assert_ne!(d.admin_addr, d.grpc_addr);
    // The data-plane port does not know the Admin service at all.
    let mut on_data_plane = AdminClient::new(channel(d.grpc_addr).await);
    let err = on_data_plane
        .list_pools(wire::ListPoolsRequest {})
        .await
        .expect_err("Admin must not answer on the data plane");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = on_data_plane
        .remove_pool(wire::RemovePoolRequest { pool: "h20".into() })
        .await
        .expect_err("Admin must not answer on the data plane");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // The admin port does, and the data plane still serves.
    let pools = admin(d.admin_addr)
        .await
        .list_pools(wire::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert!(pools.iter().any(|p| p.pool == "h20"), "{pools:?}");
    // ...and it serves no inference.
    let mut inference_on_admin = inference(d.admin_addr).await;
    let err = inference_on_admin
        .generate(request(10, 2))
        .await
        .expect_err("no Inference on the admin port");
    assert_eq!(err.code(), Code::Unimplemented);
    let mut c = inference(d.grpc_addr).await;
    let seen = generate(&mut c, tonic::Request::new(request(50, 3))).await;
    assert_eq!(seen.tokens, 3, "{seen:?}");
    d.shutdown();
    d.wait().await.unwrap();
}

#[tokio::test]
async fn a_non_loopback_admin_address_needs_a_token() {
    let cfg = dujiang::serve::ServeConfig {
        admin_addr: "0.0.0.0:0".parse().unwrap(),
        ..config()
    };
    let err = match dujiang::serve::start(cfg, None).await {
        Ok(_) => panic!("started with an open, unauthenticated admin port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("admin_token_file"), "{err}");

    // An empty token file is no token.
    let dir = std::env::temp_dir().join(format!("dujiang-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let cfg = dujiang::serve::ServeConfig {
        admin_token_file: empty.clone(),
        ..config()
    };
    let err = match dujiang::serve::start(cfg, None).await {
        Ok(_) => panic!("started with an empty admin token"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("empty"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn with_a_token_admin_calls_must_present_it() {
    let dir = std::env::temp_dir().join(format!("dujiang-admin-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, "tok-3f9a1c\n").unwrap();
    let d = start(dujiang::serve::ServeConfig {
        admin_token_file: token_file,
        ..config()
    })
    .await;
    let mut a = admin(d.admin_addr).await;
    let call = |auth: Option<&'static str>| {
        let mut req = tonic::Request::new(wire::ListPoolsRequest {});
        if let Some(v) = auth {
            req.metadata_mut()
                .insert("authorization", MetadataValue::from_static(v));
        }
        req
    };
    for bad in [
        None,
        Some("Bearer tok-3f9a1"),
        Some("Bearer tok-3f9a1cX"),
        Some("tok-3f9a1c"),
    ] {
        let err = a.list_pools(call(bad)).await.expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}: {err:?}");
    }
    // A refused call changes nothing.
    let err = a
        .remove_pool(wire::RemovePoolRequest { pool: "h20".into() })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    let pools = a
        .list_pools(call(Some("Bearer tok-3f9a1c")))
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert!(pools.iter().any(|p| p.pool == "h20"), "{pools:?}");
    // The data plane needs no token.
    let mut c = inference(d.grpc_addr).await;
    let seen = generate(&mut c, tonic::Request::new(request(50, 2))).await;
    assert_eq!(seen.tokens, 2, "{seen:?}");
    d.shutdown();
    d.wait().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `AddPool` input is bounded before anything is allocated: a huge backend count and a
/// name that would make an unsafe metric label are INVALID_ARGUMENT naming the field.
#[tokio::test]
async fn add_pool_bounds_counts_and_names() {
    let d = start(config()).await;
    let mut a = admin(d.admin_addr).await;
    let add = |pool: &str, backends: u32| wire::AddPoolRequest {
        pool: pool.into(),
        chip: "h20".into(),
        backends,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let err = a.add_pool(add("huge", 100_000_000)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("backends:"), "{}", err.message());
    assert!(err.message().contains("8192"), "{}", err.message());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    for bad in ["", "H20-extra", "a b", "x\"}", &"p".repeat(64)] {
        let err = a.add_pool(add(bad, 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().starts_with("pool:"), "{}", err.message());
    }
    let ok = a.add_pool(add("h20-extra", 4)).await.unwrap().into_inner();
    assert_eq!(ok.backends, 4);
    d.shutdown();
    d.wait().await.unwrap();
}

/// A pool added at run time names its engine and dtype as a fleet file can: `dujiang_pool_info`
/// shows what it runs, and an unknown engine, an unknown dtype or a dtype the chip has no
/// tensor-core path for is INVALID_ARGUMENT naming that field.
#[tokio::test]
async fn add_pool_takes_engine_and_dtype() {
    let d = start(config()).await;
    let mut a = admin(d.admin_addr).await;
    let add = |pool: &str, chip: &str, engine: &str, dtype: &str| wire::AddPoolRequest {
        pool: pool.into(),
        chip: chip.into(),
        engine: engine.into(),
        dtype: dtype.into(),
        backends: 1,
        ..Default::default()
    };
    a.add_pool(add("h20-sglang", "h20", "sglang", "fp8"))
        .await
        .unwrap();
    a.add_pool(add("h20-default", "h20", "", "")).await.unwrap();
    let text = http_get(d.http_addr, "/metrics").await.1;
    let info = |pool: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("dujiang_pool_info{{pool=\"{pool}\"")))
            .unwrap_or_else(|| panic!("no dujiang_pool_info for {pool}:\n{text}"))
            .to_string()
    };
    let named = info("h20-sglang");
    assert!(
        named.contains("engine=\"sglang\"") && named.contains("dtype=\"fp8\""),
        "{named}"
    );
    // Nothing named: the chip's default engine, not the one another pool asked for.
    let default = info("h20-default");
    assert!(!default.contains("engine=\"sglang\""), "{default}");
    assert!(default.contains("engine=\""), "{default}");

    for (req, field) in [
        (add("p1", "h20", "vllm-9", ""), "engine:"),
        (add("p2", "h20", "", "fp4"), "dtype:"),
        // The 910B has no FP8 tensor-core path in the chip catalogue.
        (add("p3", "ascend-910b", "", "fp8"), "dtype:"),
    ] {
        let err = a.add_pool(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    d.shutdown();
    d.wait().await.unwrap();
}

//! CORS on the OpenAI front end over real loopback sockets, as a browser speaks it: the
//! preflight `OPTIONS`, then the request itself with its `Origin`, from an origin the
//! daemon's `allowed_origins` allows and from one it does not; and the key's and flag's
//! bad values refused naming where they came from.

mod cli_support;
mod serve_openai_support;
mod serve_support;

use cli_support::*;
use dujiang::serve::ServeConfig;
use serve_openai_support::*;
use serve_support::*;

const CHAT: &str = "/v1/chat/completions";
const PAGE: &str = "http://localhost:3000";

fn fleet(allowed_origins: &[&str]) -> ServeConfig {
    ServeConfig {
        fleet: data("serve_two_h20.toml"),
        time_scale: 20.0,
        allowed_origins: allowed_origins.iter().map(|o| o.to_string()).collect(),
        ..config()
    }
}

/// A browser's preflight for a `fetch` POSTing JSON with a bearer token.
fn preflight_headers(origin: &str) -> [(&str, &str); 3] {
    [
        ("Origin", origin),
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "authorization,content-type",
        ),
    ]
}

/// A page on `origin` POSTing a short chat, non-streamed.
async fn chat_from(a: std::net::SocketAddr, origin: &str) -> Resp {
    send(
        a,
        "POST",
        CHAT,
        &[("Origin", origin)],
        &chat_body("hi", 2, false, false),
    )
    .await
}

/// The response's `access-control-*` headers.
fn cors_headers(r: &Resp) -> Vec<&(String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn by_default_any_origin_may_call_the_api_as_with_vllm() {
    let d = start(fleet(&["*"])).await;
    assert_eq!(ServeConfig::default().allowed_origins, ["*"]);
    let a = d.openai_addr;
    let r = send(a, "OPTIONS", CHAT, &preflight_headers(PAGE), "").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization,content-type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(
        r.header("vary"),
        None,
        "the answer is the same for every origin"
    );
    let models = [("Origin", PAGE), ("Access-Control-Request-Method", "GET")];
    for path in ["/v1/models", "/v1/models/llama-3-8b", "/health"] {
        let r = send(a, "OPTIONS", path, &models, "").await;
        assert_eq!(r.status, 204, "{path}: {r:?}");
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET"),
            "{path}"
        );
    }

    // The request itself, streamed and not: answered as always, readable by the page.
    for stream in [false, true] {
        let body = chat_body("hello", 3, stream, false);
        let r = send(a, "POST", CHAT, &[("Origin", PAGE)], &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        let exposed = r.header("access-control-expose-headers").unwrap();
        assert!(exposed.contains("x-dujiang-backend"), "{exposed}");
        assert_eq!(r.header("x-dujiang-pool"), Some("h20"));
    }
    // An error is readable too, so the page can show why.
    let r = send(a, "POST", CHAT, &[("Origin", PAGE)], "{").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // Without `Origin` nothing changes: no CORS headers, and `OPTIONS` is still 405.
    let r = post(a, CHAT, &[], &chat_body("hello", 3, false, false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(cors_headers(&r).is_empty(), "{r:?}");
    let no_origin = [("Access-Control-Request-Method", "POST")];
    assert_eq!(send(a, "OPTIONS", CHAT, &no_origin, "").await.status, 405);
    // A preflight for a path that is not the API's is the router's 404.
    let r = send(
        a,
        "OPTIONS",
        "/chat/completions",
        &preflight_headers(PAGE),
        "",
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
}

#[tokio::test]
async fn only_the_listed_origins_get_cors_headers() {
    let d = start(fleet(&["https://chat.example.com", PAGE])).await;
    let a = d.openai_addr;
    for origin in ["https://chat.example.com", PAGE] {
        let r = send(a, "OPTIONS", CHAT, &preflight_headers(origin), "").await;
        assert_eq!(r.status, 204, "{origin}: {r:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("vary"), Some("origin"));
        let r = chat_from(a, origin).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("vary"), Some("origin"));
    }

    // Another origin, or a listed one on another port or scheme: the preflight is refused
    // saying why, and the request itself is served (a non-browser client may send any
    // `Origin`) without CORS headers, so a browser does not hand the answer to the page.
    for origin in [
        "https://evil.example",
        "http://localhost:3001",
        "http://chat.example.com",
    ] {
        let r = send(a, "OPTIONS", CHAT, &preflight_headers(origin), "").await;
        assert_eq!(r.status, 403, "{origin}: {r:?}");
        assert!(cors_headers(&r).is_empty(), "{origin}: {r:?}");
        let e = &r.json()["error"];
        assert_eq!(e["code"], "origin_not_allowed");
        assert!(e["message"].as_str().unwrap().contains(origin), "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("--allowed-origins"),
            "{e}"
        );
        let r = chat_from(a, origin).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(cors_headers(&r).is_empty(), "{origin}: {r:?}");
        assert_eq!(r.header("vary"), Some("origin"), "{origin}");
        let r = send(a, "GET", "/v1/models", &[("Origin", origin)], "").await;
        assert_eq!(r.status, 200);
        assert!(cors_headers(&r).is_empty(), "{origin}: {r:?}");
    }
}

#[tokio::test]
async fn an_empty_list_turns_cors_off() {
    let d = start(fleet(&[])).await;
    let a = d.openai_addr;
    let r = send(a, "OPTIONS", CHAT, &preflight_headers(PAGE), "").await;
    assert_eq!(r.status, 405, "{r:?}");
    assert!(cors_headers(&r).is_empty(), "{r:?}");
    let r = chat_from(a, PAGE).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(cors_headers(&r).is_empty(), "{r:?}");
    assert_eq!(r.header("vary"), None);
}

/// A bad origin is refused before anything listens, named by file, line and key from a
/// config file, and as a command-line value from `--allowed-origins`.
#[test]
fn a_bad_origin_is_named_where_it_was_given() {
    let config = tmp("serve-cors", "serve.toml");
    std::fs::write(
        &config,
        "time_scale = 2.0\nallowed_origins = [\"https://chat.example.com/\"]\n",
    )
    .unwrap();
    fails(
        &[&["serve", "--config", s(&config)], FREE_PORTS].concat(),
        "serve.toml:2:1: field `allowed_origins`: entry 1 (`https://chat.example.com/`) is not \
         an origin: it has a path",
    );
    fails(
        &[
            &["serve", "--allowed-origins", "http://a.com,Https://b.com"],
            FREE_PORTS,
        ]
        .concat(),
        "invalid command-line value: --allowed-origins: entry 2 (`Https://b.com`) is not an origin",
    );
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
    // The printed default is vLLM's.
    let printed = ok(&["serve", "--print-default-config"]);
    assert!(
        printed.contains("\nallowed_origins = [\"*\"]\n"),
        "{printed}"
    );
}

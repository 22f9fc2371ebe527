//! What a pool of real engines is made of: the OpenAI-compatible endpoints that serve it,
//! the model name they serve, and the metrics dialect their `/metrics` speaks. Plain data,
//! checked here without any HTTP library so that the fleet stays part of the pure core; the
//! daemon's proxy backends (`serve::upstream`) do the talking.

/// A pool whose backends are real engines behind OpenAI-compatible endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// One API base per backend, normalised by [`api_base`] (`http://host:8000/v1`).
    pub endpoints: Vec<String>,
    /// The model name the endpoints serve (`--served-model-name` in vLLM); a client's
    /// request for the pool's catalogue model is sent upstream under this name.
    pub served_model: String,
    /// Metric-name dialect of the endpoints' `/metrics` (`vllm`, `sglang`, `mindie`,
    /// `llamacpp`), or `none` to not scrape. `None`: the engine's own dialect.
    pub metrics: Option<String>,
}

/// Dialect names a fleet file may give (`metrics = "..."`).
pub const METRICS_DIALECTS: [&str; 5] = ["vllm", "sglang", "mindie", "llamacpp", "none"];

/// The API base of an endpoint URL, or why it is not one: `http://` or `https://`, a host,
/// an optional port (1..=65535), no query, fragment, user info or whitespace. A URL
/// without a path gets `/v1` (the OpenAI servers' default); one with a path is taken as
/// the base (`https://gateway.example/openai/v1`). A trailing `/` is dropped.
pub fn api_base(url: &str) -> Result<String, String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if let Some(r) = url.strip_prefix("https://") {
        r
    } else {
        return Err(format!("`{url}` does not start with http:// or https://"));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{url}` contains whitespace"));
    }
    if url.contains(['?', '#']) {
        return Err(format!(
            "`{url}`: an endpoint is a base URL, without ? or #"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!("`{url}`: credentials do not belong in the URL"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("`{url}` names no host"));
    }
    if let Some(p) = port {
        match p.parse::<u32>() {
            Ok(1..=65535) => {}
            _ => return Err(format!("`{url}`: port `{p}` is not in 1..=65535")),
        }
    }
    let base = url.trim_end_matches('/');
    Ok(if path.trim_end_matches('/').is_empty() {
        format!("{base}/v1")
    } else {
        base.to_string()
    })
}

/// The server root of an API base (`http://host:8000/v1` → `http://host:8000`), where
/// engines serve `/health` and `/metrics`.
pub fn server_root(api_base: &str) -> &str {
    let after_scheme = api_base.find("://").map_or(0, |i| i + 3);
    match api_base[after_scheme..].find('/') {
        Some(i) => &api_base[..after_scheme + i],
        None => api_base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_normalise_to_api_bases() {
        assert_eq!(
            api_base("http://127.0.0.1:8000").unwrap(),
            "http://127.0.0.1:8000/v1"
        );
        assert_eq!(api_base("http://h:8000/").unwrap(), "http://h:8000/v1");
        assert_eq!(api_base("http://h:8000/v1/").unwrap(), "http://h:8000/v1");
        assert_eq!(
            api_base("https://gw.example/openai/v1").unwrap(),
            "https://gw.example/openai/v1"
        );
        assert_eq!(api_base("http://[::1]:9/").unwrap(), "http://[::1]:9/v1");
        for bad in [
            "grpc://h:1",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://h:x",
            "http://a@h:1",
            "http://h:1/v1?x=1",
            "http://h :1",
        ] {
            assert!(api_base(bad).is_err(), "{bad}");
        }
        assert_eq!(server_root("http://h:8000/v1"), "http://h:8000");
        assert_eq!(
            server_root("https://gw.example/openai/v1"),
            "https://gw.example"
        );
    }
}

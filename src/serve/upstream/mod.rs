//! Proxied backends: a fleet pool of `kind = "openai"` is a set of real engines (vLLM,
//! vLLM-Ascend, SGLang, MindIE, llama.cpp) behind their OpenAI-compatible endpoints, one
//! backend per endpoint. Each backend's driver ([`driver`]) honours the same command and
//! delivery contract as a simulated backend's, so both front ends, admission, routing,
//! deadlines, cancellation and the terminal-outcome accounting work on it unchanged: it
//! forwards the request (`stream: true` upstream always, with usage requested) under the
//! endpoint's served model name, streams the engine's text back as it arrives, and ends
//! the upstream request when the client goes away.
//!
//! The pool's performance model stays the router's prior: each endpoint keeps an EWMA of
//! observed over predicted time to first token and time per output token ([`ratio`]),
//! publishes its own count of in-flight requests and tokens, multiplied by those ratios,
//! into the load board the policies read, and exports the ratios
//! (`dujiang_backend_prediction_ratio`). An endpoint that refuses connections, or fails
//! `max_failures` requests in a row before their first token, is taken out of routing
//! and probed (`/health`, else `/v1/models`) until it answers again.
//!
//! Each endpoint also keeps its clean observations ([`crate::calibrate::observed`]): the
//! time to first token of requests alone on it and the per-token time of streams with
//! their batch; `GET /observed` on the metrics port exports them as measured points for
//! `dujiang calibrate --points`.

mod driver;
mod exchange;
mod ratio;

pub use driver::spawn_proxy;

use super::config::UpstreamConfig;
use crate::calibrate::observed::{Observations, Stack};
use crate::openai_client::HttpClient;
use crate::wire;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Sampling fields passed through to a real engine as the client sent them.
pub type Sampling = serde_json::Map<String, serde_json::Value>;

/// Key under which [`Sampling`] carries a completion's token-id prompt, as the client
/// sent it: the daemon's own prompt text is then a placeholder, so the engine is sent the
/// ids (as `prompt`).
pub const PROMPT_IDS: &str = "prompt";

/// What a real engine is sent for one request besides its lengths: the text (chat
/// messages or a prompt), the client's sampling fields, and its deadline.
#[derive(Debug, Default)]
pub struct Ask {
    pub messages: Vec<wire::ChatMessage>,
    pub prompt: String,
    pub sampling: Sampling,
    /// Wall instant the client's deadline runs out; the remaining time goes upstream.
    pub deadline: Option<Instant>,
}

/// What every proxied backend shares: the configuration and one HTTP client (one
/// connection pool, so connections to an endpoint are reused across its requests).
pub struct UpstreamContext {
    pub config: UpstreamConfig,
    http: OnceLock<HttpClient>,
    /// Every live endpoint's observations, for `GET /observed` (dead ones are pruned).
    observed: parking_lot::Mutex<Vec<Weak<Observed>>>,
}

/// One endpoint's clean observations and what they describe.
pub struct Observed {
    pub stack: Stack,
    /// API base (`http://host:8000/v1`).
    pub endpoint: Arc<str>,
    pub observations: parking_lot::Mutex<Observations>,
}

impl UpstreamContext {
    pub fn new(config: UpstreamConfig) -> UpstreamContext {
        UpstreamContext {
            config,
            http: OnceLock::new(),
            observed: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Registers an endpoint's observations for export.
    pub fn observe(&self, stack: Stack, endpoint: Arc<str>) -> Arc<Observed> {
        let o = Arc::new(Observed {
            stack,
            endpoint,
            observations: parking_lot::Mutex::new(Observations::default()),
        });
        let mut all = self.observed.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&o));
        o
    }

    /// Every live endpoint's observations as measured points (TOML `[[point]]` tables);
    /// `router` names this router in each point's source.
    pub fn observed_points(&self, router: &str) -> String {
        let live: Vec<Arc<Observed>> = self
            .observed
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut out = format!(
            "# Points observed by dujiang router `{router}`: feed to `dujiang calibrate --points FILE`.\n"
        );
        for o in live {
            out.push_str(&o.observations.lock().to_toml(&o.stack, router, &o.endpoint));
        }
        out
    }

    /// The shared client, built on first use (a fleet without real engines never does).
    pub fn http(&self) -> &HttpClient {
        self.http.get_or_init(|| {
            crate::openai_client::http_client(
                Duration::from_millis(self.config.connect_timeout_ms),
                Duration::from_secs(90),
            )
            .expect("the TLS provider and bundled roots load")
        })
    }
}

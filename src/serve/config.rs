//! The daemon's configuration file (`dujiang serve --config FILE`): listen addresses, time
//! scale, fleet, policy, shutdown grace period and admission limits. Unknown keys are
//! errors that name the file and line. Command-line flags override the file.

use crate::config::{parse_toml, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The largest `time_scale` accepted: simulated nanoseconds are a `u64`, so at 1e6 the
/// daemon's simulated clock runs out after ~5.1 hours of wall time.
pub const MAX_TIME_SCALE: f64 = 1e6;

/// The default config, as printed by `dujiang serve --print-default-config`. A test checks
/// that it parses to [`ServeConfig::default`].
pub const DEFAULT_CONFIG_TOML: &str = r#"# dujiang serve configuration. Every key is optional; command-line flags win.

# gRPC data plane: dujiang.v1.Inference, grpc.health.v1 and reflection.
grpc_addr = "127.0.0.1:50051"
# gRPC admin plane: dujiang.v1.Admin (pools, policy, drains, faults), on its own listener.
# Only a loopback address is allowed unless admin_token_file is set.
admin_addr = "127.0.0.1:50052"
# File holding the bearer token every Admin call must present (`authorization: Bearer
# TOKEN`). Empty: no token, and admin_addr must be loopback.
admin_token_file = ""
# HTTP: /metrics (Prometheus), /healthz, /readyz.
http_addr = "127.0.0.1:9464"
# OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions, /v1/models, /health.
openai_addr = "127.0.0.1:8000"
# Origins whose web pages may call the OpenAI API from a browser (CORS), as vLLM's
# --allowed-origins: ["*"] any; else exact origins as browsers send them, scheme://host
# and an optional :port ("https://chat.example.com"); [] none (no CORS headers are sent,
# so browsers refuse cross-origin calls). Clients that are not browsers are unaffected.
allowed_origins = ["*"]
# Simulated time runs this many times faster than wall time (load tests use > 1).
time_scale = 1.0
# Fleet file (config/fleets/*.toml). Empty: the embedded demo fleet.
fleet = ""
# Engine-catalogue overlays applied in order over the embedded config/engines.toml (what
# `dujiang calibrate --out` writes), so the daemon paces with your fitted coefficients.
engines = []
# Routing policy; empty: the fleet file's policy.
policy = ""
# On SIGTERM/SIGINT, in-flight streams get this long to finish before they are cut.
grace_period_ms = 30000

[admission]
# Requests in flight across the daemon before new ones are shed (RESOURCE_EXHAUSTED).
max_in_flight = 100000
# Requests waiting in one backend's queue before new ones routed there are shed.
max_waiting_per_backend = 1024
# Retry hint sent with a request shed by one of these bounds (metadata `retry-after-ms`).
retry_after_ms = 1000
# Batch requests are admitted only while in-flight requests are below this fraction of
# max_in_flight, so batch is shed before interactive.
batch_watermark = 0.75
# The per-backend waiting bound for batch requests (lower, so batch backs off first).
batch_waiting_per_backend = 256
# An interactive request whose predicted time to first token (the queue ahead of it on its
# backend, from the chip's performance model) or time per output token exceeds its SLO
# times this factor is shed at once (RESOURCE_EXHAUSTED, `retry-after-ms` = the predicted
# drain time); batch requests wait up to their deadline instead. 0: off.
slo_shed_factor = 1.0

[reliability]
# A request whose backend fails is re-routed (not started) or migrated (streaming: the
# prompt plus the tokens already sent are prefilled again elsewhere) at most this often.
migration_retries = 2
# A backend whose observed/predicted step-time ratio (an EWMA) reaches this is ejected
# from routing as a straggler.
straggler_ratio = 2.0
# An ejected backend is re-admitted once probes bring its ratio down to this.
recover_ratio = 1.3
# Weight of each new step-time sample in the EWMA.
ewma_alpha = 0.2
# Step samples a backend needs before it can be judged.
min_samples = 16
# Never eject more than this fraction of a pool (rounded down).
max_ejection_fraction = 0.5
# How often stragglers are checked and ejected backends probed, wall milliseconds.
check_interval_ms = 100

[upstream]
# Real engines: fleet pools of kind = "openai", one backend per endpoint. Wall milliseconds.
# A connection to an endpoint not made within this long fails (the request is retried on
# another endpoint, as when the connection is refused).
connect_timeout_ms = 1000
# An endpoint whose response headers do not arrive within this long has failed the request.
first_byte_timeout_ms = 30000
# How often each endpoint's Prometheus /metrics is scraped for its own load figures.
scrape_interval_ms = 250
# How often an endpoint taken out (refusing connections, or failing requests) is probed
# (GET /health, else /v1/models); it serves again once a probe succeeds.
probe_interval_ms = 500
# Consecutive failed requests (errors before a first token) that take an endpoint out.
max_failures = 3
# Weight of each request in an endpoint's EWMA of observed over predicted prefill time and
# time per output token (dujiang_backend_prediction_ratio), which corrects its predictions.
ewma_alpha = 0.2
"#;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    /// The Admin service's own listener (never the data plane's).
    pub admin_addr: SocketAddr,
    /// Bearer token file for Admin calls; empty means none (loopback only).
    pub admin_token_file: PathBuf,
    pub http_addr: SocketAddr,
    /// The OpenAI-compatible HTTP API's listener.
    pub openai_addr: SocketAddr,
    /// Origins allowed to call the OpenAI API from a browser: `*` any, empty none.
    pub allowed_origins: Vec<String>,
    pub time_scale: f64,
    /// Fleet file; empty means the embedded demo fleet.
    pub fleet: PathBuf,
    /// Engine-catalogue overlays, applied in order over the embedded catalogue.
    pub engines: Vec<PathBuf>,
    /// Policy name; empty means the fleet's.
    pub policy: String,
    pub grace_period_ms: u64,
    pub admission: AdmissionLimits,
    pub reliability: ReliabilityConfig,
    pub upstream: UpstreamConfig,
}

/// How the daemon talks to real engines (pools of kind = "openai").
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub scrape_interval_ms: u64,
    pub probe_interval_ms: u64,
    pub max_failures: u32,
    pub ewma_alpha: f64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_ms: 1000,
            first_byte_timeout_ms: 30_000,
            scrape_interval_ms: 250,
            probe_interval_ms: 500,
            max_failures: 3,
            ewma_alpha: 0.2,
        }
    }
}

/// Backend failure handling and straggler ejection.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReliabilityConfig {
    pub migration_retries: u32,
    pub straggler_ratio: f64,
    pub recover_ratio: f64,
    pub ewma_alpha: f64,
    pub min_samples: u32,
    pub max_ejection_fraction: f64,
    pub check_interval_ms: u64,
}

impl Default for ReliabilityConfig {
    fn default() -> Self {
        let outlier = crate::fleet::outlier::OutlierConfig::default();
        ReliabilityConfig {
            migration_retries: 2,
            // The core's defaults, which replay's straggler check uses too.
            straggler_ratio: outlier.straggler_ratio,
            recover_ratio: outlier.recover_ratio,
            ewma_alpha: crate::fleet::outlier::DEFAULT_EWMA_ALPHA,
            min_samples: outlier.min_samples as u32,
            max_ejection_fraction: outlier.max_ejection_fraction,
            check_interval_ms: crate::fleet::outlier::DEFAULT_CHECK_INTERVAL_MS,
        }
    }
}

/// The `[admission]` section: the core's admission limits themselves, so the daemon's
/// defaults are the one default replay and the planner use too.
pub type AdmissionLimits = crate::admission::AdmissionConfig;

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 50052)),
            admin_token_file: PathBuf::new(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            openai_addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            // vLLM's default: a browser playground on any origin can call the API.
            allowed_origins: vec!["*".into()],
            time_scale: 1.0,
            fleet: PathBuf::new(),
            engines: Vec::new(),
            policy: String::new(),
            grace_period_ms: 30_000,
            admission: AdmissionLimits::default(),
            reliability: ReliabilityConfig::default(),
            upstream: UpstreamConfig::default(),
        }
    }
}

impl ServeConfig {
    /// Parses and validates a config file's text.
    pub fn parse(src: &str, file: &str) -> Result<ServeConfig, ConfigError> {
        let cfg: ServeConfig = parse_toml(src, file)?;
        cfg.validate(file, src)?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let name = path.display().to_string();
        let src = crate::config::read_text(path, &name)?;
        ServeConfig::parse(&src, &name)
    }

    /// Checks meaning (the schema is checked by serde). `src` places errors on lines.
    pub fn validate(&self, file: &str, src: &str) -> Result<(), ConfigError> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(ConfigError::at_field(
                file,
                src,
                "time_scale",
                format!("must be a positive number, got {}", self.time_scale),
            ));
        }
        if self.time_scale > MAX_TIME_SCALE {
            return Err(ConfigError::at_field(
                file,
                src,
                "time_scale",
                format!(
                    "must be at most {MAX_TIME_SCALE:e}, got {}: simulated time is kept in 64-bit \
                     nanoseconds (584 years), which at scale S lasts 584 years / S of wall time \
                     (5.1 hours at 1e6); past it every request would be shed",
                    self.time_scale
                ),
            ));
        }
        if !self.policy.is_empty()
            && !crate::policy::POLICIES
                .iter()
                .any(|p| p.name == self.policy)
        {
            return Err(ConfigError::at_field(
                file,
                src,
                "policy",
                format!(
                    "unknown policy `{}`; known policies: {}",
                    self.policy,
                    crate::policy::POLICIES
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if !self.admin_addr.ip().is_loopback() && self.admin_token_file.as_os_str().is_empty() {
            return Err(ConfigError::at_field(
                file,
                src,
                "admin_addr",
                format!(
                    "{} is not a loopback address: the Admin service can remove pools and \
                     inject faults, so it needs admin_token_file (--admin-token-file) to \
                     listen beyond loopback",
                    self.admin_addr
                ),
            ));
        }
        if let Some(problem) = origins_problem(&self.allowed_origins) {
            return Err(ConfigError::at_field(file, src, "allowed_origins", problem));
        }
        if let Err((field, message)) = self.admission.validate() {
            return Err(ConfigError::at_field(
                file,
                src,
                &format!("admission.{field}"),
                message,
            ));
        }
        let r = &self.reliability;
        for (field, v) in [
            ("reliability.straggler_ratio", r.straggler_ratio),
            ("reliability.recover_ratio", r.recover_ratio),
        ] {
            if !(v.is_finite() && v >= 1.0) {
                return Err(ConfigError::at_field(
                    file,
                    src,
                    field,
                    format!("must be a ratio of at least 1, got {v}"),
                ));
            }
        }
        if r.recover_ratio > r.straggler_ratio {
            return Err(ConfigError::at_field(
                file,
                src,
                "reliability.recover_ratio",
                format!(
                    "must not exceed straggler_ratio ({}), got {}",
                    r.straggler_ratio, r.recover_ratio
                ),
            ));
        }
        for (field, v) in [
            ("reliability.ewma_alpha", r.ewma_alpha),
            ("reliability.max_ejection_fraction", r.max_ejection_fraction),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(ConfigError::at_field(
                    file,
                    src,
                    field,
                    format!("must be in [0, 1], got {v}"),
                ));
            }
        }
        if r.check_interval_ms == 0 {
            return Err(ConfigError::at_field(
                file,
                src,
                "reliability.check_interval_ms",
                "must be at least 1",
            ));
        }
        let u = &self.upstream;
        for (field, v) in [
            ("upstream.connect_timeout_ms", u.connect_timeout_ms),
            ("upstream.first_byte_timeout_ms", u.first_byte_timeout_ms),
            ("upstream.scrape_interval_ms", u.scrape_interval_ms),
            ("upstream.probe_interval_ms", u.probe_interval_ms),
            ("upstream.max_failures", u64::from(u.max_failures)),
        ] {
            if v == 0 {
                return Err(ConfigError::at_field(
                    file,
                    src,
                    field,
                    "must be at least 1",
                ));
            }
        }
        if !(u.ewma_alpha.is_finite() && u.ewma_alpha > 0.0 && u.ewma_alpha <= 1.0) {
            return Err(ConfigError::at_field(
                file,
                src,
                "upstream.ewma_alpha",
                format!("must be in (0, 1], got {}", u.ewma_alpha),
            ));
        }
        Ok(())
    }
}

/// What is wrong with an `allowed_origins` list, if anything. Entries are compared with a
/// request's `Origin` byte for byte, so each must be written as browsers send it (lower
/// case, no path, no trailing slash); one that never could match is refused rather than
/// left to refuse every page silently.
fn origins_problem(origins: &[String]) -> Option<String> {
    if origins.len() > 1 && origins.iter().any(|o| o == "*") {
        return Some(format!(
            "`*` allows every origin, so it must be the only entry; got {origins:?}"
        ));
    }
    origins.iter().enumerate().find_map(|(i, o)| {
        if o == "*" {
            return None;
        }
        origin_problem(o).map(|why| {
            format!(
                "entry {} (`{o}`) is not an origin: {why}; an origin is scheme://host or \
                 scheme://host:port, as browsers send it in `Origin` (e.g. \
                 \"https://chat.example.com\"), or `*` alone for any",
                i + 1
            )
        })
    })
}

fn origin_problem(origin: &str) -> Option<&'static str> {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Some("no `://` after a scheme");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !scheme_ok {
        return Some("the scheme is not a lower-case URL scheme");
    }
    if authority.is_empty() {
        return Some("no host");
    }
    if authority.contains(['/', '?', '#']) {
        return Some("it has a path, query or fragment (a trailing `/` counts)");
    }
    if !authority.bytes().all(|b| b.is_ascii_graphic()) || authority.contains('@') {
        return Some("the host has spaces, user info or characters outside ASCII");
    }
    if authority.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("browsers send hosts in lower case, so upper-case letters never match");
    }
    // The port follows the last `:` outside an IPv6 literal's brackets.
    let after_host = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((_, rest)) => rest,
            None => return Some("an IPv6 host without its closing `]`"),
        },
        None => authority.rsplit_once(':').map_or("", |(_, p)| p),
    };
    let port = after_host.strip_prefix(':').unwrap_or(after_host);
    if authority.starts_with('[') && !after_host.is_empty() && !after_host.starts_with(':') {
        return Some("text after the IPv6 host that is not a `:port`");
    }
    if (authority.ends_with(':') || !port.is_empty()) && port.parse::<u16>().is_err() {
        return Some("the port is not a number from 0 to 65535");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_default_is_the_default() {
        let parsed = ServeConfig::parse(DEFAULT_CONFIG_TOML, "default").unwrap();
        assert_eq!(parsed, ServeConfig::default());
    }

    #[test]
    fn unknown_key_is_placed() {
        let src = "time_scale = 2.0\n[admission]\nmax_inflight = 3\n";
        let err = ServeConfig::parse(src, "serve.toml").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.to_string().contains("max_inflight"), "{err}");
    }

    #[test]
    fn open_admin_address_needs_a_token() {
        let src = "admin_addr = \"0.0.0.0:50052\"\n";
        let err = ServeConfig::parse(src, "s.toml").unwrap_err();
        assert_eq!(err.line, Some(1), "{err}");
        assert!(err.to_string().contains("admin_token_file"), "{err}");
        let with_token = format!("{src}admin_token_file = \"/run/secrets/admin\"\n");
        let cfg = ServeConfig::parse(&with_token, "s.toml").unwrap();
        assert!(cfg.admin_addr.ip().is_unspecified());
        // Loopback needs no token.
        ServeConfig::parse("admin_addr = \"[::1]:7000\"\n", "s.toml").unwrap();
    }

    #[test]
    fn a_time_scale_past_the_clocks_range_is_refused() {
        assert!(ServeConfig::parse("time_scale = 1e6\n", "s.toml").is_ok());
        let err = ServeConfig::parse("\ntime_scale = 1e9\n", "s.toml").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("s.toml:2:1: field `time_scale`: must be at most 1e6, got 1000000000"),
            "{err}"
        );
    }

    #[test]
    fn unknown_policy_is_placed() {
        let err = ServeConfig::parse("\npolicy = \"least_work\"\n", "s.toml").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("s.toml:2:1: field `policy`: unknown policy `least_work`; known policies: round-robin"),
            "{err}"
        );
        ServeConfig::parse("policy = \"least-work\"\n", "s.toml").unwrap();
    }

    #[test]
    fn allowed_origins_are_origins_as_browsers_send_them() {
        for ok in [
            "allowed_origins = []\n",
            "allowed_origins = [\"*\"]\n",
            "allowed_origins = [\"https://chat.example.com\", \"http://localhost:3000\"]\n",
            "allowed_origins = [\"http://[::1]:8080\", \"chrome-extension://abcdef\"]\n",
        ] {
            ServeConfig::parse(ok, "s.toml").unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            (
                "[\"https://chat.example.com/\"]",
                "entry 1 (`https://chat.example.com/`) is not an origin: it has a path",
            ),
            (
                "[\"http://a.com\", \"a.com\"]",
                "entry 2 (`a.com`) is not an origin: no `://`",
            ),
            ("[\"https://Chat.example.com\"]", "upper-case"),
            ("[\"http://localhost:80000\"]", "the port is not a number"),
            ("[\"http://localhost:\"]", "the port is not a number"),
            ("[\"http://[::1\"]", "closing `]`"),
            (
                "[\"*\", \"https://a.com\"]",
                "`*` allows every origin, so it must be the only entry",
            ),
        ] {
            let src = format!("time_scale = 1.0\nallowed_origins = {bad}\n");
            let err = ServeConfig::parse(&src, "s.toml").unwrap_err().to_string();
            assert!(
                err.starts_with("s.toml:2:1: field `allowed_origins`: ") && err.contains(why),
                "{bad}: {err}"
            );
        }
        // Not a list of strings: serde's error, placed too.
        let err = ServeConfig::parse("\nallowed_origins = \"*\"\n", "s.toml").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
    }

    #[test]
    fn bad_time_scale_names_the_field() {
        let err = ServeConfig::parse("\ntime_scale = -1.0\n", "s.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "s.toml:2:1: field `time_scale`: must be a positive number, got -1"
        );
    }
}

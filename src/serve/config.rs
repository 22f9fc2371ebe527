//! The daemon's configuration file (`dujiang serve --config FILE`): listen addresses, time
//! scale, fleet, policy, shutdown grace period and admission limits. Unknown keys are
//! errors that name the file and line. Command-line flags override the file.

use crate::config::{parse_toml, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The default config, as printed by `dujiang serve --print-default-config`. A test checks
/// that it parses to [`ServeConfig::default`].
pub const DEFAULT_CONFIG_TOML: &str = r#"# dujiang serve configuration. Every key is optional; command-line flags win.

# gRPC (dujiang.v1.Inference, dujiang.v1.Admin, grpc.health.v1, reflection).
grpc_addr = "127.0.0.1:50051"
# HTTP: /metrics (Prometheus), /healthz, /readyz.
http_addr = "127.0.0.1:9464"
# Simulated time runs this many times faster than wall time (load tests use > 1).
time_scale = 1.0
# Fleet file (config/fleets/*.toml). Empty: the embedded demo fleet.
fleet = ""
# Routing policy; empty: the fleet file's policy.
policy = ""
# On SIGTERM/SIGINT, in-flight streams get this long to finish before they are cut.
grace_period_ms = 30000

[admission]
# Requests in flight across the daemon before new ones are shed (RESOURCE_EXHAUSTED).
max_in_flight = 100000
# Requests waiting in one backend's queue before new ones routed there are shed.
max_waiting_per_backend = 1024
# Retry hint sent with a shed request (metadata `retry-after-ms`).
retry_after_ms = 1000
"#;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub time_scale: f64,
    /// Fleet file; empty means the embedded demo fleet.
    pub fleet: PathBuf,
    /// Policy name; empty means the fleet's.
    pub policy: String,
    pub grace_period_ms: u64,
    pub admission: AdmissionLimits,
}

/// Limits the daemon sheds load by, before any backend sees the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionLimits {
    pub max_in_flight: u64,
    pub max_waiting_per_backend: u32,
    pub retry_after_ms: u64,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_in_flight: 100_000,
            max_waiting_per_backend: 1024,
            retry_after_ms: 1000,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            time_scale: 1.0,
            fleet: PathBuf::new(),
            policy: String::new(),
            grace_period_ms: 30_000,
            admission: AdmissionLimits::default(),
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
        let src = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&name, format!("cannot read: {e}")))?;
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
        if self.admission.max_in_flight == 0 {
            return Err(ConfigError::at_field(
                file,
                src,
                "admission.max_in_flight",
                "must be at least 1",
            ));
        }
        Ok(())
    }
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
    fn bad_time_scale_names_the_field() {
        let err = ServeConfig::parse("\ntime_scale = -1.0\n", "s.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "s.toml:2:1: field `time_scale`: must be a positive number, got -1"
        );
    }
}

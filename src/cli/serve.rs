//! `dujiang serve`: run the daemon until SIGTERM or SIGINT. With no arguments it serves
//! the embedded demo fleet on gRPC 127.0.0.1:50051 (Inference), Admin 127.0.0.1:50052,
//! HTTP 127.0.0.1:9464 and the OpenAI-compatible API on 127.0.0.1:8000, and prints
//! `serving grpc=ADDR admin=ADDR http=ADDR openai=ADDR pid=PID` once all four accept
//! connections.

use crate::serve::{ServeConfig, DEFAULT_CONFIG_TOML};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config file (see --print-default-config); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC listen address of the data plane (Inference, health, reflection).
    #[arg(long, value_name = "ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// gRPC listen address of the Admin service; non-loopback needs --admin-token-file.
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<SocketAddr>,
    /// File holding the bearer token Admin calls must present.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// HTTP listen address for /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// HTTP listen address of the OpenAI-compatible API (/v1/chat/completions,
    /// /v1/completions, /v1/models, /health).
    #[arg(long, value_name = "ADDR")]
    openai_addr: Option<SocketAddr>,
    /// Origins whose web pages may call the OpenAI API from a browser (CORS), as vLLM's
    /// flag: `*` any (the default), else exact origins (`https://chat.example.com`),
    /// comma-separated or repeated; `''` none. Replaces the config file's list.
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    allowed_origins: Option<Vec<String>>,
    /// Run simulated time this many times faster than wall time.
    #[arg(long, value_name = "X")]
    time_scale: Option<f64>,
    /// Fleet file (default: the embedded demo fleet).
    #[arg(long, value_name = "FILE")]
    fleet: Option<PathBuf>,
    /// Engine-catalogue overlay (repeatable; e.g. what `dujiang calibrate --out` wrote).
    /// Given here, replaces the config file's `engines`.
    #[arg(long, value_name = "FILE")]
    engines: Vec<PathBuf>,
    /// Routing policy (default: the fleet's).
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// Grace period for in-flight streams on shutdown, in milliseconds.
    #[arg(long, value_name = "MS")]
    grace_period_ms: Option<u64>,
    /// Print the default config file and exit.
    #[arg(long)]
    print_default_config: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.print_default_config {
        out!("{DEFAULT_CONFIG_TOML}")?;
        return Ok(());
    }
    let mut config = match &args.config {
        Some(path) => ServeConfig::load(path)?,
        None => ServeConfig::default(),
    };
    // The config file's own fleet and overlays, unless flags replace them.
    if let Some(path) = &args.config {
        if args.fleet.is_none() && !config.fleet.as_os_str().is_empty() {
            super::check_config_path(path, "fleet", &config.fleet)?;
        }
        if args.engines.is_empty() {
            for file in &config.engines {
                super::check_config_path(path, "engines", file)?;
            }
        }
    }
    if let Some(a) = args.grpc_addr {
        config.grpc_addr = a;
    }
    if let Some(a) = args.admin_addr {
        config.admin_addr = a;
    }
    if let Some(f) = args.admin_token_file {
        config.admin_token_file = f;
    }
    if let Some(a) = args.http_addr {
        config.http_addr = a;
    }
    if let Some(a) = args.openai_addr {
        config.openai_addr = a;
    }
    if let Some(origins) = args.allowed_origins {
        config.allowed_origins = origins.into_iter().filter(|o| !o.is_empty()).collect();
    }
    if let Some(x) = args.time_scale {
        config.time_scale = x;
    }
    if let Some(f) = args.fleet {
        config.fleet = f;
    }
    if !args.engines.is_empty() {
        config.engines = args.engines;
    }
    if let Some(p) = args.policy {
        config.policy = p;
    }
    if let Some(g) = args.grace_period_ms {
        config.grace_period_ms = g;
    }
    config
        .validate("command line", "")
        .map_err(|e| match e.field {
            // A flag's value (the file's own were checked when it was read): named by its
            // flag, which is the key's name with dashes.
            Some(f) if !f.contains('.') => {
                anyhow::anyhow!("--{}: {}", f.replace('_', "-"), e.message)
            }
            _ => anyhow::anyhow!("{}", e.message),
        })
        .context("invalid command-line value")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // One line on stdout once the ports accept connections, with the addresses bound (port
    // 0 picks a free one) and the pid, so whoever started the daemon knows where it serves
    // and that the daemon answering there is this one.
    // Whoever reads it may close the pipe once it has the line: the daemon serves on.
    let ready = |d: &crate::serve::RunningDaemon| {
        let printed = outln!(
            "serving grpc={} admin={} http={} openai={} pid={}",
            d.grpc_addr,
            d.admin_addr,
            d.http_addr,
            d.openai_addr,
            std::process::id()
        );
        if let Err(e) = printed {
            tracing::warn!("could not print the ready line to stdout: {e}");
        }
    };
    runtime.block_on(crate::serve::run_until_signal(config, args.config, ready))
}

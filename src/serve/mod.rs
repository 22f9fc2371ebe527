//! The daemon (`dujiang serve`): gRPC `dujiang.v1.Inference` with the standard
//! `grpc.health.v1` and server reflection on the data-plane port, `dujiang.v1.Admin` on a
//! port of its own (loopback unless a bearer token is configured: Admin can remove pools
//! and inject faults, so whoever can send a prompt must not be able to call it), an HTTP
//! port with `/metrics`, `/healthz` and `/readyz`, the OpenAI-compatible HTTP API on a
//! port of its own ([`openai`]), and one wall-clock driver per simulated backend. Both
//! request front ends, gRPC and OpenAI, submit on one path ([`Daemon::submit_via`]) and
//! answer from one request stream ([`stream`]).
//!
//! gRPC is served by hyper through axum's server (tonic's `Routes`), not tonic's own
//! transport: tonic's transport applies `grpc-timeout` itself and answers CANCELLED, while
//! the daemon must answer DEADLINE_EXCEEDED and abort the sequence, so the request stream
//! enforces deadlines instead ([`inference`]).
//!
//! Shutdown is phased: the trigger (SIGTERM/SIGINT, or [`RunningDaemon::shutdown`]) turns
//! readiness and health NOT_SERVING and refuses new work with UNAVAILABLE; in-flight
//! streams get the configured grace period to finish; whatever is left then ends with
//! UNAVAILABLE; finally the listeners close.

mod admin;
mod backend;
mod clock;
pub mod config;
mod daemon;
pub mod error;
mod http;
mod inference;
mod mailbox;
mod openai;
pub use crate::fleet::outlier;
mod routing;
pub mod scrape;
mod stream;
pub mod upstream;

pub use backend::{Delivery, FinishReport};
pub use clock::SimClock;
pub use config::{AdmissionLimits, ReliabilityConfig, ServeConfig, DEFAULT_CONFIG_TOML};
pub use daemon::{estimate_tokens, Daemon, FleetInput};
pub use error::{ServeError, RETRY_AFTER_MS};
pub use inference::{grpc_timeout, MAX_REQUEST_BYTES};
pub use mailbox::Inbox;
pub use stream::token_text;

use crate::metrics::Outcome;
use crate::wire;
use anyhow::Context as _;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

/// Service names health is reported for, besides the overall `""`. Each port's health
/// service answers for the services that port serves.
const SERVICES: [&str; 1] = ["dujiang.v1.Inference"];
const ADMIN_SERVICES: [&str; 1] = ["dujiang.v1.Admin"];

/// How long after the grace period the remaining streams get to receive their final status
/// before the listeners close.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// A started daemon: its bound addresses and the means to stop it.
pub struct RunningDaemon {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The OpenAI-compatible HTTP API.
    pub openai_addr: SocketAddr,
    pub daemon: Arc<Daemon>,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningDaemon {
    /// Begins graceful shutdown (idempotent).
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the daemon has shut down.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("daemon task panicked")?
    }
}

/// Binds the listeners, builds the fleet and starts serving. Returns once every port
/// accept connections (so tests can pass port 0 and read the bound addresses).
pub async fn start(
    config: ServeConfig,
    config_path: Option<PathBuf>,
) -> anyhow::Result<RunningDaemon> {
    start_with(config, config_path, None).await
}

/// [`start`] with the fleet given directly (see [`FleetInput`]) instead of by file.
pub async fn start_with(
    config: ServeConfig,
    config_path: Option<PathBuf>,
    fleet: Option<FleetInput>,
) -> anyhow::Result<RunningDaemon> {
    // Checked here too, not only when a config file is parsed: an embedding caller builds
    // its ServeConfig directly.
    config
        .validate("config", "")
        .map_err(|e| anyhow::anyhow!("{}", e.message))
        .context("invalid configuration")?;
    let auth = if config.admin_token_file.as_os_str().is_empty() {
        admin::AdminAuth::new(None)
    } else {
        admin::AdminAuth::from_file(&config.admin_token_file)?
    };
    let grpc = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc_addr))?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen for Admin gRPC on {}", config.admin_addr))?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_addr))?;
    let openai = TcpListener::bind(config.openai_addr)
        .await
        .with_context(|| format!("cannot listen for OpenAI HTTP on {}", config.openai_addr))?;
    let grpc_addr = grpc.local_addr()?;
    let openai_addr = openai.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let http_addr = http.local_addr()?;
    let daemon = Daemon::start(&config, config_path, fleet)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let (admin_health, admin_health_service) = tonic_health::server::health_reporter();
    for name in std::iter::once("").chain(SERVICES) {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    for name in std::iter::once("").chain(ADMIN_SERVICES) {
        admin_health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    // Each port's reflection lists only what that port serves (the proto file holds both
    // services).
    let reflection = |services: &[&str]| {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wire::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection");
        for s in services {
            b = b.with_service_name(*s);
        }
        b.build_v1().context("building the reflection service")
    };
    let routes = tonic::service::Routes::new(
        wire::inference_server::InferenceServer::new(inference::InferenceService {
            daemon: daemon.clone(),
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(health_service)
    .add_service(reflection(&SERVICES)?);
    let admin_routes =
        tonic::service::Routes::new(wire::admin_server::AdminServer::with_interceptor(
            admin::AdminService {
                daemon: daemon.clone(),
            },
            auth,
        ))
        .add_service(admin_health_service)
        .add_service(reflection(&ADMIN_SERVICES)?);

    let (stop, stop_rx) = watch::channel(false);
    let (close, close_rx) = watch::channel(false);
    let closed = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // Token chunks are small writes; without TCP_NODELAY, Nagle's algorithm holds them
    // until the client's delayed ACK, adding up to ~40 ms to a first token.
    let grpc = axum::serve::ListenerExt::tap_io(grpc, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let grpc_server = tokio::spawn(
        axum::serve(grpc, routes.into_axum_router())
            .with_graceful_shutdown(closed(close_rx.clone()))
            .into_future(),
    );
    let admin_server = tokio::spawn(
        axum::serve(admin_listener, admin_routes.into_axum_router())
            .with_graceful_shutdown(closed(close_rx.clone()))
            .into_future(),
    );
    let http_server = tokio::spawn(
        axum::serve(http, http::router(daemon.clone()))
            .with_graceful_shutdown(closed(close_rx.clone()))
            .into_future(),
    );
    // Streamed tokens are small writes too (see gRPC above).
    let openai = axum::serve::ListenerExt::tap_io(openai, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let openai_server = tokio::spawn(
        axum::serve(
            openai,
            axum::ServiceExt::<axum::extract::Request>::into_make_service(openai::service(
                daemon.clone(),
                &config.allowed_origins,
            )),
        )
        .with_graceful_shutdown(closed(close_rx))
        .into_future(),
    );
    let upkeep = {
        let metrics = daemon.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        })
    };
    let outliers = {
        let d = daemon.clone();
        let every = Duration::from_millis(config.reliability.check_interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                d.check_outliers();
            }
        })
    };
    daemon.set_ready(true);
    tracing::info!(
        grpc = %grpc_addr,
        admin = %admin_addr,
        http = %http_addr,
        openai = %openai_addr,
        fleet = %daemon.fleet_name,
        policy = %daemon.policy_name(),
        backends = daemon.backends().len(),
        time_scale = config.time_scale,
        "serving"
    );

    let grace = Duration::from_millis(config.grace_period_ms);
    let d = daemon.clone();
    let task = tokio::spawn(async move {
        closed(stop_rx).await;
        let started = Instant::now();
        d.stop_accepting();
        for name in std::iter::once("").chain(SERVICES) {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        for name in std::iter::once("").chain(ADMIN_SERVICES) {
            admin_health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!(
            in_flight = d.in_flight(),
            grace_ms = grace.as_millis() as u64,
            "shutting down: draining"
        );
        wait_idle(&d, grace).await;
        let left = d.in_flight();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "grace period over; ending the remaining requests"
            );
        }
        d.retire_all(Outcome::Shutdown);
        wait_idle(&d, FINAL_FLUSH).await;
        close.send_replace(true);
        upkeep.abort();
        outliers.abort();
        for server in [grpc_server, admin_server, http_server, openai_server] {
            match tokio::time::timeout(FINAL_FLUSH, server).await {
                Ok(joined) => joined
                    .context("server task panicked")?
                    .context("server failed")?,
                Err(_) => tracing::warn!("a connection did not close in time; exiting anyway"),
            }
        }
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "shut down");
        Ok(())
    });
    Ok(RunningDaemon {
        grpc_addr,
        admin_addr,
        http_addr,
        openai_addr,
        daemon,
        stop,
        task,
    })
}

/// Waits until nothing is in flight or `limit` has passed.
async fn wait_idle(d: &Daemon, limit: Duration) {
    let deadline = Instant::now() + limit;
    while d.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the daemon until SIGTERM or SIGINT, then shuts it down gracefully. `on_ready` is
/// called once both ports accept connections (the CLI prints where the daemon serves).
pub async fn run_until_signal(
    config: ServeConfig,
    config_path: Option<PathBuf>,
    on_ready: impl FnOnce(&RunningDaemon),
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let running = start(config, config_path).await?;
    // Both handlers are in place before anyone is told the daemon serves, so a signal sent
    // at once is a graceful shutdown, not the default kill.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    on_ready(&running);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    running.shutdown();
    running.wait().await
}

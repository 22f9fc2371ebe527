//! Live progress while a load test runs: a one-line bar redrawn in place on a terminal,
//! plain lines every few seconds otherwise (CI logs, pipes), nothing when off. Both show
//! requests sent and the send rate, requests in flight, errors, late sends and the p99
//! TTFT so far (simulated ms). The collector is fed from the same loop, so the figures
//! are exact, not sampled.

use super::collect::Collector;
use super::dispatch::Event;
use super::LoadConfig;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// How progress is shown (on stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// Nothing.
    #[default]
    Off,
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    Bar,
    Lines,
}

impl Progress {
    fn resolve(self) -> Progress {
        match self {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Bar,
            Progress::Auto => Progress::Lines,
            other => other,
        }
    }

    fn period(self) -> Duration {
        match self {
            Progress::Bar => Duration::from_millis(250),
            _ => Duration::from_secs(5),
        }
    }
}

/// Feeds every event to `collector` until the last request has ended, showing progress.
pub(super) async fn drive(
    cfg: &LoadConfig,
    collector: &mut Collector,
    mut events: UnboundedReceiver<Event>,
    in_flight: &AtomicUsize,
    start: Instant,
) {
    let mode = cfg.progress.resolve();
    let mut tick = tokio::time::interval(mode.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => collector.record(ev),
                None => break,
            },
            _ = tick.tick(), if mode != Progress::Off => {
                let now = Instant::now();
                let flying = in_flight.load(Ordering::Relaxed);
                // Everything the schedule has handled: ended, in flight, or not sent.
                let dispatched = collector.scheduled + flying as u64;
                let rate = dispatched.saturating_sub(last.1) as f64
                    / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, dispatched);
                let line = status_line(cfg, collector, flying, rate, start);
                let mut err = std::io::stderr().lock();
                let _ = if mode == Progress::Bar {
                    write!(err, "\r\x1b[2K{line}")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
        }
    }
    if mode == Progress::Bar {
        eprintln!();
    }
}

fn status_line(
    cfg: &LoadConfig,
    c: &Collector,
    in_flight: usize,
    rate: f64,
    start: Instant,
) -> String {
    let due = c.scheduled + in_flight as u64;
    let bar = match cfg.expected_requests {
        Some(n) if n > 0 => {
            let frac = (due as f64 / n as f64).min(1.0);
            let filled = (frac * 20.0).round() as usize;
            format!(
                "[{}{}] {:>3.0}% ",
                "#".repeat(filled),
                ".".repeat(20 - filled),
                frac * 100.0
            )
        }
        _ => String::new(),
    };
    format!(
        "{:>7.1}s {bar}sent {} ({rate:.1}/s)  in flight {in_flight}  errors {}  late {}  p99 TTFT {:.0} ms",
        start.elapsed().as_secs_f64(),
        c.sent + in_flight as u64,
        c.errors,
        c.late_sent + c.late_not_sent,
        c.live_ttft.percentiles().p99
    )
}

//! Live progress while a load test runs: an `indicatif` bar redrawn in place on a
//! terminal, plain lines every few seconds otherwise (CI logs, pipes), nothing when off.
//! Both show requests sent and the send rate, requests in flight, errors, late sends and
//! the p99 TTFT so far (simulated ms). The collector is fed from the same loop, so the
//! figures are exact, not sampled.

use super::collect::Collector;
use super::dispatch::Event;
use super::LoadConfig;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    let bar = (mode == Progress::Bar)
        .then(|| new_bar(cfg.expected_requests, ProgressDrawTarget::stderr()));
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
                match &bar {
                    Some(bar) => show(bar, collector, flying, rate),
                    None => {
                        let line = status_line(cfg, collector, flying, rate, start);
                        let mut err = std::io::stderr().lock();
                        let _ = writeln!(err, "{line}");
                        let _ = err.flush();
                    }
                }
            }
        }
    }
    if let Some(bar) = bar {
        // The last figures stay on screen above whatever the command prints next.
        bar.finish();
    }
}

/// The bar for `expected` requests (a spinner when the count is not known), drawn on
/// `target`.
fn new_bar(expected: Option<u64>, target: ProgressDrawTarget) -> ProgressBar {
    let (bar, template) = match expected {
        Some(n) if n > 0 => (
            ProgressBar::new(n),
            "{elapsed_precise} [{bar:20}] {percent:>3}% {msg}",
        ),
        _ => (
            ProgressBar::no_length(),
            "{elapsed_precise} {spinner} {msg}",
        ),
    };
    let style = ProgressStyle::with_template(template)
        .expect("the bar templates are valid")
        .progress_chars("#>.");
    bar.set_style(style);
    bar.set_draw_target(target);
    bar
}

/// Moves the bar to the requests the schedule has handled and shows the figures.
fn show(bar: &ProgressBar, c: &Collector, in_flight: usize, rate: f64) {
    let due = c.scheduled + in_flight as u64;
    bar.set_position(bar.length().map_or(due, |n| due.min(n)));
    bar.set_message(figures(c, in_flight, rate));
}

/// The plain line: seconds since the start, a text bar when the count is known, figures.
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
        "{:>7.1}s {bar}{}",
        start.elapsed().as_secs_f64(),
        figures(c, in_flight, rate)
    )
}

/// What both displays show after the bar: sends, in flight, errors, late sends, p99 TTFT.
fn figures(c: &Collector, in_flight: usize, rate: f64) -> String {
    format!(
        "sent {} ({rate:.1}/s)  in flight {in_flight}  errors {}  late {}  p99 TTFT {:.0} ms",
        c.sent + in_flight as u64,
        c.errors,
        c.late_sent + c.late_not_sent,
        c.live_ttft.percentiles().p99
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collector(scheduled: u64, sent: u64, errors: u64) -> Collector {
        let cfg = LoadConfig::default();
        let mut c = Collector::new(&cfg, Vec::new(), Instant::now());
        (c.scheduled, c.sent, c.errors) = (scheduled, sent, errors);
        c
    }

    #[test]
    fn the_bar_tracks_requests_handled_and_shows_the_figures() {
        let bar = new_bar(Some(100), ProgressDrawTarget::hidden());
        assert_eq!(bar.length(), Some(100));
        show(&bar, &collector(30, 28, 2), 5, 12.5);
        assert_eq!(bar.position(), 35, "ended plus in flight");
        let msg = bar.message();
        assert!(
            msg.starts_with("sent 33 (12.5/s)  in flight 5  errors 2"),
            "{msg}"
        );
        // A schedule that overruns its estimate pins the bar at full, not past it.
        show(&bar, &collector(120, 120, 0), 0, 1.0);
        assert_eq!(bar.position(), 100);
        let spinner = new_bar(None, ProgressDrawTarget::hidden());
        assert_eq!(spinner.length(), None);
        show(&spinner, &collector(7, 7, 0), 1, 1.0);
        assert_eq!(spinner.position(), 8);
    }

    #[test]
    fn plain_lines_keep_their_text_bar_and_figures() {
        let cfg = LoadConfig {
            expected_requests: Some(40),
            ..LoadConfig::default()
        };
        let line = status_line(&cfg, &collector(10, 9, 1), 0, 2.0, Instant::now());
        assert!(
            line.ends_with("s [#####...............]  25% sent 9 (2.0/s)  in flight 0  errors 1  late 0  p99 TTFT 0 ms"),
            "{line}"
        );
    }
}

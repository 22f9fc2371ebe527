//! Where `dujiang replay` gets its traffic, one cell at a time: a trace file (read whole and
//! filtered to the cell by the partition hash) or a generated provider-scale day (only the
//! cell's sessions generated, see `trace::day`). Either way a cell's records are exactly
//! those `trace::cell_of` assigns to it, so the cells together are the whole traffic.

use super::trace::{parse_hours, DayPreset};
use crate::request::Nanos;
use crate::trace::{
    self, cell_filter, DayConfig, DayTrace, Format, ReadCounts, ReadOptions, Shard, TraceError,
    TraceExt, TraceReader, TraceRecord,
};
use anyhow::{bail, Result};
use std::io::BufRead;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// `--day` and its parameters, as given on the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct DayArgs {
    /// Replay a generated provider-scale day instead of a trace file, streamed and never
    /// written (see `dujiang trace gen --day`); arrivals are shifted so the first hour of
    /// --hours starts at 0.
    #[arg(long, value_enum, conflicts_with = "trace")]
    pub day: Option<DayPreset>,
    /// With --day: tokens (prompt + output) of the full day [default: 5e13, Doubao Dec 2025].
    #[arg(long, requires = "day")]
    pub tokens_per_day: Option<f64>,
    /// With --day: share of the day's sessions to generate [default: 1e-6].
    #[arg(long, requires = "day")]
    pub scale: Option<f64>,
    /// With --day: hours of the day, A-B (fractions allowed) [default: 0-24]. Sessions
    /// started before A are generated (a 55-minute warm-up) so later turns arrive as in
    /// the whole day; the fleet starts empty at A.
    #[arg(long, requires = "day")]
    pub hours: Option<String>,
    /// With --day: the generator's seed (the same seed gives the same day everywhere).
    #[arg(long, requires = "day")]
    pub day_seed: Option<u64>,
}

impl DayArgs {
    /// The `--day` parameters given without `--day`. clap's `requires` does not hold them
    /// back here (flattened beside a subcommand), so `replay` checks by hand rather than
    /// quietly replaying a trace file as if they had not been given.
    pub fn given_without_day(&self) -> Option<&'static str> {
        if self.day.is_some() {
            return None;
        }
        [
            ("--tokens-per-day", self.tokens_per_day.is_some()),
            ("--scale", self.scale.is_some()),
            ("--hours", self.hours.is_some()),
            ("--day-seed", self.day_seed.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }
}

/// A replay's traffic.
pub enum Source {
    File {
        path: PathBuf,
        format: Format,
        opts: ReadOptions,
        /// What the reader tallied over the whole file, set by the first read to reach its
        /// end (every cell reads the whole file, so every read tallies the same).
        tally: Arc<OnceLock<Tally>>,
    },
    Day {
        cfg: Box<DayConfig>,
        window: Range<Nanos>,
        tokens_per_day: f64,
        hours: String,
        /// The whole day, unread: each cell is opened as its sibling, so the session rate
        /// is estimated once.
        whole: Box<DayTrace>,
    },
}

/// What reading a trace file skipped or changed, for the notes beside the report (of a
/// replay, or of a load test, which reads the file the same way).
#[derive(Clone, Debug)]
pub struct Tally {
    pub counts: ReadCounts,
    /// The first broken line skipped under --skip-bad-lines.
    pub first_skipped: Option<TraceError>,
}

impl Tally {
    /// Lines for people about what the replay did not take as written, each naming the
    /// file; an error when the file held no request at all, which is never what was meant.
    pub fn notes(&self, file: &str) -> Result<Vec<String>> {
        let c = &self.counts;
        let first = self
            .first_skipped
            .as_ref()
            .map(|e| format!("; the first: {e}"))
            .unwrap_or_default();
        if c.records == 0 {
            if c.malformed > 0 {
                bail!("{file}: holds no request: all {} request lines are broken and were skipped{first}", c.malformed);
            }
            if c.failed > 0 {
                bail!("{file}: holds no request: all {} requests are marked failed by the trace (zero response tokens)", c.failed);
            }
            bail!("{file}: holds no request: the trace is empty (or only a header)");
        }
        let mut notes = Vec::new();
        if c.malformed > 0 {
            notes.push(format!(
                "{file}: skipped {} broken line(s) (--skip-bad-lines){first}",
                c.malformed
            ));
        }
        if c.failed > 0 {
            notes.push(format!(
                "{file}: skipped {} request(s) the trace marks as failed (zero response tokens)",
                c.failed
            ));
        }
        if c.out_of_order > 0 {
            notes.push(format!(
                "{file}: {} arrival(s) earlier than the line before them, replayed at that line's arrival",
                c.out_of_order
            ));
        }
        Ok(notes)
    }
}

/// A reader that leaves its tally in `into` once it has read the whole file.
struct Tallied<R> {
    reader: TraceReader<R>,
    into: Arc<OnceLock<Tally>>,
}

impl<R: BufRead> Iterator for Tallied<R> {
    type Item = Result<TraceRecord, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.reader.next();
        if item.is_none() {
            let _ = self.into.set(Tally {
                counts: self.reader.counts(),
                first_skipped: self.reader.first_skipped().cloned(),
            });
        }
        item
    }
}

/// One cell's records, errors as `anyhow` so every source replays alike.
pub type Records = Box<dyn Iterator<Item = Result<TraceRecord>> + Send>;

impl Source {
    /// `--day`, for a fleet of `cells` cells: the day needs at least as many buckets as
    /// cells, so a fleet of more than 256 cells draws it in more buckets.
    pub fn day(args: &DayArgs, cells: u32) -> Result<Option<Source>> {
        if let Some(flag) = args.given_without_day() {
            bail!("{flag} applies to a generated day: add --day doubao, or drop {flag}");
        }
        if args.day.is_none() {
            return Ok(None);
        }
        let tokens_per_day = args
            .tokens_per_day
            .unwrap_or(trace::day::DOUBAO_TOKENS_PER_DAY_DEC_2025);
        if !(tokens_per_day.is_finite() && tokens_per_day > 0.0) {
            bail!("--tokens-per-day must be positive, got {tokens_per_day}");
        }
        let scale = args.scale.unwrap_or(1e-6);
        if !(scale.is_finite() && scale > 0.0) {
            bail!("--scale must be positive, got {scale}");
        }
        let hours = args.hours.clone().unwrap_or_else(|| "0-24".into());
        let window = parse_hours(&hours)?;
        let mut cfg = DayConfig::doubao(tokens_per_day, scale, args.day_seed.unwrap_or(0));
        cfg.buckets = cfg.buckets.max(cells.next_power_of_two());
        let whole =
            DayTrace::new(&cfg, Shard::WHOLE, window.clone()).map_err(anyhow::Error::msg)?;
        Ok(Some(Source::Day {
            cfg: Box::new(cfg),
            window,
            tokens_per_day,
            hours,
            whole: Box::new(whole),
        }))
    }

    /// What the report names as its trace.
    pub fn describe(&self) -> String {
        match self {
            Source::File { path, .. } => path.display().to_string(),
            Source::Day {
                cfg,
                tokens_per_day,
                hours,
                ..
            } => format!(
                "doubao day: {tokens_per_day:e} tokens/day x {:e}, hours {hours}, seed {}",
                cfg.scale, cfg.seed
            ),
        }
    }

    /// For a generated day, the hour of the day its replay starts at (time 0).
    pub fn day_start_hour(&self) -> Option<f64> {
        match self {
            Source::File { .. } => None,
            Source::Day { window, .. } => Some(window.start as f64 / 3.6e12),
        }
    }

    /// A trace file of `format`, read with `opts`.
    pub fn file(path: PathBuf, format: Format, opts: ReadOptions) -> Source {
        Source::File {
            path,
            format,
            opts,
            tally: Arc::default(),
        }
    }

    /// What reading the trace file skipped or changed, once a replay has read it whole
    /// (`None` for a generated day, or before).
    pub fn tally(&self) -> Option<&Tally> {
        match self {
            Source::File { tally, .. } => tally.get(),
            Source::Day { .. } => None,
        }
    }

    /// Checks that the source opens, before any replay starts.
    pub fn check(&self) -> Result<()> {
        match self {
            Source::File {
                path, format, opts, ..
            } => {
                trace::open(path, *format, *opts)?;
            }
            // Checked when made.
            Source::Day { .. } => {}
        }
        Ok(())
    }

    /// The records of cell `cell` of `cells`, at `rate_scale` times their rate.
    pub fn cell(&self, cell: u32, cells: u32, rate_scale: f64) -> Result<Records> {
        match self {
            Source::File {
                path,
                format,
                opts,
                tally,
            } => {
                let reader = Tallied {
                    reader: trace::open(path, *format, *opts)?,
                    into: tally.clone(),
                };
                let records = cell_filter(reader, cell, cells)
                    .scale_rate(rate_scale)
                    .map(|r| r.map_err(anyhow::Error::from));
                Ok(Box::new(records))
            }
            Source::Day {
                cfg, window, whole, ..
            } => {
                let shard = Shard {
                    index: cell,
                    count: cells,
                };
                let origin = window.start;
                let day = whole
                    .sibling(cfg, shard, window.clone())
                    .map_err(anyhow::Error::msg)?;
                let records = day
                    .map(move |mut r| {
                        r.arrival_ns -= origin;
                        r
                    })
                    .scale_rate(rate_scale)
                    .map(Ok);
                Ok(Box::new(records))
            }
        }
    }
}

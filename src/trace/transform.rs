//! Iterator adapters for what-if questions on a trace: "the same traffic twice as fast",
//! "this hour only", "the first million requests". They work on readers (items are
//! `Result<TraceRecord, TraceError>`; errors pass through untouched) and on generators
//! (items are plain records) alike, and never buffer: each adapter holds one record.
//!
//! Scaling time is how rates are scaled: dividing every arrival by `k` multiplies the mean
//! rate by `k` and keeps the shape of the traffic (its burstiness, its daily cycle). To
//! reach a target rate, compute the factor from the source's rate with [`rate_factor`]; a
//! file's rate needs a first pass ([`mean_rate`]) because a stream cannot look ahead.

use super::TraceRecord;
use crate::request::{Nanos, NANOS_PER_SEC};

/// An iterator item that may hold a record: a record itself, or a reader's `Result`.
pub trait RecordItem {
    fn record(&self) -> Option<&TraceRecord>;
    fn record_mut(&mut self) -> Option<&mut TraceRecord>;
}

impl RecordItem for TraceRecord {
    fn record(&self) -> Option<&TraceRecord> {
        Some(self)
    }
    fn record_mut(&mut self) -> Option<&mut TraceRecord> {
        Some(self)
    }
}

impl<E> RecordItem for Result<TraceRecord, E> {
    fn record(&self) -> Option<&TraceRecord> {
        self.as_ref().ok()
    }
    fn record_mut(&mut self) -> Option<&mut TraceRecord> {
        self.as_mut().ok()
    }
}

/// The what-if adapters, on any iterator of records or reader results.
pub trait TraceExt: Iterator + Sized
where
    Self::Item: RecordItem,
{
    /// Divides every arrival by `factor`: 2.0 replays the trace twice as fast (twice the
    /// rate), 0.5 half as fast. Panics unless `factor` is positive and finite.
    fn speed_up(self, factor: f64) -> TimeScale<Self> {
        assert!(
            factor.is_finite() && factor > 0.0,
            "time scale factor must be positive and finite, got {factor}"
        );
        TimeScale {
            inner: self,
            factor,
        }
    }

    /// Multiplies every inter-arrival gap by `factor` (the inverse of [`Self::speed_up`]).
    fn slow_down(self, factor: f64) -> TimeScale<Self> {
        assert!(
            factor.is_finite() && factor > 0.0,
            "time scale factor must be positive and finite, got {factor}"
        );
        self.speed_up(1.0 / factor)
    }

    /// Multiplies the mean request rate by `factor` (the same as [`Self::speed_up`]).
    fn scale_rate(self, factor: f64) -> TimeScale<Self> {
        self.speed_up(factor)
    }

    /// Records with `from <= arrival < to`, keeping their times. Stops reading at the first
    /// arrival at or after `to`, which is right because readers and generators yield
    /// non-decreasing arrivals.
    fn window(self, from: Nanos, to: Nanos) -> Window<Self> {
        Window {
            inner: self,
            from,
            to,
            done: false,
        }
    }

    /// Shifts arrivals so the first record arrives at 0 (after a window, say).
    fn rebase(self) -> Rebase<Self> {
        Rebase {
            inner: self,
            origin: None,
        }
    }

    /// At most `n` records (errors are passed on but not counted); stops pulling from the
    /// source after the `n`th record.
    fn limit(self, n: u64) -> Limit<Self> {
        Limit {
            inner: self,
            left: n,
        }
    }
}

impl<I> TraceExt for I
where
    I: Iterator,
    I::Item: RecordItem,
{
}

/// See [`TraceExt::speed_up`].
pub struct TimeScale<I> {
    inner: I,
    factor: f64,
}

impl<I: Iterator> Iterator for TimeScale<I>
where
    I::Item: RecordItem,
{
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let mut item = self.inner.next()?;
        if let Some(rec) = item.record_mut() {
            // Rounding a monotone map keeps arrivals non-decreasing.
            rec.arrival_ns = (rec.arrival_ns as f64 / self.factor).round() as Nanos;
        }
        Some(item)
    }
}

/// See [`TraceExt::window`].
pub struct Window<I> {
    inner: I,
    from: Nanos,
    to: Nanos,
    done: bool,
}

impl<I: Iterator> Iterator for Window<I>
where
    I::Item: RecordItem,
{
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        while !self.done {
            let item = self.inner.next()?;
            match item.record().map(|r| r.arrival_ns) {
                None => return Some(item),
                Some(t) if t >= self.to => self.done = true,
                Some(t) if t >= self.from => return Some(item),
                Some(_) => {}
            }
        }
        None
    }
}

/// See [`TraceExt::rebase`].
pub struct Rebase<I> {
    inner: I,
    origin: Option<Nanos>,
}

impl<I: Iterator> Iterator for Rebase<I>
where
    I::Item: RecordItem,
{
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let mut item = self.inner.next()?;
        if let Some(rec) = item.record_mut() {
            let origin = *self.origin.get_or_insert(rec.arrival_ns);
            rec.arrival_ns = rec.arrival_ns.saturating_sub(origin);
        }
        Some(item)
    }
}

/// See [`TraceExt::limit`].
pub struct Limit<I> {
    inner: I,
    left: u64,
}

impl<I: Iterator> Iterator for Limit<I>
where
    I::Item: RecordItem,
{
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        if self.left == 0 {
            return None;
        }
        let item = self.inner.next()?;
        if item.record().is_some() {
            self.left -= 1;
        }
        Some(item)
    }
}

/// The factor for [`TraceExt::scale_rate`] that turns a source at `source_rps` into
/// `target_rps`. Panics unless both are positive and finite.
pub fn rate_factor(source_rps: f64, target_rps: f64) -> f64 {
    assert!(
        source_rps.is_finite() && source_rps > 0.0 && target_rps.is_finite() && target_rps > 0.0,
        "rates must be positive and finite (source {source_rps}, target {target_rps})"
    );
    target_rps / source_rps
}

/// Mean arrival rate in requests per second of a first pass over a trace: `(n - 1)` gaps
/// over the time from the first arrival to the last, so it is the reciprocal of the mean
/// inter-arrival gap. `None` with fewer than two records or all at one instant. Stops at
/// the first error and returns it.
pub fn mean_rate<E>(
    records: impl IntoIterator<Item = Result<TraceRecord, E>>,
) -> Result<Option<f64>, E> {
    let mut first = None;
    let mut last = 0;
    let mut n: u64 = 0;
    for rec in records {
        let t = rec?.arrival_ns;
        first.get_or_insert(t);
        last = t;
        n += 1;
    }
    Ok(match first {
        Some(f) if n >= 2 && last > f => {
            Some((n - 1) as f64 / ((last - f) as f64 / NANOS_PER_SEC as f64))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Format, TraceError, TraceReader};

    fn at(ts: &[Nanos]) -> Vec<TraceRecord> {
        ts.iter()
            .map(|&t| TraceRecord {
                arrival_ns: t,
                prompt_tokens: 1,
                output_tokens: 1,
                ..TraceRecord::default()
            })
            .collect()
    }

    fn times(recs: impl Iterator<Item = TraceRecord>) -> Vec<Nanos> {
        recs.map(|r| r.arrival_ns).collect()
    }

    #[test]
    fn speed_up_and_slow_down_scale_arrivals() {
        let src = at(&[0, 10, 15, 1001]);
        assert_eq!(times(src.clone().into_iter().speed_up(2.0)), [0, 5, 8, 501]);
        assert_eq!(
            times(src.clone().into_iter().slow_down(3.0)),
            [0, 30, 45, 3003]
        );
        assert_eq!(
            times(src.into_iter().scale_rate(rate_factor(1.0, 4.0))),
            [0, 3, 4, 250]
        );
    }

    #[test]
    #[should_panic(expected = "positive")]
    fn zero_factor_panics() {
        let _ = at(&[0]).into_iter().speed_up(0.0);
    }

    #[test]
    fn window_is_half_open_and_stops_early() {
        let src = at(&[0, 5, 10, 15, 20, 25]);
        let mut pulled = 0;
        let counted = src.into_iter().inspect(|_| pulled += 1);
        assert_eq!(times(counted.window(5, 20)), [5, 10, 15]);
        // It read the record at 20 to know it was done, and nothing after it.
        assert_eq!(pulled, 5);
        assert_eq!(
            times(at(&[100, 150, 400]).into_iter().window(120, 1000).rebase()),
            [0, 250]
        );
    }

    #[test]
    fn limit_counts_records_not_errors() {
        let items: Vec<Result<TraceRecord, &str>> = vec![
            Err("bad"),
            Ok(at(&[1])[0].clone()),
            Ok(at(&[2])[0].clone()),
            Ok(at(&[3])[0].clone()),
        ];
        let out: Vec<_> = items.into_iter().limit(2).collect();
        assert_eq!(out.len(), 3);
        assert!(out[0].is_err());
        assert_eq!(out[2].as_ref().unwrap().arrival_ns, 2);
    }

    #[test]
    fn mean_rate_of_a_reader_drives_scale_to_target() {
        // Five requests one second apart: 1 req/s.
        let text: String = (0..5)
            .map(|i| {
                format!(
                    "{{\"arrival_ms\":{},\"input_tokens\":1,\"output_tokens\":1}}\n",
                    i * 1000
                )
            })
            .collect();
        let read = || TraceReader::new(text.as_bytes(), "r", Format::Auto);
        let rate = mean_rate(read()).unwrap().unwrap();
        assert!((rate - 1.0).abs() < 1e-12);
        let scaled: Vec<_> = read()
            .scale_rate(rate_factor(rate, 10.0))
            .collect::<Result<_, TraceError>>()
            .unwrap();
        let again = mean_rate(scaled.into_iter().map(Ok::<_, TraceError>))
            .unwrap()
            .unwrap();
        assert!((again - 10.0).abs() < 1e-9, "{again}");
        assert_eq!(
            mean_rate(Vec::<Result<TraceRecord, TraceError>>::new()).unwrap(),
            None
        );
    }
}

//! The request-path histograms (latencies per token and per request, router decisions):
//! fixed Prometheus buckets counted with plain atomics and written into the scrape by the
//! daemon itself.
//!
//! The exporter's own histograms keep every sample, stamped with a clock read, in a
//! lock-free list until a scrape or upkeep sorts them into buckets: about 200 instructions
//! and a clock read per sample, and a zero-latency request records ~19 samples (15 of them
//! inter-token gaps). Here a sample is a search over the bounds and two atomic adds. The
//! rendered text is what the exporter writes for a histogram (`_bucket` lines with `le`,
//! cumulative, then `+Inf`, `_sum` and `_count`), labels in the order given.

use metrics::HistogramFn;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One series: counts per bucket and the sum of the samples.
pub struct Buckets {
    bounds: &'static [f64],
    /// `counts[i]`: samples in `(bounds[i-1], bounds[i]]`; the last, above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

impl Buckets {
    pub fn new(bounds: &'static [f64]) -> Buckets {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Appends the series' `_bucket`, `_sum` and `_count` lines; `labels` is the label
    /// list as it goes between braces (`pool="a",chip="b"`), already escaped.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, le) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        // The total is the buckets' sum, so `+Inf` and `_count` agree with the buckets
        // even while samples arrive during the render.
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = f64::from_bits(self.sum.load(Relaxed));
        let braces = |out: &mut String| {
            if !labels.is_empty() {
                out.push('{');
                out.push_str(labels);
                out.push('}');
            }
        };
        out.push_str(name);
        out.push_str("_sum");
        braces(out);
        let _ = writeln!(out, " {sum}");
        out.push_str(name);
        out.push_str("_count");
        braces(out);
        let _ = writeln!(out, " {cumulative}");
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        self.record_many(value, 1);
    }

    /// `count` samples of `value` as one: one bucket search and one update of the sum
    /// (by `value * count`, which is what `count` additions of it come to).
    fn record_many(&self, value: f64, count: usize) {
        if count == 0 {
            return;
        }
        // Prometheus buckets hold the samples at most their bound.
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(count as u64, Relaxed);
        let add = value * count as f64;
        let mut old = self.sum.load(Relaxed);
        loop {
            let new = (f64::from_bits(old) + add).to_bits();
            match self.sum.compare_exchange_weak(old, new, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(now) => old = now,
            }
        }
    }
}

/// `labels` as they go between a series' braces, values escaped as the text format
/// requires (backslash, double quote, line feed).
pub fn label_text(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

/// The series of one recorder's own histograms, rendered family by family.
#[derive(Default)]
pub struct OwnHistograms {
    /// (family, label text, series), in registration order.
    series: parking_lot::RwLock<Vec<(&'static str, String, std::sync::Arc<Buckets>)>>,
}

impl OwnHistograms {
    /// A new series of `family` with `labels` and `bounds`, rendered from now on (at 0
    /// until its first sample), as a `metrics::Histogram` handle.
    pub fn register(
        &self,
        family: &'static str,
        labels: &[(&str, &str)],
        bounds: &'static [f64],
    ) -> metrics::Histogram {
        let b = std::sync::Arc::new(Buckets::new(bounds));
        self.series
            .write()
            .push((family, label_text(labels), b.clone()));
        metrics::Histogram::from_arc(b)
    }

    /// Every family's HELP and TYPE lines (HELP from `help`) and its series.
    pub fn render(&self, help: impl Fn(&str) -> Option<&'static str>) -> String {
        let series = self.series.read();
        let mut families: Vec<&'static str> = series.iter().map(|s| s.0).collect();
        families.sort_unstable();
        families.dedup();
        let mut out = String::new();
        for family in families {
            if let Some(h) = help(family) {
                let _ = writeln!(out, "# HELP {family} {h}");
            }
            let _ = writeln!(out, "# TYPE {family} histogram");
            for (_, labels, b) in series.iter().filter(|s| s.0 == family) {
                b.render(&mut out, family, labels);
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_at_most_their_bound_and_render_cumulatively() {
        static BOUNDS: [f64; 3] = [0.001, 0.5, 1.0];
        let own = OwnHistograms::default();
        let h = own.register("x_seconds", &[("pool", "a\"b"), ("policy", "p")], &BOUNDS);
        let _ = own.register("x_seconds", &[("pool", "c"), ("policy", "p")], &BOUNDS);
        for v in [0.0, 0.001, 0.2, 1.0, 7.0] {
            h.record(v);
        }
        let text = own.render(|_| Some("Things."));
        let expected = "# HELP x_seconds Things.\n# TYPE x_seconds histogram\n\
            x_seconds_bucket{pool=\"a\\\"b\",policy=\"p\",le=\"0.001\"} 2\n\
            x_seconds_bucket{pool=\"a\\\"b\",policy=\"p\",le=\"0.5\"} 3\n\
            x_seconds_bucket{pool=\"a\\\"b\",policy=\"p\",le=\"1\"} 4\n\
            x_seconds_bucket{pool=\"a\\\"b\",policy=\"p\",le=\"+Inf\"} 5\n\
            x_seconds_sum{pool=\"a\\\"b\",policy=\"p\"} 8.201\n\
            x_seconds_count{pool=\"a\\\"b\",policy=\"p\"} 5\n";
        assert!(text.starts_with(expected), "{text}");
        // A series with no samples renders at 0.
        assert!(text.contains("x_seconds_bucket{pool=\"c\",policy=\"p\",le=\"+Inf\"} 0\n"));
        assert!(text.contains("x_seconds_count{pool=\"c\",policy=\"p\"} 0\n"));
        assert_eq!(text.matches("# TYPE").count(), 1);
    }

    #[test]
    fn a_run_of_samples_counts_as_that_many_samples() {
        static BOUNDS: [f64; 2] = [0.001, 0.5];
        let (one, many) = (OwnHistograms::default(), OwnHistograms::default());
        let a = one.register("x_seconds", &[], &BOUNDS);
        let b = many.register("x_seconds", &[], &BOUNDS);
        for (v, n) in [(0.0, 3), (0.25, 4), (2.0, 1), (0.5, 0)] {
            for _ in 0..n {
                a.record(v);
            }
            b.record_many(v, n);
        }
        let help = |_: &str| Some("Things.");
        assert_eq!(one.render(help), many.render(help));
        assert!(many.render(help).contains("x_seconds_count 8\n"));
    }
}

//! Writes dujiang JSONL (keys in the module doc), one record per line, omitting keys that
//! hold their defaults so a plain trace stays short. Written by hand rather than through
//! serde so arrivals print as exact decimal milliseconds.

use super::TraceRecord;
use crate::request::Priority;
use std::io::{self, Write};

/// A JSONL sink; wrap the `Write` in a `BufWriter` for files.
pub struct JsonlWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> JsonlWriter<W> {
    pub fn new(out: W) -> Self {
        JsonlWriter { out, written: 0 }
    }

    pub fn write(&mut self, rec: &TraceRecord) -> io::Result<()> {
        let w = &mut self.out;
        let ms = rec.arrival_ns / 1_000_000;
        let frac = rec.arrival_ns % 1_000_000;
        write!(w, "{{\"arrival_ms\":{ms}")?;
        if frac != 0 {
            let digits = format!("{frac:06}");
            write!(w, ".{}", digits.trim_end_matches('0'))?;
        }
        write!(
            w,
            ",\"input_tokens\":{},\"output_tokens\":{}",
            rec.prompt_tokens, rec.output_tokens
        )?;
        if !rec.hash_ids.is_empty() {
            w.write_all(b",\"hash_ids\":[")?;
            for (i, h) in rec.hash_ids.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                write!(w, "{h}")?;
            }
            w.write_all(b"]")?;
        }
        if rec.priority != Priority::Interactive {
            write!(w, ",\"priority\":\"{}\"", rec.priority.as_str())?;
        }
        if let Some(slo) = rec.slo {
            write!(w, ",\"slo_ttft_ms\":")?;
            write_ms(w, slo.ttft_ns)?;
            write!(w, ",\"slo_tpot_ms\":")?;
            write_ms(w, slo.tpot_ns)?;
        }
        if let Some(s) = rec.session {
            write!(w, ",\"session\":{s}")?;
        }
        if let Some(m) = &rec.model {
            w.write_all(b",\"model\":")?;
            serde_json::to_writer(&mut *w, m)?;
        }
        w.write_all(b"}\n")?;
        self.written += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn write_ms(w: &mut impl Write, ns: u64) -> io::Result<()> {
    let (ms, frac) = (ns / 1_000_000, ns % 1_000_000);
    if frac == 0 {
        write!(w, "{ms}")
    } else {
        let digits = format!("{frac:06}");
        write!(w, "{ms}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Slo;
    use crate::trace::{Format, TraceReader};

    #[test]
    fn round_trips_through_the_reader() {
        let recs = vec![
            TraceRecord {
                arrival_ns: 0,
                prompt_tokens: 10,
                output_tokens: 1,
                ..TraceRecord::default()
            },
            TraceRecord {
                arrival_ns: 86_399_999_999_999,
                prompt_tokens: 4096,
                output_tokens: 300,
                hash_ids: vec![0, 1, u64::MAX],
                priority: Priority::Batch,
                slo: Some(Slo {
                    ttft_ns: 1_500_000_001,
                    tpot_ns: 50_000_000,
                }),
                session: Some(3),
                model: Some("qwen \"2.5\"".into()),
            },
        ];
        let mut w = JsonlWriter::new(Vec::new());
        for r in &recs {
            w.write(r).unwrap();
        }
        assert_eq!(w.written(), 2);
        let text = String::from_utf8(w.into_inner()).unwrap();
        assert!(text.starts_with("{\"arrival_ms\":0,\"input_tokens\":10,\"output_tokens\":1}\n"));
        assert!(text.contains("\"arrival_ms\":86399999.999999,"), "{text}");
        let back: Vec<TraceRecord> = TraceReader::new(text.as_bytes(), "w", Format::Auto)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, recs);
    }
}

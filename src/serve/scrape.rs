//! Reading a real engine's own load from its Prometheus `/metrics`: which metric names each
//! serving engine uses for its running requests, its queue and its KV-cache fill (the
//! [`MetricsDialect`] table), a parser of the Prometheus text exposition format that turns
//! one scrape into a [`ScrapedLoad`], and [`scrape_once`], one bounded GET of an endpoint's
//! `/metrics`. The proxy backends of `kind = "openai"` pools call it periodically and feed
//! the result into the load view next to their own in-flight counts.
//!
//! A failed scrape (refused, timed out, not 200, unparsable) is only an error value here: the
//! caller treats it as data gone stale, never as the endpoint being dead; health is decided by
//! the probes and by request failures.

use http_body_util::{BodyExt as _, Empty, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::Connect, Client};
use std::time::Duration;

/// The metric-name family an engine's `/metrics` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricsDialect {
    /// vLLM, and the vLLM plugins for other accelerators (vLLM-Ascend, vLLM-MLU), which
    /// export vLLM's own metrics.
    Vllm,
    /// SGLang (`--enable-metrics`).
    Sglang,
    /// Huawei MindIE Service (`MIES_SERVICE_MONITOR_MODE=1`).
    Mindie,
    /// llama.cpp's `llama-server` (`--metrics`).
    LlamaCpp,
}

/// The names one dialect exports for the three figures routing reads. Each list is tried in
/// order and the first name present in a scrape wins, so a newer name shadows an older
/// alias when an engine exports both.
struct Names {
    running: &'static [&'static str],
    waiting: &'static [&'static str],
    kv_usage: &'static [&'static str],
}

// vLLM: "Production Metrics", docs.vllm.ai/en/stable/usage/metrics/ (V1 engine:
// `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, labels
// `model_name` and `engine`), and docs.vllm.ai/en/v0.5.3/serving/metrics.html (V0 engine:
// `vllm:gpu_cache_usage_perc`, "1 means 100 percent usage"). vLLM-Ascend runs inside vLLM and
// exports vLLM's metrics; `vllm:npu_cache_usage_perc` is kept as a last alias because some
// Ascend builds' dashboards query it.
const VLLM: Names = Names {
    running: &["vllm:num_requests_running"],
    waiting: &["vllm:num_requests_waiting"],
    kv_usage: &[
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:npu_cache_usage_perc",
    ],
};

// SGLang: "Production Metrics", docs.sglang.io/references/production_metrics.html
// (`sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`: the fraction of
// the KV token pool in use; label `model_name`, plus `tp_rank`/`dp_rank` in newer releases).
const SGLANG: Names = Names {
    running: &["sglang:num_running_reqs"],
    waiting: &["sglang:num_queue_reqs"],
    kv_usage: &["sglang:token_usage"],
};

// MindIE Service: "服务监控指标查询接口(普罗格式)" / "API for Querying Service Management and
// Control Metrics (Prometheus Format)", hiascend.com MindIE docs, mindie_service0103
// (`GET https://{ip}:{metricsPort}/metrics`: unprefixed `num_requests_running`,
// `num_requests_waiting`, `npu_cache_usage_perc` "NPU KV-cache usage. 1 means 100 percent",
// label `model_name`).
const MINDIE: Names = Names {
    running: &["num_requests_running"],
    waiting: &["num_requests_waiting"],
    kv_usage: &["npu_cache_usage_perc"],
};

// llama.cpp: tools/server/README.md, "GET /metrics: Prometheus compatible metrics exporter"
// (`llamacpp:requests_processing`, `llamacpp:requests_deferred`,
// `llamacpp:kv_cache_usage_ratio`: "KV-cache usage. 1 means 100 percent usage"; no labels).
const LLAMA_CPP: Names = Names {
    running: &["llamacpp:requests_processing"],
    waiting: &["llamacpp:requests_deferred"],
    kv_usage: &["llamacpp:kv_cache_usage_ratio"],
};

impl MetricsDialect {
    /// Every dialect, in the order [`MetricsDialect::parse_name`] lists them.
    pub const ALL: [MetricsDialect; 4] = [Self::Vllm, Self::Sglang, Self::Mindie, Self::LlamaCpp];

    /// The dialect of a serving engine of `config/engines.toml` (`vllm-0.20`,
    /// `vllm-ascend-0.18`, `sglang`, `mindie`, ...), or of `llama.cpp`; `None` for an engine
    /// whose metrics are not in the table (e.g. `trtllm`, whose numbers come from Triton's
    /// own exporter).
    pub fn for_engine(engine_id: &str) -> Option<Self> {
        let id = engine_id.trim().to_ascii_lowercase();
        let family = |prefix: &str| {
            id == prefix
                || id
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with(['-', '_', '.']))
        };
        if family("vllm") {
            Some(Self::Vllm)
        } else if family("sglang") {
            Some(Self::Sglang)
        } else if family("mindie") {
            Some(Self::Mindie)
        } else if family("llama.cpp") || family("llamacpp") || family("llama-cpp") {
            Some(Self::LlamaCpp)
        } else {
            None
        }
    }

    /// The dialect a fleet file names (`metrics = "vllm"`); `vllm-ascend` is vLLM's, and
    /// llama.cpp may be spelled `llamacpp`, `llama.cpp` or `llama-cpp`.
    pub fn parse_name(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "vllm" | "vllm-ascend" => Some(Self::Vllm),
            "sglang" => Some(Self::Sglang),
            "mindie" => Some(Self::Mindie),
            "llamacpp" | "llama.cpp" | "llama-cpp" => Some(Self::LlamaCpp),
            _ => None,
        }
    }

    /// The dialect's name as a fleet file writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::Mindie => "mindie",
            Self::LlamaCpp => "llamacpp",
        }
    }

    fn names(self) -> &'static Names {
        match self {
            Self::Vllm => &VLLM,
            Self::Sglang => &SGLANG,
            Self::Mindie => &MINDIE,
            Self::LlamaCpp => &LLAMA_CPP,
        }
    }
}

/// One scrape's reading of an endpoint's load. A figure the exposition does not carry (an
/// older engine, a metric not yet set) is `None`, not 0: the caller keeps its own count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrapedLoad {
    /// Requests the engine is running (summed over the exposition's label sets: models,
    /// data-parallel engines).
    pub running: Option<f64>,
    /// Requests queued in the engine, not yet running (summed likewise).
    pub waiting: Option<f64>,
    /// KV-cache fill, 0..=1 (the mean over label sets: each is one engine's own fraction).
    pub kv_usage: Option<f64>,
}

/// Why a scrape gave no load. Each names its place: the URL, or the exposition's line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    #[error("metrics exposition line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("GET {url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: no complete answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("bad metrics URL {url}: {message}")]
    Url { url: String, message: String },
}

/// The most of an exposition a scrape reads (a vLLM `/metrics` with its histograms is tens
/// of KB per model); a larger body is refused rather than buffered without bound.
pub const MAX_EXPOSITION_BYTES: usize = 8 << 20;

/// Reads the load figures of `dialect` out of a Prometheus text exposition (format 0.0.4,
/// which OpenMetrics output also parses as: `# EOF` is a comment, exemplars are skipped).
/// Every line is checked, as Prometheus itself would, and the first malformed one is an
/// error naming its line number. Non-finite samples (`NaN`, `+Inf`) count as absent.
pub fn parse_exposition(dialect: MetricsDialect, text: &str) -> Result<ScrapedLoad, ScrapeError> {
    let names = dialect.names();
    // Per wanted name: (sum, count) of its finite samples.
    let mut running = Wanted::new(names.running);
    let mut waiting = Wanted::new(names.waiting);
    let mut kv = Wanted::new(names.kv_usage);
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|message| ScrapeError::Parse {
            line: index + 1,
            message,
        })?;
        if !sample.value.is_finite() {
            continue;
        }
        running.offer(sample.name, sample.value);
        waiting.offer(sample.name, sample.value);
        kv.offer(sample.name, sample.value);
    }
    Ok(ScrapedLoad {
        running: running.sum().map(|v| v.max(0.0)),
        waiting: waiting.sum().map(|v| v.max(0.0)),
        kv_usage: kv.mean().map(kv_fraction),
    })
}

/// A usage figure as a 0..=1 fraction. Every documented name above is a fraction ("1 means
/// 100 percent"), but an exporter that reports percent (a value above 1, never a valid
/// fraction) is read as percent rather than as a cache 30 times full.
fn kv_fraction(v: f64) -> f64 {
    let v = if v > 1.0 { v / 100.0 } else { v };
    v.clamp(0.0, 1.0)
}

/// Accumulates the samples of one figure per alternative name.
struct Wanted {
    names: &'static [&'static str],
    acc: Vec<(f64, usize)>,
}

impl Wanted {
    fn new(names: &'static [&'static str]) -> Self {
        Wanted {
            names,
            acc: vec![(0.0, 0); names.len()],
        }
    }

    fn offer(&mut self, name: &str, value: f64) {
        if let Some(i) = self.names.iter().position(|n| *n == name) {
            self.acc[i].0 += value;
            self.acc[i].1 += 1;
        }
    }

    /// The first alternative present.
    fn first(&self) -> Option<(f64, usize)> {
        self.acc.iter().copied().find(|&(_, n)| n > 0)
    }

    fn sum(&self) -> Option<f64> {
        self.first().map(|(s, _)| s)
    }

    fn mean(&self) -> Option<f64> {
        self.first().map(|(s, n)| s / n as f64)
    }
}

struct Sample<'a> {
    name: &'a str,
    value: f64,
}

/// Parses one sample line: `name[{label="value",...}] value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample<'_>, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let first = name.chars().next();
    if first.is_none_or(|c| c.is_ascii_digit()) {
        return Err(format!(
            "expected a metric name at the start of `{}`",
            clip(line)
        ));
    }
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = skip_labels(after).map_err(|m| format!("metric `{name}`: {m}"))?;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!(
            "metric `{name}`: expected a space and a value after the name, found `{}`",
            clip(rest)
        ));
    }
    let mut fields = rest.split_ascii_whitespace();
    let value_text = fields
        .next()
        .ok_or_else(|| format!("metric `{name}` has no value"))?;
    let value = parse_value(value_text)
        .ok_or_else(|| format!("metric `{name}`: `{value_text}` is not a number"))?;
    match fields.next() {
        None => {}
        // An OpenMetrics exemplar (`# {trace_id="..."} 1.0`) follows the value: not ours.
        Some(t) if t.starts_with('#') => {}
        Some(t) => {
            if t.parse::<i64>().is_err() && t.parse::<f64>().is_err() {
                return Err(format!("metric `{name}`: timestamp `{t}` is not a number"));
            }
            if let Some(extra) = fields.next().filter(|e| !e.starts_with('#')) {
                return Err(format!(
                    "metric `{name}`: unexpected `{extra}` after the timestamp"
                ));
            }
        }
    }
    Ok(Sample { name, value })
}

/// Skips a label set after its `{`, returning what follows the closing `}`. Label values
/// are quoted strings with `\\`, `\"` and `\n` escapes; a trailing comma is allowed.
fn skip_labels(mut s: &str) -> Result<&str, String> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let key_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("label set not closed with `}`")?;
        let key = &s[..key_end];
        if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("expected a label name at `{}`", clip(s)));
        }
        s = s[key_end..].trim_start();
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("label `{key}`: expected `=`"))?
            .trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label `{key}`: value must be a quoted string"))?;
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("label `{key}`: value's closing quote missing")),
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\' | '"' | 'n')) => {}
                    Some((_, c)) => {
                        return Err(format!("label `{key}`: unknown escape `\\{c}` in value"))
                    }
                    None => return Err(format!("label `{key}`: value's closing quote missing")),
                },
                Some((i, '"')) => break i,
                Some(_) => {}
            }
        };
        s = s[close + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!(
                "label `{key}`: expected `,` or `}}` after its value, found `{}`",
                clip(s)
            ));
        }
    }
}

/// A sample value: a Go-style float, including `NaN`, `+Inf` and `-Inf` in any case (MindIE's
/// C++ exporter writes `Nan`).
fn parse_value(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "+inf" | "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        lower if lower.contains("inf") || lower.contains("nan") => None,
        _ => s.parse::<f64>().ok(),
    }
}

/// At most 60 characters of `s`, for error messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

/// The `/metrics` URL of an endpoint's OpenAI base URL: the server root's `/metrics`, so a
/// base written with the API prefix (`http://host:8000/v1`) scrapes `http://host:8000/metrics`.
pub fn metrics_url(base_url: &str) -> String {
    let base = base_url.trim().trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    format!("{base}/metrics")
}

/// One scrape: GET `metrics_url(base_url)` with `client`, read at most
/// [`MAX_EXPOSITION_BYTES`], parse it as `dialect`. The whole exchange (connect, headers,
/// body) is bounded by `timeout`. Generic over the client's connector and body type so the
/// proxy's pooled client (plain or TLS) is reused as it is.
pub async fn scrape_once<C, B>(
    client: &Client<C, B>,
    base_url: &str,
    dialect: MetricsDialect,
    timeout: Duration,
) -> Result<ScrapedLoad, ScrapeError>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: hyper::body::Body + EmptyBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let url = metrics_url(base_url);
    let uri: hyper::Uri =
        url.parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ScrapeError::Url {
                url: url.clone(),
                message: e.to_string(),
            })?;
    let request = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, "text/plain;version=0.0.4")
        .body(B::empty())
        .map_err(|e| ScrapeError::Url {
            url: url.clone(),
            message: e.to_string(),
        })?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| ScrapeError::Http {
                url: url.clone(),
                message: error_chain(&e),
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(ScrapeError::Status {
                url: url.clone(),
                status: status.as_u16(),
            });
        }
        let body = Limited::new(response.into_body(), MAX_EXPOSITION_BYTES)
            .collect()
            .await
            .map_err(|e| ScrapeError::Http {
                url: url.clone(),
                message: format!("reading the body: {e}"),
            })?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|e| ScrapeError::Http {
            url: url.clone(),
            message: format!("body is not UTF-8: {e}"),
        })?;
        parse_exposition(dialect, text)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ScrapeError::Timeout { url, timeout }),
    }
}

/// A request body type that can be empty, for the GET [`scrape_once`] sends.
pub trait EmptyBody {
    fn empty() -> Self;
}

impl EmptyBody for Full<Bytes> {
    fn empty() -> Self {
        Full::new(Bytes::new())
    }
}

impl EmptyBody for Empty<Bytes> {
    fn empty() -> Self {
        Empty::new()
    }
}

/// An error and its sources on one line (hyper's own message alone is often just "client
/// error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_map_to_their_dialect() {
        assert_eq!(
            MetricsDialect::for_engine("vllm-0.20"),
            Some(MetricsDialect::Vllm)
        );
        assert_eq!(
            MetricsDialect::for_engine("vllm-ascend-0.18"),
            Some(MetricsDialect::Vllm)
        );
        assert_eq!(
            MetricsDialect::for_engine("vllm-mlu"),
            Some(MetricsDialect::Vllm)
        );
        assert_eq!(
            MetricsDialect::for_engine("sglang"),
            Some(MetricsDialect::Sglang)
        );
        assert_eq!(
            MetricsDialect::for_engine("mindie"),
            Some(MetricsDialect::Mindie)
        );
        assert_eq!(
            MetricsDialect::for_engine("llama.cpp"),
            Some(MetricsDialect::LlamaCpp)
        );
        assert_eq!(MetricsDialect::for_engine("trtllm"), None);
        assert_eq!(MetricsDialect::for_engine("vllmx"), None);
        for d in MetricsDialect::ALL {
            assert_eq!(MetricsDialect::parse_name(d.name()), Some(d));
        }
        assert_eq!(
            MetricsDialect::parse_name("vllm-ascend"),
            Some(MetricsDialect::Vllm)
        );
        assert_eq!(MetricsDialect::parse_name("none"), None);
    }

    #[test]
    fn samples_sum_over_label_sets_and_skip_non_finite_values() {
        let text = "# HELP vllm:num_requests_running r\n\
                    # TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{model_name=\"a\",engine=\"0\"} 3.0\n\
                    vllm:num_requests_running{model_name=\"a\",engine=\"1\"} 2\n\
                    vllm:num_requests_waiting{model_name=\"a\"} NaN\n\
                    vllm:kv_cache_usage_perc{engine=\"0\"} 0.5 1700000000000\n\
                    vllm:kv_cache_usage_perc{engine=\"1\",} 0.25\n\
                    other_metric +Inf\n";
        let load = parse_exposition(MetricsDialect::Vllm, text).unwrap();
        assert_eq!(load.running, Some(5.0));
        assert_eq!(load.waiting, None, "a NaN sample is no reading");
        assert_eq!(load.kv_usage, Some(0.375));
    }

    #[test]
    fn newer_name_shadows_the_older_alias() {
        let text = "vllm:gpu_cache_usage_perc 0.9\nvllm:kv_cache_usage_perc 0.1\n";
        let load = parse_exposition(MetricsDialect::Vllm, text).unwrap();
        assert_eq!(load.kv_usage, Some(0.1));
        let old =
            parse_exposition(MetricsDialect::Vllm, "vllm:gpu_cache_usage_perc 0.9\n").unwrap();
        assert_eq!(old.kv_usage, Some(0.9));
    }

    #[test]
    fn label_values_may_hold_escapes_braces_and_spaces() {
        let text = "sglang:num_running_reqs{model_name=\"a \\\"b\\\" {c}\\\\ d\\n\"} 7\n";
        let load = parse_exposition(MetricsDialect::Sglang, text).unwrap();
        assert_eq!(load.running, Some(7.0));
    }

    #[test]
    fn percent_usage_is_read_as_percent() {
        let load = parse_exposition(MetricsDialect::Mindie, "npu_cache_usage_perc 30\n").unwrap();
        assert_eq!(load.kv_usage, Some(0.3));
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let cases = [
            ("ok 1\nbroken{model=\"x\" 1\n", 2, "label"),
            ("# c\n\nx 1\ny abc\n", 4, "not a number"),
            ("z{a=b} 1\n", 1, "quoted"),
            ("w{a=\"b\"}1\n", 1, "space"),
            ("v\n", 1, "space"),
            ("u 1 2 3\n", 1, "unexpected"),
            ("{a=\"b\"} 1\n", 1, "metric name"),
            ("t{a=\"b\\x\"} 1\n", 1, "escape"),
            ("s 1 notatime\n", 1, "timestamp"),
            ("r infinite\n", 1, "not a number"),
        ];
        for (text, line, needle) in cases {
            let err = parse_exposition(MetricsDialect::Vllm, text).unwrap_err();
            let ScrapeError::Parse { line: got, message } = &err else {
                panic!("{text:?}: {err}")
            };
            assert_eq!(*got, line, "{text:?}: {err}");
            assert!(message.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn exemplars_and_eof_are_skipped() {
        let text = "llamacpp:requests_processing 1 # {trace_id=\"x\"} 1\n# EOF\n";
        let load = parse_exposition(MetricsDialect::LlamaCpp, text).unwrap();
        assert_eq!(load.running, Some(1.0));
    }

    #[test]
    fn metrics_url_is_the_server_root() {
        assert_eq!(metrics_url("http://h:8000"), "http://h:8000/metrics");
        assert_eq!(metrics_url("http://h:8000/"), "http://h:8000/metrics");
        assert_eq!(metrics_url("http://h:8000/v1/"), "http://h:8000/metrics");
        assert_eq!(
            metrics_url("http://h:8000/api"),
            "http://h:8000/api/metrics"
        );
    }
}

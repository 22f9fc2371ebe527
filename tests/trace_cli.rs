//! Whole-program tests of trace reading: every reader on the excerpts and hand-made files in
//! `tests/data/` (see its README for provenance), broken files whose errors must name the
//! file and line, and the transforms. The `gen`/`stats` binary end to end is in
//! `trace_cli_parts/gen_stats.rs`.

use dujiang::request::{Nanos, NANOS_PER_SEC};
use dujiang::trace::{
    open, Format, OnError, ReadOptions, TraceError, TraceErrorKind, TraceExt, TraceRecord,
    TraceStats,
};
use std::path::PathBuf;
use std::process::{Command, Output};

#[path = "trace_cli_parts/gen_stats.rs"]
mod gen_stats;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read(name: &str, format: Format) -> Result<Vec<TraceRecord>, TraceError> {
    open(data(name), format, ReadOptions::default())?.collect()
}

fn dujiang(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dujiang"))
        .args(args)
        .output()
        .expect("run dujiang")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "dujiang failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dujiang-trace-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

// ---- readers on real excerpts -------------------------------------------------------

#[test]
fn azure_2023_excerpt_reads_every_row() {
    let recs = read("azure-llm-2023-conv-head300.csv", Format::Azure).unwrap();
    assert_eq!(recs.len(), 300);
    assert_eq!(recs[0].arrival_ns, 0);
    assert_eq!((recs[0].prompt_tokens, recs[0].output_tokens), (374, 44));
    // 18:17:10.7096920 − 18:15:46.6805900
    assert_eq!(recs[299].arrival_ns, 84_029_102_000);
    assert_eq!(
        (recs[299].prompt_tokens, recs[299].output_tokens),
        (212, 183)
    );
    let ctx: u64 = recs.iter().map(|r| u64::from(r.prompt_tokens)).sum();
    let gen: u64 = recs.iter().map(|r| u64::from(r.output_tokens)).sum();
    assert_eq!((ctx, gen), (270_000, 76_870));
    assert!(recs.windows(2).all(|w| w[0].arrival_ns <= w[1].arrival_ns));
    assert!(recs
        .iter()
        .all(|r| r.hash_ids.is_empty() && r.model.is_none()));
}

#[test]
fn mooncake_excerpt_keeps_hash_ids() {
    let recs = read("mooncake-synthetic-head200.jsonl", Format::Mooncake).unwrap();
    assert_eq!(recs.len(), 200);
    assert_eq!(recs[0].prompt_tokens, 40_160);
    assert_eq!(recs[0].output_tokens, 6);
    // 512-token blocks: ⌈40160 / 512⌉ = 79 ids, 0 … 78.
    assert_eq!(recs[0].hash_ids, (0..79).collect::<Vec<u64>>());
    assert_eq!(recs[199].arrival_ns, 58_501 * 1_000_000);
    let ids: usize = recs.iter().map(|r| r.hash_ids.len()).sum();
    assert_eq!(ids, 5_330);
    let input: u64 = recs.iter().map(|r| u64::from(r.prompt_tokens)).sum();
    assert_eq!(input, 2_663_480);
    let req = recs[0].to_request(7);
    assert_eq!(req.prefix_hashes.len(), 79);
}

#[test]
fn azure_2024_timestamps_with_offsets_and_ragged_fractions() {
    let recs = read("azure-llm-2024-handmade.csv", Format::Auto).unwrap();
    let at: Vec<Nanos> = recs.iter().map(|r| r.arrival_ns).collect();
    // Measured from 00:00:00.009930.
    assert_eq!(
        at,
        [
            0,
            8_544_000,
            390_070_000,
            990_070_000,
            1_240_070_000,
            1_240_071_000,
            2_990_069_900,
            3_090_070_000,
            59_113_526_000,
            59_990_070_000,
        ]
    );
    assert_eq!(recs[9].prompt_tokens, 6000);
}

#[test]
fn burstgpt_skips_failures_and_counts_them() {
    let mut r = open(
        data("burstgpt-handmade-v1.csv"),
        Format::Auto,
        ReadOptions::default(),
    )
    .unwrap();
    let recs: Vec<TraceRecord> = r.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(r.format(), Format::BurstGpt);
    assert_eq!(recs.len(), 37);
    assert_eq!(r.counts().failed, 3);
    assert_eq!(r.counts().records, 37);
    assert!(recs.iter().all(|r| r.output_tokens > 0));
    let last = recs.last().unwrap();
    assert_eq!(last.arrival_ns, 68 * NANOS_PER_SEC);
    assert_eq!(last.model.as_deref(), Some("ChatGPT"));
    let prompt: u64 = recs.iter().map(|r| u64::from(r.prompt_tokens)).sum();
    assert_eq!(prompt, 29_751);
}

#[test]
fn newer_burstgpt_files_with_extra_columns() {
    let mut r = open(
        data("burstgpt-handmade-v1.1.csv"),
        Format::BurstGpt,
        ReadOptions::default(),
    )
    .unwrap();
    let recs: Vec<TraceRecord> = r.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(recs.len(), 28);
    assert_eq!(r.counts().failed, 2);
    assert_eq!(recs[0].arrival_ns, NANOS_PER_SEC / 2);
    assert_eq!(recs[0].session, Some(1000));
    assert_eq!(recs[27].arrival_ns, 24_250_000_000);
    assert_eq!(recs[27].session, Some(1001));
    assert_eq!(recs[27].prompt_tokens, 3674);
    assert_eq!(recs[27].to_request(1).session, Some(1001));
}

#[test]
fn auto_detects_every_layout() {
    for (file, want) in [
        ("azure-llm-2023-conv-head300.csv", Format::Azure),
        ("azure-llm-2024-handmade.csv", Format::Azure),
        ("burstgpt-handmade-v1.csv", Format::BurstGpt),
        ("burstgpt-handmade-v1.1.csv", Format::BurstGpt),
        ("mooncake-synthetic-head200.jsonl", Format::Mooncake),
    ] {
        let mut r = open(data(file), Format::Auto, ReadOptions::default()).unwrap();
        assert!(r.next().unwrap().is_ok(), "{file}");
        assert_eq!(r.format(), want, "{file}");
    }
}

#[test]
fn wrong_explicit_format_is_a_layout_error() {
    let err = read("mooncake-synthetic-head200.jsonl", Format::Azure).unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::Layout);
    assert!(
        err.to_string()
            .contains("mooncake-synthetic-head200.jsonl:1:"),
        "{err}"
    );
}

// ---- broken input ----------------------------------------------------------------------

#[test]
fn broken_azure_names_file_line_column_and_field() {
    let err = read("azure-broken.csv", Format::Auto).unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::Line);
    assert_eq!(err.line, Some(5));
    assert_eq!(err.field.as_deref(), Some("ContextTokens"));
    assert!(
        err.to_string()
            .ends_with("azure-broken.csv:5:29: ContextTokens: invalid digit \"12x\""),
        "{err}"
    );
}

#[test]
fn broken_mooncake_names_file_line_and_key() {
    let err = read("mooncake-broken.jsonl", Format::Auto).unwrap_err();
    assert_eq!(err.line, Some(3));
    assert_eq!(err.field.as_deref(), Some("output_length"));
    assert!(
        err.to_string().contains("mooncake-broken.jsonl:3:"),
        "{err}"
    );
}

#[test]
fn skip_mode_reads_past_broken_lines() {
    let opts = ReadOptions {
        on_error: OnError::Skip,
        ..ReadOptions::default()
    };
    let mut r = open(data("azure-broken.csv"), Format::Auto, opts).unwrap();
    let stats = TraceStats::of_reader(&mut r).unwrap();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.skipped_malformed, 1);
    assert_eq!(r.first_skipped().unwrap().line, Some(5));
}

#[test]
fn missing_file_names_it() {
    let err = read("no-such-trace.csv", Format::Auto).unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::Io);
    assert!(err.to_string().contains("no-such-trace.csv"), "{err}");
}

// ---- transforms on a real trace ----------------------------------------------------------

#[test]
fn window_then_rebase_then_speed_up_on_the_azure_excerpt() {
    let reader = open(
        data("azure-llm-2023-conv-head300.csv"),
        Format::Auto,
        ReadOptions::default(),
    )
    .unwrap();
    let recs: Vec<TraceRecord> = reader
        .window(10 * NANOS_PER_SEC, 20 * NANOS_PER_SEC)
        .rebase()
        .speed_up(2.0)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(recs.len(), 18);
    assert_eq!(recs[0].arrival_ns, 0);
    assert!(recs.last().unwrap().arrival_ns < 5 * NANOS_PER_SEC);
    let all = read("azure-llm-2023-conv-head300.csv", Format::Auto).unwrap();
    let limited: Vec<TraceRecord> = all.into_iter().limit(25).collect();
    assert_eq!(limited.len(), 25);
}

#[test]
fn scale_rate_to_a_target_with_a_first_pass() {
    let path = data("azure-llm-2023-conv-head300.csv");
    let source =
        dujiang::trace::mean_rate(open(&path, Format::Auto, ReadOptions::default()).unwrap())
            .unwrap()
            .unwrap();
    let factor = dujiang::trace::rate_factor(source, 20.0);
    let scaled: Vec<TraceRecord> = open(&path, Format::Auto, ReadOptions::default())
        .unwrap()
        .scale_rate(factor)
        .collect::<Result<_, _>>()
        .unwrap();
    let rate = TraceStats::of_records(&scaled).mean_rate_rps.unwrap();
    assert!((rate / 20.0 - 1.0).abs() < 1e-6, "{rate}");
}

// ---- the binary --------------------------------------------------------------------------

//! Tests of the trace reader: each layout read, broken lines placed at file:line:column,
//! skipping, counting and format detection.
use super::*;
use crate::request::Priority;

fn read_all(text: &str, format: Format) -> Result<Vec<TraceRecord>, TraceError> {
    TraceReader::new(text.as_bytes(), "t", format).collect()
}

#[test]
fn csv_split_handles_quotes_and_empties() {
    let mut f = Vec::new();
    let line = r#"1,"a,b",,"x""y",z"#;
    split_csv(line, &mut f);
    let parts: Vec<&str> = f.iter().map(|&(a, b)| &line[a..b]).collect();
    assert_eq!(parts, ["1", "a,b", "", "x\"\"y", "z"]);
    split_csv("", &mut f);
    assert_eq!(f, [(0, 0)]);
    split_csv("a,", &mut f);
    assert_eq!(f, [(0, 1), (2, 2)]);
}

#[test]
fn tokens_accept_zero_fractions_only() {
    assert_eq!(parse_tokens("472"), Ok(472));
    assert_eq!(parse_tokens("472.0"), Ok(472));
    assert_eq!(parse_tokens("12x"), Err("invalid digit \"12x\"".into()));
    assert!(parse_tokens("4.5").is_err());
    assert!(parse_tokens("-3").unwrap_err().contains("negative"));
    assert!(parse_tokens("").is_err());
    assert!(parse_tokens("99999999999")
        .unwrap_err()
        .contains("too large"));
}

#[test]
fn azure_arrivals_count_from_the_first_row() {
    let recs = read_all(
        "TIMESTAMP,ContextTokens,GeneratedTokens\r\n\
         2024-05-10 00:00:00.009930+00:00,10,2\r\n\
         2024-05-10 00:00:01+00:00,20,3\r\n\
         \r\n\
         2024-05-10 00:00:01.5+00:00,30,4\r\n",
        Format::Azure,
    )
    .unwrap();
    let at: Vec<Nanos> = recs.iter().map(|r| r.arrival_ns).collect();
    assert_eq!(at, [0, 990_070_000, 1_490_070_000]);
    assert_eq!(recs[2].prompt_tokens, 30);
    assert_eq!(recs[2].output_tokens, 4);
}

#[test]
fn columns_are_found_by_name_in_any_order() {
    let recs = read_all(
        "GeneratedTokens,TIMESTAMP,ContextTokens\n7,2023-11-16 18:15:46.0,100\n",
        Format::Auto,
    )
    .unwrap();
    assert_eq!((recs[0].prompt_tokens, recs[0].output_tokens), (100, 7));
}

#[test]
fn missing_column_is_a_layout_error() {
    let err = read_all("TIMESTAMP,ContextTokens\n", Format::Azure).unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::Layout);
    assert_eq!(err.line, Some(1));
    assert!(err.message.contains("GeneratedTokens"), "{err}");
}

#[test]
fn timestamps_out_of_range_name_the_line_instead_of_wrapping() {
    let err = read_all(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n\
         2023-11-16 18:15:46.0,100,7\n\
         2300-01-01 00:00:00,100,7\n",
        Format::Azure,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("t:3:") && err.contains("outside the representable range"),
        "{err}"
    );
    // Each end representable, their distance not.
    let err = read_all(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n\
         1700-01-01 00:00:00,100,7\n\
         2260-01-01 00:00:00,100,7\n",
        Format::Azure,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("t:3:") && err.contains("more than 292 years"),
        "{err}"
    );
}

#[test]
fn short_row_names_the_missing_column() {
    let err = read_all(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,100\n",
        Format::Azure,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "t:2: GeneratedTokens: missing column (row has 2 of 3 columns)"
    );
}

#[test]
fn out_of_order_is_clamped_and_counted_or_rejected() {
    let text = "{\"timestamp\": 5, \"input_length\": 1, \"output_length\": 1}\n\
                {\"timestamp\": 3, \"input_length\": 1, \"output_length\": 1}\n\
                {\"timestamp\": 9, \"input_length\": 1, \"output_length\": 1}\n";
    let mut r = TraceReader::new(text.as_bytes(), "m.jsonl", Format::Auto);
    let at: Vec<Nanos> = r.by_ref().map(|x| x.unwrap().arrival_ns).collect();
    assert_eq!(at, [5_000_000, 5_000_000, 9_000_000]);
    assert_eq!(r.counts().out_of_order, 1);
    assert_eq!(r.format(), Format::Mooncake);

    let err = TraceReader::new(text.as_bytes(), "m.jsonl", Format::Auto)
        .with_options(ReadOptions {
            out_of_order: OutOfOrder::Reject,
            ..ReadOptions::default()
        })
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::OutOfOrder);
    assert_eq!(err.line, Some(2));
}

#[test]
fn azure_row_before_the_first_clamps_to_zero() {
    let mut r = TraceReader::new(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n\
         2023-11-16 18:00:01.0,1,1\n\
         2023-11-16 18:00:00.0,1,1\n"
            .as_bytes(),
        "a.csv",
        Format::Auto,
    );
    let at: Vec<Nanos> = r.by_ref().map(|x| x.unwrap().arrival_ns).collect();
    assert_eq!(at, [0, 0]);
    assert_eq!(r.counts().out_of_order, 1);
}

#[test]
fn skip_mode_counts_broken_lines_and_keeps_the_first_error() {
    let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                2023-11-16 18:00:00.0,1,1\n\
                2023-11-16 18:00:01.0,1x,1\n\
                2023-11-16 25:00:01.0,1,1\n\
                2023-11-16 18:00:02.0,2,2\n";
    let mut r =
        TraceReader::new(text.as_bytes(), "a.csv", Format::Auto).with_options(ReadOptions {
            on_error: OnError::Skip,
            ..ReadOptions::default()
        });
    let n = r.by_ref().collect::<Result<Vec<_>, _>>().unwrap().len();
    assert_eq!(n, 2);
    assert_eq!(r.counts().malformed, 2);
    assert_eq!(r.counts().records, 2);
    assert_eq!(r.counts().lines, 5);
    assert_eq!(
        r.first_skipped().unwrap().to_string(),
        "a.csv:3:23: ContextTokens: invalid digit \"1x\""
    );
}

#[test]
fn a_line_that_is_not_utf8_is_a_broken_line() {
    let text: &[u8] = b"TIMESTAMP,ContextTokens,GeneratedTokens\n\
                        2023-11-16 18:00:00.0,1,1\n\
                        2023-11-16 18:00:01.0,1\xff,1\n\
                        2023-11-16 18:00:02.0,2,2\n";
    let err = TraceReader::new(text, "a.csv", Format::Auto)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::Line);
    assert_eq!(err.to_string(), "a.csv:3:24: not UTF-8 text (byte 0xff)");
    let mut r = TraceReader::new(text, "a.csv", Format::Auto).with_options(ReadOptions {
        on_error: OnError::Skip,
        ..ReadOptions::default()
    });
    let n = r.by_ref().collect::<Result<Vec<_>, _>>().unwrap().len();
    assert_eq!((n, r.counts().malformed, r.counts().lines), (2, 1, 4));
}

#[test]
fn fail_mode_stops_after_the_error() {
    let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                2023-11-16 18:00:00.0,1,x\n\
                2023-11-16 18:00:02.0,2,2\n";
    let mut r = TraceReader::new(text.as_bytes(), "a.csv", Format::Auto);
    assert!(r.next().unwrap().is_err());
    assert!(r.next().is_none());
}

#[test]
fn jsonl_reads_every_key_and_defaults_the_rest() {
    let recs = read_all(
        "{\"arrival_ms\": 1.5, \"input_tokens\": 10, \"output_tokens\": 2, \"hash_ids\": [1,2], \
          \"priority\": \"batch\", \"slo_ttft_ms\": 500, \"session\": 7, \"model\": \"qwen\"}\n\
         {\"arrival_ns\": 2000001, \"input_tokens\": 11, \"output_tokens\": 3}\n",
        Format::Auto,
    )
    .unwrap();
    assert_eq!(recs[0].arrival_ns, 1_500_000);
    assert_eq!(recs[0].priority, Priority::Batch);
    assert_eq!(
        recs[0].slo,
        Some(Slo {
            ttft_ns: 500 * NANOS_PER_MS,
            tpot_ns: Slo::default().tpot_ns
        })
    );
    assert_eq!(recs[0].hash_ids, [1, 2]);
    assert_eq!(recs[0].session, Some(7));
    assert_eq!(recs[0].model.as_deref(), Some("qwen"));
    assert_eq!(recs[1].arrival_ns, 2_000_001);
    assert_eq!(recs[1].priority, Priority::Interactive);
    assert_eq!(recs[1].slo, None);
}

#[test]
fn jsonl_errors_name_the_key() {
    let err = read_all(
        "{\"arrival_ms\": 1, \"input_tokens\": 1, \"output_tokns\": 2}\n",
        Format::Jsonl,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("t:1:"), "{err}");
    assert!(err.message.contains("output_tokns"), "{err}");
    let err = read_all(
        "{\"arrival_ms\": 1, \"input_tokens\": \"x\", \"output_tokens\": 2}\n",
        Format::Jsonl,
    )
    .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("input_tokens"), "{err}");
    assert_eq!(err.column, Some(37), "{err}");
    let err = read_all(
        "{\"input_tokens\": 1, \"output_tokens\": 2}\n",
        Format::Jsonl,
    )
    .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("arrival_ms"));
    let err = read_all(
        "{\"arrival_ms\": 0, \"input_tokens\": 1, \"output_tokens\": 2, \"priority\": \"urgent\"}\n",
        Format::Jsonl,
    )
    .unwrap_err();
    assert!(err.message.contains("urgent"), "{err}");
    // An SLO of 0 ms no request can meet: refused naming the line and key.
    for key in ["slo_ttft_ms", "slo_tpot_ms"] {
        let err = read_all(
            &format!(
                "{{\"arrival_ms\": 0, \"input_tokens\": 1, \"output_tokens\": 2}}\n\
                 {{\"arrival_ms\": 1, \"input_tokens\": 1, \"output_tokens\": 2, \"{key}\": 0}}\n"
            ),
            Format::Jsonl,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some(key), "{err}");
        assert!(err.to_string().starts_with("t:2:"), "{err}");
        assert!(err.message.contains("an SLO must be above 0"), "{err}");
    }
    // Unknown and missing keys are the field, not the key before them.
    let err = read_all(
        "{\"arrival_ms\": 1, \"input_tokens\": 1, \"output_tokens\": 2, \"foo\": 1}\n",
        Format::Jsonl,
    )
    .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("foo"), "{err}");
    let err = read_all("{\"arrival_ms\": 1, \"input_tokens\": 1}\n", Format::Jsonl).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("output_tokens"), "{err}");
    let err = read_all(
        "{\"timestamp\": 1, \"input_length\": 1}\n",
        Format::Mooncake,
    )
    .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("output_length"), "{err}");
    // An array is not a request, even one with every field in order.
    for line in [
        "[1, 2]",
        "[0, null, 1, 2, [], null, null, null, null, null]",
        "7",
    ] {
        let err = read_all(&format!("{line}\n"), Format::Jsonl).unwrap_err();
        assert_eq!(err.to_string(), "t:1:1: not a JSON object: each line of a jsonl trace is one request as {\"key\": value, ...}");
    }
}

#[test]
fn undetectable_first_line_is_a_layout_error() {
    let err = read_all("hello,world\n1,2\n", Format::Auto).unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::Layout);
    assert_eq!(err.line, Some(1));
    // A header with some of a layout's columns names the one it lacks.
    let err = read_all("Timestamp,Model,Request tokens\n5,m,1\n", Format::Auto).unwrap_err();
    assert_eq!(
        err.to_string(),
        "t:1: burstgpt header has no `Response tokens` column (columns: Timestamp, Model, Request tokens)"
    );
    let err = read_all("TIMESTAMP,ContextTokens\n", Format::Auto).unwrap_err();
    assert!(err.message.contains("no `GeneratedTokens` column"), "{err}");
    let err = read_all("{\"arrival_ms\": 1, \"output_tokens\": 2}\n", Format::Auto).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("input_tokens"), "{err}");
}

#[test]
fn empty_input_has_no_records() {
    let mut r = TraceReader::new("\n\n".as_bytes(), "e", Format::Auto);
    assert!(r.next().is_none());
    assert_eq!(r.format(), Format::Auto);
}

#[test]
fn burstgpt_session_ids_hash_when_not_numeric() {
    assert_eq!(session_id("42"), Some(42));
    assert_eq!(session_id(""), None);
    assert_eq!(session_id("abc"), session_id("abc"));
    assert_ne!(session_id("abc"), session_id("abd"));
}

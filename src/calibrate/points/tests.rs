//! Unit tests of the measured-points reader: both formats, quantile lengths, and errors
//! that name the file, line and field.

use super::*;

const GOOD: &str = r#"
[[point]]
id = "a"
chip = "h100"
engine = "vllm-0.7"
model = "llama-3-8b"
tp = 1
dtype = "bf16"
workload = "decode"
batch = 4
context = 1024
metric = "step_ms"
value = 7.4
source = "lab"

[[point]]
id = "b"
chip = "h100"
engine = "vllm-0.7"
model = "llama-3-8b"
tp = 1
dtype = "bf16"
workload = "served"
concurrency = 1
requests = 50
input = "p25=120 p50=280 p75=580"
output = 300
metric = "ttft_ms_p50"
value = 20.0
source = "lab"
"#;

#[test]
fn toml_points_parse() {
    let pts = parse_toml_points(GOOD, "p.toml").unwrap();
    assert_eq!(pts.len(), 2);
    assert_eq!(pts[0].line, 2);
    assert_eq!(pts[1].line, 16);
    assert_eq!(
        pts[0].workload,
        Workload::Decode {
            batch: 4,
            context: 1024
        }
    );
    assert_eq!(pts[1].metric, Metric::TtftMsP50);
}

fn toml_err(from: &str, to: &str) -> ConfigError {
    let src = GOOD.replacen(from, to, 1);
    parse_toml_points(&src, "p.toml").unwrap_err()
}

#[test]
fn toml_errors_name_line_and_field() {
    let e = toml_err("value = 7.4", "value = -7.4");
    assert_eq!(
        (e.line, e.field.as_deref()),
        (Some(13), Some("value")),
        "{e}"
    );
    let e = toml_err("metric = \"step_ms\"", "metric = \"ttft_ms_p50\"");
    assert_eq!(
        (e.line, e.field.as_deref()),
        (Some(12), Some("metric")),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("p.toml:12: field `metric`"),
        "{e}"
    );
    let e = toml_err("batch = 4\n", "");
    assert_eq!(
        (e.line, e.field.as_deref()),
        (Some(2), Some("batch")),
        "{e}"
    );
    let e = toml_err("input = \"p25=120 p50=280 p75=580\"", "input = \"p50=abc\"");
    assert_eq!(
        (e.line, e.field.as_deref()),
        (Some(26), Some("input")),
        "{e}"
    );
    let e = toml_err(
        "dtype = \"bf16\"\n",
        "dtype = \"bf16\"\nkv_dtype = \"fp4\"\n",
    );
    assert_eq!(
        (e.line, e.field.as_deref()),
        (Some(9), Some("kv_dtype")),
        "{e}"
    );
    let e = toml_err("dtype = \"bf16\"", "dtype = \"fp4\"");
    assert_eq!(e.field.as_deref(), Some("dtype"), "{e}");
    let e = toml_err("id = \"b\"", "id = \"a\"");
    assert_eq!((e.line, e.field.as_deref()), (Some(16), Some("id")), "{e}");
    // Unknown keys are placed by the TOML parser itself.
    let e = toml_err("tp = 1\n", "tpp = 1\n");
    assert_eq!(e.line, Some(7), "{e}");
    assert!(e.to_string().contains("tpp"), "{e}");
}

const CSV: &str = "# lab points\n\
id,chip,engine,model,tp,dtype,workload,tokens,batch,context,metric,value,source\n\
p1,h100,vllm-0.7,llama-3-8b,1,bf16,prefill,512,,,prefill_ms,30.5,\"lab, 2026\"\n\
d1,h100,vllm-0.7,llama-3-8b,1,bf16,decode,,8,2048,step_ms,8.1,lab\n";

#[test]
fn csv_points_parse_with_quotes_and_comments() {
    let pts = parse_csv_points(CSV, "p.csv").unwrap();
    assert_eq!(pts.len(), 2);
    assert_eq!(pts[0].source, "lab, 2026");
    assert_eq!(pts[0].line, 3);
    assert_eq!(
        pts[1].workload,
        Workload::Decode {
            batch: 8,
            context: 2048
        }
    );
}

#[test]
fn csv_errors_name_line_and_column() {
    let e = parse_csv_points(&CSV.replace(",8,2048,", ",x,2048,"), "p.csv").unwrap_err();
    assert_eq!(
        (e.line, e.field.as_deref()),
        (Some(4), Some("batch")),
        "{e}"
    );
    assert!(e.to_string().starts_with("p.csv:4: field `batch`"), "{e}");
    let e = parse_csv_points(&CSV.replace("prefill,512", "prefill,"), "p.csv").unwrap_err();
    assert_eq!(
        (e.line, e.field.as_deref()),
        (Some(3), Some("tokens")),
        "{e}"
    );
    let e = parse_csv_points(&CSV.replace("context,metric", "contex,metric"), "p.csv").unwrap_err();
    assert_eq!(
        (e.line, e.field.as_deref()),
        (Some(2), Some("contex")),
        "{e}"
    );
    let e = parse_csv_points(&CSV.replace(",lab\n", ",lab,extra\n"), "p.csv").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
}

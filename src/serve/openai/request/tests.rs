//! Tests of reading OpenAI request bodies and headers: accepted shapes, sampling fields
//! passed on, refusals naming the field, dujiang's headers, and token-id prompts.

use super::*;

fn chat(body: &str) -> Result<Parsed, ApiError> {
    parse(Endpoint::Chat, &HeaderMap::new(), body.as_bytes())
}

#[test]
fn text_parts_join_and_unknown_fields_pass() {
    let p = chat(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"ab"},{"type":"text","text":"cd"}]}],
           "max_completion_tokens":7,"temperature":0.2,"seed":1,"stop":["x"],"ignore_eos":true,"whatever":{}}"#,
    )
    .unwrap();
    assert_eq!(p.wire.messages[0].content, "abcd");
    assert_eq!(p.wire.max_tokens, 7);
    assert_eq!(p.wire.prompt_tokens, Some(1 + 4));
}

#[test]
fn every_sampling_field_passes_through_under_its_own_name() {
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    let fields: Vec<String> = SAMPLING_FIELDS
        .iter()
        .enumerate()
        .map(|(i, f)| format!("\"{f}\":{i}"))
        .collect();
    let p = chat(&format!("{{{m},{}}}", fields.join(","))).unwrap();
    assert_eq!(p.sampling.len(), SAMPLING_FIELDS.len());
    for (i, f) in SAMPLING_FIELDS.iter().enumerate() {
        assert_eq!(p.sampling[*f], serde_json::json!(i), "{f}");
    }
    // Absent and null fields are not sent.
    let p = chat(&format!("{{{m},\"temperature\":null}}")).unwrap();
    assert!(p.sampling.is_empty());
}

#[test]
fn refusals_name_the_field() {
    let param = |body: &str| chat(body).unwrap_err().param.unwrap();
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    assert_eq!(param(&format!("{{{m},\"n\":2}}")), "n");
    assert_eq!(param(&format!("{{{m},\"tools\":[{{}}]}}")), "tools");
    assert_eq!(
        param(r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#),
        "messages[0].content[0].type"
    );
    assert_eq!(param(&format!("{{{m},\"max_tokens\":-1}}")), "max_tokens");
    assert_eq!(
        param(&format!(
            "{{{m},\"stream_options\":{{\"include_usage\":1}}}}"
        )),
        "stream_options.include_usage"
    );
    assert_eq!(
        param(&format!("{{{m},\"priority\":\"urgent\"}}")),
        "priority"
    );
    assert_eq!(param("{\"messages\":[]}"), "messages");
    // A field given twice is refused with serde's reason, whichever reader read it.
    let twice = chat(&format!("{{{m},\"model\":\"a\",\"model\":\"b\"}}")).unwrap_err();
    assert!(
        twice.message.contains("duplicate field `model`"),
        "{}",
        twice.message
    );
    let bad = chat(&format!("{{{m},\"max_tokens\":01}}")).unwrap_err();
    assert_eq!(bad.param.as_deref(), Some("body"));
    assert_eq!(param("[1]"), "body");
}

#[test]
fn headers_carry_priority_slo_and_timeout() {
    let mut h = HeaderMap::new();
    h.insert("x-dujiang-priority", "batch".parse().unwrap());
    h.insert("x-dujiang-slo-ttft-ms", "500".parse().unwrap());
    h.insert("x-dujiang-timeout-ms", "250".parse().unwrap());
    let p = parse(Endpoint::Completions, &h, br#"{"prompt":"hello"}"#).unwrap();
    assert_eq!(p.wire.priority, wire::Priority::Batch as i32);
    assert_eq!(
        p.wire.slo,
        Some(wire::Slo {
            ttft_ms: 500,
            tpot_ms: 0
        })
    );
    assert_eq!(p.timeout, Some(Duration::from_millis(250)));
    assert_eq!(p.wire.max_tokens, DEFAULT_MAX_TOKENS);
    // A body field wins over its header.
    let p = parse(
        Endpoint::Completions,
        &h,
        br#"{"prompt":"hello","priority":0}"#,
    )
    .unwrap();
    assert_eq!(p.wire.priority, wire::Priority::Interactive as i32);
}

#[test]
fn token_id_prompts_count_their_ids() {
    let p = parse(
        Endpoint::Completions,
        &HeaderMap::new(),
        br#"{"prompt":[[1,2,3,4,5]]}"#,
    )
    .unwrap();
    assert_eq!(p.wire.prompt_tokens, Some(5));
    // The ids themselves go to a real engine; a text prompt adds nothing.
    assert_eq!(p.sampling[PROMPT_IDS], serde_json::json!([1, 2, 3, 4, 5]));
    let p = parse(
        Endpoint::Completions,
        &HeaderMap::new(),
        br#"{"prompt":"a b"}"#,
    )
    .unwrap();
    assert!(p.sampling.get(PROMPT_IDS).is_none());
    let e = parse(
        Endpoint::Completions,
        &HeaderMap::new(),
        br#"{"prompt":["a","b"]}"#,
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("prompt"));
}

#[test]
fn a_prompt_length_header_out_of_range_is_refused_naming_the_header() {
    let refused = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert("x-dujiang-prompt-tokens", v.parse().unwrap());
        parse(Endpoint::Completions, &h, br#"{"prompt":"hello"}"#).unwrap_err()
    };
    // Not the wire's `prompt_tokens`, which the client never sent.
    let e = refused("0");
    assert_eq!(e.param.as_deref(), Some("x-dujiang-prompt-tokens"));
    // Not "4294967295 tokens; ...", the u32 it would have been clamped to.
    let e = refused("99999999999");
    assert_eq!(e.param.as_deref(), Some("x-dujiang-prompt-tokens"));
    assert!(e.message.contains("99999999999 tokens"), "{}", e.message);
}

#[test]
fn a_max_tokens_beyond_any_context_is_called_too_long_not_a_non_integer() {
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    for field in ["max_tokens", "max_completion_tokens"] {
        let e = chat(&format!("{{{m},\"{field}\":99999999999999}}")).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(field));
        assert!(
            e.message.contains("99999999999999 tokens is longer"),
            "{}",
            e.message
        );
    }
}

#[test]
fn a_token_id_prompt_with_a_string_in_it_is_a_bad_id_not_a_list_of_prompts() {
    let e = parse(
        Endpoint::Completions,
        &HeaderMap::new(),
        br#"{"prompt":[1,"a"]}"#,
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("prompt"));
    assert!(
        e.message.contains("token ids must be integers"),
        "{}",
        e.message
    );
}

#[test]
fn a_content_part_that_is_not_an_object_is_named_as_such() {
    let e = chat(r#"{"messages":[{"role":"user","content":["hi"]}]}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
    assert!(e.message.contains("must be an object"), "{}", e.message);
}

#[test]
fn stream_options_without_stream_are_refused_as_vllm_refuses_them() {
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    for body in [
        format!("{{{m},\"stream_options\":{{\"include_usage\":true}}}}"),
        format!("{{{m},\"stream\":false,\"stream_options\":{{\"include_usage\":false}}}}"),
    ] {
        let e = chat(&body).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream_options"), "{body}");
    }
    // With a stream, absent, null or empty: accepted.
    for extra in [
        r#","stream":true,"stream_options":{"include_usage":true}"#,
        r#","stream_options":null"#,
        r#","stream_options":{}"#,
    ] {
        chat(&format!("{{{m}{extra}}}")).unwrap();
    }
}

//! Tests of the stream reader: event framing across any split, bounded lines, chat and
//! completion chunks as real servers send them, and the fast chunk reader against serde.

use super::*;

fn decode_all(parts: &[&[u8]]) -> Vec<String> {
    let mut d = SseDecoder::default();
    let mut out = Vec::new();
    for p in parts {
        out.extend(d.push(p).unwrap());
    }
    out
}

#[test]
fn events_are_framed_by_blank_lines_across_any_split() {
    let stream = b"data: {\"a\":1}\n\n: keep-alive comment\n\nevent: x\nid: 3\ndata: one\ndata: two\n\ndata:[DONE]\n\n";
    let whole = decode_all(&[stream]);
    assert_eq!(whole, ["{\"a\":1}", "one\ntwo", "[DONE]"]);
    // Byte by byte gives the same events: a network read may end anywhere.
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode_all(&bytes), whole);
    // Any one split in two reads, the events borrowed or gathered across it.
    for at in 0..=stream.len() {
        let (a, b) = stream.split_at(at);
        assert_eq!(decode_all(&[a, b]), whole, "split at {at}");
    }
    // CRLF and lone CR line ends, a CRLF split between two reads.
    let crlf = decode_all(&[b"data: x\r", b"\n\r\ndata: y\r\r"]);
    assert_eq!(crlf, ["x", "y"]);
    // An event not yet ended by a blank line is not dispatched.
    assert!(decode_all(&[b"data: partial\n"]).is_empty());
}

#[test]
fn an_endless_line_is_an_error_not_unbounded_memory() {
    let mut d = SseDecoder::default();
    let junk = vec![b'x'; MAX_LINE + 1];
    assert!(d.push(&junk).unwrap_err().contains("longer than"));
}

#[test]
fn chat_chunks_as_servers_send_them() {
    // vLLM/SGLang open with a role-only delta: no token.
    let role = read_chunk(r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#).unwrap();
    assert_eq!(role, Chunk::default());
    let tok =
        read_chunk(r#"{"choices":[{"index":0,"delta":{"content":" the"},"finish_reason":null}]}"#)
            .unwrap();
    assert!(tok.text && !tok.finished);
    assert_eq!(tok.content, " the");
    // The last token and the finish reason in one chunk (vLLM) ...
    let last =
        read_chunk(r#"{"choices":[{"index":0,"delta":{"content":"."},"finish_reason":"length"}]}"#)
            .unwrap();
    assert!(last.text && last.finished);
    // ... or a finish chunk of its own with an empty delta.
    let fin = read_chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#).unwrap();
    assert!(!fin.text && fin.finished);
    assert_eq!(fin.finish_reason.as_deref(), Some("stop"));
    // Escaped text is unescaped (the other strings are borrowed as they are).
    let esc =
        read_chunk(r#"{"choices":[{"delta":{"content":"a\"b\n"},"finish_reason":"st\u006fp"}]}"#)
            .unwrap();
    assert_eq!(
        (esc.content.as_str(), esc.finish_reason.as_deref()),
        ("a\"b\n", Some("stop"))
    );
    // Reasoning tokens count as output.
    let think = read_chunk(r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#).unwrap();
    assert!(think.text);
    // Usage chunk: no choices.
    let usage = read_chunk(
        r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#,
    )
    .unwrap();
    assert_eq!(
        (usage.completion_tokens, usage.prompt_tokens, usage.text),
        (Some(7), Some(12), false)
    );
    // `usage: null` on every chunk (vLLM with continuous usage off).
    let null_usage = read_chunk(r#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#).unwrap();
    assert!(null_usage.text && null_usage.completion_tokens.is_none());
}

/// Whatever the fast reader takes, the serde route reads the same.
fn agrees(data: &str) -> bool {
    let Some(fast) = read_chunk_fast(data) else {
        return false;
    };
    assert_eq!(Ok(fast), read_chunk_serde(data), "{data}");
    true
}

#[test]
fn the_fast_chunk_reader_reads_as_serde_does() {
    let taken = [
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"."},"finish_reason":"length"}],"usage":null}"#,
        r#"{"choices":[{"delta":{"content":"a\"b\n","reasoning":"r","reasoning_content":"q"},"finish_reason":"st\u006fp"},{"text":"t","finish_reason":"x"}]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#,
        r#"{"object":"text_completion","choices":[{"index":0,"text":" a","finish_reason":null}],"error":null}"#,
        r#" {"choices":[{"delta":null}],"extra":{"a":[1,2.5,-3e2,true,null,"s"]}} "#,
    ];
    for t in taken {
        assert!(agrees(t), "{t}");
    }
    let left = [
        r#"{"error":{"message":"backend failed"}}"#,
        r#"{"choices":null}"#,
        r#"{"choices":[{"delta":{"content":1}}]}"#,
        r#"{"choices":[{"text":"a","text":"b"}]}"#,
        r#"{"usage":{"completion_tokens":-1}}"#,
        r#"{"usage":{"completion_tokens":4294967296}}"#,
        r#"{"choices":[],"choices":[]}"#,
        r#"["x"]"#,
        "{not json",
        r#"{"choices":[]} x"#,
    ];
    for t in left {
        assert!(!agrees(t), "{t}");
    }
}

proptest::proptest! {
    #[test]
    fn the_fast_chunk_reader_never_reads_differently(
        data in r#"\{("(choices|usage|id|error)": ?(\[(\{("(delta|text|finish_reason|index)":(null|"[a-z\\]{0,3}"|1|\{("(content|reasoning|role)":(null|"[ a-z]{0,3}"|2),?){0,3}\}),?){0,3}\},?){0,2}\]|\{("(prompt_tokens|completion_tokens)":(null|[0-9]{1,11}|1\.5),?){0,2}\}|null|"x"),?){0,3}\}"#
    ) {
        agrees(&data);
    }
}

#[test]
fn completion_chunks_errors_and_done() {
    let c = read_chunk(
        r#"{"object":"text_completion","choices":[{"index":0,"text":" a","finish_reason":null}]}"#,
    )
    .unwrap();
    assert!(c.text);
    let empty = read_chunk(r#"{"choices":[{"index":0,"text":"","finish_reason":null}]}"#).unwrap();
    assert!(!empty.text);
    assert!(read_chunk("[DONE]").unwrap().done);
    assert!(read_chunk(" [DONE] ").unwrap().done);
    let err = read_chunk(
        r#"{"error":{"message":"backend failed","type":"server_error","param":null,"code":500}}"#,
    )
    .unwrap();
    assert_eq!(err.error.as_deref(), Some("backend failed"));
    let bad = read_chunk("{not json").unwrap_err();
    assert!(bad.contains("`{not json`"), "{bad}");
}

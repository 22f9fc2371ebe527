//! Server-sent events exactly as OpenAI clients parse them: `data: <json>\n\n` per event,
//! one token per chunk, a chat chunk always carrying `delta` (the first with the role),
//! `object` `chat.completion.chunk` or `text_completion`, `finish_reason` null until the
//! last token's chunk (`length`: the simulated backends stop at `max_tokens`), then the
//! usage chunk (`choices: []`) only if `stream_options.include_usage`, then
//! `data: [DONE]\n\n`. With vLLM's `continuous_usage_stats` every chunk carries the usage
//! so far. A failure after the stream started is an `{"error": ...}` event, then
//! `[DONE]`.
//!
//! [`Framer`] also writes the non-streaming bodies, so both shapes share one source of
//! ids, names and usage.

use super::error::ApiError;
use super::request::Endpoint;
use crate::serve::stream::token_word;
use crate::serve::stream::RequestStream;
use crate::wire::generate_response::Event;
use axum::body::Bytes;
use bytes::BytesMut;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_stream::Stream;

pub const DONE: &str = "data: [DONE]\n\n";

/// Writes one request's response objects. Runs per token, so it appends pieces built
/// once per request to one buffer instead of formatting (a `write!` per token cost more
/// than the rest of the stream's path).
pub struct Framer {
    endpoint: Endpoint,
    /// The pieces made once per request, in one string. Streamed: `data: {<head>,
    /// "choices":[{"index":0,` (how every token event starts: `event_open`), then the
    /// text's opening quote of every token event but the first (`"delta":{"content":"` or
    /// `"text":"`): all of it is `token_open`, and a middle token event is that, the word
    /// and [`Framer::token_close`]. Not streamed: `{<head>`, the start of the answer,
    /// which [`Framer::complete`] finishes in place. `<head>` is
    /// `"id":…,"object":…,"created":…,"model":…` with its values JSON-escaped once.
    pieces: String,
    /// Where `<head>` starts and ends in `pieces`.
    head: (usize, usize),
    /// How long `event_open` is (0: not streamed).
    event_open: usize,
    prompt_tokens: u32,
    continuous_usage: bool,
}

impl Framer {
    pub fn new(
        endpoint: Endpoint,
        id: &str,
        created: u64,
        model: &str,
        prompt_tokens: u32,
        streaming: bool,
        continuous_usage: bool,
    ) -> Framer {
        let (prefix, object) = match (endpoint, streaming) {
            (Endpoint::Chat, true) => ("chatcmpl-", "chat.completion.chunk"),
            (Endpoint::Chat, false) => ("chatcmpl-", "chat.completion"),
            (Endpoint::Completions, _) => ("cmpl-", "text_completion"),
        };
        // Streamed: room for the openings; not: for a short answer's text and usage too.
        let mut pieces = String::with_capacity(id.len() + model.len() + 400);
        pieces.push_str(if streaming { "data: {" } else { "{" });
        let start = pieces.len();
        pieces.push_str("\"id\":\"");
        pieces.push_str(prefix);
        push_escaped(&mut pieces, id);
        pieces.push_str("\",\"object\":\"");
        pieces.push_str(object);
        pieces.push_str("\",\"created\":");
        push_u64(&mut pieces, created);
        pieces.push_str(",\"model\":");
        push_json(&mut pieces, model);
        let head = (start, pieces.len());
        // Only a stream has events.
        let mut event_open = 0;
        if streaming {
            pieces.push_str(",\"choices\":[{\"index\":0,");
            event_open = pieces.len();
            pieces.push_str(text_open(endpoint, false));
            pieces.push('"');
        }
        Framer {
            endpoint,
            pieces,
            head,
            event_open,
            prompt_tokens,
            continuous_usage,
        }
    }

    /// `"id":…,"object":…,"created":…,"model":…`.
    fn head(&self) -> &str {
        &self.pieces[self.head.0..self.head.1]
    }

    /// How every event starts (streamed).
    fn event_open(&self) -> &str {
        &self.pieces[..self.event_open]
    }

    /// How every token event but the first starts, up to its text (streamed).
    fn token_open(&self) -> &str {
        &self.pieces
    }

    /// About how long one event is (its opening, the token's fields and usage), to size
    /// a frame's buffer once instead of growing it event by event.
    fn chunk_len(&self) -> usize {
        self.event_open.max(self.head.1 - self.head.0 + 16) + 160
    }

    fn usage(&self, out: &mut impl Out, completion: u32) {
        out.push_str("\"usage\":{\"prompt_tokens\":");
        push_u64(out, u64::from(self.prompt_tokens));
        out.push_str(",\"completion_tokens\":");
        push_u64(out, u64::from(completion));
        out.push_str(",\"total_tokens\":");
        push_u64(out, u64::from(self.prompt_tokens) + u64::from(completion));
        out.push_str("}");
    }

    /// The SSE event of simulated token `index` (0-based); `last` sets its
    /// `finish_reason`.
    pub fn token_chunk(&self, out: &mut impl Out, index: u32, last: bool) {
        let word = token_word(index);
        if index > 0 && !last && !self.continuous_usage {
            // The common event, from pieces made once; the words need no escaping.
            out.push_str(self.token_open());
            out.push_str(word);
            out.push_str(self.token_close());
            return;
        }
        let finish = if last { Some("length") } else { None };
        self.chunk(out, word, true, index == 0, finish, index + 1);
    }

    /// What follows a middle token event's word: its closing quote (and the delta's brace),
    /// no logprobs, `finish_reason` null, and the event's end.
    fn token_close(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Chat => "\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            Endpoint::Completions => "\",\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        }
    }

    /// One SSE event carrying `text` (the first with the chat role), `finish` as its
    /// `finish_reason`, and with continuous usage `completion` tokens so far.
    pub fn text_chunk(
        &self,
        out: &mut impl Out,
        text: &str,
        first: bool,
        finish: Option<&str>,
        completion: u32,
    ) {
        self.chunk(out, text, false, first, finish, completion);
    }

    /// [`Framer::text_chunk`]; `plain`: `text` is known to need no escaping.
    fn chunk(
        &self,
        out: &mut impl Out,
        text: &str,
        plain: bool,
        first: bool,
        finish: Option<&str>,
        completion: u32,
    ) {
        out.push_str(self.event_open());
        out.push_str(text_open(self.endpoint, first));
        if plain {
            out.push_str("\"");
            out.push_str(text);
            out.push_str("\"");
        } else {
            push_json(out, text);
        }
        if self.endpoint == Endpoint::Chat {
            out.push_str("}");
        }
        out.push_str(",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => push_json(out, f),
            None => out.push_str("null"),
        }
        out.push_str("}]");
        if self.continuous_usage {
            out.push_str(",");
            self.usage(out, completion);
        }
        out.push_str("}\n\n");
    }

    /// The closing usage event (`choices: []`).
    pub fn usage_chunk(&self, out: &mut impl Out, completion: u32) {
        out.push_str("data: {");
        out.push_str(self.head());
        out.push_str(",\"choices\":[],");
        self.usage(out, completion);
        out.push_str("}\n\n");
    }

    /// A whole non-streaming answer (of a framer made for one), written after the
    /// opening made with the framer.
    pub fn complete(mut self, text: &str, completion: u32, finish: &str) -> String {
        let mut out = std::mem::take(&mut self.pieces);
        out.truncate(self.head.1);
        out.reserve(text.len() + 200);
        out.push_str(",\"choices\":[{\"index\":0,");
        match self.endpoint {
            Endpoint::Chat => {
                out.push_str("\"message\":{\"role\":\"assistant\",\"content\":");
                push_json(&mut out, text);
                out.push('}');
            }
            Endpoint::Completions => {
                out.push_str("\"text\":");
                push_json(&mut out, text);
            }
        }
        out.push_str(",\"logprobs\":null,\"finish_reason\":");
        push_json(&mut out, finish);
        out.push_str("}],");
        self.usage(&mut out, completion);
        out.push('}');
        out
    }
}

/// What opens a token event's text after [`Framer::event_open`] (the first chat chunk
/// also names the role).
fn text_open(endpoint: Endpoint, first: bool) -> &'static str {
    match endpoint {
        Endpoint::Chat if first => "\"delta\":{\"role\":\"assistant\",\"content\":",
        Endpoint::Chat => "\"delta\":{\"content\":",
        Endpoint::Completions => "\"text\":",
    }
}

/// `n` in decimal, by `itoa` rather than the formatting machinery (it runs for every
/// usage object).
fn push_u64(out: &mut impl Out, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `s` as a JSON string.
fn push_json(out: &mut impl Out, s: &str) {
    out.push_str("\"");
    push_escaped(out, s);
    out.push_str("\"");
}

/// `s` escaped for the inside of a JSON string: as is when nothing needs escaping (every
/// simulated token, most ids and names), else serde_json's escaping.
fn push_escaped(out: &mut impl Out, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
        return;
    }
    let quoted = serde_json::to_string(s).expect("a string serialises");
    out.push_str(&quoted[1..quoted.len() - 1]);
}

/// Whether any byte of `s` must be escaped in a JSON string (a control character, `"` or
/// `\\`). Eight bytes a step (the usual "has a zero byte" bit tricks, exact for whether
/// any lane matches), as it runs over every text a response carries.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("eight bytes"));
        // A lane below 0x20: (v - 0x20 each) borrows into a lane's high bit only where
        // that lane was below 0x20 and had its high bit clear.
        let control = v.wrapping_sub(ONES * 0x20) & !v & HIGH != 0;
        if control
            || has_zero(v ^ (ONES * u64::from(b'"')))
            || has_zero(v ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// The event stream of one accepted request, from its first token on (the handler has
/// taken `Started` already, to answer with the placement headers).
pub struct EventStream {
    inner: RequestStream,
    framer: Framer,
    include_usage: bool,
    sent: u32,
    done: bool,
}

impl EventStream {
    pub fn new(inner: RequestStream, framer: Framer, include_usage: bool) -> EventStream {
        EventStream {
            inner,
            framer,
            include_usage,
            sent: 0,
            done: false,
        }
    }
}

impl EventStream {
    /// Appends `item`'s events to `out` (and marks the stream done at its end).
    fn frame(&mut self, out: &mut BytesMut, item: Option<Result<Event, crate::serve::ServeError>>) {
        match item {
            Some(Ok(Event::Started(_))) => {}
            Some(Ok(Event::Tokens(t))) if self.inner.proxied() => {
                // A real engine's text as it came; how it finished comes with Finished.
                let first = self.sent == 0;
                self.sent += t.count;
                out.reserve(self.framer.chunk_len() + t.text.len());
                self.framer.text_chunk(out, &t.text, first, None, self.sent);
            }
            Some(Ok(Event::Tokens(t))) => {
                // One chunk per token, whatever the backend's delivery grouped.
                let max = self.inner.max_tokens();
                out.reserve(t.count as usize * (self.framer.chunk_len() + 16));
                for _ in 0..t.count {
                    let i = self.sent;
                    self.sent += 1;
                    self.framer.token_chunk(out, i, self.sent >= max);
                }
            }
            Some(Ok(Event::Finished(f))) => {
                let completion = f.usage.map_or(self.sent, |u| u.completion_tokens);
                out.reserve(2 * self.framer.chunk_len() + DONE.len());
                if self.inner.proxied() {
                    let finish = super::handlers::finish_reason(&f);
                    self.framer
                        .text_chunk(out, "", self.sent == 0, Some(finish), completion);
                }
                if self.include_usage {
                    self.framer.usage_chunk(out, completion);
                }
                out.push_str(DONE);
                self.done = true;
            }
            Some(Err(e)) => {
                let e = ApiError::from(e);
                let _ = write!(out, "data: {}\n\n{DONE}", e.body());
                self.done = true;
            }
            // The request ended without an event saying how (cannot happen once it
            // started: every end is Finished or an error); the client still gets the
            // terminator it waits for.
            None => {
                out.push_str(DONE);
                self.done = true;
            }
        }
    }
}

thread_local! {
    /// The worker thread's frame buffer: each frame is split off it, and once the
    /// transport has written and dropped a frame the next one reuses its memory. A frame
    /// of a stream's tokens is a few kilobytes, past what the allocator keeps per
    /// thread: a fresh buffer each time cost more than framing the events.
    static FRAMES: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Runs `f` on the thread's frame buffer (empty), or on a new one should the thread's
/// be in use.
fn with_frame_buffer<T>(f: impl FnOnce(&mut BytesMut) -> T) -> T {
    FRAMES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            f(&mut buf)
        }
        Err(_) => f(&mut BytesMut::new()),
    })
}

/// Where events are written: a frame buffer, or a `String` (a whole answer, tests).
pub trait Out: std::fmt::Write {
    fn push_str(&mut self, s: &str);
}

impl Out for String {
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
}

impl Out for BytesMut {
    fn push_str(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

/// The most bytes gathered into one body frame before it is sent.
const MAX_FRAME: usize = 64 * 1024;

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    /// Everything the request stream has ready goes out as one body frame: a burst of
    /// deliveries (tokens, then the end) is one chunk of the HTTP body and one write, not
    /// one per delivery. The bytes, and each event's own framing, are the same.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let frame = with_frame_buffer(|out| {
            // Bounded, so a backend producing faster than the client reads still has its
            // tokens sent as they come rather than gathered without end.
            while !this.done && out.len() < MAX_FRAME {
                match Pin::new(&mut this.inner).poll_next(cx) {
                    Poll::Pending => break,
                    Poll::Ready(item) => this.frame(out, item),
                }
            }
            (!out.is_empty()).then(|| out.split().freeze())
        });
        if let Some(frame) = frame {
            Poll::Ready(Some(Ok(frame)))
        } else if this.done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// The response body itself (rather than through a stream adapter) so that it can say
/// when it has ended: hyper then writes the last frame and the body's end together
/// instead of polling once more to learn that nothing follows.
impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.poll_next(cx)
            .map(|frame| frame.map(|f| f.map(hyper::body::Frame::data)))
    }

    /// Once `[DONE]` is written nothing follows (a frame holding it is the last).
    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_display_does() {
        for n in [0, 7, 10, 1_234_567_890, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    proptest::proptest! {
        #[test]
        fn needs_escape_finds_what_a_byte_scan_finds(s in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let slow = s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            proptest::prop_assert_eq!(needs_escape(&s), slow);
        }
    }

    #[test]
    fn token_events_from_pieces_are_the_general_events() {
        for word in 0..32 {
            assert!(!needs_escape(token_word(word).as_bytes()), "{word}");
        }
        for endpoint in [Endpoint::Chat, Endpoint::Completions] {
            let f = Framer::new(endpoint, "r", 7, "m", 10, true, false);
            for index in 0..20 {
                let last = index == 19;
                let (mut fast, mut general) = (String::new(), String::new());
                f.token_chunk(&mut fast, index, last);
                let finish = if last { Some("length") } else { None };
                f.text_chunk(
                    &mut general,
                    token_word(index),
                    index == 0,
                    finish,
                    index + 1,
                );
                assert_eq!(fast, general, "{endpoint:?} {index}");
            }
        }
    }

    #[test]
    fn needs_escape_at_every_lane() {
        for len in 0..20 {
            let plain = vec![b'a'; len];
            assert!(!needs_escape(&plain));
            for at in 0..len {
                for b in [0u8, 0x1f, b'"', b'\\'] {
                    let mut s = plain.clone();
                    s[at] = b;
                    assert!(needs_escape(&s), "{s:?}");
                }
                for b in [0x20u8, b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
                    let mut s = plain.clone();
                    s[at] = b;
                    assert!(!needs_escape(&s), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn chunks_parse_and_carry_what_clients_read() {
        let f = Framer::new(Endpoint::Chat, "r\"1", 7, "m", 10, true, true);
        let mut s = String::new();
        f.token_chunk(&mut s, 0, false);
        f.token_chunk(&mut s, 1, true);
        f.usage_chunk(&mut s, 2);
        let events: Vec<serde_json::Value> = s
            .split_terminator("\n\n")
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(events[0]["id"], "chatcmpl-r\"1");
        assert_eq!(events[0]["object"], "chat.completion.chunk");
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(events[0]["choices"][0]["finish_reason"].is_null());
        assert_eq!(events[1]["choices"][0]["finish_reason"], "length");
        assert_eq!(events[1]["usage"]["completion_tokens"], 2);
        assert_eq!(events[2]["choices"], serde_json::json!([]));
        assert_eq!(events[2]["usage"]["total_tokens"], 12);
        let c = Framer::new(Endpoint::Completions, "x", 7, "m", 3, false, false);
        let v: serde_json::Value = serde_json::from_str(&c.complete("ab", 2, "length")).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "ab");
        assert_eq!(v["usage"]["prompt_tokens"], 3);
    }
}

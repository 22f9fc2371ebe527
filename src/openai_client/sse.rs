//! Reading an OpenAI-style completion stream as a client does: server-sent events framed
//! by blank lines, each `data:` payload one JSON chunk or the closing `[DONE]`, and each
//! chunk read for what the load generator's timing and the daemon's proxy backends need
//! (the output text it carried, did it finish and why, usage, an error). Written against what servers really send, not only against dujiang's own:
//! vLLM, SGLang and llama.cpp's server open a chat stream with a role-only delta, send
//! empty-content chunks, put the last token and `finish_reason` in one chunk or in two,
//! send usage only when asked (or never), and may use `\r\n` line ends. None of that is an
//! error here; a malformed JSON payload is, and names the payload.

use super::json::Reader;
use serde::Deserialize;
use std::borrow::Cow;

/// Splits a byte stream into SSE events and returns each event's data (its `data:` lines
/// joined by `\n`), as the SSE specification frames them. Comments (`:` lines) and other
/// fields (`event:`, `id:`, `retry:`) are skipped; events without data are dropped.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// `data:` lines of the event not yet ended.
    data: Option<String>,
    /// The last byte seen was `\r`: a following `\n` belongs to the same line end.
    after_cr: bool,
}

/// Why [`SseDecoder::push_each`] stopped: the stream itself was unreadable, or the
/// event handler refused an event.
#[derive(Debug, PartialEq)]
pub enum Fed<E> {
    Stream(String),
    Event(E),
}

/// The value of a `data` field line (`data:value`, one leading space dropped); `None` for
/// comments and other fields (`event:`, `id:`, `retry:`).
fn data_value(line: &str) -> Option<&str> {
    // What every event line of a completion stream is; the same answer as below.
    if let Some(value) = line.strip_prefix("data:") {
        return Some(value.strip_prefix(' ').unwrap_or(value));
    }
    let (field, value) = match line.split_once(':') {
        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    };
    (field == "data").then_some(value)
}

/// Longest line the decoder buffers: a chunk is a few hundred bytes, so a line this long
/// is a server sending something that is not an event stream, not a stream to follow.
const MAX_LINE: usize = 1 << 20;

impl SseDecoder {
    /// Feeds `bytes`; returns the data of every event they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        self.push_each(bytes, |data| {
            out.push(data.to_string());
            Ok::<_, String>(())
        })
        .map_err(|e| match e {
            Fed::Stream(e) | Fed::Event(e) => e,
        })?;
        Ok(out)
    }

    /// Feeds `bytes`, handing `on` the data of every event they complete, in order, and
    /// stopping at `on`'s first error. This runs on every chunk a proxied engine sends:
    /// an event whose one `data:` line and blank line both lie in `bytes` (what servers
    /// send) is handed over as a slice of them, with no copy and no allocation; a line
    /// split between reads is gathered in a reused buffer.
    pub fn push_each<E>(
        &mut self,
        bytes: &[u8],
        mut on: impl FnMut(&str) -> Result<(), E>,
    ) -> Result<(), Fed<E>> {
        // The data of the event being read while it is one line of `bytes`.
        let mut borrowed: Option<&str> = None;
        let mut rest = bytes;
        while let Some(&first) = rest.first() {
            if self.after_cr && first == b'\n' {
                // The `\n` of a `\r\n` line end.
                self.after_cr = false;
                rest = &rest[1..];
                continue;
            }
            self.after_cr = false;
            let Some(i) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.extend_line(rest).map_err(Fed::Stream)?;
                break;
            };
            let line = &rest[..i];
            self.after_cr = rest[i] == b'\r';
            rest = &rest[i + 1..];
            if !self.line.is_empty() {
                // The line began in an earlier read: it is finished in the buffer.
                self.extend_line(line).map_err(Fed::Stream)?;
                self.own(&mut borrowed);
                let buffered = std::mem::take(&mut self.line);
                let r = self.data_line(&buffered);
                self.line = buffered;
                self.line.clear();
                r.map_err(Fed::Stream)?;
            } else if line.is_empty() {
                // A blank line dispatches the event.
                if let Some(data) = borrowed.take() {
                    on(data).map_err(Fed::Event)?;
                } else if let Some(data) = self.data.take() {
                    on(&data).map_err(Fed::Event)?;
                }
            } else {
                let line = std::str::from_utf8(line)
                    .map_err(|_| Fed::Stream("an event-stream line is not UTF-8".into()))?;
                if let Some(value) = data_value(line) {
                    if borrowed.is_none() && self.data.is_none() {
                        borrowed = Some(value);
                    } else {
                        self.own(&mut borrowed);
                        self.append_data(value);
                    }
                }
            }
        }
        // An event not ended in these bytes waits, owned, for the next read.
        self.own(&mut borrowed);
        Ok(())
    }

    /// Moves borrowed event data into the decoder's own buffer.
    fn own(&mut self, borrowed: &mut Option<&str>) {
        if let Some(data) = borrowed.take() {
            self.append_data(data);
        }
    }

    fn append_data(&mut self, value: &str) {
        match &mut self.data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => self.data = Some(value.to_string()),
        }
    }

    /// A whole non-blank line from the buffer; a blank one never gets here (the buffer
    /// is empty then).
    fn data_line(&mut self, line: &[u8]) -> Result<(), String> {
        let line = std::str::from_utf8(line).map_err(|_| "an event-stream line is not UTF-8")?;
        if let Some(value) = data_value(line) {
            self.append_data(value);
        }
        Ok(())
    }

    fn extend_line(&mut self, part: &[u8]) -> Result<(), String> {
        if self.line.len() + part.len() > MAX_LINE {
            return Err(format!("an event-stream line longer than {MAX_LINE} bytes"));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }
}

/// What one `data:` payload says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    /// `[DONE]`: the stream's end.
    pub done: bool,
    /// Some choice carried output text (a token, by the one-token-per-chunk convention).
    pub text: bool,
    /// The output text the chunk carried (reasoning, then content).
    pub content: String,
    /// Some choice has a `finish_reason`.
    pub finished: bool,
    /// The first choice's `finish_reason` (`stop`, `length`, ...), when it has one.
    pub finish_reason: Option<String>,
    /// `usage.completion_tokens`, when the chunk carries usage.
    pub completion_tokens: Option<u32>,
    /// `usage.prompt_tokens`, when the chunk carries usage.
    pub prompt_tokens: Option<u32>,
    /// An error event (`{"error": {...}}`): its message.
    pub error: Option<String>,
}

// The chunk's strings borrow from the event's text (copied only when they hold escapes):
// a proxied engine's every token passes through here.
#[derive(Deserialize)]
struct RawChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<RawChoice<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    /// Chat streams.
    #[serde(default, borrow)]
    delta: Option<RawDelta<'a>>,
    /// Completion streams.
    #[serde(default, borrow, deserialize_with = "text")]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawDelta<'a> {
    #[serde(default, borrow, deserialize_with = "text")]
    content: Option<Cow<'a, str>>,
    /// Reasoning models' thinking tokens (vLLM's and SGLang's reasoning parsers put them
    /// here rather than in `content`); they are output tokens all the same.
    #[serde(default, borrow, deserialize_with = "text")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "text")]
    reasoning: Option<Cow<'a, str>>,
}

/// An optional string, borrowed when it has no escapes (serde borrows a `Cow<str>` only as
/// a field of its own, not inside an `Option`).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'de>>::deserialize(d)?.map(|t| t.0))
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    completion_tokens: Option<u32>,
    #[serde(default)]
    prompt_tokens: Option<u32>,
}

/// Reads one event's data. Err names what was wrong with it.
pub fn read_chunk(data: &str) -> Result<Chunk, String> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Chunk {
            done: true,
            ..Chunk::default()
        });
    }
    match read_chunk_fast(data) {
        Some(chunk) => Ok(chunk),
        None => read_chunk_serde(data),
    }
}

/// [`read_chunk`] through serde: every chunk the fast reader leaves, with serde's errors.
fn read_chunk_serde(data: &str) -> Result<Chunk, String> {
    let raw: RawChunk = serde_json::from_str(data).map_err(|e| {
        let shown: String = data.chars().take(120).collect();
        format!("a stream chunk is not a completion chunk ({e}): `{shown}`")
    })?;
    let mut chunk = Chunk::default();
    for c in raw.choices {
        if let Some(d) = c.delta {
            for part in [d.reasoning_content, d.reasoning, d.content]
                .into_iter()
                .flatten()
            {
                chunk.content.push_str(&part);
            }
        }
        if let Some(t) = c.text {
            chunk.content.push_str(&t);
        }
        if chunk.finish_reason.is_none() {
            chunk.finish_reason = c.finish_reason.map(Cow::into_owned);
        }
    }
    chunk.text = !chunk.content.is_empty();
    chunk.finished = chunk.finish_reason.is_some();
    if let Some(u) = raw.usage {
        chunk.completion_tokens = u.completion_tokens;
        chunk.prompt_tokens = u.prompt_tokens;
    }
    if let Some(e) = raw.error {
        let message = e
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string());
        chunk.error = Some(message);
    }
    Ok(chunk)
}

/// [`read_chunk`]'s reading of a chunk in one pass of [`Reader`], for the usual shapes:
/// the same [`Chunk`] the serde route makes, or `None` to leave the chunk to it (an error
/// event, a field of a type serde would refuse, a known field given twice, a key with
/// escapes, anything malformed), so its results and messages are serde's.
fn read_chunk_fast(data: &str) -> Option<Chunk> {
    let mut r = Reader::new(data);
    r.ws();
    if r.peek() != Some(b'{') {
        return None;
    }
    let mut chunk = Chunk::default();
    let mut seen = 0u8;
    let mut once = |bit: u8| {
        let first = seen & bit == 0;
        seen |= bit;
        first.then_some(())
    };
    r.enter()?;
    if r.opens(b'}') {
        loop {
            match r.plain_key()? {
                "choices" => {
                    once(1)?;
                    if r.peek() != Some(b'[') {
                        return None;
                    }
                    r.enter()?;
                    if r.opens(b']') {
                        loop {
                            choice(&mut r, &mut chunk)?;
                            if !r.more(b']')? {
                                break;
                            }
                        }
                    }
                    r.leave();
                }
                "usage" => {
                    once(2)?;
                    if !r.null() {
                        usage(&mut r, &mut chunk)?;
                    }
                }
                "error" => {
                    once(4)?;
                    if !r.null() {
                        return None;
                    }
                }
                _ => r.skip()?,
            }
            if !r.more(b'}')? {
                break;
            }
        }
    }
    r.leave();
    if !r.at_end() {
        return None;
    }
    chunk.text = !chunk.content.is_empty();
    chunk.finished = chunk.finish_reason.is_some();
    Some(chunk)
}

/// One element of `choices`, added to `chunk` as the serde route adds it: its text in
/// the order `delta.reasoning_content`, `delta.reasoning`, `delta.content`, `text`, and
/// the first `finish_reason` of the chunk's choices.
fn choice(r: &mut Reader<'_>, chunk: &mut Chunk) -> Option<()> {
    if r.peek() != Some(b'{') {
        return None;
    }
    let mut seen = 0u8;
    let mut parts: [Option<Cow<str>>; 4] = [None, None, None, None];
    let mut finish = None;
    r.enter()?;
    if r.opens(b'}') {
        loop {
            let (bit, slot) = match r.plain_key()? {
                "delta" => {
                    if seen & 1 != 0 {
                        return None;
                    }
                    seen |= 1;
                    if !r.null() {
                        delta(r, &mut parts)?;
                    }
                    if !r.more(b'}')? {
                        break;
                    }
                    continue;
                }
                "text" => (2, &mut parts[3]),
                "finish_reason" => (4, &mut finish),
                _ => {
                    r.skip()?;
                    if !r.more(b'}')? {
                        break;
                    }
                    continue;
                }
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            *slot = text_or_null(r)?;
            if !r.more(b'}')? {
                break;
            }
        }
    }
    r.leave();
    for part in parts.into_iter().flatten() {
        chunk.content.push_str(&part);
    }
    if chunk.finish_reason.is_none() {
        chunk.finish_reason = finish.map(Cow::into_owned);
    }
    Some(())
}

/// A choice's `delta` object into `parts` (reasoning_content, reasoning, content).
fn delta<'a>(r: &mut Reader<'a>, parts: &mut [Option<Cow<'a, str>>; 4]) -> Option<()> {
    if r.peek() != Some(b'{') {
        return None;
    }
    let mut seen = 0u8;
    r.enter()?;
    if r.opens(b'}') {
        loop {
            let at = match r.plain_key()? {
                "reasoning_content" => Some(0),
                "reasoning" => Some(1),
                "content" => Some(2),
                _ => None,
            };
            match at {
                Some(i) => {
                    if seen & (1 << i) != 0 {
                        return None;
                    }
                    seen |= 1 << i;
                    parts[i] = text_or_null(r)?;
                }
                None => r.skip()?,
            }
            if !r.more(b'}')? {
                break;
            }
        }
    }
    r.leave();
    Some(())
}

/// `usage`'s token counts (each a u32 or null).
fn usage(r: &mut Reader<'_>, chunk: &mut Chunk) -> Option<()> {
    if r.peek() != Some(b'{') {
        return None;
    }
    let mut seen = 0u8;
    r.enter()?;
    if r.opens(b'}') {
        loop {
            let (bit, slot) = match r.plain_key()? {
                "completion_tokens" => (1, &mut chunk.completion_tokens),
                "prompt_tokens" => (2, &mut chunk.prompt_tokens),
                _ => {
                    r.skip()?;
                    if !r.more(b'}')? {
                        break;
                    }
                    continue;
                }
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            *slot = if r.null() {
                None
            } else {
                Some(u32::try_from(r.number()?.1?).ok()?)
            };
            if !r.more(b'}')? {
                break;
            }
        }
    }
    r.leave();
    Some(())
}

/// A string or `null`; `None` (leave it to serde) for anything else.
fn text_or_null<'a>(r: &mut Reader<'a>) -> Option<Option<Cow<'a, str>>> {
    if r.null() {
        return Some(None);
    }
    if r.peek() != Some(b'"') {
        return None;
    }
    r.string().map(Some)
}

#[cfg(test)]
mod tests;

//! A raw HTTP/1.1 client for the OpenAI front end's tests: requests written by hand on a
//! loopback socket, responses read with their chunked framing undone, and server-sent
//! events split exactly on `\n\n`, so a framing mistake cannot hide behind a lenient
//! client library.
#![allow(dead_code)]

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The SSE events' payloads (after `data: `), checking the framing of each.
    pub fn events(&self) -> Vec<String> {
        assert!(
            self.body.ends_with("\n\n"),
            "stream ends an event: {:?}",
            self.body
        );
        self.body
            .split_terminator("\n\n")
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("event not `data: `: {e:?}"))
                    .to_string()
            })
            .collect()
    }
}

fn request_bytes(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}

/// POSTs `body` and reads the whole response.
pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request_bytes(addr, path, headers, body).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    parse(&buf)
}

/// Sends `method path` with `headers` (and `body`, if any) and reads the whole response.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    parse(&buf)
}

/// GETs `path`.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    parse(&buf)
}

/// POSTs `body` and returns the open socket once the response head and at least
/// `min_body` raw body bytes have arrived, with what was read so far.
pub async fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    min_body: usize,
) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request_bytes(addr, path, headers, body).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            if buf.len() >= i + 4 + min_body {
                return (s, buf);
            }
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the rest of an [`open`] response.
pub async fn finish(mut s: TcpStream, mut buf: Vec<u8>) -> Resp {
    s.read_to_end(&mut buf).await.unwrap();
    parse(&buf)
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

pub fn parse(buf: &[u8]) -> Resp {
    let i = find(buf, b"\r\n\r\n").expect("response head");
    let head = String::from_utf8_lossy(&buf[..i]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw = &buf[i + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Resp {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = find(raw, b"\r\n") else {
            panic!("truncated chunked body");
        };
        let len = usize::from_str_radix(std::str::from_utf8(&raw[..i]).unwrap().trim(), 16)
            .expect("chunk length");
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&raw[i + 2..i + 2 + len]);
        raw = &raw[i + 2 + len + 2..];
    }
}

/// A chat request body.
/// `stream_options` only with a stream, as vLLM and the daemon require.
pub fn chat_body(content: &str, max_tokens: u32, stream: bool, usage: bool) -> String {
    let mut body = serde_json::json!({
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
        "ignore_eos": true,
    });
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": usage});
    }
    body.to_string()
}

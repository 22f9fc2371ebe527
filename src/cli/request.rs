//! `dujiang request`: send one chat request to a running daemon and print its stream as
//! it arrives — the quickest way to see which backend served it and how fast.

use crate::wire::generate_response::Event;
use crate::wire::inference_client::InferenceClient;
use crate::wire::{ChatMessage, GenerateRequest, Priority};
use anyhow::{Context, Result};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The daemon's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// The user message.
    #[arg(default_value = "Explain the Dujiangyan irrigation system in one paragraph.")]
    pub message: String,
    /// Output tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// Model id (default: the fleet's model).
    #[arg(long, default_value = "")]
    pub model: String,
    /// Exact prompt length in tokens (default: estimated from the text).
    #[arg(long)]
    pub prompt_tokens: Option<u32>,
    /// Send as a batch-priority request.
    #[arg(long)]
    pub batch: bool,
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(send(args))
}

async fn send(args: Args) -> Result<()> {
    let mut client = InferenceClient::connect(args.target.clone())
        .await
        .with_context(|| format!("connecting to {}", args.target))?;
    let req = GenerateRequest {
        model: args.model,
        messages: vec![ChatMessage {
            role: "user".into(),
            content: args.message,
        }],
        prompt_tokens: args.prompt_tokens,
        max_tokens: args.max_tokens,
        priority: if args.batch {
            Priority::Batch
        } else {
            Priority::Interactive
        } as i32,
        ..Default::default()
    };
    let mut stream = client.generate(req).await?.into_inner();
    let mut out = super::stdout::stdout();
    let mut tokens = 0u32;
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(Event::Started(s)) => {
                writeln!(
                    out,
                    "started {} on backend {} (pool {}, chip {}) after {:.1} ms in queue",
                    s.request_id,
                    s.backend,
                    s.pool,
                    s.chip,
                    s.queue_seconds * 1e3
                )?;
            }
            Some(Event::Tokens(t)) => {
                tokens += t.count;
                write!(out, "{}", t.text)?;
                out.flush()?;
            }
            Some(Event::Finished(f)) => {
                let t = f.timings.unwrap_or_default();
                let u = f.usage.unwrap_or_default();
                writeln!(out)?;
                writeln!(
                    out,
                    "finished: {} prompt + {} completion tokens ({tokens} streamed); TTFT {:.1} ms, inter-token {:.2} ms, end-to-end {:.1} ms (simulated time)",
                    u.prompt_tokens,
                    u.completion_tokens,
                    t.ttft_seconds * 1e3,
                    t.mean_inter_token_seconds * 1e3,
                    t.e2e_seconds * 1e3
                )?;
            }
            None => {}
        }
    }
    Ok(())
}

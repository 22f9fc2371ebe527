//! One proxied request's task: the exchange with the engine ([`super::super::exchange`])
//! raced against the driver's reasons to end it first, each event of it turned into
//! deliveries, latency samples and load, and its end into the endpoint's health and
//! prediction ratios.

use super::*;

/// What a request task has seen so far.
#[derive(Default)]
struct Progress {
    started: bool,
    /// Text chunks delivered (tokens, by the servers' convention).
    tokens: u32,
    first_at: Option<Nanos>,
    last_at: Nanos,
    finish: Option<String>,
    usage_prompt: Option<u32>,
    usage_completion: Option<u32>,
    /// Sum and count of the requests streaming on the endpoint at each later token: their
    /// mean is the batch its decode ran in.
    batch_sum: u64,
    batch_n: u64,
}

/// One request's task: the exchange with the engine, raced against the driver's reasons
/// to end it first.
pub(super) async fn serve(
    ep: Arc<Endpoint>,
    req: Request,
    ask: Arc<Ask>,
    out: Outbox,
    hist: Option<Arc<PoolHistograms>>,
    predicted: Prediction,
    mut cancelled: oneshot::Receiver<End>,
) {
    let cfg = ep.ctx.upstream.config;
    let call = Call {
        http: ep.ctx.upstream.http(),
        target: &ep.targets[usize::from(!ask.messages.is_empty())],
        body: exchange::body(&ep.served_model, &ask, req.max_tokens),
        first_byte_timeout: Duration::from_millis(cfg.first_byte_timeout_ms),
        deadline: ask.deadline,
        prompt_tokens: req.prompt_tokens,
    };
    let sent_at = ep.ctx.clock.now();
    let mut p = Progress::default();
    let result = {
        let on = |ev: Event| {
            on_event(
                &ep,
                &req,
                &out,
                hist.as_deref(),
                predicted,
                sent_at,
                &mut p,
                ev,
            )
        };
        tokio::select! {
            biased;
            end = &mut cancelled => Err(Err(end.unwrap_or(End::Abort))),
            r = exchange::exchange(call, on) => r.map_err(Ok),
        }
    };
    // A failure as the client's deadline runs out is the deadline's doing (the engine
    // enforces its copy of it too, and its error may come first): the request's stream
    // ends it as deadline-exceeded, and the endpoint is not blamed.
    let deadline = ask
        .deadline
        .filter(|&d| Instant::now() + DEADLINE_SLACK >= d);
    let result = match (result, deadline) {
        (Err(Ok(_)), Some(_)) => Err(Err(End::Deadline)),
        (r, _) => r,
    };
    let ended_by_deadline = matches!(result, Err(Err(End::Deadline)));
    conclude(&ep, &req, &out, hist.as_deref(), predicted, p, result);
    if let (true, Some(d)) = (ended_by_deadline, deadline) {
        // The mailbox stays open until the stream's own timer has ended the request: a
        // closed mailbox would end it first, as failed.
        tokio::time::sleep_until((d + DEADLINE_SLACK).into()).await;
    }
    drop(out);
}

/// Turns one event of the exchange into deliveries, latency samples and load.
#[allow(clippy::too_many_arguments)]
fn on_event(
    ep: &Endpoint,
    req: &Request,
    out: &Outbox,
    hist: Option<&PoolHistograms>,
    predicted: Prediction,
    sent_at: Nanos,
    p: &mut Progress,
    ev: Event,
) {
    match ev {
        Event::Started => {
            if !p.started {
                p.started = true;
                let queue_ns = ep.ctx.clock.now().saturating_sub(req.arrival);
                if let Some(h) = hist {
                    h.queue.record(secs(queue_ns));
                }
                let _ = out.send(Delivery::Started { queue_ns });
            }
        }
        Event::Text(text) => {
            let now = ep.ctx.clock.now();
            if p.first_at.is_none() {
                p.first_at = Some(now);
                if let Some(h) = hist {
                    h.ttft.record(secs(now.saturating_sub(req.arrival)));
                }
                let mut st = ep.state.lock();
                let ttft = now.saturating_sub(sent_at);
                st.ratio.first_token(ttft, predicted.ttft_ns);
                let alone =
                    st.requests.len() == 1 && st.requests.get(&req.id).is_some_and(|r| r.alone);
                if alone && hist.is_some() {
                    ep.observed.observations.lock().prefill(
                        u64::from(req.prompt_tokens),
                        ttft as f64 / 1e6,
                        unix_s(),
                    );
                }
                if let Some(r) = st.requests.get_mut(&req.id) {
                    r.remaining = r.remaining.saturating_sub(1);
                    if !r.streaming {
                        r.streaming = true;
                        st.streaming += 1;
                    }
                }
                ep.publish(&st);
            } else {
                let gap = now.saturating_sub(p.last_at);
                if let Some(h) = hist {
                    h.inter_token.record(secs(gap));
                    ep.summary.record_inter_token(&[gap]);
                }
                let mut st = ep.state.lock();
                debug_assert_eq!(
                    st.streaming as usize,
                    st.requests.values().filter(|r| r.streaming).count()
                );
                p.batch_sum += u64::from(st.streaming);
                p.batch_n += 1;
                if let Some(r) = st.requests.get_mut(&req.id) {
                    r.remaining = r.remaining.saturating_sub(1);
                }
            }
            p.last_at = now;
            p.tokens += 1;
            if let Some(h) = hist {
                h.generated_tokens.increment(1);
            }
            let _ = out.send(Delivery::Tokens {
                count: 1,
                text: Some(text),
            });
        }
        Event::Finish(reason) => p.finish = Some(reason),
        Event::Usage { prompt, completion } => {
            p.usage_prompt = prompt.or(p.usage_prompt);
            p.usage_completion = completion.or(p.usage_completion);
        }
    }
}

/// Ends a request task: the last delivery, the endpoint's health and ratios, and its
/// removal from the load. `result`: `Ok(())` finished, `Err(Ok(f))` the exchange failed,
/// `Err(Err(end))` the driver ended it.
fn conclude(
    ep: &Endpoint,
    req: &Request,
    out: &Outbox,
    hist: Option<&PoolHistograms>,
    predicted: Prediction,
    p: Progress,
    result: Result<(), Result<Failure, End>>,
) {
    let now = ep.ctx.clock.now();
    let mut st = ep.state.lock();
    if st.requests.remove(&req.id).is_some_and(|r| r.streaming) {
        st.streaming -= 1;
    }
    let delivery = match result {
        Ok(()) => {
            st.failures = 0;
            let completion = p.usage_completion.unwrap_or(p.tokens).max(p.tokens);
            if let Some(h) = hist {
                // The engine's count wins over the chunks' (a chunk may hold two tokens).
                h.generated_tokens
                    .increment(u64::from(completion - p.tokens));
            }
            let first = p.first_at.unwrap_or(now);
            if p.tokens > 1 {
                let gap = (p.last_at - first) / u64::from(p.tokens - 1);
                st.ratio.per_token(gap, predicted.tpot_ns);
                if hist.is_some() && p.batch_n > 0 {
                    let batch = (p.batch_sum as f64 / p.batch_n as f64).round().max(1.0) as u64;
                    let prompt = p.usage_prompt.unwrap_or(req.prompt_tokens);
                    let context = u64::from(prompt) + u64::from(p.tokens) / 2;
                    ep.observed.observations.lock().decode(
                        batch,
                        context,
                        gap as f64 / 1e6,
                        unix_s(),
                    );
                }
            }
            let report = FinishReport {
                prompt_tokens: p.usage_prompt.unwrap_or(req.prompt_tokens),
                completion_tokens: completion,
                queue_ns: 0,
                ttft_ns: first.saturating_sub(req.arrival),
                mean_inter_token_ns: if completion > 1 {
                    p.last_at.saturating_sub(first) / u64::from(completion - 1)
                } else {
                    0
                },
                e2e_ns: now.saturating_sub(req.arrival),
                stopped: p.finish.as_deref().is_some_and(|r| r != "length"),
            };
            if let Some(h) = hist {
                record_finished(&ep.summary, h, req.slo.unwrap_or_default(), &report);
            }
            Some(Delivery::Finished(report))
        }
        Err(Err(End::Abort | End::Deadline)) => None,
        Err(Err(End::Retire(outcome))) => Some(Delivery::Ended(outcome)),
        Err(Err(End::Displace)) if p.tokens == 0 => Some(Delivery::Displaced),
        Err(Err(End::Displace)) => Some(Delivery::Failed(format!(
            "backend {} failed after {} tokens; a real engine's stream cannot be continued elsewhere",
            ep.handle.name, p.tokens
        ))),
        Err(Ok(f)) => {
            if f.endpoint_fault() && hist.is_some() {
                st.failures += 1;
                if matches!(f, Failure::Connect(_)) {
                    ep.take_out(&mut st, "connection failed");
                } else if st.failures >= ep.ctx.upstream.config.max_failures {
                    ep.take_out(&mut st, "too many failed requests in a row");
                }
            }
            tracing::debug!(backend = %ep.handle.name, tokens = p.tokens, error = %f, "upstream request failed");
            if p.tokens == 0 && f.retryable() {
                Some(Delivery::Displaced)
            } else {
                let after = if p.tokens > 0 {
                    format!(" after {} tokens", p.tokens)
                } else {
                    String::new()
                };
                Some(Delivery::Failed(format!(
                    "backend {} ({}) {f}{after}",
                    ep.handle.name, ep.base
                )))
            }
        }
    };
    ep.publish(&st);
    drop(st);
    if let Some(d) = delivery {
        let _ = out.send(d);
    }
}

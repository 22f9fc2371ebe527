//! What a performance model predicts for a measured point's workload: a prefill step, a
//! decode step, or a closed-loop served run replayed through the engine in virtual time.

use super::points::{Metric, Point, Workload};
use crate::engine::{Engine, EngineConfig, EngineEvent};
use crate::profile::PerfModel;
use crate::request::{Nanos, Request};
use std::sync::Arc;

/// Per-request results of a closed-loop run. Latencies cover the requests sent after the
/// opening burst (all of them when every request is sent at once): the first
/// `concurrency` requests arrive together and queue behind each other's prefills, which a
/// benchmark's steady state — and its warm-up — does not see. After the burst, finishing
/// times are spread by the prefills that ran one after another, so the clients fall out
/// of step as they do on real hardware.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServedRun {
    pub ttft_ms: Vec<f64>,
    /// Mean gap between output tokens after the first, for requests with ≥ 2 tokens.
    pub tpot_ms: Vec<f64>,
    pub output_tokens: u64,
    /// From the first request's arrival to the last one's finish.
    pub makespan_ns: Nanos,
}

/// Runs `inputs.len()` requests through one engine, `concurrency` at a time: each client
/// sends its next request the moment its last one finishes (a benchmark's closed loop,
/// and with `concurrency ≥ requests` an offline batch submitted at once). Client `k`
/// sends its first request at `starts[k]` (0 when absent).
pub fn closed_loop(
    perf: Arc<PerfModel>,
    concurrency: u32,
    inputs: &[u32],
    outputs: &[u32],
    starts: &[Nanos],
) -> Result<ServedRun, String> {
    let n = inputs.len().min(outputs.len());
    let cfg = EngineConfig::for_perf(&perf);
    let mut engine = Engine::new(perf, cfg);
    let mut sent_at = vec![0 as Nanos; n];
    let mut first = vec![None::<Nanos>; n];
    let mut run = ServedRun::default();
    let admit = |engine: &mut Engine, k: usize, now: Nanos| -> Result<(), String> {
        let req = Request {
            id: k as u64,
            arrival: now,
            prompt_tokens: inputs[k],
            max_tokens: outputs[k],
            ..Default::default()
        };
        engine
            .admit(req, now)
            .map_err(|e| format!("request of {} + {} tokens: {e}", inputs[k], outputs[k]))
    };
    // Opening requests in order of their start times; each is admitted when the engine's
    // clock reaches it.
    let opening = n.min(concurrency as usize);
    let mut pending: Vec<(Nanos, usize)> = (0..opening)
        .map(|k| (starts.get(k).copied().unwrap_or(0), k))
        .collect();
    pending.sort_unstable();
    let mut pending = pending.into_iter().peekable();
    let mut next = opening;
    // Requests below this index are the opening burst (see `ServedRun`).
    let measured_from = if (concurrency as usize) < n {
        concurrency as usize
    } else {
        0
    };
    let mut events = Vec::new();
    let mut finished = 0usize;
    loop {
        let due = pending.peek().map(|&(t, _)| t);
        let now = match (engine.next_event_at(), due) {
            (Some(e), Some(d)) => e.min(d),
            (Some(e), None) => e,
            (None, Some(d)) => d,
            (None, None) => break,
        };
        events.clear();
        engine.advance(now, &mut events);
        while let Some(&(t, k)) = pending.peek() {
            if t > now {
                break;
            }
            pending.next();
            sent_at[k] = now;
            admit(&mut engine, k, now)?;
        }
        for ev in &events {
            match *ev {
                EngineEvent::FirstToken { id, at } => {
                    let k = id as usize;
                    if first[k].is_none() {
                        first[k] = Some(at);
                        if k >= measured_from {
                            run.ttft_ms.push((at - sent_at[k]) as f64 / 1e6);
                        }
                    }
                }
                EngineEvent::Finished {
                    id,
                    at,
                    output_tokens,
                } => {
                    let k = id as usize;
                    finished += 1;
                    run.output_tokens += u64::from(output_tokens);
                    run.makespan_ns = run.makespan_ns.max(at);
                    if let (Some(f), true) = (first[k], output_tokens > 1 && k >= measured_from) {
                        run.tpot_ms
                            .push((at - f) as f64 / 1e6 / f64::from(output_tokens - 1));
                    }
                    if next < n {
                        sent_at[next] = now;
                        admit(&mut engine, next, now)?;
                        next += 1;
                    }
                }
                _ => {}
            }
        }
    }
    if finished != n {
        return Err(format!("only {finished} of {n} requests finished"));
    }
    Ok(run)
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Independent draws of the clients' phases a staggered closed loop is replayed with; its
/// prediction pools their requests. With identical lengths a replay keeps whatever phases
/// it starts with, so one draw is one frozen arrangement of the clients: at 5,000-token
/// prompts and 5 clients, whether two of them happen to start within one prefill of each
/// other moves mean TTFT by a third (seeds 0–7 gave 320–436 ms for the same coefficients).
/// A benchmark's clients drift through many arrangements over its run (jitter in network,
/// tokenisation and scheduling), so its mean is an average over phases, which several
/// draws estimate.
const PHASE_DRAWS: u64 = 8;

/// When each client of a closed loop sends its first request, for phase draw `draw`. A
/// benchmark's clients fall out of step within a few requests (network, tokenisation,
/// scheduling jitter), so in its steady state requests arrive spread over the time one
/// request takes, not in waves. A replay with identical lengths would otherwise keep the
/// opening burst's waves for ever. So when there are more requests than clients, client k
/// starts at a seeded uniform fraction of one request's estimated duration (prefill at the
/// mean prompt, then the mean output at a full batch's decode step); offline batches
/// (every request at once) and a single client start at 0.
fn staggered_starts(
    perf: &PerfModel,
    concurrency: u32,
    requests: u32,
    inputs: &[u32],
    outputs: &[u32],
    draw: u64,
) -> Vec<Nanos> {
    use rand::{Rng, SeedableRng};
    if concurrency <= 1 || concurrency >= requests {
        return Vec::new();
    }
    let mean = |v: &[u32]| v.iter().map(|&x| u64::from(x)).sum::<u64>() / v.len().max(1) as u64;
    let (mean_in, mean_out) = (mean(inputs).max(1), mean(outputs).max(1));
    let c = u64::from(concurrency);
    let duration = perf.prefill_ns(mean_in, 0)
        + mean_out * perf.decode_step_ns(c, c * (mean_in + mean_out / 2));
    let seed = 0x5eed ^ u64::from(concurrency) ^ draw.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..concurrency)
        .map(|_| (rng.random::<f64>() * duration as f64) as Nanos)
        .collect()
}

/// A served point's closed loop, replayed once per phase draw when its clients are
/// staggered ([`PHASE_DRAWS`]), with every draw's requests pooled: latencies side by
/// side, tokens and makespans summed (so the rate is the draws' total over their total
/// time).
fn served(
    perf: Arc<PerfModel>,
    concurrency: u32,
    requests: u32,
    inputs: &[u32],
    outputs: &[u32],
) -> Result<ServedRun, String> {
    let mut pooled = ServedRun::default();
    for draw in 0..PHASE_DRAWS {
        let starts = staggered_starts(&perf, concurrency, requests, inputs, outputs, draw);
        let run = closed_loop(perf.clone(), concurrency, inputs, outputs, &starts)?;
        pooled.ttft_ms.extend(run.ttft_ms);
        pooled.tpot_ms.extend(run.tpot_ms);
        pooled.output_tokens += run.output_tokens;
        pooled.makespan_ns += run.makespan_ns;
        if starts.is_empty() {
            // Nothing is drawn: every replay would be the same.
            break;
        }
    }
    Ok(pooled)
}

/// The value `perf` predicts for `point`'s workload and metric.
pub fn predict(perf: Arc<PerfModel>, point: &Point) -> Result<f64, String> {
    let tp = f64::from(perf.tp);
    match &point.workload {
        Workload::Prefill { tokens } => {
            let ns = perf.prefill_ns(*tokens, 0) as f64;
            match point.metric {
                Metric::PrefillMs => Ok(ns / 1e6),
                m => Err(format!("{m} is not measured by a prefill")),
            }
        }
        Workload::Decode { batch, context } => {
            let ns = perf.decode_step_ns(*batch, batch * context) as f64;
            match point.metric {
                Metric::StepMs => Ok(ns / 1e6),
                Metric::OutputTokensPerS => Ok(*batch as f64 * 1e9 / ns),
                Metric::OutputTokensPerSPerChip => Ok(*batch as f64 * 1e9 / ns / tp),
                m => Err(format!("{m} is not measured by a decode step")),
            }
        }
        Workload::Served {
            concurrency,
            requests,
            input,
            output,
        } => {
            let inputs = input.sample(*requests, 0);
            let outputs = output.sample(*requests, 7);
            let run = served(perf, *concurrency, *requests, &inputs, &outputs)?;
            let rate = run.output_tokens as f64 * 1e9 / run.makespan_ns.max(1) as f64;
            let value = match point.metric {
                Metric::TtftMsP50 => median(&run.ttft_ms),
                Metric::TtftMsMean => mean(&run.ttft_ms),
                Metric::TpotMsP50 => median(&run.tpot_ms),
                Metric::TpotMsMean | Metric::ItlMsMean => mean(&run.tpot_ms),
                Metric::OutputTokensPerS => Some(rate),
                Metric::OutputTokensPerSPerChip => Some(rate / tp),
                m => return Err(format!("{m} is not measured by a served run")),
            };
            value.ok_or_else(|| format!("no request produced a {}", point.metric))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::fixtures::{h20, llama3_8b};

    fn perf() -> Arc<PerfModel> {
        Arc::new(crate::profile::fixtures::perf(&h20(), &llama3_8b(), 1).unwrap())
    }

    #[test]
    fn one_at_a_time_is_prefill_then_decode_steps() {
        let p = perf();
        let run = closed_loop(p.clone(), 1, &[300, 300], &[11, 11], &[]).unwrap();
        // Alone in the engine, TTFT is exactly one prefill step, and each later token one
        // decode step of a single sequence.
        let prefill = p.prefill_ns(300, 0) as f64 / 1e6;
        // The first request is the opening burst and is not measured.
        assert_eq!(run.ttft_ms, vec![prefill]);
        let decode_ms = p.decode_run_ns(1, 301, 10) as f64 / 1e6 / 10.0;
        assert!(
            (run.tpot_ms[0] - decode_ms).abs() < 1e-6,
            "{run:?} vs {decode_ms}"
        );
        assert_eq!(run.output_tokens, 22);
        // The second request is sent when the first finishes.
        let one = p.prefill_ns(300, 0) + p.decode_run_ns(1, 301, 10);
        assert_eq!(run.makespan_ns, 2 * one);
    }

    #[test]
    fn more_clients_raise_throughput_and_tpot() {
        let p = perf();
        let inputs = vec![200; 64];
        let outputs = vec![100; 64];
        let one = closed_loop(p.clone(), 1, &inputs, &outputs, &[]).unwrap();
        let many = closed_loop(p, 32, &inputs, &outputs, &[]).unwrap();
        let rate = |r: &ServedRun| r.output_tokens as f64 / r.makespan_ns as f64;
        assert!(rate(&many) > 5.0 * rate(&one));
        assert!(median(&many.tpot_ms) > median(&one.tpot_ms));
    }

    #[test]
    fn clients_are_staggered_only_in_a_true_closed_loop() {
        let p = perf();
        let (inputs, outputs) = (vec![500; 40], vec![200; 40]);
        assert!(staggered_starts(&p, 1, 40, &inputs, &outputs, 0).is_empty());
        assert!(staggered_starts(&p, 40, 40, &inputs, &outputs, 0).is_empty());
        let starts = staggered_starts(&p, 8, 40, &inputs, &outputs, 0);
        assert_eq!(starts.len(), 8);
        let duration = p.prefill_ns(500, 0) + 200 * p.decode_step_ns(8, 8 * 600);
        assert!(starts.iter().all(|&s| s < duration), "{starts:?}");
        assert!(starts.iter().any(|&s| s > duration / 2), "{starts:?}");
        // Staggered clients wait less for each other's prefills than a burst does.
        let burst = closed_loop(p.clone(), 8, &inputs, &outputs, &[]).unwrap();
        let spread = closed_loop(p, 8, &inputs, &outputs, &starts).unwrap();
        assert_eq!(spread.output_tokens, burst.output_tokens);
        assert_eq!(
            spread.ttft_ms.len(),
            32,
            "the 8 opening requests are not measured"
        );
    }

    #[test]
    fn a_staggered_loop_pools_several_phase_draws_and_a_burst_one() {
        let p = perf();
        let (inputs, outputs) = (vec![500; 40], vec![200; 40]);
        let a = staggered_starts(&p, 8, 40, &inputs, &outputs, 0);
        let b = staggered_starts(&p, 8, 40, &inputs, &outputs, 1);
        assert_ne!(a, b, "each draw places the clients afresh");
        let run = served(p.clone(), 8, 40, &inputs, &outputs).unwrap();
        // 32 measured requests (after the 8 opening ones) per draw.
        assert_eq!(run.ttft_ms.len(), 32 * PHASE_DRAWS as usize);
        let mut first = closed_loop(p.clone(), 8, &inputs, &outputs, &a).unwrap();
        assert_eq!(run.ttft_ms[..32], first.ttft_ms[..]);
        first.ttft_ms.clear();
        // Every request at once: nothing to draw, one replay.
        let offline = served(p, 40, 40, &inputs, &outputs).unwrap();
        assert_eq!(offline.ttft_ms.len(), 40);
    }

    #[test]
    fn median_and_mean() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(mean(&[]), None);
    }
}

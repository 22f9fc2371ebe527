//! The HELP text of every metric family, given to each recorder (a recorder prints it only
//! for the families it holds).

use super::*;

use metrics::Unit;

const S: Option<Unit> = Some(Unit::Seconds);

/// Every family: name, unit, HELP text and kind (0 counter, 1 gauge, 2 histogram).
const FAMILIES: &[(&str, Option<Unit>, &str, u8)] = &[
        (
            TTFT_SECONDS,
            S,
            "Time to first token in simulated seconds.",
            2,
        ),
        (
            INTER_TOKEN_SECONDS,
            S,
            "Gap between consecutive output tokens in simulated seconds.",
            2,
        ),
        (
            E2E_SECONDS,
            S,
            "Arrival to last token in simulated seconds.",
            2,
        ),
        (
            QUEUE_SECONDS,
            S,
            "Time waiting in a backend queue in simulated seconds.",
            2,
        ),
        (
            KV_TRANSFER_SECONDS,
            S,
            "Prefill/decode hand-off to KV arrival at the decode backend in simulated seconds.",
            2,
        ),
        (
            ROUTER_DECISION_SECONDS,
            S,
            "Wall time the routing policy took to choose a backend.",
            2,
        ),
        (
            ROUTER_RETRIES_TOTAL,
            None,
            "Routing decisions taken again because another committed meanwhile.",
            0,
        ),
        (
            REQUESTS_ACCEPTED_TOTAL,
            None,
            "Requests placed on a backend.",
            0,
        ),
        (
            REQUESTS_TOTAL,
            None,
            "Accepted requests by terminal outcome.",
            0,
        ),
        (
            POOL_REQUESTS_TOTAL,
            None,
            "Accepted requests by the pool they ended on and terminal outcome.",
            0,
        ),
        (
            REQUESTS_SHED_TOTAL,
            None,
            "Requests refused before acceptance, by reason.",
            0,
        ),
        (
            PROMPT_TOKENS_TOTAL,
            None,
            "Prompt tokens of accepted requests.",
            0,
        ),
        (
            GENERATED_TOKENS_TOTAL,
            None,
            "Output tokens delivered to clients.",
            0,
        ),
        (
            SLO_VIOLATIONS_TOTAL,
            None,
            "Finished requests that missed their SLO.",
            0,
        ),
        (
            IN_FLIGHT_REQUESTS,
            None,
            "Requests accepted and not yet ended.",
            1,
        ),
        (
            BACKEND_SERVING,
            None,
            "1 while a backend takes new requests; 0 while draining, failed, ejected or removed.",
            1,
        ),
        (
            BACKEND_RUNNING_REQUESTS,
            None,
            "Requests in a backend's running batch.",
            1,
        ),
        (
            BACKEND_WAITING_REQUESTS,
            None,
            "Requests waiting in a backend's queue.",
            1,
        ),
        (
            BACKEND_KV_USAGE_RATIO,
            None,
            "Fraction of a backend's KV-cache blocks in use.",
            1,
        ),
        (
            REQUEST_MIGRATIONS_TOTAL,
            None,
            "Accepted requests moved off a failed backend, by kind.",
            0,
        ),
        (
            BACKEND_EJECTIONS_TOTAL,
            None,
            "Backends ejected from routing as stragglers.",
            0,
        ),
        (
            BACKEND_READMISSIONS_TOTAL,
            None,
            "Ejected backends re-admitted after recovering.",
            0,
        ),
        (
            BACKEND_EJECTED,
            None,
            "1 while a backend is ejected as a straggler.",
            1,
        ),
        (
            BACKEND_STEP_TIME_RATIO,
            None,
            "EWMA of observed over predicted step time.",
            1,
        ),
        (
            BACKEND_PREDICTION_RATIO,
            None,
            "Real engines: EWMA of observed over predicted TTFT (phase prefill) and time per output token (phase decode).",
            1,
        ),
        (
            POOL_INFO,
            None,
            "Always 1: what a pool runs (chip, vendor, model, tp, domestic).",
            1,
        ),
        (
            POOL_COST_USD_PER_HOUR,
            None,
            "Hourly price of a pool's provisioned backends in USD.",
            1,
        ),
    ];

/// HELP lines for every family (a recorder prints them only for families it holds).
pub(super) fn describe(recorder: &PrometheusRecorder) {
    for &(name, unit, help, kind) in FAMILIES {
        let key = name.into();
        match kind {
            0 => recorder.describe_counter(key, unit, help.into()),
            1 => recorder.describe_gauge(key, unit, help.into()),
            _ => recorder.describe_histogram(key, unit, help.into()),
        }
    }
}

/// A family's HELP text.
pub(super) fn help(name: &str) -> Option<&'static str> {
    FAMILIES.iter().find(|f| f.0 == name).map(|f| f.2)
}

//! Unit tests of admission: bounds, batch before interactive, shedding by prediction.

use super::*;

fn req(priority: Priority) -> Request {
    Request {
        prompt_tokens: 100,
        max_tokens: 10,
        priority,
        ..Default::default()
    }
}

fn backend(waiting: u32, ttft: Nanos) -> Target {
    Target::Backend {
        id: BackendId(0),
        load: LoadSnapshot {
            waiting,
            ..Default::default()
        },
        predicted_ttft_ns: ttft,
        predicted_tpot_ns: 0,
        prefill_ns: 0,
    }
}

fn small() -> Admission {
    Admission::new(AdmissionConfig {
        max_in_flight: 8,
        batch_watermark: 0.5,
        max_waiting_per_backend: 4,
        batch_waiting_per_backend: 2,
        ..AdmissionConfig::default()
    })
}

#[test]
fn batch_is_shed_before_interactive() {
    let a = small();
    let mut permits = Vec::new();
    for _ in 0..4 {
        permits.push(
            a.admit(&req(Priority::Batch), backend(0, 0), None, 0)
                .unwrap(),
        );
    }
    assert_eq!(
        a.admit(&req(Priority::Batch), backend(0, 0), None, 0)
            .unwrap_err(),
        RejectReason::BatchShed
    );
    for _ in 0..4 {
        permits.push(
            a.admit(&req(Priority::Interactive), backend(0, 0), None, 0)
                .unwrap(),
        );
    }
    assert_eq!(
        a.admit(&req(Priority::Interactive), backend(0, 0), None, 0)
            .unwrap_err(),
        RejectReason::QueueFull
    );
    assert_eq!(a.outstanding_of(Priority::Batch), 4);
    permits.pop().unwrap().finish(Outcome::Completed);
    assert!(a
        .admit(&req(Priority::Interactive), backend(0, 0), None, 0)
        .is_ok_and(|p| {
            p.finish(Outcome::Cancelled);
            true
        }));
    let s = a.stats();
    assert_eq!(s.rejected(RejectReason::BatchShed), 1);
    assert_eq!(s.rejected(RejectReason::QueueFull), 1);
    assert!(s.balanced(), "{s:?}");
}

#[test]
fn per_backend_queues_and_deadlines() {
    let a = small();
    let b = req(Priority::Batch);
    let i = req(Priority::Interactive);
    assert_eq!(
        a.admit(&b, backend(2, 0), None, 0).unwrap_err(),
        RejectReason::BackendQueueFull
    );
    a.admit(&i, backend(2, 0), None, 0)
        .unwrap()
        .finish(Outcome::Completed);
    assert_eq!(
        a.admit(&i, backend(4, 0), None, 0).unwrap_err(),
        RejectReason::BackendQueueFull
    );
    assert_eq!(
        a.admit(&i, backend(0, 500), Some(1_000), 600).unwrap_err(),
        RejectReason::DeadlineUnmeetable
    );
    a.admit(&i, backend(0, 400), Some(1_000), 600)
        .unwrap()
        .finish(Outcome::Completed);
    assert_eq!(
        a.admit(&i, Target::NoBackend, None, 0).unwrap_err(),
        RejectReason::NoHealthyBackend
    );
    assert_eq!(
        a.admit(&i, Target::ShuttingDown, None, 0).unwrap_err(),
        RejectReason::Draining
    );
    let empty = Request { max_tokens: 0, ..i };
    assert_eq!(
        a.admit(&empty, backend(0, 0), None, 0).unwrap_err(),
        RejectReason::InvalidRequest
    );
    assert_eq!(a.outstanding(), 0);
}

#[test]
fn interactive_work_predicted_past_its_slo_is_shed_with_a_drain_hint() {
    let a = Admission::new(AdmissionConfig {
        slo_shed_factor: 1.5,
        ..AdmissionConfig::default()
    })
    .with_default_slo(Slo {
        ttft_ns: 1_000 * NANOS_PER_MS,
        tpot_ns: 100 * NANOS_PER_MS,
    });
    let i = req(Priority::Interactive);
    // Allowed: 1.5 × 1 s.
    a.admit(&i, backend(0, 1_500 * NANOS_PER_MS), None, 0)
        .unwrap()
        .finish(Outcome::Completed);
    let late = backend(0, 4_000 * NANOS_PER_MS);
    assert_eq!(
        a.admit(&i, late, None, 0).unwrap_err(),
        RejectReason::SloUnmeetable
    );
    assert_eq!(a.drain_ns(&i, &late, 0), 2_500 * NANOS_PER_MS);
    // The request's own SLO wins over the default.
    let own = Request {
        slo: Some(Slo {
            ttft_ns: 4_000 * NANOS_PER_MS,
            tpot_ns: 100 * NANOS_PER_MS,
        }),
        ..i.clone()
    };
    a.admit(&own, late, None, 0)
        .unwrap()
        .finish(Outcome::Completed);
    // Batch work is not judged by its TTFT: it may queue up to its deadline.
    let b = req(Priority::Batch);
    a.admit(&b, late, None, 0)
        .unwrap()
        .finish(Outcome::Completed);
    assert_eq!(
        a.admit(&b, late, Some(3_000 * NANOS_PER_MS), 0)
            .unwrap_err(),
        RejectReason::DeadlineUnmeetable
    );
    // A hint never says "now".
    assert_eq!(a.drain_ns(&i, &backend(0, 0), 0), NANOS_PER_MS);
    assert_eq!(a.stats().rejected(RejectReason::SloUnmeetable), 1);
    // Factor 0 turns the rule off.
    let off = a.reconfigured(AdmissionConfig {
        slo_shed_factor: 0.0,
        ..AdmissionConfig::default()
    });
    off.admit(&i, late, None, 0)
        .unwrap()
        .finish(Outcome::Completed);
    assert!(a.stats().balanced());
}

#[test]
fn bad_limits_name_their_field() {
    for (cfg, field) in [
        (
            AdmissionConfig {
                max_in_flight: 0,
                ..AdmissionConfig::default()
            },
            "max_in_flight",
        ),
        (
            AdmissionConfig {
                batch_watermark: 1.5,
                ..AdmissionConfig::default()
            },
            "batch_watermark",
        ),
        (
            AdmissionConfig {
                slo_shed_factor: f64::NAN,
                ..AdmissionConfig::default()
            },
            "slo_shed_factor",
        ),
    ] {
        assert_eq!(cfg.validate().unwrap_err().0, field);
    }
    assert!(AdmissionConfig::default().validate().is_ok());
}

#[test]
fn dropped_permits_are_counted_not_lost() {
    let a = small();
    {
        let _forgotten = a
            .admit(&req(Priority::Interactive), backend(0, 0), None, 0)
            .unwrap();
    }
    let s = a.stats();
    assert_eq!(s.finished(Outcome::Abandoned), 1);
    assert_eq!(s.outstanding, 0);
    assert!(s.balanced());
}

#[test]
fn reasons_map_to_grpc_codes_and_stable_labels() {
    let codes: Vec<i32> = RejectReason::ALL.iter().map(|r| r.grpc_code()).collect();
    assert_eq!(codes, [8, 8, 8, 8, 14, 14, 4, 3]);
    let labels: std::collections::BTreeSet<_> =
        RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), RejectReason::ALL.len());
    assert!(labels
        .iter()
        .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
}

#[test]
fn the_global_limit_holds_under_concurrent_admission() {
    let a = Admission::new(AdmissionConfig {
        max_in_flight: 100,
        ..Default::default()
    });
    let held: Vec<Vec<Permit>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..1000)
                        .filter_map(|_| {
                            a.admit(&req(Priority::Interactive), backend(0, 0), None, 0)
                                .ok()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 100);
    assert_eq!(a.stats().rejected(RejectReason::QueueFull), 3900);
    for p in held.into_iter().flatten() {
        p.finish(Outcome::Completed);
    }
    assert!(a.stats().balanced());
}

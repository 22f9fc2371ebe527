//! Membership's tests: pool and backend changes, serving lists, the speed tables.

use super::fixtures::*;
use super::*;

#[test]
fn pool_names_are_label_safe() {
    for ok in ["h20", "ascend-910b", "a", &"x".repeat(63)] {
        assert_eq!(check_pool_name(ok), Ok(()), "{ok}");
    }
    for bad in ["", "H20", "a b", "a_b", "pool\"}", "é", &"x".repeat(64)] {
        assert!(check_pool_name(bad).is_err(), "{bad:?}");
        let err = Membership::new().with_pool(pool(bad, 1, 1.0, 1.0, false));
        assert!(
            matches!(err, Err(FleetError::InvalidPoolName(..))),
            "{bad:?}"
        );
    }
}

#[test]
fn backend_counts_are_capped_per_pool_and_per_fleet() {
    let m = Membership::new();
    let err = m.with_pool(pool("huge", 100_000_000, 1.0, 1.0, false));
    assert!(
        matches!(err, Err(FleetError::PoolTooLarge(_, 100_000_000))),
        "{err:?}"
    );
    let mut m = Membership::new();
    let per_fleet = MAX_FLEET_BACKENDS / MAX_POOL_BACKENDS;
    for i in 0..per_fleet {
        m = m
            .with_pool(pool(&format!("p{i}"), MAX_POOL_BACKENDS, 1.0, 1.0, false))
            .unwrap()
            .0;
    }
    let err = m.with_pool(pool("one-more", 1, 1.0, 1.0, false));
    assert!(matches!(err, Err(FleetError::FleetTooLarge(..))), "{err:?}");
}

#[test]
fn backend_ids_run_out_with_an_error_not_a_wrap() {
    // Ids are never reused: add/remove cycles use them up. With a bound of 10, the
    // third pool of four does not fit even though only one pool is live.
    let mut m = Membership::new();
    for round in 0..2 {
        let (next, id, ids) = m
            .with_pool_within(pool("cycle", 4, 1.0, 1.0, false), 10)
            .unwrap();
        assert_eq!(ids[0], BackendId(round * 4));
        m = next.without_pool(id).unwrap();
    }
    let err = m.with_pool_within(pool("cycle", 4, 1.0, 1.0, false), 10);
    assert!(
        matches!(err, Err(FleetError::BackendIdsExhausted(8))),
        "{err:?}"
    );
    assert!(m
        .with_pool_within(pool("cycle", 2, 1.0, 1.0, false), 10)
        .is_ok());
}

#[test]
fn pools_get_dense_ids_and_serving_lists() {
    let m = fast_and_slow(3);
    assert_eq!(m.pools().count(), 2);
    assert_eq!(
        m.serving(PoolId(0)),
        &[BackendId(0), BackendId(1), BackendId(2)]
    );
    assert_eq!(
        m.serving(PoolId(1)),
        &[BackendId(3), BackendId(4), BackendId(5)]
    );
    assert_eq!(m.all_serving().len(), 6);
    assert_eq!(m.ring().len(), 6 * RING_VNODES as usize);
    assert!(m.ring().windows(2).all(|w| w[0].0 <= w[1].0));
}

#[test]
fn drain_fail_resume_and_remove() {
    let m = fast_and_slow(2);
    let m = m.with_state(BackendId(1), BackendState::Draining).unwrap();
    let m = m.with_state(BackendId(2), BackendState::Failed).unwrap();
    assert_eq!(m.serving(PoolId(0)), &[BackendId(0)]);
    assert_eq!(m.serving(PoolId(1)), &[BackendId(3)]);
    assert!(m
        .ring()
        .iter()
        .all(|(_, b)| *b == BackendId(0) || *b == BackendId(3)));
    let m = m.with_state(BackendId(1), BackendState::Serving).unwrap();
    assert_eq!(m.serving(PoolId(0)), &[BackendId(0), BackendId(1)]);

    let m = m.without_pool(PoolId(0)).unwrap();
    assert!(m.backend(BackendId(0)).is_none());
    assert_eq!(m.all_serving(), &[BackendId(3)]);
    assert_eq!(
        m.with_state(BackendId(0), BackendState::Serving)
            .unwrap_err(),
        FleetError::UnknownBackend(BackendId(0))
    );
    // The freed slot is reused; backend ids are not.
    let (m, id, ids) = m.with_pool(pool("again", 2, 1.0, 1.0, false)).unwrap();
    assert_eq!(id, PoolId(0));
    assert_eq!(ids, vec![BackendId(4), BackendId(5)]);
    assert_eq!(m.backend_id_bound(), 6);
}

#[test]
fn duplicate_and_empty_pools_are_refused() {
    let m = fast_and_slow(1);
    assert!(matches!(
        m.with_pool(pool("fast", 1, 1.0, 1.0, false)),
        Err(FleetError::DuplicatePoolName(_))
    ));
    assert!(matches!(
        m.with_pool(pool("none", 0, 1.0, 1.0, false)),
        Err(FleetError::EmptyPool(_))
    ));
}

#[test]
fn speed_tables_rank_the_fast_pool_first() {
    let m = fast_and_slow(1);
    let fast = m.pool(PoolId(0)).unwrap();
    let slow = m.pool(PoolId(1)).unwrap();
    assert!(fast.prefill_ps_per_token * 3 < slow.prefill_ps_per_token);
    assert!(fast.decode_step_ns(32) < slow.decode_step_ns(32));
    assert!(fast.decode_tokens_per_s > 3.0 * slow.decode_tokens_per_s);
    assert!(fast.decode_step_ns(1000) == fast.decode_step_ns(64));
}

#[test]
fn serving_lists_read_runs_by_arithmetic_and_other_lists_as_stored() {
    let m = fast_and_slow(4);
    let (fast, slow) = (PoolId(0), PoolId(1));
    let agree = |m: &Membership, p: PoolId| {
        let list = m.serving_list(p);
        assert_eq!(list.len(), m.serving(p).len());
        let got: Vec<BackendId> = (0..list.len()).map(|i| list.get(i).unwrap()).collect();
        assert_eq!(got, m.serving(p));
        assert_eq!(list.get(list.len()), None);
    };
    assert_eq!(m.serving_list(slow).get(0), Some(BackendId(4)));
    agree(&m, fast);
    agree(&m, slow);
    // Draining a backend in the middle breaks the run; the list is then read as stored.
    let m = m.with_state(BackendId(5), BackendState::Draining).unwrap();
    assert_eq!(m.serving_list(slow).get(1), Some(BackendId(6)));
    agree(&m, slow);
    // Draining the first keeps a (shorter) run.
    let m = m.with_state(BackendId(0), BackendState::Draining).unwrap();
    assert_eq!(m.serving_list(fast).get(0), Some(BackendId(1)));
    agree(&m, fast);
    assert!(m.serving_list(PoolId(9)).is_empty());
}

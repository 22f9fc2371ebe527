//! Sums of rounded lines, Σ floor((a·i + b) / m) over i < n, in O(log m) by the
//! Euclid-like reduction: the closed form behind [`super::PerfModel::decode_run_ns`],
//! which prices a stretch of decode steps (each a line in its step index, rounded up to
//! whole nanoseconds) without visiting its steps. Replay prices every decode stretch and
//! every split of one this way, so the 64-bit paths here carry its hot loop.

/// [`floor_sum`] in 64-bit arithmetic, `None` if anything would overflow. Replay calls
/// this on every decode stretch, and 128-bit division is several times slower.
pub(crate) fn floor_sum_u64(mut n: u64, mut m: u64, mut a: u64, mut b: u64) -> Option<u64> {
    let mut ans = 0u64;
    if n == 0 {
        return Some(0);
    }
    loop {
        if a >= m {
            let pairs = if n.is_multiple_of(2) {
                (n / 2).checked_mul(n - 1)?
            } else {
                n.checked_mul((n - 1) / 2)?
            };
            ans = ans.checked_add(pairs.checked_mul(a / m)?)?;
            a %= m;
        }
        if b >= m {
            ans = ans.checked_add(n.checked_mul(b / m)?)?;
            b %= m;
        }
        if n <= SMALL && m <= SMALL {
            // Replay's case after the first round (m = 1000, n a stretch's steps).
            return ans.checked_add(floor_sum_reduced(n, m, a, b));
        }
        let y_max = a.checked_mul(n)?.checked_add(b)?;
        if y_max < m {
            return Some(ans);
        }
        n = y_max / m;
        b = y_max % m;
        std::mem::swap(&mut m, &mut a);
    }
}

/// Bound on `n` and `m` under which [`floor_sum_reduced`] cannot overflow.
const SMALL: u64 = u32::MAX as u64;

/// [`floor_sum`] for `a, b < m` and `n, m ≤` [`SMALL`], with no overflow checks: each
/// round keeps `a, b < m` and does not raise `n` or `m`, so `a·n + b < m·n ≤ 2^64`, and
/// every term added is part of a total below `n·n` (each of the `n` terms is below `n`
/// as `a < m`). The rounds are the same as [`floor_sum_u64`]'s, whose checks cost as
/// much as the arithmetic; a decode stretch's time takes about seven of them.
fn floor_sum_reduced(mut n: u64, mut m: u64, mut a: u64, mut b: u64) -> u64 {
    debug_assert!(a < m && b < m && n <= SMALL && m <= SMALL);
    let mut ans = 0u64;
    loop {
        let y_max = a * n + b;
        if y_max < m {
            return ans;
        }
        n = y_max / m;
        b = y_max % m;
        std::mem::swap(&mut m, &mut a);
        // Now a > m (the old m over the old a); n(n − 1)/2 fits, as n ≤ SMALL.
        ans += n * (n - 1) / 2 * (a / m);
        a %= m;
        if b >= m {
            ans += n * (b / m);
            b %= m;
        }
    }
}

/// Runs of at most this many terms are cheaper summed by [`short_ceil_sum`].
pub(crate) const SHORT_SUM: u64 = 16;

/// Σ_{i=0}^{n-1} ceil((p + q·i) / M) one term at a time, `None` if the last numerator
/// would overflow. With the divisor a constant each term is a multiply and a shift, so
/// for a short run (up to [`SHORT_SUM`] terms) this costs less than the rounds of true
/// divisions [`floor_sum_u64`] takes, and it is the same integer. Replay's decode
/// stretches end at the next finish, most a few steps on: summing runs of up to 16
/// terms so took its line sums from ~530 to ~440 instructions a request (callgrind,
/// replay bench).
pub(crate) fn short_ceil_sum<const M: u64>(p: u64, q: u64, n: u64) -> Option<u64> {
    debug_assert!(n <= M, "the total's bound below needs n ≤ M");
    // The largest numerator fits, so every smaller one does, and the total does too
    // (n terms, each at most the largest numerator / M, n ≤ SHORT_SUM ≤ M).
    let mut x = p.checked_add(M - 1)?;
    x.checked_add(q.checked_mul(n.checked_sub(1)?)?)?;
    let mut total = x / M;
    // Stepping past the last term could overflow: step only between terms.
    for _ in 1..n {
        x += q;
        total += x / M;
    }
    Some(total)
}

/// Σ_{i=0}^{n-1} floor((a·i + b) / m), the classic Euclid-like reduction (O(log m)).
pub fn floor_sum(mut n: u128, mut m: u128, mut a: u128, mut b: u128) -> u128 {
    let mut ans = 0u128;
    if n == 0 {
        return 0;
    }
    loop {
        if a >= m {
            ans += n * (n - 1) / 2 * (a / m);
            a %= m;
        }
        if b >= m {
            ans += n * (b / m);
            b %= m;
        }
        let y_max = a * n + b;
        if y_max < m {
            break;
        }
        n = y_max / m;
        b = y_max % m;
        std::mem::swap(&mut m, &mut a);
    }
    ans
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The 64-bit paths give the 128-bit answer whenever they give one, and give one
        /// for the sums decode stretches need (m = 1000 ps per ns, lines below 2^40 ps).
        #[test]
        fn narrow_paths_agree_with_the_wide_one(
            n in 0u64..5000,
            m in 1u64..2000,
            a in 0u64..(1 << 40),
            b in 0u64..(1 << 40),
        ) {
            for m in [m, 1000] {
                let wide = floor_sum(u128::from(n), u128::from(m), u128::from(a), u128::from(b));
                match floor_sum_u64(n, m, a, b) {
                    Some(narrow) => prop_assert_eq!(u128::from(narrow), wide),
                    None => prop_assert!(m != 1000, "no 64-bit answer for m = 1000"),
                }
            }
        }

        /// Term by term, short runs give the reduction's answer (m = 1000, the ceiling
        /// as a floor of p + 999), and no answer only where the last term overflows.
        #[test]
        fn short_sums_agree_with_the_reduction(
            n in 0u64..=SHORT_SUM,
            p in prop_oneof![0u64..(1 << 40), (u64::MAX - (1 << 20))..=u64::MAX],
            q in prop_oneof![0u64..(1 << 40), any::<u64>()],
        ) {
            let wide = u128::from(n) * u128::from(q).max(1) + u128::from(p) + 999;
            match short_ceil_sum::<1000>(p, q, n) {
                Some(short) => prop_assert_eq!(
                    u128::from(short),
                    floor_sum(u128::from(n), 1000, u128::from(q), u128::from(p) + 999)
                ),
                None => prop_assert!(n == 0 || wide > u128::from(u64::MAX)),
            }
        }

        #[test]
        fn reduced_rounds_agree_with_the_wide_one(
            n in 0u64..=u64::from(u32::MAX),
            m in 1u64..=u64::from(u32::MAX),
            a in any::<u64>(),
            b in any::<u64>(),
        ) {
            let (a, b) = (a % m, b % m);
            let wide = floor_sum(u128::from(n), u128::from(m), u128::from(a), u128::from(b));
            if n > 0 {
                prop_assert_eq!(u128::from(floor_sum_reduced(n, m, a, b)), wide);
            }
        }
    }
}

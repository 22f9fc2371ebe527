//! Which cell a request belongs to when a fleet is deployed as identical cells with traffic
//! partitioned by session (see `fleet` and `dujiang replay`). One function decides it, for
//! file traces and for the generated day alike, so a day written to a file and replayed
//! with `cells = N` splits exactly as the generator's own cell shards do.
//!
//! The partition key of a record is its session id; a record without one is its own
//! session, keyed by its position in the trace (0, 1, …). The key is hashed by [`mix53`], a
//! bijection on 53-bit integers, into one of [`CELL_SLOTS`] slots (its low 16 bits), and slot
//! `s` belongs to cell `s mod cells`. Hashing makes sequential or structured ids (all even,
//! say) spread as evenly as random ones; being a bijection lets the day generator pick the
//! slot first and build a key that hashes to it ([`unmix53`]), so cell `c` of a generated
//! day is its buckets `b ≡ c (mod cells)`, generated without the others.

use super::TraceRecord;

/// Slots the hashed key falls into; the most cells a fleet can be cut into.
pub const CELL_SLOTS: u32 = 1 << 16;

const MASK53: u64 = (1 << 53) - 1;
const C1: u64 = (0x9E37_79B9_7F4A_7C15 & MASK53) | 1;
const C2: u64 = (0xBF58_476D_1CE4_E5B9 & MASK53) | 1;

/// The inverse of an odd number modulo 2^64 (Newton's iteration doubles the correct bits:
/// 3, 6, 12, 24, 48, 96), hence also modulo 2^53.
const fn inverse(c: u64) -> u64 {
    let mut x = c;
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(c.wrapping_mul(x)));
        i += 1;
    }
    x
}

const C1_INV: u64 = inverse(C1) & MASK53;
const C2_INV: u64 = inverse(C2) & MASK53;

/// Undoes `x ^= x >> s` on 53 bits: each pass fixes `s` more of the high bits.
fn unxorshift(y: u64, s: u32) -> u64 {
    let mut x = y;
    for _ in 0..53u32.div_ceil(s) {
        x = y ^ (x >> s);
    }
    x
}

/// A well-mixed bijection of `[0, 2^53)` (xor-shift and odd-multiply rounds modulo 2^53).
/// Keys stay below 2^53 so a JSON reader keeps them exact; higher bits are ignored.
pub fn mix53(x: u64) -> u64 {
    let mut x = x & MASK53;
    x ^= x >> 27;
    x = x.wrapping_mul(C1) & MASK53;
    x ^= x >> 26;
    x = x.wrapping_mul(C2) & MASK53;
    x ^ (x >> 27)
}

/// The key `k < 2^53` with `mix53(k) == y` (for `y < 2^53`).
pub fn unmix53(y: u64) -> u64 {
    let mut x = unxorshift(y & MASK53, 27);
    x = x.wrapping_mul(C2_INV) & MASK53;
    x = unxorshift(x, 26);
    x = x.wrapping_mul(C1_INV) & MASK53;
    unxorshift(x, 27)
}

/// The slot of a partition key: the low 16 bits of its hash.
pub fn cell_slot(key: u64) -> u32 {
    (mix53(key) & u64::from(CELL_SLOTS - 1)) as u32
}

/// The cell (of `cells`) that serves partition key `key`.
pub fn cell_of(key: u64, cells: u32) -> u32 {
    cell_slot(key) % cells.max(1)
}

/// The partition key of the record at `position` (0-based) of its trace.
pub fn partition_key(rec: &TraceRecord, position: u64) -> u64 {
    rec.session.unwrap_or(position)
}

/// The records of cell `cell` of `cells`, from a whole trace (errors pass through, so a
/// broken line still stops the replay at its place).
pub fn cell_filter<E>(
    trace: impl Iterator<Item = Result<TraceRecord, E>>,
    cell: u32,
    cells: u32,
) -> impl Iterator<Item = Result<TraceRecord, E>> {
    trace
        .enumerate()
        .filter(move |(i, r)| match r {
            Ok(rec) => cells <= 1 || cell_of(partition_key(rec, *i as u64), cells) == cell,
            Err(_) => true,
        })
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix53_is_a_bijection_below_2_53() {
        assert_eq!(C1_INV.wrapping_mul(C1) & MASK53, 1);
        assert_eq!(C2_INV.wrapping_mul(C2) & MASK53, 1);
        let mut x = 12345u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = x & MASK53;
            assert!(mix53(k) <= MASK53);
            assert_eq!(unmix53(mix53(k)), k);
            assert_eq!(mix53(unmix53(k)), k);
        }
        for k in [0, 1, MASK53, MASK53 - 1, 1 << 52] {
            assert_eq!(unmix53(mix53(k)), k);
        }
    }

    #[test]
    fn sequential_and_even_keys_spread_evenly_over_cells() {
        for (keys, cells) in [
            ((0..40_000u64).collect::<Vec<_>>(), 8u32),
            ((0..40_000u64).map(|k| k * 2).collect(), 2),
            ((0..40_000u64).map(|k| k << 20).collect(), 5),
        ] {
            let mut n = vec![0u32; cells as usize];
            for k in &keys {
                n[cell_of(*k, cells) as usize] += 1;
            }
            let mean = keys.len() as f64 / f64::from(cells);
            for c in n {
                assert!(
                    (f64::from(c) - mean).abs() < 0.05 * mean,
                    "{c} vs {mean} over {cells} cells"
                );
            }
        }
    }

    #[test]
    fn a_key_built_from_its_slot_lands_in_that_slot() {
        for slot in [0u64, 1, 77, 255, 65_535] {
            let key = unmix53((0xABCD_EF01_2345u64 << 16 | slot) & MASK53);
            assert_eq!(u64::from(cell_slot(key)), slot);
        }
    }

    #[test]
    fn the_cells_of_a_trace_partition_it() {
        let recs: Vec<Result<TraceRecord, ()>> = (0..1000u64)
            .map(|i| {
                Ok(TraceRecord {
                    arrival_ns: i,
                    session: (i % 3 != 0).then_some(i / 4),
                    ..TraceRecord::default()
                })
            })
            .collect();
        let mut all: Vec<u64> = Vec::new();
        for c in 0..3 {
            let part: Vec<_> = cell_filter(recs.clone().into_iter(), c, 3)
                .map(|r| r.unwrap().arrival_ns)
                .collect();
            assert!(part.len() > 250, "cell {c}: {}", part.len());
            all.extend(part);
        }
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        // Turns of one session stay together.
        let cell = |i: u64| {
            cell_filter(recs.clone().into_iter(), 0, 3).any(|r| r.unwrap().arrival_ns == i)
        };
        assert_eq!(cell(5), cell(6), "5 and 6 are session 1");
    }
}

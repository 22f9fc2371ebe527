//! KV transfers in flight between a prefill backend and a decode pool, over links that
//! are shared resources: every transfer leaving one prefill backend for one decode pool
//! shares that link's rate equally with the others in flight (processor sharing, as
//! concurrent RDMA writes through one NIC do), so a saturated link shows up as transfers
//! taking longer, not as a free lunch. Each transfer then pays the link's fixed latency.
//!
//! Pure and deterministic like the engines: the driver asks when the next transfer ends
//! ([`Transfers::next_at`]) and collects those that have ([`Transfers::advance`]).

use crate::fleet::Link;
use crate::request::{Nanos, RequestId};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Below this many bytes left a transfer counts as sent (float rounding of shared rates).
const EPS_BYTES: f64 = 1e-3;

#[derive(Debug)]
struct Flow {
    id: RequestId,
    remaining: f64,
    latency: Nanos,
}

#[derive(Debug, Default)]
struct Channel {
    bytes_per_ns: f64,
    last: Nanos,
    flows: Vec<Flow>,
    /// Bumped whenever the channel's next completion moves; older heap entries are stale.
    generation: u64,
}

impl Channel {
    /// Drains the flows' progress up to `now`: each got an equal share of the rate.
    fn catch_up(&mut self, now: Nanos) {
        if !self.flows.is_empty() && now > self.last {
            let each = (now - self.last) as f64 * self.bytes_per_ns / self.flows.len() as f64;
            for f in &mut self.flows {
                f.remaining -= each;
            }
        }
        self.last = self.last.max(now);
    }

    fn next_completion(&self) -> Option<Nanos> {
        let min = self.flows.iter().map(|f| f.remaining).reduce(f64::min)?;
        let n = self.flows.len() as f64;
        Some(self.last + (min.max(0.0) * n / self.bytes_per_ns).ceil() as Nanos)
    }
}

/// A heap entry: (time, order, kind, channel key or request id, generation).
type Due = Reverse<(Nanos, u64, u8, u64, u64)>;

const CHANNEL_DONE: u8 = 0;
const DELIVERED: u8 = 1;

/// Every link's transfers in flight.
#[derive(Debug, Default)]
pub struct Transfers {
    channels: FxHashMap<u64, Channel>,
    heap: BinaryHeap<Due>,
    order: u64,
    in_flight: usize,
}

impl Transfers {
    /// Starts moving `bytes` for request `id` from prefill backend `from` to decode pool
    /// `to` over `link` at `now`.
    pub fn start(
        &mut self,
        now: Nanos,
        from: u32,
        to: u32,
        link: &Link,
        id: RequestId,
        bytes: f64,
    ) {
        self.in_flight += 1;
        let key = (u64::from(from) << 32) | u64::from(to);
        let ch = self.channels.entry(key).or_default();
        ch.bytes_per_ns = link.bytes_per_ns;
        ch.catch_up(now);
        ch.flows.push(Flow {
            id,
            remaining: bytes.max(0.0),
            latency: link.latency_ns,
        });
        self.reschedule(key);
    }

    fn reschedule(&mut self, key: u64) {
        let ch = self.channels.get_mut(&key).expect("channel");
        ch.generation += 1;
        if let Some(t) = ch.next_completion() {
            self.order += 1;
            self.heap
                .push(Reverse((t, self.order, CHANNEL_DONE, key, ch.generation)));
        }
    }

    /// Stops sending request `id`'s KV at `now` (its client went away): the others on
    /// its link share the rate without it from then on. Returns false when it is not
    /// being sent (unknown, or already paying its latency; it then arrives as usual).
    pub fn cancel(&mut self, now: Nanos, id: RequestId) -> bool {
        let Some((&key, _)) = self
            .channels
            .iter()
            .find(|(_, c)| c.flows.iter().any(|f| f.id == id))
        else {
            return false;
        };
        let ch = self.channels.get_mut(&key).expect("found");
        ch.catch_up(now);
        ch.flows.retain(|f| f.id != id);
        self.in_flight -= 1;
        if ch.flows.is_empty() {
            self.channels.remove(&key);
        } else {
            self.reschedule(key);
        }
        true
    }

    /// Transfers in flight (sending or paying their latency).
    pub fn len(&self) -> usize {
        self.in_flight
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight == 0
    }

    /// When the next thing happens (a transfer finishes sending, or arrives).
    pub fn next_at(&mut self) -> Option<Nanos> {
        while let Some(&Reverse((t, _, kind, key, generation))) = self.heap.peek() {
            let stale = kind == CHANNEL_DONE
                && self
                    .channels
                    .get(&key)
                    .is_none_or(|c| c.generation != generation);
            if !stale {
                return Some(t);
            }
            self.heap.pop();
        }
        None
    }

    /// Processes everything due at or before `now`, appending the requests whose KV has
    /// arrived (with the instant it did), in order.
    pub fn advance(&mut self, now: Nanos, arrived: &mut Vec<(RequestId, Nanos)>) {
        self.advance_sent(now, arrived, &mut Vec::new());
    }

    /// [`Self::advance`], also appending to `sent` the transfers whose last byte has left
    /// their prefill backend (request, prefill backend, instant), in order: the prefill
    /// side's KV is free from then on, while the link's latency still runs.
    pub fn advance_sent(
        &mut self,
        now: Nanos,
        arrived: &mut Vec<(RequestId, Nanos)>,
        sent_out: &mut Vec<(RequestId, u32, Nanos)>,
    ) {
        while let Some(t) = self.next_at() {
            if t > now {
                return;
            }
            let Reverse((t, _, kind, key, _)) = self.heap.pop().expect("peeked");
            if kind == DELIVERED {
                self.in_flight -= 1;
                arrived.push((key, t));
                continue;
            }
            let ch = self.channels.get_mut(&key).expect("channel");
            ch.catch_up(t);
            let mut i = 0;
            let mut sent = Vec::new();
            while i < ch.flows.len() {
                if ch.flows[i].remaining <= EPS_BYTES {
                    sent.push(ch.flows.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            // swap_remove reorders; arrivals at one instant go out in request order.
            sent.sort_unstable_by_key(|f| f.id);
            for f in sent {
                sent_out.push((f.id, (key >> 32) as u32, t));
                self.order += 1;
                self.heap
                    .push(Reverse((t + f.latency, self.order, DELIVERED, f.id, 0)));
            }
            if ch.flows.is_empty() {
                self.channels.remove(&key);
            } else {
                self.reschedule(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::LinkTable;
    use crate::profile::Catalogue;

    fn run(t: &mut Transfers) -> Vec<(RequestId, Nanos)> {
        let mut out = Vec::new();
        while let Some(at) = t.next_at() {
            t.advance(at, &mut out);
        }
        out
    }

    #[test]
    fn kv_bytes_per_token_and_a_transfer_by_hand() {
        let cat = Catalogue::embedded();
        // Qwen3-8B (config.json): 36 layers × 8 KV heads × 128 head dims × 2 (K and V)
        // × 2 bytes (BF16) = 147,456 bytes a token (144 KiB).
        assert_eq!(
            cat.model("qwen3-8b").unwrap().kv_bytes_per_token(),
            147_456.0
        );
        // Llama-3-8B: 32 × 8 × 128 × 2 × 2 = 131,072 (128 KiB).
        assert_eq!(
            cat.model("llama-3-8b").unwrap().kv_bytes_per_token(),
            131_072.0
        );
        // A 4,096-token Qwen3-8B prompt is 603,979,776 bytes = 576 MiB, which Mooncake's
        // vLLM P/D benchmark lists as "578 MB" for the same model and length.
        let bytes = 4096.0 * 147_456.0;
        assert_eq!(bytes, 603_979_776.0);
        // Over 100 Gb/s (12.5 bytes/ns) with 10 µs latency: 48,318,382.08 → 48,318,383 ns
        // of sending, plus 10,000 ns.
        let link = LinkTable::link(100.0, 10.0);
        assert_eq!(link.alone_ns(bytes), 48_318_383 + 10_000);
        let mut t = Transfers::default();
        t.start(1_000, 0, 1, &link, 7, bytes);
        assert_eq!(run(&mut t), vec![(7, 1_000 + 48_318_383 + 10_000)]);
        assert!(t.is_empty());
    }

    #[test]
    fn concurrent_transfers_share_the_link() {
        let link = LinkTable::link(8.0, 0.0); // 1 byte per ns
        let mut t = Transfers::default();
        // Two 1,000-byte transfers from one backend at once: each at half rate, both
        // done at 2,000 ns. A third from another backend is not slowed.
        t.start(0, 0, 1, &link, 1, 1000.0);
        t.start(0, 0, 1, &link, 2, 1000.0);
        t.start(0, 5, 1, &link, 3, 1000.0);
        assert_eq!(run(&mut t), vec![(3, 1000), (1, 2000), (2, 2000)]);
        // Staggered: the second joins halfway through the first, which then finishes at
        // 500 + 2·500 = 1,500; the second has 500 left alone at 1,500 → done at 2,000.
        t.start(0, 0, 1, &link, 4, 1000.0);
        let mut out = Vec::new();
        t.advance(500, &mut out);
        t.start(500, 0, 1, &link, 5, 1000.0);
        out.extend(run(&mut t));
        assert_eq!(out, vec![(4, 1500), (5, 2000)]);
    }

    #[test]
    fn a_cancelled_transfer_gives_its_share_of_the_link_back() {
        let link = LinkTable::link(8.0, 0.0); // 1 byte per ns
        let mut t = Transfers::default();
        t.start(0, 0, 1, &link, 1, 1000.0);
        t.start(0, 0, 1, &link, 2, 1000.0);
        let mut out = Vec::new();
        t.advance(500, &mut out);
        // Each has 750 left at 500 ns; alone, 2 finishes at 1,250 instead of 2,000.
        assert!(t.cancel(500, 1));
        assert!(!t.cancel(500, 1), "once");
        out.extend(run(&mut t));
        assert_eq!(out, vec![(2, 1250)]);
        assert!(t.is_empty());
    }

    #[test]
    fn the_last_byte_leaves_one_latency_before_the_kv_arrives() {
        let link = LinkTable::link(8.0, 3.0); // 1 byte per ns, 3 µs
        let mut t = Transfers::default();
        t.start(0, 4, 1, &link, 1, 1000.0);
        t.start(0, 4, 1, &link, 2, 3000.0);
        let (mut arrived, mut sent) = (Vec::new(), Vec::new());
        while let Some(at) = t.next_at() {
            t.advance_sent(at, &mut arrived, &mut sent);
        }
        // Shared: 1 sent at 2,000 ns; 2 has 2,000 left alone → sent at 4,000.
        assert_eq!(sent, vec![(1, 4, 2000), (2, 4, 4000)]);
        assert_eq!(arrived, vec![(1, 5000), (2, 7000)]);
    }
}

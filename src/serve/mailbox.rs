//! A request's delivery mailbox: how a backend driver hands what happens to one request
//! (admitted, started, tokens, finished…) to the stream that serves it, in bounded memory
//! and without ever waiting on that stream.
//!
//! The reader is the gRPC response stream, and HTTP/2 flow control decides when it runs:
//! a client that stops reading stops its stream from being polled. What should the daemon
//! do then? The engine's batch is shared, so pausing the driver would stall every other
//! request on the backend; buffering every event would let one slow client grow memory
//! with every token. So the driver keeps running the request at its modelled pace, and
//! the mailbox coalesces: consecutive token chunks merge into one count, so an unread
//! backlog is at most one entry of each kind a placement produces (admitted or refused,
//! started, tokens, and one terminal event), whatever the request's length. When the
//! client reads again it gets the backlog as one chunk. The request still holds its KV
//! until it finishes (at `max_tokens` at the latest) and its admission slot until the
//! client reads the end or goes away, and its deadline still applies: the client's stall
//! costs it, not the other streams.

use super::backend::Delivery;
use crate::metrics::{Frontend, Metrics};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Entries one placement can leave unread: admitted or refused, started, one merged
/// token chunk, and the terminal event. A request moved to another backend gets a new
/// mailbox, so this bound holds per mailbox.
const MAX_UNREAD: usize = 4;

#[derive(Default)]
struct State {
    queue: VecDeque<Delivery>,
    waker: Option<Waker>,
    /// The driver dropped its end: nothing more will come.
    closed: bool,
    /// The stream dropped its end: sends are discarded.
    abandoned: bool,
    /// The reader wants only the end: `Started` and token chunks wait, unannounced, for
    /// the next delivery that wakes it ([`Inbox::wake_only_at_end`]).
    quiet: bool,
    /// The request's acceptance is counted here, when `Admitted` is posted, which then
    /// wakes no one ([`Inbox::count_admission`]).
    count: Option<(Arc<Metrics>, Frontend)>,
    /// `Admitted` was posted and counted.
    counted: bool,
}

/// The driver's end.
pub struct Outbox(Arc<parking_lot::Mutex<State>>);

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

/// The stream's end.
pub struct Inbox(Arc<parking_lot::Mutex<State>>);

/// A new, empty mailbox.
pub fn mailbox() -> (Outbox, Inbox) {
    let shared = Arc::new(parking_lot::Mutex::new(State {
        queue: VecDeque::with_capacity(MAX_UNREAD),
        ..State::default()
    }));
    (Outbox(shared.clone()), Inbox(shared))
}

impl Outbox {
    /// Posts a delivery without waiting; false when the stream has gone. A token chunk
    /// posted while the previous one is still unread is merged into it.
    pub fn send(&self, d: Delivery) -> bool {
        let wake = !matches!(d, Delivery::Started { .. } | Delivery::Tokens { .. });
        let waker = {
            let mut s = self.0.lock();
            if s.abandoned {
                return false;
            }
            let mut wake = wake || !s.quiet;
            if matches!(d, Delivery::Admitted) {
                if let Some((metrics, frontend)) = &s.count {
                    metrics.accepted(*frontend);
                    s.counted = true;
                    wake = false;
                }
            }
            // A request handed off again (its decode backend failed while the KV was on
            // the way) names only the latest backend: the bound on unread holds.
            let d = match d {
                Delivery::HandedOff(new) => {
                    match s.queue.iter_mut().find_map(|q| match q {
                        Delivery::HandedOff(old) => Some(old),
                        _ => None,
                    }) {
                        Some(old) => {
                            *old = new;
                            return true;
                        }
                        None => Delivery::HandedOff(new),
                    }
                }
                d => d,
            };
            match (s.queue.back_mut(), d) {
                (
                    Some(Delivery::Tokens { count, text }),
                    Delivery::Tokens {
                        count: more,
                        text: more_text,
                    },
                ) => {
                    *count = count.saturating_add(more);
                    // One placement's chunks all have text or none do.
                    if let (Some(text), Some(more)) = (text, more_text) {
                        text.push_str(&more);
                    }
                }
                (_, d) => {
                    debug_assert!(s.queue.len() < MAX_UNREAD, "{:?} after {:?}", d, s.queue);
                    s.queue.push_back(d);
                }
            }
            if wake {
                s.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }
}

impl Outbox {
    /// The stream has gone, or has given up on the request ([`Inbox::abandon`]).
    pub fn is_abandoned(&self) -> bool {
        self.0.lock().abandoned
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.0.lock();
            s.closed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Inbox {
    /// The next delivery; `None` once the driver has dropped its end and all was read.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let mut s = self.0.lock();
        if let Some(d) = s.queue.pop_front() {
            return Poll::Ready(Some(d));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// From now on the reader is woken only by what ends or moves the request (finished,
    /// ended, displaced, refused, admitted), not by each `Started` or token chunk: for a
    /// reader that answers once at the end (a non-streaming response), every chunk's
    /// wake-up would be a poll of its whole connection for nothing. What comes in the
    /// meantime is read, merged, with the event that wakes it.
    pub fn wake_only_at_end(&self) {
        self.0.lock().quiet = true;
    }

    /// For a reader that waits for more than its request's admission (the start, or the
    /// end: `at_end`, as [`Inbox::wake_only_at_end`]): `Admitted` wakes no one, and is
    /// counted as accepted (`metrics`, by `frontend`) the moment it is posted, so the
    /// daemon's in-flight count (what a drain waits on) holds the request from then on,
    /// read or not. Set before the request is handed over. A reader that gives up should
    /// [`Inbox::keep_if_admitted`].
    pub fn count_admission(&self, metrics: Arc<Metrics>, frontend: Frontend, at_end: bool) {
        let mut s = self.0.lock();
        s.count = Some((metrics, frontend));
        s.quiet |= at_end;
    }

    /// For a reader giving up before reading its answer: true if the request was admitted
    /// and counted ([`Inbox::count_admission`]), so it is accepted and must be ended as
    /// such; otherwise the mailbox is abandoned at once, so an admission posted from now
    /// on is neither counted nor kept.
    pub fn keep_if_admitted(&self) -> bool {
        let mut s = self.0.lock();
        if !s.counted {
            s.abandoned = true;
            s.queue.clear();
        }
        s.counted
    }

    pub async fn recv(&mut self) -> Option<Delivery> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next delivery if one is waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.0.lock().queue.pop_front()
    }

    /// The stream gives up on the request: whatever is sent from now on is discarded, and
    /// a driver about to take it on (a hand-off whose KV is on the way) sees it is gone.
    pub fn abandon(&self) {
        let mut s = self.0.lock();
        s.abandoned = true;
        s.queue.clear();
    }

    /// Deliveries waiting to be read (for tests and debugging).
    pub fn unread(&self) -> usize {
        self.0.lock().queue.len()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.abandoned = true;
        s.queue.clear();
        s.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::backend::FinishReport;

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(Default::default()));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn an_unread_backlog_stays_a_handful_of_entries() {
        let (tx, mut rx) = mailbox();
        assert!(tx.send(Delivery::Admitted));
        assert!(tx.send(Delivery::Started { queue_ns: 5 }));
        for _ in 0..100_000 {
            assert!(tx.send(Delivery::Tokens {
                count: 1,
                text: None
            }));
        }
        assert!(tx.send(Delivery::Finished(FinishReport::default())));
        assert_eq!(rx.unread(), 4);
        drop(tx);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut got = Vec::new();
        while let Poll::Ready(Some(d)) = rx.poll_recv(&mut cx) {
            got.push(d);
        }
        assert_eq!(
            got,
            [
                Delivery::Admitted,
                Delivery::Started { queue_ns: 5 },
                Delivery::Tokens {
                    count: 100_000,
                    text: None
                },
                Delivery::Finished(FinishReport::default()),
            ]
        );
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn chunks_read_as_they_come_are_not_merged() {
        let (tx, mut rx) = mailbox();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        for n in 1..=3 {
            tx.send(Delivery::Tokens {
                count: n,
                text: Some(format!("t{n}")),
            });
            assert_eq!(
                rx.poll_recv(&mut cx),
                Poll::Ready(Some(Delivery::Tokens {
                    count: n,
                    text: Some(format!("t{n}"))
                }))
            );
        }
    }

    #[test]
    fn unread_real_text_is_merged_in_order() {
        let (tx, mut rx) = mailbox();
        for t in ["Du", "jiang", "yan"] {
            tx.send(Delivery::Tokens {
                count: 1,
                text: Some(t.into()),
            });
        }
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(
            rx.poll_recv(&mut cx),
            Poll::Ready(Some(Delivery::Tokens {
                count: 3,
                text: Some("Dujiangyan".into())
            }))
        );
    }

    #[test]
    fn a_quiet_reader_is_woken_only_by_the_end() {
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let woken = || count.0.load(std::sync::atomic::Ordering::Relaxed);
        let (tx, mut rx) = mailbox();
        rx.wake_only_at_end();
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        tx.send(Delivery::Admitted);
        assert_eq!(
            woken(),
            1,
            "admission still wakes (the submit path waits on it)"
        );
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(Delivery::Admitted)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        tx.send(Delivery::Started { queue_ns: 1 });
        for _ in 0..5 {
            tx.send(Delivery::Tokens {
                count: 1,
                text: None,
            });
        }
        assert_eq!(woken(), 1, "neither Started nor tokens wake a quiet reader");
        tx.send(Delivery::Finished(FinishReport::default()));
        assert_eq!(woken(), 2);
        let mut got = Vec::new();
        while let Poll::Ready(Some(d)) = rx.poll_recv(&mut cx) {
            got.push(d);
        }
        assert_eq!(
            got,
            [
                Delivery::Started { queue_ns: 1 },
                Delivery::Tokens {
                    count: 5,
                    text: None
                },
                Delivery::Finished(FinishReport::default()),
            ]
        );
    }

    #[test]
    fn a_counted_admission_wakes_no_one_and_is_counted_once_when_posted() {
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let woken = || count.0.load(std::sync::atomic::Ordering::Relaxed);
        let metrics = Arc::new(Metrics::new());
        let (tx, mut rx) = mailbox();
        rx.count_admission(metrics.clone(), Frontend::Openai, false);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        tx.send(Delivery::Admitted);
        assert_eq!(woken(), 0, "admission wakes no one");
        assert_eq!(metrics.accepted_count(), 1, "counted when posted, unread");
        tx.send(Delivery::Started { queue_ns: 1 });
        assert_eq!(woken(), 1, "the start wakes the reader");
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(Delivery::Admitted)));
        assert!(rx.keep_if_admitted());
        assert_eq!(metrics.accepted_count(), 1);

        // Given up before the admission: abandoned, and a later one is not counted.
        let (tx, rx) = mailbox();
        rx.count_admission(metrics.clone(), Frontend::Openai, true);
        assert!(!rx.keep_if_admitted());
        assert!(!tx.send(Delivery::Admitted));
        assert_eq!(metrics.accepted_count(), 1);
    }

    #[test]
    fn sending_to_a_dropped_stream_reports_it() {
        let (tx, rx) = mailbox();
        drop(rx);
        assert!(!tx.send(Delivery::Admitted));
    }
}

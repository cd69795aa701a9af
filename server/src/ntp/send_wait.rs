//! How long a reply waits in its worker's send batch after its transmit
//! timestamp is read.
//!
//! ```text
//! pass:  recv n ─ handle 0 ─ handle 1 ─ … ─ handle n-1 ─ sendmmsg(0, 1, …, m-1)
//!                    └ T3 of reply 0 ──── waits for ──────┘└─ and for the sends before it
//! ```
//!
//! A worker answers what one receive (or one pass over the completions)
//! brought in and sends the replies together with `sendmmsg`. Reply `j` of a
//! pass leaves after the requests handled after it and after the `j` sends
//! queued before it, all of which happen after its transmit timestamp was
//! read. Unaccounted, that wait makes the served time early under load (a
//! client's offset moves by half of it): 22-35 µs at the 95th percentile of
//! T4 − T3 on loopback at 50,000-300,000 requests/s, against 2 µs when every
//! reply was sent on its own, which cost 5-12 % more CPU per NTS reply.
//!
//! So the worker learns the two rates it is made of, the time to handle one
//! request and the time `sendmmsg` takes per message, and adds
//! `later × handle + queued × send` to each transmit timestamp. A lone
//! request (light load) waits for nothing and gets nothing added, so the
//! light-load behaviour is the one-by-one server's.
//!
//! The estimate assumes the rest of a pass costs what passes cost on
//! average. A pass whose later requests are cheaper or dearer than that (a
//! flood of malformed or rate-limited datagrams, say) moves those replies'
//! transmit timestamps by the difference: late by at most the predicted
//! wait when the rest costs nothing, early by less than the actual wait
//! when it costs more, which is the error every reply had before the wait
//! was counted.

use std::time::Duration;

/// The learned rates, in NTP timestamp units (2^-32 s); 0 until learned.
#[derive(Debug, Default)]
pub struct SendWait {
    handle: u64,
    send: u64,
}

impl SendWait {
    /// A per-item time above this is a preemption or a page fault, not the
    /// rate: such a pass is not learned.
    const MAX_PER_ITEM: u64 = (1 << 32) / 20_000; // 50 µs
    /// Each pass moves an estimate by 1/16 of its distance to the pass's
    /// figure: a pass is one sample of up to 32 items, so the average is
    /// already smoothed.
    const SHIFT: u32 = 4;

    /// The expected wait of a reply whose transmit timestamp is read with
    /// `later` requests still to handle before the batch is sent and
    /// `queued` replies ahead of it in the batch.
    pub fn wait(&self, later: usize, queued: usize) -> u64 {
        (later as u64)
            .saturating_mul(self.handle)
            .saturating_add((queued as u64).saturating_mul(self.send))
    }

    /// Learns from a pass that handled `requests` datagrams in `elapsed`
    /// (from the end of the receive to the start of the send).
    pub fn learn_handle(&mut self, requests: usize, elapsed: Duration) {
        learn(&mut self.handle, requests, elapsed);
    }

    /// Learns from a `sendmmsg` of `messages` datagrams that took `elapsed`.
    pub fn learn_send(&mut self, messages: usize, elapsed: Duration) {
        learn(&mut self.send, messages, elapsed);
    }
}

fn learn(estimate: &mut u64, items: usize, elapsed: Duration) {
    let Some(items) = u64::try_from(items).ok().filter(|&n| n > 0) else {
        return;
    };
    let units = (elapsed.as_nanos().saturating_mul(1 << 32) / 1_000_000_000)
        .try_into()
        .unwrap_or(u64::MAX);
    let sample = units / items;
    if sample > SendWait::MAX_PER_ITEM {
        return;
    }
    if *estimate == 0 {
        *estimate = sample;
    } else if sample >= *estimate {
        *estimate += (sample - *estimate) >> SendWait::SHIFT;
    } else {
        *estimate -= (*estimate - sample) >> SendWait::SHIFT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = (1 << 32) / 1_000_000;

    fn near(a: u64, b: u64) -> bool {
        a.abs_diff(b) <= b / 50
    }

    #[test]
    fn nothing_is_added_before_learning_or_for_a_lone_request() {
        let mut w = SendWait::default();
        assert_eq!(w.wait(31, 31), 0);
        w.learn_handle(8, Duration::from_micros(8));
        w.learn_send(8, Duration::from_micros(16));
        assert_eq!(w.wait(0, 0), 0, "a lone request waits for nothing");
    }

    #[test]
    fn the_wait_is_later_handles_plus_queued_sends() {
        let mut w = SendWait::default();
        w.learn_handle(10, Duration::from_micros(10)); // 1 µs a request
        w.learn_send(4, Duration::from_micros(8)); // 2 µs a message
        assert!(near(w.wait(3, 0), 3 * US), "{}", w.wait(3, 0));
        assert!(near(w.wait(0, 5), 10 * US), "{}", w.wait(0, 5));
        assert!(near(w.wait(3, 5), 13 * US), "{}", w.wait(3, 5));
    }

    #[test]
    fn estimates_follow_the_rate_and_ignore_preempted_passes() {
        let mut w = SendWait::default();
        w.learn_send(1, Duration::from_micros(1));
        for _ in 0..200 {
            w.learn_send(32, Duration::from_micros(64)); // 2 µs a message
        }
        assert!(near(w.wait(0, 1), 2 * US), "converges: {}", w.wait(0, 1));
        w.learn_send(2, Duration::from_millis(5)); // 2.5 ms a message
        assert!(near(w.wait(0, 1), 2 * US), "a preempted send is ignored");
        w.learn_send(0, Duration::from_micros(1));
        assert!(near(w.wait(0, 1), 2 * US), "an empty batch teaches nothing");
        // One slow pass within the bound moves the estimate by 1/16 of the
        // difference, not to it.
        w.learn_send(1, Duration::from_micros(34));
        assert!(near(w.wait(0, 1), 4 * US), "{}", w.wait(0, 1));
    }
}

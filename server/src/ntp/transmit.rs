//! The transmit timestamp (T3) of a reply is read before the reply leaves:
//! before the seal of an NTS reply (the authenticator covers T3), and
//! before the batch the reply goes out in is sent. Each worker learns both
//! delays and adds them to T3, so that T3 names the moment the reply is
//! handed to the kernel, whatever the load:
//!
//! ```text
//! pass:  recv n ─ handle 0 ─ handle 1 ─ … ─ handle n-1 ─ sendmmsg(0, 1, …, m-1)
//!          T3 of 0 ┘└ seal ┘
//!                  └─ reply 0 waits for the later handles ┘└ and the sends before it
//! ```
//!
//! - [`SealDelay`]: the seal time of an NTS reply, a running median per
//!   request size.
//! - [`SendWait`]: the time a reply waits in its worker's send batch.
//!
//! Unaccounted, either delay makes the served time early (a client's offset
//! moves by half of it), and the batch wait grows with the load. Sending
//! every reply on its own would remove the wait but cost CPU per reply
//! (both measured in bench/RESULTS.md, "Accuracy under load").
//!
//! Reply `j` of a pass leaves after the requests handled after it and after
//! the `j` sends queued before it. So the worker learns the two rates the
//! wait is made of, the time to handle one request and the time `sendmmsg`
//! takes per message, and adds `later × handle + queued × send` to each
//! transmit timestamp. A lone request (light load) waits for nothing and
//! gets nothing added, so the light-load behaviour is the one-by-one
//! server's.
//!
//! The estimate assumes the rest of a pass costs what passes cost on
//! average. A pass whose later requests are cheaper or dearer than that (a
//! flood of malformed or rate-limited datagrams, say) moves those replies'
//! transmit timestamps by the difference: late by at most the predicted
//! wait when the rest costs nothing, early by less than the actual wait
//! when it costs more, which is the error every reply had before the wait
//! was counted.

use std::time::Duration;

use super::worker::MAX_PACKET;

/// How long the seal of an NTS reply takes after its transmit timestamp is
/// read, learned per worker and per request size. The authenticator covers
/// the transmit timestamp, so it must be read before the seal; adding the
/// expected seal time makes it name the moment the finished reply goes to
/// the kernel, as chrony does for its symmetric-key replies. Without it, an
/// NTS client sees the server's clock late by half the seal time.
///
/// The estimate is a running median, not a mean: each sample moves it one
/// step of 1/64 towards itself, so a seal slowed by a cold cache or an
/// interrupt shifts the next transmit timestamps by 1.6 % of the seal time,
/// not by an eighth of the outlier. Any jitter of the estimate is jitter of
/// the served time. The first sample of a size is often a cold one, so the
/// first [`SealDelay::WARM_UP`] samples move it by 1/8: from ten times too
/// high it is near the median after about 20 seals instead of 140.
#[derive(Debug, Default)]
pub(super) struct SealDelay {
    /// Running medians in NTP timestamp units (2^-32 s); 0 = nothing learned.
    estimate: [u64; SealDelay::BUCKETS],
    /// Samples learned per size, counted up to `WARM_UP`.
    samples: [u8; SealDelay::BUCKETS],
}

impl SealDelay {
    const BUCKETS: usize = MAX_PACKET / 128;
    /// Longer samples are preemptions or page faults, not seal time.
    const MAX_SAMPLE: u64 = (1 << 32) / 20_000; // 50 µs
    /// Each sample moves the estimate by 1/64 of itself...
    const STEP_DIVISOR: u64 = 64;
    /// ...but by 1/8 while fewer than this many were learned for its size.
    const WARM_UP: u8 = 48;
    const WARM_UP_STEP_DIVISOR: u64 = 8;

    pub(super) fn bucket(request_len: usize) -> usize {
        (request_len / 128).min(Self::BUCKETS - 1)
    }

    pub(super) fn get(&self, bucket: usize) -> u64 {
        self.estimate.get(bucket).copied().unwrap_or(0)
    }

    pub(super) fn learn(&mut self, bucket: usize, sample: u64) {
        if sample > Self::MAX_SAMPLE {
            return;
        }
        let (Some(e), Some(n)) = (self.estimate.get_mut(bucket), self.samples.get_mut(bucket))
        else {
            return;
        };
        if *n < Self::WARM_UP {
            *n += 1;
        }
        if *e == 0 {
            *e = sample;
            return;
        }
        let divisor = if *n < Self::WARM_UP {
            Self::WARM_UP_STEP_DIVISOR
        } else {
            Self::STEP_DIVISOR
        };
        let step = (*e / divisor).max(1);
        if sample > *e {
            *e += step;
        } else if sample < *e {
            *e -= step.min(*e - 1);
        }
    }
}

/// The learned rates, in NTP timestamp units (2^-32 s); 0 until learned.
#[derive(Debug, Default)]
pub(super) struct SendWait {
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
    pub(super) fn wait(&self, later: usize, queued: usize) -> u64 {
        (later as u64)
            .saturating_mul(self.handle)
            .saturating_add((queued as u64).saturating_mul(self.send))
    }

    /// Learns from a pass that handled `requests` datagrams in `elapsed`
    /// (from the end of the receive to the start of the send).
    pub(super) fn learn_handle(&mut self, requests: usize, elapsed: Duration) {
        learn(&mut self.handle, requests, elapsed);
    }

    /// Learns from a `sendmmsg` of `messages` datagrams that took `elapsed`.
    pub(super) fn learn_send(&mut self, messages: usize, elapsed: Duration) {
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

    #[test]
    fn seal_delay_learns_the_median_per_size_and_ignores_preemption() {
        let mut d = SealDelay::default();
        let small = SealDelay::bucket(228);
        let large = SealDelay::bucket(1100);
        assert_ne!(small, large);
        assert_eq!(SealDelay::bucket(100_000), SealDelay::BUCKETS - 1);
        assert_eq!(d.get(small), 0, "nothing is added before a seal was timed");
        d.learn(small, US);
        assert_eq!(d.get(small), US, "the first sample is taken as it is");
        for _ in 0..100 {
            d.learn(small, 2 * US);
        }
        let near = |d: &SealDelay, v: u64| d.get(small).abs_diff(v) <= v / 32;
        assert!(
            near(&d, 2 * US),
            "converges: {} vs {}",
            d.get(small),
            2 * US
        );
        d.learn(small, 1000 * US);
        assert!(near(&d, 2 * US), "a preempted seal is ignored");
        // Noisy samples with slow outliers: the estimate follows their median
        // (2 µs), not their mean (4.6 µs), and one outlier moves it by one step.
        for _ in 0..200 {
            for v in [2, 2, 3, 1, 15] {
                d.learn(small, v * US);
            }
        }
        assert!(near(&d, 2 * US), "median: {} vs {}", d.get(small), 2 * US);
        let before = d.get(small);
        d.learn(small, 40 * US);
        assert_eq!(d.get(small), before + before / 64);

        // A cold first seal, ten times the usual: warm-up steps of 1/8 bring
        // the estimate near the usual seal time within 20 samples.
        let mut d = SealDelay::default();
        d.learn(small, 20 * US);
        for _ in 0..20 {
            d.learn(small, 2 * US);
        }
        assert!(
            d.get(small).abs_diff(2 * US) <= 2 * US / 7,
            "warm-up: {} vs {}",
            d.get(small),
            2 * US
        );
        assert_eq!(d.get(large), 0, "other sizes are learned on their own");
    }
}

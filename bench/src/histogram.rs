//! A fixed-size latency histogram: recording is an array increment, so the
//! generator's steady state allocates nothing however many replies arrive.
//!
//! Values below 128 µs have their own bucket; above that each power of two
//! is split into 128 buckets, so a reported percentile is within 0.4 % of
//! the true value (the bucket's midpoint is reported).

const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = SUB + (32 - SUB_BITS as usize) * SUB;

#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("p50", &self.percentile(0.5))
            .field("p99", &self.percentile(0.99))
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
        }
    }
}

fn index(v: u32) -> usize {
    if (v as usize) < SUB {
        return v as usize;
    }
    let e = 31 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) as usize - SUB;
    SUB + shift as usize * SUB + mantissa
}

/// The midpoint of bucket `i`.
fn value(i: usize) -> u32 {
    if i < SUB {
        return i as u32;
    }
    let shift = (i - SUB) / SUB;
    let mantissa = (i - SUB) % SUB;
    let low = ((SUB + mantissa) as u64) << shift;
    let width = 1u64 << shift;
    (low + (width - 1) / 2).min(u64::from(u32::MAX)) as u32
}

impl Histogram {
    pub fn record(&mut self, v: u32) {
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
            self.total += 1;
        }
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The value at fraction `p` (0..=1) of the recorded values, as the
    /// sorted list's element `round((n - 1) * p)`; 0 when empty.
    pub fn percentile(&self, p: f64) -> u32 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total - 1) as f64 * p.clamp(0.0, 1.0)).round() as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return value(i);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact_and_large_ones_close() {
        for v in [0u32, 1, 127, 128, 129, 1000, 65_537, 1_000_000, u32::MAX] {
            let mut h = Histogram::default();
            h.record(v);
            let got = f64::from(h.percentile(0.5));
            let want = f64::from(v);
            assert!((got - want).abs() <= want * 0.004 + 0.01, "{v} -> {got}");
        }
        assert_eq!(index(u32::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_follow_the_sorted_list() {
        let mut h = Histogram::default();
        for v in 1..=100u32 {
            h.record(v);
        }
        assert_eq!(h.percentile(0.0), 1);
        assert_eq!(h.percentile(0.5), 51);
        assert_eq!(h.percentile(0.99), 99);
        assert_eq!(h.percentile(1.0), 100);
        let mut other = Histogram::default();
        other.record(5000);
        h.merge(&other);
        assert_eq!(h.count(), 101);
        assert!(h.percentile(1.0) >= 4980);
        assert_eq!(Histogram::default().percentile(0.5), 0);
    }
}

//! Random bytes for unique identifiers, nonces and transmit timestamps,
//! drawn from the system CSPRNG 16 KiB at a time: one `getrandom` call per
//! few hundred requests instead of one per request.

use ring::rand::{SecureRandom, SystemRandom};

const POOL: usize = 16 * 1024;

pub struct RandomPool {
    rng: SystemRandom,
    buf: Box<[u8]>,
    pos: usize,
}

impl std::fmt::Debug for RandomPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RandomPool { .. }")
    }
}

/// The system random generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random generator failed")]
pub struct RandomError;

impl RandomPool {
    pub fn new() -> Self {
        Self {
            rng: SystemRandom::new(),
            buf: vec![0; POOL].into_boxed_slice(),
            // Empty: the first draw fills it.
            pos: POOL,
        }
    }

    pub fn bytes<const N: usize>(&mut self) -> Result<[u8; N], RandomError> {
        if N > POOL {
            return Err(RandomError);
        }
        if self.pos + N > POOL {
            self.rng.fill(&mut self.buf).map_err(|_| RandomError)?;
            self.pos = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(self.buf.get(self.pos..self.pos + N).ok_or(RandomError)?);
        self.pos += N;
        Ok(out)
    }

    pub fn u64(&mut self) -> Result<u64, RandomError> {
        self.bytes::<8>().map(u64::from_ne_bytes)
    }
}

impl Default for RandomPool {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_do_not_repeat_across_refills() {
        let mut r = RandomPool::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5000 {
            assert!(seen.insert(r.bytes::<16>().expect("random")));
        }
    }
}

//! The workers' random-number generator: AES-128 in counter mode, keyed from
//! ring's system RNG and rekeyed every 2^20 blocks. Drawing nonces from it
//! costs no syscall and no lock per packet; only the rekey calls `getrandom`.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;
use ring::rand::{SecureRandom, SystemRandom};

const REKEY_BLOCKS: u64 = 1 << 20;

pub(super) struct WorkerRng {
    system: SystemRandom,
    cipher: Aes128,
    counter: u128,
    blocks: u64,
}

impl std::fmt::Debug for WorkerRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerRng { .. }")
    }
}

impl WorkerRng {
    pub(super) fn new() -> Result<Self, ring::error::Unspecified> {
        let system = SystemRandom::new();
        let (cipher, counter) = Self::seed(&system)?;
        Ok(Self {
            system,
            cipher,
            counter,
            blocks: 0,
        })
    }

    fn seed(system: &SystemRandom) -> Result<(Aes128, u128), ring::error::Unspecified> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        system.fill(seed.as_mut_slice())?;
        let (key, ctr) = seed.split_at(16);
        let cipher = Aes128::new_from_slice(key).map_err(|_| ring::error::Unspecified)?;
        let counter = u128::from_be_bytes(ctr.try_into().map_err(|_| ring::error::Unspecified)?);
        Ok((cipher, counter))
    }

    /// Eight random bytes as a number (for hash keys and seeds).
    pub(super) fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        nts_proto::Random::fill(self, &mut b);
        u64::from_le_bytes(b)
    }

    fn rekey(&mut self) {
        // If getrandom fails we keep the current key: the stream stays
        // unpredictable, and the failure is retried at the next rekey.
        if let Ok((cipher, counter)) = Self::seed(&self.system) {
            self.cipher = cipher;
            self.counter = counter;
        }
        self.blocks = 0;
    }
}

impl nts_proto::Random for WorkerRng {
    fn fill(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(16) {
            if self.blocks >= REKEY_BLOCKS {
                self.rekey();
            }
            let mut block = aes::Block::from(self.counter.to_be_bytes());
            self.cipher.encrypt_block(&mut block);
            self.counter = self.counter.wrapping_add(1);
            self.blocks += 1;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_proto::Random;

    #[test]
    fn output_differs_between_draws_and_generators() {
        let mut a = WorkerRng::new().unwrap();
        let mut b = WorkerRng::new().unwrap();
        let (mut x, mut y, mut z) = ([0u8; 40], [0u8; 40], [0u8; 40]);
        a.fill(&mut x);
        a.fill(&mut y);
        b.fill(&mut z);
        assert_ne!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, [0u8; 40]);
    }

    #[test]
    fn rekeys_after_the_limit() {
        let mut a = WorkerRng::new().unwrap();
        a.blocks = REKEY_BLOCKS;
        let before = a.counter;
        a.fill(&mut [0u8; 16]);
        assert_eq!(a.blocks, 1);
        assert_ne!(a.counter, before.wrapping_add(1));
    }
}

//! A fixed NTS request answered N times by `Server::handle`, for counting
//! instructions per reply with callgrind (bench/README.md):
//!
//! ```text
//! cargo build --release -p nts-proto --example handle_loop
//! valgrind --tool=callgrind target/release/examples/handle_loop 8000 15
//! ```
//!
//! Arguments: requests (default 100000), AEAD id (15, 17, 30; default 15).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use nts_proto::client::NtsClient;
use nts_proto::cookie::{seal_cookie, MAX_COOKIE_LEN};
use nts_proto::{
    Action, AeadAlgorithm, AeadKey, MasterKey, NtpTimestamp, Random, Server, SessionKeys,
    SingleKey, SystemInfo,
};

struct Counter(u8);

impl Random for Counter {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
    }
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = arg(1, 100_000);
    let alg = AeadAlgorithm::from_id(arg(2, 15) as u16).expect("AEAD 15, 17 or 30");
    let ring = SingleKey::new(7, MasterKey::from_bytes(&[0x42; 32]));
    let sys = SystemInfo::unsynchronized();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let k = alg.key_len();
    let keys = SessionKeys {
        c2s: AeadKey::new(alg, &[0x11; 64][..k]).unwrap(),
        s2c: AeadKey::new(alg, &[0x22; 64][..k]).unwrap(),
    };
    let mut cookie = [0u8; MAX_COOKIE_LEN];
    let len = seal_cookie(7, ring.key(), &[1; 16], &keys, &mut cookie).unwrap();
    let mut client = NtsClient::new(keys, vec![cookie[..len].to_vec()]);
    let mut buf = [0u8; 512];
    let (len, _) = client
        .build_request(NtpTimestamp(5), &[9; 48], 1, &mut buf)
        .unwrap();
    let request = &buf[..len];
    let mut rng = Counter(0);
    let mut bytes = 0usize;
    let mut reply = [0u8; 512];
    for _ in 0..n {
        let req = std::hint::black_box(request);
        if let Action::Reply { len, .. } = server.handle(NtpTimestamp(6), req, &mut reply, &mut rng)
        {
            bytes += len;
        }
    }
    println!("{bytes} reply bytes");
}

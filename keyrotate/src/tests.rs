use nts_proto::cookie::{open_cookie, seal_cookie, MAX_COOKIE_LEN};
use nts_proto::{AeadAlgorithm, AeadKey, CookieKeys, SessionKeys};

use super::*;

fn schedule(interval: u64, keep: u32) -> Schedule {
    Schedule { interval, keep }
}

fn keys(interval: u64, keep: u32, now: u64) -> RotatingKeys {
    RotatingKeys::new(
        schedule(interval, keep),
        Box::<RandomKeys>::default(),
        None,
        None,
        now,
    )
    .unwrap()
}

fn cookie_from(ring: &KeyRing) -> Vec<u8> {
    let alg = AeadAlgorithm::AesSivCmac256;
    let s = SessionKeys {
        c2s: AeadKey::new(alg, &[1; 32]).unwrap(),
        s2c: AeadKey::new(alg, &[2; 32]).unwrap(),
    };
    let (id, key) = ring.sealing_key();
    let mut out = vec![0u8; 100];
    seal_cookie(id, key, &[0; 16], &s, &mut out).unwrap();
    out
}

fn opens(ring: &KeyRing, cookie: &[u8]) -> bool {
    open_cookie(ring, cookie, &mut [0u8; MAX_COOKIE_LEN]).is_ok()
}

#[test]
fn ring_holds_previous_current_and_next() {
    let k = keys(100, 2, 1_000);
    let ring = k.load();
    assert_eq!(ring.current_id(), 10);
    let ids: Vec<u32> = ring.entries().iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![8, 9, 10, 11]);
    assert_eq!(ring.entries()[2].starts, 1_000);
}

#[test]
fn rotation_follows_now_without_sleeping() {
    let k = keys(100, 2, 1_000);
    let cookie = cookie_from(&k.load());
    assert!(!k.rotate(1_099).unwrap());
    assert!(k.rotate(1_100).unwrap());
    assert_eq!(k.load().current_id(), 11);
    // Sealed in epoch 10, now epoch 12, keep = 2: still opens.
    assert!(k.rotate(1_200).unwrap());
    assert!(opens(&k.load(), &cookie));
    assert!(k.rotate(1_201).is_ok_and(|changed| !changed));
    // Epoch 13 is more than `keep` intervals later: refused.
    assert!(k.rotate(1_300).unwrap());
    assert!(!opens(&k.load(), &cookie));
}

#[test]
fn the_next_key_is_kept_across_rotation() {
    let k = keys(10, 1, 0);
    let next = k.load().entries().last().unwrap().keys[0].clone();
    k.rotate(10).unwrap();
    assert_eq!(k.load().sealing_key().1, &next);
}

fn fleet(interval: u64, keep: u32, now: u64) -> RotatingKeys {
    let src = FleetKeys::from_secrets(&[&[9u8; 32]]).unwrap();
    RotatingKeys::new(schedule(interval, keep), Box::new(src), None, None, now).unwrap()
}

fn ids(k: &RotatingKeys) -> Vec<u32> {
    k.load().entries().iter().map(|e| e.id).collect()
}

#[test]
fn a_step_forward_moves_the_ring_and_keeps_what_sealed() {
    let k = keys(10, 2, 20);
    let sealed = cookie_from(&k.load());
    assert_eq!(
        k.follow(1_000).unwrap(),
        Movement::Jumped { from: 2, to: 100 }
    );
    assert_eq!(k.load().current_id(), 100);
    assert_eq!(k.load().sealing_key().0, 100);
    // Epoch 2's key sealed just before the step: it keeps opening for the
    // two epochs it had left, then goes.
    assert!(opens(&k.load(), &sealed));
    k.follow(1_010).unwrap();
    k.follow(1_020).unwrap();
    assert!(opens(&k.load(), &sealed));
    k.follow(1_030).unwrap();
    assert!(!opens(&k.load(), &sealed));
    assert_eq!(ids(&k), vec![101, 102, 103, 104]);
}

#[test]
fn a_step_back_seals_with_the_key_of_now_and_keeps_the_future_keys() {
    let k = keys(10, 2, 1_000);
    let future = cookie_from(&k.load());
    assert_eq!(k.follow(20).unwrap(), Movement::Jumped { from: 100, to: 2 });
    assert_eq!(k.load().current_id(), 2);
    let now = cookie_from(&k.load());
    assert_eq!(&now[..4], &2u32.to_be_bytes());
    assert!(opens(&k.load(), &future));
    k.follow(30).unwrap();
    k.follow(40).unwrap();
    assert!(opens(&k.load(), &future));
    assert!(opens(&k.load(), &now), "sealed at epoch 2, now 4, keep 2");
    k.follow(50).unwrap();
    assert!(!opens(&k.load(), &future));
    assert_eq!(ids(&k), vec![3, 4, 5, 6]);
}

/// The case: `rotate(1000)` then `rotate(20)` with a 10 s interval
/// used to leave the ring at epoch 100.
#[test]
fn a_step_forward_then_back_returns_to_the_epoch_of_now() {
    let k = keys(10, 2, 20);
    let before = cookie_from(&k.load());
    let before_key = k.load().sealing_key().1.clone();
    k.rotate(1_000).unwrap();
    let during = cookie_from(&k.load());
    assert!(k.rotate(20).unwrap());
    assert_eq!(k.load().current_id(), 2);
    // Back in its own epoch, the original key seals again; both the cookies
    // from before the first step and those from the wrong epoch open.
    assert_eq!(k.load().sealing_key().1, &before_key);
    assert!(opens(&k.load(), &before));
    assert!(opens(&k.load(), &during));
    // The ring holds the window and the kept keys, nothing unbounded.
    assert_eq!(ids(&k), vec![0, 1, 2, 3, 98, 99, 100]);
    for now in [30, 40, 50] {
        k.follow(now).unwrap();
    }
    assert!(!opens(&k.load(), &during));
    assert_eq!(ids(&k), vec![3, 4, 5, 6]);
}

#[test]
fn fleet_rings_are_the_window_of_now_in_both_directions() {
    let k = fleet(10, 2, 20);
    let reference = fleet(10, 2, 1_000);
    k.follow(1_000).unwrap();
    assert_eq!(ids(&k), vec![98, 99, 100, 101]);
    assert!(opens(&k.load(), &cookie_from(&reference.load())));
    assert!(opens(&reference.load(), &cookie_from(&k.load())));
    k.follow(20).unwrap();
    assert_eq!(ids(&k), vec![0, 1, 2, 3]);
    let peer = fleet(10, 2, 20);
    assert!(opens(&peer.load(), &cookie_from(&k.load())));
    assert!(opens(&k.load(), &cookie_from(&peer.load())));
}

#[test]
fn a_clock_that_keeps_jumping_does_not_grow_the_ring() {
    let k = keys(10, 3, 0);
    for i in 1..200u64 {
        let now = (i * 7_919) % 100_000;
        k.follow(now * 10).unwrap();
        assert!(
            k.load().entries().len() <= 3 * (3 + 2),
            "{}",
            k.load().entries().len()
        );
    }
}

/// A persisted ring created at `first`, reopened from its file at `then`
/// as a restarted server would; returns the reopened keys and a cookie the
/// first ring sealed.
fn restarted(
    dir: &std::path::Path,
    sched: Schedule,
    first: u64,
    then: u64,
) -> (RotatingKeys, Vec<u8>) {
    let (store, _) = KeyStore::open(dir, first).unwrap();
    let k = RotatingKeys::new(
        sched,
        Box::<RandomKeys>::default(),
        Some(store),
        None,
        first,
    )
    .unwrap();
    let cookie = cookie_from(&k.load());
    drop(k);
    let (store, report) = KeyStore::open(dir, then).unwrap();
    let previous = ring_from_stored(report.stored.unwrap(), &sched);
    let k = RotatingKeys::new(
        sched,
        Box::<RandomKeys>::default(),
        Some(store),
        previous,
        then,
    )
    .unwrap();
    (k, cookie)
}

#[test]
fn a_loaded_ring_ahead_of_the_clock_is_kept_as_after_a_step_back() {
    let dir = tempfile::tempdir().unwrap();
    let sched = schedule(10, 2);
    // Restarted with the clock behind (before chronyd stepped it at boot).
    let (k, cookie) = restarted(dir.path(), sched, 1_000, 20);
    assert_eq!(k.started(), Movement::Jumped { from: 100, to: 2 });
    assert_eq!(k.load().current_id(), 2);
    assert!(opens(&k.load(), &cookie));
    // The kept keys and their deadlines are on disk.
    let stored = KeyStore::read(dir.path()).unwrap().unwrap();
    assert!(stored
        .entries
        .iter()
        .any(|e| e.id == 100 && e.open_until == Some(4)));
    // chronyd steps the clock forward again: the original ring is back.
    k.follow(1_005).unwrap();
    assert!(opens(&k.load(), &cookie));
    assert_eq!(k.load().current_id(), 100);
}

#[test]
fn keep_is_bounded() {
    for keep in [0, MAX_KEEP + 1, u32::MAX] {
        let r = RotatingKeys::new(
            schedule(10, keep),
            Box::<RandomKeys>::default(),
            None,
            None,
            0,
        );
        assert!(matches!(r, Err(KeyError::KeepOutOfRange)), "{keep}");
    }
    let k = keys(1, MAX_KEEP, 1_000_000);
    assert_eq!(k.load().entries().len(), MAX_KEEP as usize + 2);
}

#[test]
fn repeated_forced_rotations_keep_the_key_count_bounded() {
    let k = keys(100, 2, 1_000);
    let first = cookie_from(&k.load());
    for _ in 0..40 {
        k.force_rotate(1_000).unwrap();
    }
    let ring = k.load();
    let current = ring.get(10).unwrap();
    assert_eq!(current.keys.len(), MAX_KEYS_PER_EPOCH);
    assert!(
        !opens(&ring, &first),
        "the oldest of many replaced keys goes"
    );
    assert_eq!(ring.get(11).unwrap().keys.len(), MAX_KEYS_PER_EPOCH);
}

#[test]
fn zero_interval_is_refused() {
    let r = RotatingKeys::new(schedule(0, 1), Box::<RandomKeys>::default(), None, None, 0);
    assert!(matches!(r, Err(KeyError::ZeroInterval)));
}

#[test]
fn forced_rotation_seals_with_a_new_key_and_still_opens_old_cookies() {
    let k = keys(100, 2, 1_000);
    let before = cookie_from(&k.load());
    let old_key = k.load().sealing_key().1.clone();
    assert_eq!(k.force_rotate(1_050).unwrap(), 10);
    let ring = k.load();
    assert_eq!(ring.current_id(), 10);
    assert_ne!(ring.sealing_key().1, &old_key);
    assert!(opens(&ring, &before));
    assert!(opens(&ring, &cookie_from(&ring)));
    // Cookie length does not change (NTPsec rejects a change).
    assert_eq!(cookie_from(&ring).len(), before.len());
}

#[test]
fn fleet_nodes_derive_the_same_ring_and_refuse_forced_rotation() {
    let node = |now| fleet(60, 1, now);
    let a = node(6_000);
    // B's schedule lags A's by almost an interval: it still opens A's cookies
    // because it holds the next key.
    let b = node(5_999);
    let cookie = cookie_from(&a.load());
    assert!(opens(&b.load(), &cookie));
    b.rotate(6_000).unwrap();
    assert!(opens(&b.load(), &cookie));
    // Sealed in epoch 100; B at epoch 101 with keep = 1 opens, at 102 refuses.
    b.rotate(6_060).unwrap();
    assert!(opens(&b.load(), &cookie));
    b.rotate(6_120).unwrap();
    assert!(!opens(&b.load(), &cookie));
    assert!(matches!(a.force_rotate(6_000), Err(KeyError::DerivedKeys)));
    assert!(a.is_derived());
}

#[test]
fn a_rolled_fleet_secret_still_opens_cookies_of_the_old_one() {
    let old = RotatingKeys::new(
        schedule(60, 1),
        Box::new(FleetKeys::from_secrets(&[&[1u8; 32]]).unwrap()),
        None,
        None,
        6_000,
    )
    .unwrap();
    let rolled = RotatingKeys::new(
        schedule(60, 1),
        Box::new(FleetKeys::from_secrets(&[&[2u8; 32], &[1u8; 32]]).unwrap()),
        None,
        None,
        6_000,
    )
    .unwrap();
    let cookie = cookie_from(&old.load());
    assert!(opens(&rolled.load(), &cookie));
    assert_ne!(rolled.load().sealing_key().1, old.load().sealing_key().1);
}

#[test]
fn a_reloaded_ring_is_rotated_forward_and_keeps_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let sched = schedule(100, 7);
    // Down for three intervals.
    let (second, cookie) = restarted(dir.path(), sched, 1_000, 1_350);
    assert_eq!(second.load().current_id(), 13);
    assert!(opens(&second.load(), &cookie));
    // The file now holds the rotated ring.
    let stored = KeyStore::read(dir.path()).unwrap().unwrap();
    assert_eq!(stored.current, 13);
    // A file written with another interval is not reused.
    assert!(ring_from_stored(stored, &schedule(60, 7)).is_none());
}

#[test]
fn a_ring_that_cannot_be_saved_is_not_published() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = KeyStore::open(dir.path(), 0).unwrap();
    let k = RotatingKeys::new(
        schedule(10, 1),
        Box::<RandomKeys>::default(),
        Some(store),
        None,
        100,
    )
    .unwrap();
    // Replace the directory by a file so the next save fails.
    std::fs::remove_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path(), b"").unwrap();
    assert!(k.rotate(110).is_err());
    assert_eq!(k.load().current_id(), 10);
    std::fs::remove_file(dir.path()).unwrap();
}

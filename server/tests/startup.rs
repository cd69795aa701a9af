//! Start-up as an operator meets it: a stop signal during start-up ends the
//! process cleanly, and the NTP port is never shared by accident with
//! chronyd or another ntsd.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{pki_dir, require, Ntsd, BIN};

/// The test config with its NTP listener on `ntp` instead of port 0.
fn config_on(dir: &Path, name: &str, ntp: &str, state: &str) -> std::path::PathBuf {
    let text = common::config_text(
        dir,
        "auto",
        "",
        "",
        &format!("[keys]\ndump_dir = \"{}\"\n", dir.join(state).display()),
    );
    // The first `listen` is [ntp]'s.
    let start = text.find("listen = ").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    let text = format!("{}listen = [\"{ntp}\"]{}", &text[..start], &text[end..]);
    let cfg = dir.join(name);
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mask line of /proc/PID/status (`SigBlk:`, `SigCgt:`) as bits.
fn signal_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0)
}

/// SIGTERM during start-up, from the earliest moment the process can act
/// on one (its stop signals held back by `main`, or caught by their
/// handler, before it logs `ntsd ready`, as /proc shows), ends it with
/// exit 0 through the ordinary shutdown and leaves a key file that loads.
/// The window is a few milliseconds; a try that misses it (the server was
/// ready first) still must stop cleanly, and at least three must hit it.
#[test]
fn sigterm_during_start_up_stops_cleanly() {
    use std::io::BufRead;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const SIGTERM_BIT: u64 = 1 << 14; // signal 15
    let dir = pki_dir();
    let state = dir.path().join("state");
    let cfg = common::write_config(
        dir.path(),
        "ntsd.toml",
        "auto",
        &format!("[keys]\ndump_dir = \"{}\"\n", state.display()),
    );
    let mut during_start_up = 0;
    for round in 0..30 {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let ready = Arc::new(AtomicBool::new(false));
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let reader = {
            let (ready, log) = (ready.clone(), log.clone());
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    if line.contains("ntsd ready") {
                        ready.store(true, Ordering::SeqCst);
                    }
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let hit = loop {
            let handled = signal_mask(pid, "SigBlk:") | signal_mask(pid, "SigCgt:");
            if handled & SIGTERM_BIT != 0 {
                break !ready.load(Ordering::SeqCst);
            }
            if ready.load(Ordering::SeqCst) {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "SIGTERM never held back nor handled"
            );
            std::thread::yield_now();
        };
        common::unsafe_free_kill(pid, "TERM");
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let log = log.lock().unwrap().clone();
        assert!(status.success(), "round {round}: {status:?}\n{log}");
        assert!(log.contains("stopped"), "round {round}: {log}");
        let (ok, list) = common::output(
            Command::new(BIN)
                .args(["keys", "list", "--config"])
                .arg(&cfg),
        );
        assert!(
            ok && list.contains("seals and opens"),
            "round {round}: {list}"
        );
        let names: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["keys".to_owned()], "round {round}");
        during_start_up += usize::from(hit);
        if during_start_up == 3 {
            return;
        }
    }
    panic!("only {during_start_up} of 30 tries sent SIGTERM before `ntsd ready`");
}

/// A socket bound to the NTP address as chronyd binds its own
/// (SO_REUSEADDR), here with SO_REUSEPORT as well, which the workers'
/// sockets would otherwise have joined: the start fails naming the address
/// and the process holding it.
#[test]
fn a_port_held_as_chronyd_holds_it_refuses_the_start() {
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    held.set_reuse_address(true).unwrap();
    held.set_reuse_port(true).unwrap();
    held.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let port = held.local_addr().unwrap().as_socket().unwrap().port();
    let dir = pki_dir();
    let cfg = config_on(dir.path(), "a.toml", &format!("127.0.0.1:{port}"), "state");
    let log = Ntsd::try_spawn(dir.path().to_owned(), &cfg)
        .err()
        .expect("started on a port another socket holds");
    assert!(
        log.contains(&format!("127.0.0.1:{port}")) && log.contains("already in use"),
        "{log}"
    );
    assert!(
        log.contains(&format!("(pid {})", std::process::id())),
        "the holder is not named: {log}"
    );
    assert!(!log.contains("ntsd ready"), "{log}");
}

/// A second ntsd on the same NTP port (each with its own keys) is refused,
/// naming the port and the first ntsd; the first keeps serving.
#[test]
fn a_second_server_on_the_same_ntp_port_is_refused() {
    let dir = pki_dir();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let first = Ntsd::spawn(
        dir.path().to_owned(),
        &config_on(dir.path(), "a.toml", &addr, "a-state"),
    );
    assert_eq!(first.ntp_port, port);
    let log = Ntsd::try_spawn(
        dir.path().to_owned(),
        &config_on(dir.path(), "b.toml", &addr, "b-state"),
    )
    .err()
    .expect("a second ntsd shared the NTP port");
    assert!(
        log.contains(&addr) && log.contains(&format!("ntsd (pid {})", first.pid())),
        "{log}"
    );
    let (mut client, _) = common::client_of(&first);
    assert_eq!(
        common::try_cookie(&mut client, port, 1),
        common::Outcome::Authenticated
    );
}

/// The real thing: chronyd serving NTP on the port (as root, clock
/// untouched) makes the start fail naming chronyd.
#[test]
fn a_running_chronyd_on_the_port_refuses_the_start() {
    if !require("chronyd", Path::new("/usr/sbin/chronyd").exists())
        || !require("root (chronyd -u root)", common::is_root())
    {
        return;
    }
    let dir = pki_dir();
    let port = free_port();
    let conf = dir.path().join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbindaddress 127.0.0.1\ncmdport 0\nallow 127.0.0.1\nlocal stratum 10\npidfile {}\n",
            dir.path().join("chronyd.pid").display()
        ),
    )
    .unwrap();
    let mut chronyd = Command::new("/usr/sbin/chronyd")
        .args(["-d", "-x", "-u", "root", "-f"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = chronyd.id();
    // Wait until chronyd holds the port.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(
            chronyd.try_wait().unwrap().is_none(),
            "chronyd exited early"
        );
        assert!(Instant::now() < deadline, "chronyd never bound its port");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _chronyd = Kill(chronyd);
    let cfg = config_on(dir.path(), "a.toml", &format!("127.0.0.1:{port}"), "state");
    let log = Ntsd::try_spawn(dir.path().to_owned(), &cfg)
        .err()
        .expect("ntsd started beside chronyd on its port");
    assert!(
        log.contains(&format!("127.0.0.1:{port}")) && log.contains(&format!("chronyd (pid {pid})")),
        "{log}"
    );
}

//! An anycast fleet in network namespaces: three ntsd nodes sharing one
//! fleet secret and one anycast address, a router with an equal-cost
//! multipath route to it over the three (hashing on ports too, so a
//! client's NTS-KE and its NTP often land on different nodes), and four
//! chrony clients on addresses of their own. One node is taken out of the
//! route and put back, one is killed (and withdrawn, as the health check
//! would) and restarted, and a restart is rolled through all three: every
//! client keeps getting authenticated samples, runs NTS-KE once, and no NAK
//! is sent. Root only (CI); every address exists only inside the
//! namespaces, which are removed at the end, also on failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require, BIN};

const ANYCAST: &str = "203.0.113.123";
const NODES: usize = 3;
const CLIENTS: usize = 4;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ns_exec(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full);
}

/// The namespaces and processes of the test; all removed on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn add_ns(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ns_exec(&ns, &["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair between `a` and `b` with `a_addr` and `b_addr` (/30).
    fn link(&self, a: &str, b: &str, a_addr: &str, b_addr: &str) {
        let (ia, ib) = (
            format!("v{}", &b[self.prefix.len()..]),
            format!("v{}", &a[self.prefix.len()..]),
        );
        sh(&[
            "ip", "link", "add", &ia, "netns", a, "type", "veth", "peer", "name", &ib, "netns", b,
        ]);
        ns_exec(
            a,
            &["ip", "addr", "add", &format!("{a_addr}/30"), "dev", &ia],
        );
        ns_exec(
            b,
            &["ip", "addr", "add", &format!("{b_addr}/30"), "dev", &ib],
        );
        ns_exec(a, &["ip", "link", "set", &ia, "up"]);
        ns_exec(b, &["ip", "link", "set", &ib, "up"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The next hop of node `i` on the router, and the node's own address.
fn node_addrs(i: usize) -> (String, String) {
    (
        format!("198.51.100.{}", 4 * i + 1),
        format!("198.51.100.{}", 4 * i + 2),
    )
}

fn set_route(lab: &Lab, nodes: &[usize]) {
    let r = lab.ns("r");
    let mut args: Vec<String> = ["ip", "route", "replace", &format!("{ANYCAST}/32")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for &i in nodes {
        args.extend(["nexthop".into(), "via".into(), node_addrs(i).1]);
    }
    let mut full: Vec<&str> = vec!["ip", "netns", "exec", &r];
    full.extend(args.iter().map(String::as_str));
    sh(&full);
}

struct Node {
    child_index: usize,
    config: PathBuf,
}

fn start_node(lab: &mut Lab, i: usize, config: &Path) -> usize {
    let ns = lab.ns(&format!("n{i}"));
    let log = std::fs::File::create(lab.dir.path().join(format!("n{i}.log"))).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, BIN, "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    lab.children.push(child);
    // Ready: /readyz answers 200 inside the node.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node_ready(lab, i) {
        assert!(
            Instant::now() < deadline,
            "node {i} not ready: {}",
            node_log(lab, i)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.children.len() - 1
}

fn node_ready(lab: &Lab, i: usize) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(&format!("n{i}")),
            BIN,
            "ready",
            "--metrics",
            "http://127.0.0.1:9460",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn node_log(lab: &Lab, i: usize) -> String {
    std::fs::read_to_string(lab.dir.path().join(format!("n{i}.log"))).unwrap_or_default()
}

/// (KE sessions, NAKs) of node `i` since its start, from `ntsd stats`.
fn node_counts(lab: &Lab, i: usize) -> (u64, u64) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(&format!("n{i}")),
            BIN,
            "stats",
            "--metrics",
            "http://127.0.0.1:9460/metrics",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
            .sum()
    };
    (value("NTS-KE sessions, AEAD"), value("NTS NAKs sent"))
}

/// Stops node `i` (SIGTERM, or SIGKILL when `kill`), adding its counts.
fn stop_node(lab: &mut Lab, node: &Node, totals: &mut (u64, u64), kill: bool, i: usize) {
    // Read just before the stop (a kill takes the counters with it).
    let (ke, naks) = node_counts(lab, i);
    totals.0 += ke;
    totals.1 += naks;
    let child = &mut lab.children[node.child_index];
    let signal = if kill { "KILL" } else { "TERM" };
    common::unsafe_free_kill(child.id(), signal);
    let _ = child.wait();
}

/// Sample times (seconds of the day) from a chrony measurements log.
fn samples(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(ANYCAST))
        .filter_map(|l| {
            let t = l.split_whitespace().nth(1)?;
            let mut p = t.split(':');
            let (h, m, s) = (
                p.next()?.parse::<f64>().ok()?,
                p.next()?.parse::<f64>().ok()?,
                p.next()?.parse::<f64>().ok()?,
            );
            Some(h * 3600.0 + m * 60.0 + s)
        })
        .collect()
}

fn pki(dir: &Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::new(vec!["ntp.anycast.test".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress(ANYCAST.parse().unwrap()));
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(
        dir.join("chain.pem"),
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
    )
    .unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

#[test]
fn an_anycast_fleet_keeps_every_client_authenticated_through_withdrawals_kills_and_restarts() {
    if !require("root (network namespaces)", common::is_root())
        || !require("chronyd", Path::new("/usr/sbin/chronyd").exists())
    {
        return;
    }
    let mut lab = Lab {
        prefix: format!("ntsdt{}", std::process::id() % 100_000),
        namespaces: Vec::new(),
        children: Vec::new(),
        dir: tempfile::tempdir().unwrap(),
    };
    let dir = lab.dir.path().to_owned();
    let ca = pki(&dir);
    let secret = dir.join("fleet.secret");
    std::fs::write(
        &secret,
        (0u8..32).map(|b| b.wrapping_mul(37)).collect::<Vec<_>>(),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&secret).unwrap().permissions(),
        0o400,
    );
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();

    // Topology.
    let r = lab.add_ns("r");
    ns_exec(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // Hash on addresses and ports: KE and NTP of one client can split.
    ns_exec(
        &r,
        &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
    );
    for i in 0..NODES {
        let n = lab.add_ns(&format!("n{i}"));
        let (hop, addr) = node_addrs(i);
        lab.link(&r, &n, &hop, &addr);
        ns_exec(
            &n,
            &["ip", "addr", "add", &format!("{ANYCAST}/32"), "dev", "lo"],
        );
        ns_exec(&n, &["ip", "route", "add", "default", "via", &hop]);
    }
    for j in 0..CLIENTS {
        let c = lab.add_ns(&format!("c{j}"));
        let (rtr, addr) = (
            format!("192.0.2.{}", 4 * j + 1),
            format!("192.0.2.{}", 4 * j + 2),
        );
        lab.link(&r, &c, &rtr, &addr);
        ns_exec(&c, &["ip", "route", "add", "default", "via", &rtr]);
    }
    set_route(&lab, &[0, 1, 2]);

    // Nodes: one fleet secret; NTP and NTS-KE on the default wildcard
    // addresses, so replies must leave from the anycast address the client
    // sent to (IP_PKTINFO), not from the node's own.
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let config = dir.join(format!("n{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[ntp]\nworkers = 1\n[nts_ke]\ncertificate_chain = \"{d}/chain.pem\"\nprivate_key = \"{d}/key.pem\"\nthreads = 1\n\
                 [keys]\nfleet_secret_file = \"{s}\"\nrotate_interval = \"1h\"\n[time]\nsource = \"local\"\n\
                 [metrics]\nlisten = \"127.0.0.1:9460\"\n",
                d = dir.display(),
                s = secret.display()
            ),
        )
        .unwrap();
        let child_index = start_node(&mut lab, i, &config);
        nodes.push(Node {
            child_index,
            config,
        });
    }

    // Clients: chronyd polling every second over NTS, never touching the clock.
    for j in 0..CLIENTS {
        let cdir = dir.join(format!("c{j}"));
        std::fs::create_dir(&cdir).unwrap();
        let conf = cdir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "server {ANYCAST} iburst nts minpoll 0 maxpoll 0\nntstrustedcerts {}\n\
                 logdir {d}\nlog measurements\npidfile {d}/chronyd.pid\ncmdport 0\nbindcmdaddress /\n",
                ca.display(),
                d = cdir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(cdir.join("chronyd.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(&format!("c{j}")),
                "/usr/sbin/chronyd",
                "-d",
                "-x",
                "-u",
                "root",
                "-f",
            ])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        lab.children.push(child);
    }
    let client_log = |j: usize| dir.join(format!("c{j}/measurements.log"));
    // Every client authenticated before the faults start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..CLIENTS).any(|j| samples(&client_log(j)).len() < 3) {
        assert!(
            Instant::now() < deadline,
            "clients without samples: {:?}\n{}",
            (0..CLIENTS)
                .map(|j| samples(&client_log(j)).len())
                .collect::<Vec<_>>(),
            std::fs::read_to_string(dir.join("c0/chronyd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fault_start = Instant::now();
    let mut totals = (0u64, 0u64);

    // 1. Node 1 out of the route for 6 s, then back.
    set_route(&lab, &[0, 2]);
    std::thread::sleep(Duration::from_secs(6));
    set_route(&lab, &[0, 1, 2]);
    std::thread::sleep(Duration::from_secs(3));

    // 2. Node 2 killed; withdrawn a second later, as its health check
    //    would; restarted and announced again once ready.
    stop_node(&mut lab, &nodes[2], &mut totals, true, 2);
    std::thread::sleep(Duration::from_secs(1));
    set_route(&lab, &[0, 1]);
    std::thread::sleep(Duration::from_secs(4));
    let cfg = nodes[2].config.clone();
    nodes[2].child_index = start_node(&mut lab, 2, &cfg);
    set_route(&lab, &[0, 1, 2]);
    std::thread::sleep(Duration::from_secs(3));

    // 3. A rolling restart: withdraw, restart, wait until ready, announce.
    for (i, node) in nodes.iter_mut().enumerate() {
        let others: Vec<usize> = (0..NODES).filter(|&k| k != i).collect();
        set_route(&lab, &others);
        std::thread::sleep(Duration::from_millis(500));
        stop_node(&mut lab, node, &mut totals, false, i);
        let config = node.config.clone();
        node.child_index = start_node(&mut lab, i, &config);
        set_route(&lab, &[0, 1, 2]);
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(4));
    let faults = fault_start.elapsed().as_secs_f64();
    for i in 0..NODES {
        let (ke, naks) = node_counts(&lab, i);
        totals.0 += ke;
        totals.1 += naks;
    }

    // Figures.
    let mut report = Vec::new();
    let mut worst_gap = 0f64;
    for j in 0..CLIENTS {
        let t = samples(&client_log(j));
        let gap = t.windows(2).map(|w| w[1] - w[0]).fold(0f64, f64::max);
        worst_gap = worst_gap.max(gap);
        report.push(format!(
            "client {j}: {} samples, longest gap {gap:.1} s",
            t.len()
        ));
        assert!(
            t.len() as f64 >= faults * 0.5,
            "client {j}: only {} samples in {faults:.0} s",
            t.len()
        );
    }
    eprintln!(
        "anycast fleet ({NODES} nodes, {CLIENTS} chrony clients, {faults:.0} s of faults): {}; NTS-KE sessions {} ({} per client); NAKs {}",
        report.join("; "),
        totals.0,
        totals.0 as f64 / CLIENTS as f64,
        totals.1
    );
    // One NTS-KE session per client, over the whole run and every node.
    assert_eq!(
        totals.0, CLIENTS as u64,
        "NTS-KE sessions: a client ran it again, or never"
    );
    assert_eq!(totals.1, 0, "NAKs were sent");
    assert!(
        worst_gap < 10.0,
        "a client went {worst_gap:.1} s without a sample"
    );
}

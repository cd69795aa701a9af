//! `ntsd demo`: NTS on loopback with a throwaway CA, no files needed.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{
    Config, HumanDuration, KeysConfig, NtpConfig, NtsKeConfig, TimeConfig, TimeSource,
};

/// Loopback addresses this host can bind (IPv6 may be disabled).
fn loopbacks() -> Vec<SocketAddr> {
    let v6: SocketAddr = (Ipv6Addr::LOCALHOST, 0).into();
    let mut out = vec![(Ipv4Addr::LOCALHOST, 0).into()];
    if std::net::UdpSocket::bind(v6).is_ok() {
        out.push(v6);
    }
    out
}

pub fn run() -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("ntsd-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    nts_client::write_test_pki(dir.path())?;
    let config = Config {
        ntp: NtpConfig {
            listen: loopbacks(),
            workers: 1,
            ..NtpConfig::default()
        },
        nts_ke: NtsKeConfig {
            listen: loopbacks(),
            certificate_chain: dir.path().join("chain.pem"),
            private_key: dir.path().join("key.pem"),
            certificate: Vec::new(),
            ntp_server: None,
            ntp_port: None,
            max_connections: 64,
            timeout: HumanDuration(std::time::Duration::from_secs(5)),
            threads: 1,
            max_connections_per_address: 32,
            rate_limit: None,
            allow: None,
            deny: None,
        },
        keys: KeysConfig {
            dump_dir: Some(dir.path().join("state")),
            ..KeysConfig::default()
        },
        time: TimeConfig {
            source: TimeSource::Local,
            ..TimeConfig::default()
        },
        ..Config::default()
    };
    config.validate()?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "ntsd".into());
    let ca = dir.path().join("ca.pem");
    crate::run::run(config, |bound| {
        let ntp = bound.ntp.first().map_or(0, |a| a.port());
        let ke = bound.ke.first().map_or(0, |a| a.port());
        let text = format!(
            "ntsd demo: serving NTS on loopback (state in {})\n  NTS-KE (TCP): {:?}   NTP (UDP): {:?}\n\n\
             Verify with ntsd:\n  {exe} query localhost:{ke} --ca {ca}\n\
             Verify with chrony (as root):\n  chronyd -Q -f /dev/null -u root -t 5 \"server localhost port {ntp} nts ntsport {ke} iburst maxsamples 1\" \"ntstrustedcerts {ca}\"\n\n\
             Stop with Ctrl-C.\n",
            dir.path().display(),
            bound.ke,
            bound.ntp,
            ca = ca.display(),
        );
        // A closed stdout (`ntsd demo | head -3`) must not stop the server.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    })
}

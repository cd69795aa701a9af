//! The files in `deploy/` and the Dockerfile: every file parses, every
//! config they name exists and passes `ntsd check-config`, the Kubernetes
//! manifests validate, the PrometheusRule carries alerts.yml, the systemd
//! unit passes `systemd-analyze verify`, and the container's entrypoint,
//! run directly with the image's config and a test certificate, serves NTS
//! to `ntsd query` and chrony while the image's health check passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{have, require, Ntsd, BIN};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn python_yaml() -> bool {
    Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs python3 with `code` and `args`; returns success and output.
fn python(code: &str, args: &[&Path]) -> (bool, String) {
    common::output(Command::new("python3").arg("-c").arg(code).args(args))
}

/// The config embedded in the Kubernetes ConfigMap.
fn configmap_config() -> String {
    let (ok, out) = python(
        "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data']['config.toml'], end='')",
        &[&root().join("deploy/kubernetes/configmap.yaml")],
    );
    assert!(ok, "{out}");
    out
}

fn check_config(path: &Path) -> (bool, String) {
    common::output(
        Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(path),
    )
}

#[test]
fn every_deploy_file_parses() {
    if !require(
        "python3 with PyYAML (pip install kubernetes-validate)",
        python_yaml(),
    ) {
        return;
    }
    let all = files(&root().join("deploy"));
    assert!(all.len() >= 15, "{all:?}");
    for f in &all {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let ext = f
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(f).unwrap();
        match ext.as_str() {
            "toml" => {
                toml::from_str::<toml::Value>(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "json" => {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "yml" | "yaml" => {
                let (ok, out) = python(
                    "import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))",
                    &[f],
                );
                assert!(ok, "{name}: {out}");
            }
            "service" => {} // systemd_units_verify
            "conf" => {}    // bird_config_parses
            _ if text.starts_with("#!/bin/sh") || text.starts_with("#!/usr/bin/env bash") => {
                let (ok, out) = common::output(Command::new("sh").arg("-n").arg(f));
                assert!(ok, "{name}: {out}");
            }
            _ => panic!("{name}: no check for this kind of file"),
        }
    }
}

#[test]
fn every_config_exists_and_passes_check_config() {
    let docker = root().join("deploy/docker/config.toml");
    let (ok, out) = check_config(&docker);
    assert!(ok, "{}: {out}", docker.display());
    // The Dockerfile copies it into the image and points the entrypoint,
    // the health check and the volumes at it.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY deploy/docker/config.toml /etc/ntsd/config.toml"));
    if !require("python3 with PyYAML", python_yaml()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k8s = dir.path().join("configmap-config.toml");
    std::fs::write(&k8s, configmap_config()).unwrap();
    // This host has no user ntsd (the image's): that is the one error
    // allowed here. the_kubernetes_config_runs_with_the_files_a_kubelet_writes
    // runs check-config where the user and the mounted files exist.
    let (ok, out) = check_config(&k8s);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert!(
        ok || errors == ["error: [server] user: no user \"ntsd\" on this system"],
        "the ConfigMap's config.toml: {out}"
    );
    // The mounts the configs expect are in the pod specs.
    for manifest in ["daemonset.yaml", "deployment.yaml"] {
        let text =
            std::fs::read_to_string(root().join("deploy/kubernetes").join(manifest)).unwrap();
        for needle in [
            "/etc/ntsd/tls",
            "/etc/ntsd/fleet",
            "defaultMode: 0440",
            "fsGroup: 4460",
            "/readyz",
            "/healthz",
        ] {
            assert!(text.contains(needle), "{manifest} lacks {needle}");
        }
    }
    // The kustomization lists files that exist.
    let (ok, out) = python(
        "import sys, yaml, os; k = yaml.safe_load(open(sys.argv[1])); \
         missing = [r for r in k['resources'] if not os.path.exists(os.path.join(os.path.dirname(sys.argv[1]), r))]; \
         assert not missing, missing",
        &[&root().join("deploy/kubernetes/kustomization.yaml")],
    );
    assert!(ok, "{out}");
}

#[test]
fn kubernetes_manifests_validate_and_the_rule_is_alerts_yml() {
    if !require("kubernetes-validate (pip)", have("kubernetes-validate"))
        || !require("python3 with PyYAML", python_yaml())
    {
        return;
    }
    let k8s = root().join("deploy/kubernetes");
    let manifests: Vec<PathBuf> = [
        "configmap.yaml",
        "daemonset.yaml",
        "deployment.yaml",
        "service.yaml",
    ]
    .iter()
    .map(|m| k8s.join(m))
    .collect();
    let (ok, out) = common::output(
        Command::new("kubernetes-validate")
            .arg("--strict")
            .args(&manifests),
    );
    assert!(ok && !out.contains("ERROR"), "{out}");
    assert_eq!(out.matches("passed").count(), 5, "{out}");
    let (ok, out) = python(
        "import sys, yaml; rule = yaml.safe_load(open(sys.argv[1])); alerts = yaml.safe_load(open(sys.argv[2])); \
         assert rule['kind'] == 'PrometheusRule', rule['kind']; \
         assert rule['spec'] == alerts, 'deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yml'",
        &[&k8s.join("prometheusrule.yaml"), &root().join("deploy/prometheus/alerts.yml")],
    );
    assert!(ok, "{out}");
    let (ok, out) = python(
        "import sys, yaml; m = yaml.safe_load(open(sys.argv[1])); s = list(yaml.safe_load_all(open(sys.argv[2])))[1]; \
         assert m['spec']['selector']['matchLabels'].items() <= s['metadata']['labels'].items(); \
         assert m['spec']['endpoints'][0]['port'] == s['spec']['ports'][0]['name']",
        &[&k8s.join("servicemonitor.yaml"), &k8s.join("service.yaml")],
    );
    assert!(
        ok,
        "the ServiceMonitor does not select the metrics Service: {out}"
    );
}

#[test]
fn systemd_units_verify() {
    if !require("systemd-analyze", have("systemd-analyze")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for unit in files(&root().join("deploy"))
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "service"))
    {
        // As shipped: the units find their programs through PATH.
        let copy = dir.path().join(unit.file_name().unwrap());
        std::fs::copy(unit, &copy).unwrap();
        // Documentation= names ntsd's pages: found in the repository's docs/man,
        // as a package installs them.
        let (ok, out) = common::output(
            Command::new("systemd-analyze")
                .arg("verify")
                .arg(&copy)
                .env("MANPATH", root().join("docs/man")),
        );
        let real_problems: Vec<&str> = out
            .lines()
            .filter(|l| !l.contains("bird.service") && !l.contains("birdc"))
            .collect();
        assert!(ok || real_problems.is_empty(), "{}: {out}", unit.display());
        assert!(real_problems.is_empty(), "{}: {out}", unit.display());
    }
    let unit = std::fs::read_to_string(root().join("deploy/systemd/ntsd.service")).unwrap();
    for needle in [
        "Type=notify",
        "StateDirectory=ntsd",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "MemoryDenyWriteExecute=yes",
        "io_uring_setup",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "UMask=0077",
    ] {
        assert!(unit.contains(needle), "ntsd.service lacks {needle}");
    }
}

#[test]
fn bird_config_parses() {
    if !require("bird (Debian package bird2)", have("bird")) {
        return;
    }
    let (ok, out) = common::output(
        Command::new("bird")
            .args(["-p", "-c"])
            .arg(root().join("deploy/anycast/bird.conf")),
    );
    assert!(ok, "{out}");
}

/// The JSON array of a Dockerfile instruction (`ENTRYPOINT [...]`, or
/// `HEALTHCHECK ... CMD [...]` across continued lines).
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with(instruction))
        .unwrap_or_else(|| panic!("no {instruction}"));
    let json = &line[line.find('[').unwrap()..=line.rfind(']').unwrap()];
    serde_json::from_str(json).unwrap()
}

/// A shell command that overlays `dir` with a writable layer kept in
/// `scratch`, inside the test's mount namespace: what the test creates
/// under `dir` never reaches the host.
fn overlay(dir: &str, scratch: &Path) -> String {
    let name = dir.trim_matches('/').replace('/', "-");
    let (up, work) = (
        scratch.join(format!("{name}-up")),
        scratch.join(format!("{name}-work")),
    );
    std::fs::create_dir_all(&up).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    format!(
        "mount -t overlay ntsd-test -o lowerdir={dir},upperdir={},workdir={} {dir};",
        up.display(),
        work.display()
    )
}

/// An LD_PRELOAD library that makes adjtimex(2) report a synchronised
/// clock, standing in for the host's chronyd (this machine's clock is
/// disciplined by nobody, and the test must not touch it).
fn synchronised_kernel(dir: &Path) -> PathBuf {
    let src = dir.join("synced.c");
    std::fs::write(
        &src,
        "#include <sys/timex.h>\n\
         int adjtimex(struct timex *t) { t->status = STA_PLL; t->maxerror = 1000; t->esterror = 100; return TIME_OK; }\n\
         int ntp_adjtime(struct timex *t) { return adjtimex(t); }\n",
    )
    .unwrap();
    let lib = dir.join("libsynced.so");
    let (ok, out) = common::output(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src),
    );
    assert!(ok, "{out}");
    lib
}

#[test]
fn the_container_entrypoint_serves_nts_and_passes_its_health_check() {
    if !require("root (namespaces)", common::is_root())
        || !require("gcc", have("gcc"))
        || !require("chronyd", Path::new("/usr/sbin/chronyd").exists())
    {
        return;
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let entrypoint = exec_form(&dockerfile, "ENTRYPOINT");
    let health = exec_form(&dockerfile, "HEALTHCHECK");
    assert_eq!(entrypoint[0], "ntsd");
    assert_eq!(health[0], "ntsd");
    // The image's filesystem, in directories bound over /etc/ntsd and
    // /var/lib/ntsd inside a mount namespace.
    let pki = common::pki_dir();
    let etc = pki.path().join("etc-ntsd");
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    std::fs::copy(
        root().join("deploy/docker/config.toml"),
        etc.join("config.toml"),
    )
    .unwrap();
    std::fs::copy(pki.path().join("chain.pem"), etc.join("tls/tls.crt")).unwrap();
    std::fs::copy(pki.path().join("key.pem"), etc.join("tls/tls.key")).unwrap();
    let state = pki.path().join("var-lib-ntsd");
    std::fs::create_dir(&state).unwrap();
    let synced = synchronised_kernel(pki.path());
    // /etc and /var/lib are overlaid (upper layers in the test's
    // directory), so the mount points are made there, not on the host.
    let script = format!(
        "ip link set lo up; {} {} mkdir -p /etc/ntsd /var/lib/ntsd; \
         mount --bind \"$1\" /etc/ntsd; mount --bind \"$2\" /var/lib/ntsd; \
         export LD_PRELOAD=\"$3\"; shift 3; exec \"$0\" {}",
        overlay("/etc", pki.path()),
        overlay("/var/lib", pki.path()),
        entrypoint[1..]
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut cmd = common::in_namespaces(&script);
    cmd.arg(BIN).arg(&etc).arg(&state).arg(&synced);
    let s = Ntsd::try_spawn_command(pki.path().to_owned(), cmd)
        .unwrap_or_else(|log| panic!("the entrypoint did not start:\n{log}"));
    let pid = s.pid().to_string();
    let inside = |args: &[&str]| -> (bool, String) {
        common::output(
            Command::new("nsenter")
                .args(["-t", &pid, "-n", "-m", "--"])
                .args(args),
        )
    };
    // NTS-KE on 4460, NTP on 123, as the image exposes them.
    let ca = s.ca();
    let ca = ca.to_str().unwrap();
    let (ok, out) = inside(&[BIN, "query", "localhost", "--ca", ca]);
    assert!(
        ok && out.contains("authenticated"),
        "{out}\n{}",
        s.log_text()
    );
    // chrony over NTS against the same server.
    let (ok, out) = inside(&[
        "/usr/sbin/chronyd",
        "-Q",
        "-f",
        "/dev/null",
        "-u",
        "root",
        "-t",
        "10",
        "server localhost iburst nts maxsamples 1",
        &format!("ntstrustedcerts {ca}"),
    ]);
    assert!(
        ok && out.contains("System clock wrong by"),
        "chronyd: {out}\n{}",
        s.log_text()
    );
    // The image's HEALTHCHECK command, as Docker would run it in the container.
    let health_args: Vec<&str> = std::iter::once(BIN)
        .chain(health[1..].iter().map(String::as_str))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = inside(&health_args);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health check failing: {out}\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        state.join("keys").exists(),
        "no keys in the /var/lib/ntsd volume"
    );
    assert!(s.terminate().success());
}

/// The Kubernetes config as a pod runs it, with the files as a kubelet
/// writes them under `fsGroup: 4460`: the fleet secret and the TLS Secret
/// root-owned, group 4460, mode 0440. In a network and mount namespace
/// with a user `ntsd` (4460) in an overlaid /etc, `check-config` calls it
/// valid, ntsd starts as root, drops to ntsd, and serves NTS.
#[test]
fn the_kubernetes_config_runs_with_the_files_a_kubelet_writes() {
    use std::os::unix::fs::PermissionsExt;
    if !require("root (namespaces, chown)", common::is_root()) || !require("gcc", have("gcc")) {
        return;
    }
    if !require("python3 with PyYAML", python_yaml()) {
        return;
    }
    let pki = common::pki_dir();
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(pki.path(), 0o755);
    let etc = pki.path().join("etc-ntsd");
    for d in ["tls", "fleet"] {
        std::fs::create_dir_all(etc.join(d)).unwrap();
        mode(&etc.join(d), 0o755);
    }
    mode(&etc, 0o755);
    std::fs::write(etc.join("config.toml"), configmap_config()).unwrap();
    let kubelet = |src: &Path, dst: &Path| {
        std::fs::copy(src, dst).unwrap();
        std::os::unix::fs::chown(dst, Some(0), Some(4460)).unwrap();
        mode(dst, 0o440);
    };
    kubelet(&pki.path().join("chain.pem"), &etc.join("tls/tls.crt"));
    kubelet(&pki.path().join("key.pem"), &etc.join("tls/tls.key"));
    let secret = pki.path().join("fleet.secret");
    std::fs::write(&secret, [0x5a_u8; 32]).unwrap();
    kubelet(&secret, &etc.join("fleet/fleet.secret"));
    let synced = synchronised_kernel(pki.path());
    let script = format!(
        "ip link set lo up; {} \
         echo 'ntsd:x:4460:4460:ntsd:/nonexistent:/usr/sbin/nologin' >> /etc/passwd; \
         echo 'ntsd:x:4460:' >> /etc/group; mkdir -p /etc/ntsd; \
         mount --bind \"$1\" /etc/ntsd; export LD_PRELOAD=\"$2\"; \
         \"$0\" check-config --config /etc/ntsd/config.toml >&2; \
         exec \"$0\" run --config /etc/ntsd/config.toml",
        overlay("/etc", pki.path()),
    );
    let mut cmd = common::in_namespaces(&script);
    cmd.arg(BIN).arg(&etc).arg(&synced);
    let s = Ntsd::try_spawn_command(pki.path().to_owned(), cmd)
        .unwrap_or_else(|log| panic!("the Kubernetes config did not start:\n{log}"));
    let log = s.log_text();
    assert!(log.contains("configuration is valid"), "{log}");
    assert!(!log.contains("warning: "), "check-config warned:\n{log}");
    assert!(
        log.contains("privileges dropped") && log.contains("4460"),
        "{log}"
    );
    assert!(!log.contains("not readable"), "{log}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("4460")),
        "{status}"
    );
    let pid = s.pid().to_string();
    let ca = s.ca();
    let (ok, out) = common::output(
        Command::new("nsenter")
            .args(["-t", &pid, "-n", "--", BIN, "query", "localhost", "--ca"])
            .arg(&ca),
    );
    assert!(
        ok && out.contains("authenticated"),
        "{out}\n{}",
        s.log_text()
    );
    assert!(s.terminate().success());
}

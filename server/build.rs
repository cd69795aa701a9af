//! Records the commit ntsd is built from for `ntsd_build_info` and
//! `ntsd --version`: `NTSD_COMMIT` from the environment (a container build
//! without `.git`), else `git rev-parse`, else nothing (`unknown`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NTSD_COMMIT");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = root.join(".git");
    if git.join("HEAD").exists() {
        println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
            if let Some(r) = head.trim().strip_prefix("ref: ") {
                let path = git.join(r);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
    }
    let commit = std::env::var("NTSD_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(&root)
            .output()
            .ok()?;
        let c = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !c.is_empty()).then_some(c)
    });
    if let Some(c) = &commit {
        println!("cargo:rustc-env=NTSD_COMMIT={c}");
    }
    println!(
        "cargo:rustc-env=NTSD_VERSION={} (commit {})",
        env!("CARGO_PKG_VERSION"),
        commit.as_deref().unwrap_or("unknown")
    );
}

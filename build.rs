//! Stamps `--version` with the commit and the build date. From a git clone
//! the commit comes from `git`; from a tarball without .git it is taken from
//! PROXYGUARD_COMMIT, else "unknown". The date honours SOURCE_DATE_EPOCH
//! (reproducible builds), else it is the build time.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PROXYGUARD_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let in_git = std::path::Path::new(".git").exists();
    if in_git {
        // Rebuild the stamp when HEAD moves.
        if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
            println!("cargo:rerun-if-changed={head}");
        }
        if let Some(refs) = git(&["rev-parse", "--git-path", "refs"]) {
            println!("cargo:rerun-if-changed={refs}");
        }
    }
    let commit = std::env::var("PROXYGUARD_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            in_git
                .then(|| git(&["rev-parse", "--short=10", "HEAD"]))
                .flatten()
        })
        .unwrap_or_else(|| "unknown".into());
    let when = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or_else(SystemTime::now);
    let date = humantime::format_rfc3339_seconds(when).to_string();
    let date = date.get(..10).unwrap_or(&date).to_string();
    println!("cargo:rustc-env=PROXYGUARD_COMMIT={commit}");
    println!("cargo:rustc-env=PROXYGUARD_BUILD_DATE={date}");
}

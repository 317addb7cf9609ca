//! Headless Chromium for pages that need their scripts run.

use std::process::Command;
use std::time::Duration;

use super::{run_cmd, temp_dir};

/// The DOM of `url` after its scripts ran (virtual time 4 s), from
/// headless Chromium; panics with the output when Chromium fails.
pub fn chromium_dom(url: &str) -> String {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .expect("chromium is required (scripts/test installs Debian's chromium)");
    let profile = temp_dir("chromium", false);
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=4000",
        "--window-size=1280,860",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg("--dump-dom")
    .arg(url);
    let out = run_cmd(c, Duration::from_secs(60));
    assert!(!out.timed_out && out.code == 0, "chromium failed: {out:?}");
    out.stdout
}

//! The Debian package: `scripts/package` (cargo-deb) on the binary under
//! test, its contents (`dpkg-deb -c`), its conffile, the installed binary's
//! `check` on the installed config in a scratch root (`dpkg -x`), and the
//! systemd unit (`systemd-analyze verify` and its offline security score).
//! Skipped, saying so, where cargo-deb is not installed.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(240);

fn cmd(program: &str, args: &[&str]) -> CmdOut {
    let mut c = Command::new(program);
    c.args(args);
    run_cmd(c, T)
}

fn have(program: &str, probe: &[&str]) -> bool {
    Command::new(program)
        .args(probe)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn deb_package_contents_conffile_check_and_unit() {
    if !have("cargo", &["deb", "--version"]) {
        eprintln!(
            "SKIPPED deb package check: cargo-deb is not installed (cargo install cargo-deb --locked)"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = temp_dir("deb", false);
    // The binary under test, without its debug info (quicker to compress).
    let bin = work.path().join("proxyguard");
    std::fs::copy(proxyguard_bin(), &bin).expect("copy binary");
    let _ = cmd("strip", &["--strip-debug", &bin.display().to_string()]);
    let out_dir = work.path().join("out");
    let mut c = Command::new(root.join("scripts/package"));
    c.args(["--no-build", &bin.display().to_string()])
        .env("OUT", &out_dir)
        .env("FAST", "1");
    let built = run_cmd(c, T);
    assert_eq!(built.code, 0, "scripts/package failed: {built:?}");
    let deb = built.stdout.lines().last().unwrap_or("").trim().to_string();
    assert!(
        deb.ends_with(".deb") && Path::new(&deb).exists(),
        "{built:?}"
    );

    // Contents.
    let list = cmd("dpkg-deb", &["-c", &deb]);
    assert_eq!(list.code, 0, "{list:?}");
    for path in [
        "./usr/bin/proxyguard",
        "./etc/proxyguard/proxyguard.toml",
        "./lib/systemd/system/proxyguard.service",
        "./usr/share/man/man1/proxyguard.1.gz",
        "./usr/share/bash-completion/completions/proxyguard",
        "./usr/share/zsh/vendor-completions/_proxyguard",
        "./usr/share/fish/vendor_completions.d/proxyguard.fish",
        "./usr/share/doc/proxyguard/LICENSE",
    ] {
        assert!(
            list.stdout.lines().any(|l| l.ends_with(path)),
            "{path} missing from\n{}",
            list.stdout
        );
    }
    println!("{}", list.stdout);

    // Control: the config is a conffile.
    let control = work.path().join("control");
    let e = cmd("dpkg-deb", &["-e", &deb, &control.display().to_string()]);
    assert_eq!(e.code, 0, "{e:?}");
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/proxyguard/proxyguard.toml"),
        "conffiles: {conffiles:?}"
    );

    // Install into a scratch root and check the installed config with the
    // installed binary.
    let scratch = work.path().join("root");
    let x = cmd("dpkg", &["-x", &deb, &scratch.display().to_string()]);
    assert_eq!(x.code, 0, "{x:?}");
    let installed = scratch.join("usr/bin/proxyguard");
    let conf = scratch.join("etc/proxyguard/proxyguard.toml");
    let mut check = Command::new(&installed);
    check.args(["check", "--config", &conf.display().to_string()]);
    for v in PROXY_ENV_VARS {
        check.env_remove(v);
    }
    let checked = run_cmd(check, T);
    assert!(
        checked.code == 0 && checked.stdout.starts_with("# configuration OK"),
        "{checked:?}"
    );
    let licence = std::fs::read_to_string(scratch.join("usr/share/doc/proxyguard/LICENSE"))
        .unwrap_or_default();
    assert!(
        licence.contains("Apache License") && licence.contains("END OF TERMS AND CONDITIONS"),
        "not the full Apache-2.0 text"
    );

    // The unit: hardening present, systemd accepts it.
    let unit_path = scratch.join("lib/systemd/system/proxyguard.service");
    let unit = std::fs::read_to_string(&unit_path).expect("unit");
    for line in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "ExecStart=/usr/bin/proxyguard serve --config /etc/proxyguard/proxyguard.toml",
    ] {
        assert!(unit.contains(line), "unit lacks {line:?}:\n{unit}");
    }
    if !have("systemd-analyze", &["--version"]) {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze not installed");
        return;
    }
    // Verify a copy whose ExecStart points at the scratch install (the host
    // has no /usr/bin/proxyguard); systemd prints any unknown or bad key.
    let copy = work.path().join("proxyguard.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/proxyguard", &installed.display().to_string()),
    )
    .expect("write unit copy");
    let v = cmd(
        "systemd-analyze",
        &["verify", "--man=no", &copy.display().to_string()],
    );
    assert!(
        v.code == 0 && v.stderr.trim().is_empty() && v.stdout.trim().is_empty(),
        "systemd-analyze verify: {v:?}"
    );
    let sec = cmd(
        "systemd-analyze",
        &["security", "--offline=yes", &copy.display().to_string()],
    );
    let text = format!("{}{}", sec.stdout, sec.stderr);
    let score: Option<f64> = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for proxyguard.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    println!("systemd-analyze security exposure: {score:?}");
    assert!(
        score.is_some_and(|s| s <= 2.0),
        "exposure too high or unreadable: {text}"
    );
}

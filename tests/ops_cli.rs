//! The command-line habits: help text on every flag of every subcommand,
//! `--version`, completions and man page, `--listen :PORT`, `serve --admin`
//! (busy explicit = error, busy default = warning), errors printed once,
//! `status --admin host:port` with a reverse route, `reload`, `env`,
//! `sign --curl --shell powershell`.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(20);

fn run(args: &[&str]) -> CmdOut {
    proxyguard_run(args, &[], T)
}

fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in help.lines() {
        if l.ends_with(':') && !l.starts_with(' ') {
            inside = l == title;
            continue;
        }
        if inside {
            out.push(l);
        }
    }
    out
}

/// Every option and argument in long help has a description line under it.
fn undocumented(help: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for title in ["Options:", "Arguments:"] {
        let lines = section(help, title);
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let indent = l.len() - t.len();
            let is_item =
                indent == 2 && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['));
            if !is_item {
                continue;
            }
            let next = lines.get(i + 1).map(|n| n.trim()).unwrap_or("");
            if next.is_empty() {
                bad.push(t.to_string());
            }
        }
    }
    bad
}

#[test]
fn every_flag_of_every_subcommand_has_help() {
    let top = run(&["--help"]);
    assert_eq!(top.code, 0, "{top:?}");
    let subs: Vec<String> = section(&top.stdout, "Commands:")
        .iter()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|s| s != "help")
        .collect();
    for want in [
        "serve",
        "doctor",
        "status",
        "reload",
        "env",
        "sign",
        "check",
        "completions",
        "manpage",
    ] {
        assert!(subs.iter().any(|s| s == want), "no {want} in {subs:?}");
    }
    let mut missing = undocumented(&top.stdout);
    for s in &subs {
        let h = run(&[s, "--help"]);
        assert_eq!(h.code, 0, "{s}: {h:?}");
        let items = section(&h.stdout, "Options:")
            .iter()
            .filter(|l| l.starts_with("  -"))
            .count();
        assert!(items >= 1, "{s}: no options parsed from\n{}", h.stdout);
        missing.extend(
            undocumented(&h.stdout)
                .into_iter()
                .map(|m| format!("{s}: {m}")),
        );
    }
    assert!(missing.is_empty(), "flags without help: {missing:#?}");
}

#[test]
fn version_names_commit_and_build_date() {
    let v = run(&["--version"]);
    assert_eq!(v.code, 0);
    let line = v.stdout.trim();
    let re_ok = line.starts_with(&format!(
        "proxyguard {} (commit ",
        env!("CARGO_PKG_VERSION")
    )) && line.contains(", built 20")
        && line.ends_with(')');
    assert!(re_ok, "{line}");
}

#[test]
fn completions_for_four_shells_and_a_man_page() {
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef proxyguard"),
        ("fish", "complete -c proxyguard"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let o = run(&["completions", shell]);
        assert!(o.code == 0 && o.stdout.contains(needle), "{shell}: {o:?}");
    }
    // The bash script is valid bash.
    let dir = temp_dir("compl", false);
    let f = dir.path().join("proxyguard.bash");
    std::fs::write(&f, run(&["completions", "bash"]).stdout).expect("write");
    let mut c = Command::new("bash");
    c.arg("-n").arg(&f);
    let o = run_cmd(c, T);
    assert_eq!(o.code, 0, "{o:?}");
    let man = run(&["manpage"]);
    assert!(
        man.code == 0 && man.stdout.contains(".TH proxyguard 1") && man.stdout.contains("serve"),
        "{man:?}"
    );
    let bad = run(&["completions", "tcsh"]);
    assert_eq!(bad.code, 2, "{bad:?}");
}

#[test]
fn listen_colon_port_is_loopback_and_serves() {
    let nginx = Nginx::start();
    let port = free_port();
    let listen_arg = format!(":{port}");
    let mut pg = Proxyguard::start_with_args(
        &[
            "serve",
            "--listen",
            &listen_arg,
            "--admin",
            "off",
            "--log-format",
            "json",
        ],
        &[],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    pg.wait_listening(addr);
    let r = curl(&[
        "-x",
        &format!("http://{addr}"),
        &format!("{}/small", nginx.url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    assert!(
        !pg.logs().contains("admin API:"),
        "--admin off started it:\n{}",
        pg.logs()
    );
}

#[test]
fn explicit_busy_admin_is_an_error_printed_once() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().unwrap().to_string();
    let listen = free_addr().to_string();
    let out = run(&["serve", "--listen", &listen, "--admin", &addr]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stderr.matches(&addr).count(),
        1,
        "error not printed once: {}",
        out.stderr
    );
    // A bad config: one error line.
    let dir = temp_dir("badcfg", false);
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[listen]]\naddr = \"127.0.0.1:1\"\n[timeouts]\nconnect = \"0s\"\n",
    )
    .unwrap();
    let out = run(&["serve", "-c", &p.display().to_string()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        out.stderr.matches("configuration error").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(":4:"), "no line number: {}", out.stderr);
}

#[test]
fn busy_default_admin_is_a_warning_naming_the_port() {
    // Hold 127.0.0.1:9090 (the default) if free; if something else holds
    // it, it is busy all the same.
    let _hold = TcpListener::bind("127.0.0.1:9090");
    let listen = free_addr();
    let cfg = format!("[[listen]]\naddr = \"{listen}\"\n");
    let pg = Proxyguard::start(&cfg);
    let warned = wait_until(Duration::from_secs(5), || {
        pg.json_logs().iter().any(|l| {
            l["level"] == "WARN" && l["message"].as_str().unwrap_or("").contains("port 9090")
        })
    });
    assert!(warned, "{}", pg.logs());
}

#[test]
fn status_reload_and_env_against_a_gateway_with_a_reverse_route() {
    let nginx = Nginx::start();
    let (listen, admin, route) = (free_addr(), free_addr(), free_addr());
    let cfg = format!(
        "[[listen]]\naddr = \"{listen}\"\n\n[admin]\naddr = \"{admin}\"\ntoken = \"s3cret-token\"\n\n\
         [[route]]\nlisten = \"{route}\"\nlocal_zone = \"zone-a\"\n\n[[route.backend]]\nurl = \"{}\"\nzone = \"zone-a\"\n",
        nginx.url()
    );
    let pg = Proxyguard::start(&cfg);
    assert!(wait_port(admin, T), "{}", pg.logs());
    assert_eq!(curl(&[&format!("http://{route}/small")]).status, 200);
    // host:port without a scheme.
    let out = run(&["status", "--admin", &admin.to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "route {route} · via direct · local zone zone-a · serving"
        )) && out.stdout.contains(&nginx.url())
            && out.stdout.contains("healthy"),
        "{}",
        out.stdout
    );
    println!("{}", out.stdout);
    let json = run(&["status", "--admin", &admin.to_string(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["routes"][0]["listen"], route.to_string(), "{v}");
    assert_eq!(v["routes"][0]["backends"][0]["name"], nginx.url(), "{v}");
    assert!(
        v["routes"][0]["backends"][0]["successes"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{v}"
    );
    // reload: the token from the config; without one, a clear error.
    let path = pg.config_path().expect("config path").display().to_string();
    let ok = run(&["reload", "-c", &path]);
    assert!(ok.code == 0 && ok.stdout.contains("reloaded"), "{ok:?}");
    assert!(!ok.stdout.contains("s3cret") && !ok.stderr.contains("s3cret"));
    let no_token = run(&["reload", "--admin", &admin.to_string()]);
    assert_eq!(no_token.code, 2, "{no_token:?}");
    let wrong = proxyguard_run(
        &["reload", "--admin", &admin.to_string()],
        &[("PROXYGUARD_ADMIN_TOKEN", "wrong")],
        T,
    );
    assert_eq!(wrong.code, 1, "{wrong:?}");
    // env: the lines for each shell point at the listener.
    for (shell, line) in [
        ("sh", format!("export HTTPS_PROXY='http://{listen}'")),
        (
            "powershell",
            format!("$env:HTTPS_PROXY = 'http://{listen}'"),
        ),
        ("cmd", format!("set HTTPS_PROXY=http://{listen}")),
    ] {
        let o = run(&["env", "-c", &path, "--shell", shell]);
        assert!(
            o.code == 0 && o.stdout.lines().any(|l| l == line),
            "{shell}: {o:?}"
        );
    }
    // The sh lines work in a real shell with a real curl.
    let o = run(&["env", "-c", &path]);
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(format!(
        "{}\nunset NO_PROXY no_proxy\ncurl -s -o /dev/null -w '%{{http_code}}' {}/small",
        o.stdout,
        nginx.url()
    ));
    let r = run_cmd(sh, T);
    assert_eq!(r.stdout, "200", "{r:?}");
}

#[test]
fn sign_curl_for_powershell() {
    let out = proxyguard_run(
        &[
            "sign",
            "--scheme",
            "apigw",
            "--key",
            "k",
            "--secret-env",
            "PG_SECRET",
            "--curl",
            "--shell",
            "powershell",
            "https://api.example.test/path?x=1",
        ],
        &[("PG_SECRET", "sec'ret")],
        T,
    );
    assert_eq!(out.code, 0, "{out:?}");
    let s = out.stdout.trim();
    assert!(s.starts_with("curl.exe -X GET "), "{s}");
    assert!(s.contains("-H 'X-Ca-Signature: "), "{s}");
    assert!(
        !s.contains("sec'ret") && !s.contains("sec''ret"),
        "secret printed: {s}"
    );
}

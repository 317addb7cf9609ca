//! Logs as tools read them: every JSON line parses with a parser that
//! rejects duplicate keys, `target` is the request URL, no ANSI codes when
//! standard error is not a terminal unless `--color always`; the warning
//! for proxy variables a config without upstreams ignores.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// Python's json with an object_pairs_hook that fails on a repeated key:
/// prints `ok N` or the offending line.
const STRICT_JSON: &str = r#"
import json, sys
def strict(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise ValueError("duplicate key %r" % k)
        seen.add(k)
    return dict(pairs)
n = 0
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip()
    if not line:
        continue
    try:
        json.loads(line, object_pairs_hook=strict)
    except ValueError as e:
        print("bad line: %s: %s" % (e, line))
        sys.exit(1)
    n += 1
print("ok %d" % n)
"#;

fn gateway_config(listen: std::net::SocketAddr) -> String {
    format!(
        "bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\n\n[admin]\nenabled = false\n"
    )
}

#[test]
fn json_lines_have_unique_keys_and_target_is_the_url() {
    let nginx = Nginx::start();
    let listen = free_addr();
    let pg = Proxyguard::start(&gateway_config(listen));
    let proxy = format!("http://{listen}");
    let url = format!("{}/small", nginx.url());
    assert_eq!(curl(&["-x", &proxy, &url]).status, 200);
    assert_eq!(
        curl(&["-p", "-x", &proxy, &url]).status,
        200,
        "{}",
        pg.logs()
    );
    // Both access lines are written when the requests end.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let l = pg.json_logs();
            l.iter().any(|x| x["kind"] == "http") && l.iter().any(|x| x["kind"] == "connect")
        }),
        "{}",
        pg.logs()
    );
    let dir = temp_dir("logs", false);
    let file = dir.path().join("stderr.jsonl");
    std::fs::write(&file, pg.child.stderr()).expect("write log copy");
    let out = run_cmd(
        {
            let mut c = Command::new("python3");
            c.arg("-c").arg(STRICT_JSON).arg(&file);
            c
        },
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let n: usize = out
        .stdout
        .trim()
        .strip_prefix("ok ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(n >= 3, "only {n} JSON lines:\n{}", pg.logs());
    let logs = pg.json_logs();
    let http = logs
        .iter()
        .find(|l| l["kind"] == "http")
        .expect("http access line");
    assert_eq!(http["target"], url.as_str(), "{http}");
    assert_eq!(http["logger"], "access", "{http}");
    let tunnel = logs
        .iter()
        .find(|l| l["kind"] == "connect")
        .expect("connect access line");
    assert_eq!(tunnel["target"], nginx.addr().to_string(), "{tunnel}");
    for l in &logs {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
}

fn human(color: Option<&str>) -> Proxyguard {
    let listen = free_addr();
    let dir = temp_dir("colour", false);
    let path = dir.path().join("c.toml");
    std::fs::write(&path, gateway_config(listen)).expect("write config");
    let path = path.display().to_string();
    let mut args = vec!["serve", "-c", path.as_str(), "--log-format", "human"];
    if let Some(c) = color {
        args.extend(["--color", c]);
    }
    let mut pg = Proxyguard::start_with_args(&args, &[]);
    pg.wait_listening(listen);
    assert!(
        wait_until(Duration::from_secs(5), || pg
            .child
            .stderr()
            .contains("listening")),
        "{}",
        pg.logs()
    );
    drop(dir);
    pg
}

#[test]
fn no_colour_into_a_pipe_unless_asked() {
    let plain = human(None);
    let forced = human(Some("always"));
    let never = human(Some("never"));
    let (p, f, n) = (
        plain.child.stderr(),
        forced.child.stderr(),
        never.child.stderr(),
    );
    assert!(!p.contains('\x1b'), "colour in a pipe: {p:?}");
    assert!(!n.contains('\x1b'), "colour with never: {n:?}");
    assert!(f.contains('\x1b'), "--color always wrote no colour: {f:?}");
}

#[test]
fn config_without_upstreams_warns_about_proxy_variables_it_ignores() {
    let listen = free_addr();
    let pg = Proxyguard::start_with(
        &gateway_config(listen),
        &[],
        &[("HTTPS_PROXY", "http://127.0.0.1:9"), ("NO_PROXY", "")],
    );
    let warn = pg
        .json_logs()
        .into_iter()
        .find(|l| l["level"] == "WARN" && l["variables"].is_string())
        .unwrap_or_else(|| panic!("no warning in\n{}", pg.logs()));
    assert_eq!(warn["variables"], "HTTPS_PROXY", "{warn}");
    assert!(
        warn["message"]
            .as_str()
            .unwrap_or("")
            .contains("upstreams_from_env"),
        "{warn}"
    );
}

#[test]
fn upstreams_from_env_sends_traffic_through_the_environment_proxy() {
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let listen = free_addr();
    let cfg = format!(
        "bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\n\n[admin]\nenabled = false\n\n[pool]\nupstreams_from_env = true\n"
    );
    let pg = Proxyguard::start_with(&cfg, &[], &[("HTTPS_PROXY", &tiny.url())]);
    let r = curl(&[
        "-p",
        "-x",
        &format!("http://{listen}"),
        &format!("{}/small", nginx.url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    // A tunnel's access line is written when the tunnel ends, just after
    // curl closes it: wait for it.
    let find = || pg.json_logs().into_iter().find(|l| l["kind"] == "connect");
    assert!(
        wait_until(Duration::from_secs(10), || find().is_some()),
        "no access line\n{}",
        pg.logs()
    );
    let line = find().unwrap_or_default();
    assert_eq!(line["upstream"], "HTTPS_PROXY", "{line}");
    assert!(
        !pg.logs().contains("upstreams_from_env = true` to use them"),
        "{}",
        pg.logs()
    );
}

/// A client that gives up while its request waits (here on an upstream
/// that accepts and never answers) still gets an access line: status 499,
/// `outcome="client_closed"`, so an abandoned request is never invisible.
#[test]
fn a_request_the_client_abandons_still_gets_an_access_line() {
    // Accepted by the kernel, never read: a half-dead upstream.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free_addr();
    let cfg = format!(
        "{}\n[[upstream]]\nname = \"hung\"\nurl = \"http://{}\"\n\n[health]\nenabled = false\n\n\
         [timeouts]\nresponse_head = \"60s\"\n",
        gateway_config(listen),
        silent.local_addr().unwrap()
    );
    let pg = Proxyguard::start(&cfg);
    let url = "http://127.0.0.1:9/abandoned?x=1";
    let r = curl(&["--max-time", "1", "-x", &format!("http://{listen}"), url]);
    assert_ne!(r.status, 200, "the upstream never answers: {r:?}");
    let line = |pg: &Proxyguard| {
        pg.json_logs()
            .into_iter()
            .find(|l| l["logger"] == "access" && l["target"] == url)
    };
    assert!(
        wait_until(Duration::from_secs(10), || line(&pg).is_some()),
        "no access line for the abandoned request:\n{}",
        pg.logs()
    );
    let l = line(&pg).unwrap();
    assert_eq!(
        (&l["outcome"], &l["status"], &l["method"]),
        (&"client_closed".into(), &499.into(), &"GET".into()),
        "{l}"
    );
    assert!(l["duration_ms"].is_u64(), "{l}");
    drop(silent);
}

//! Secrets never reach any output: distinct secrets planted in every config
//! field and environment variable that can hold one, every output grepped.

mod support;

use std::time::Duration;

use support::rawclient::*;
use support::*;

/// Every config field and environment variable that can hold a secret gets
/// a distinct one; no output of check, serve (trace logs, human and JSON),
/// /status, the page, /metrics, the alert payload, `status` or doctor may
/// contain any of them.
#[test]
fn planted_secrets_never_reach_any_output() {
    let echo = EchoServer::start();
    let sink = HttpSink::start();
    let dead = free_port();
    let listen = free_addr();
    let admin = free_addr();
    let route = free_addr();
    let e = echo.port();
    let s = sink.addr.port();
    let cfg = format!(
        "bypass_loopback = false\n\
         [[listen]]\naddr = \"{listen}\"\n\n\
         [[upstream]]\nname = \"withpass\"\nurl = \"http://upuser:PLANTa1upstreampass@127.0.0.1:{dead}\"\n\n\
         [[upstream]]\nname = \"loneuser\"\nurl = \"http://PLANTa2lonetoken@127.0.0.1:{dead}\"\n\n\
         [[upstream]]\nname = \"socks\"\nurl = \"socks5://suser:PLANTa3sockspass@127.0.0.1:{dead}\"\n\n\
         [auth]\nusers = [\"alice:PLANTa4userpass\"]\n\n\
         [admin]\naddr = \"{admin}\"\ntoken_env = \"PG_TEST_ADMIN_TOKEN\"\n\n\
         [health]\ninterval = \"200ms\"\ntimeout = \"1s\"\nurl = \"http://huser:PLANTa5healthpass@127.0.0.1:{e}/h\"\n\n\
         [[alert]]\non = [\"upstream_down\"]\nwebhook = \"http://wuser:PLANTa6hookpass@127.0.0.1:{s}/hook/PLANTa7hookpath?key=PLANTa8hookquery\"\ncooldown = \"1s\"\n\n\
         [[route]]\nlisten = \"{route}\"\n\
         [[route.backend]]\nurl = \"http://buser:PLANTa9backendpass@127.0.0.1:{e}\"\n\
         [route.sign]\nscheme = \"apigw\"\nkey = \"203753830\"\nsecret_env = \"PG_TEST_SIGN_SECRET\"\n"
    );
    let env = [
        ("PG_TEST_ADMIN_TOKEN", "PLANTb1admintoken-0123456789"),
        ("PG_TEST_SIGN_SECRET", "PLANTb2signsecret"),
        ("RUST_LOG", "trace"),
    ];
    let dir = temp_dir("secrets", false);
    let path = dir.path().join("pg.toml");
    std::fs::write(&path, &cfg).unwrap();
    let mut outputs: Vec<(String, String)> = Vec::new();
    let out = proxyguard_run(
        &["check", "--config", path.to_str().unwrap()],
        &env,
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("http://127.0.0.1:{s}/***")),
        "{}",
        out.stdout
    );
    outputs.push(("check".into(), format!("{}{}", out.stdout, out.stderr)));

    for format in ["json", "human"] {
        let mut pg = Proxyguard::start_with_args(
            &[
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--log-format",
                format,
            ],
            &env,
        );
        pg.wait_listening(listen);
        let proxy = format!("http://alice:PLANTa4userpass@{listen}");
        // Traffic: a good request, a wrong password, userinfo in the URL.
        curl(&["-x", &proxy, &format!("{}/x", echo.url())]);
        curl(&[
            "-x",
            &format!("http://alice:PLANTc1wrongpass@{listen}"),
            &format!("{}/x", echo.url()),
        ]);
        for url in [
            format!("http://urluser:PLANTc3urlpass@127.0.0.1:{e}/u"),
            format!("http://PLANTc4urltoken@127.0.0.1:{e}/u"),
        ] {
            let (_s, _h) = raw(
                listen,
                "127.0.0.1",
                &format!("GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{e}\r\n\r\n"),
            );
        }
        curl(&[&format!("http://{route}/r")]);
        assert!(
            wait_until(Duration::from_secs(15), || !sink.bodies().is_empty()),
            "no alert arrived\n{}",
            pg.logs()
        );
        for path in ["/status", "/", "/metrics", "/healthz"] {
            let r = curl(&[&format!("http://{admin}{path}")]);
            outputs.push((format!("{format} GET {path}"), r.body + &r.headers));
        }
        let st = proxyguard_run(
            &["status", "--admin", &format!("http://{admin}")],
            &env,
            Duration::from_secs(20),
        );
        outputs.push(("status cli".into(), st.stdout + &st.stderr));
        outputs.push((format!("serve --log-format {format}"), pg.logs()));
    }
    outputs.push(("alert payloads".into(), sink.bodies().join("\n")));
    for json in [false, true] {
        let mut args = vec![
            "doctor",
            "--timeout",
            "2s",
            "--proxy",
            "http://duser:PLANTd1doctorpass@127.0.0.1:1",
        ];
        if json {
            args.push("--json");
        }
        let url = format!("{}/d", echo.url());
        args.push(&url);
        let d = proxyguard_run(&args, &[("RUST_LOG", "trace")], Duration::from_secs(30));
        outputs.push((format!("doctor json={json}"), d.stdout + &d.stderr));
        let d = proxyguard_run(
            &["doctor", "--timeout", "2s", "--json", &url],
            &[
                ("HTTP_PROXY", "http://PLANTd2envtoken@127.0.0.1:1"),
                ("HTTPS_PROXY", "http://euser:PLANTd3envpass@127.0.0.1:1"),
                ("RUST_LOG", "trace"),
            ],
            Duration::from_secs(30),
        );
        outputs.push((format!("doctor env json={json}"), d.stdout + &d.stderr));
    }
    let mut leaks = Vec::new();
    for (name, text) in &outputs {
        assert!(!text.is_empty(), "{name} produced no output");
        for (i, _) in text.match_indices("PLANT") {
            let end = (i + 24).min(text.len());
            leaks.push(format!(
                "{name}: {}",
                &text[i..text.floor_char_boundary(end)]
            ));
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

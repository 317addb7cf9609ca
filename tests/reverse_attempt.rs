//! Reverse routes on the shared attempt engine (`pool::attempt`): a local
//! backend that accepts TCP and then never finishes the TLS handshake (a
//! hung process, a full accept queue behind an SLB) is raced after
//! `race_after` by the next backend in zone order, blamed as a timeout and
//! ejected — the client is answered at once instead of waiting for the
//! route's `timeout`.

mod support;

use support::faults::{Fault, FaultRelay};
use support::*;

fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    let r = curl(&["-s", "-m", "10", &format!("http://{admin}/status")]);
    serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_silent_local_backend_is_raced_and_ejected_not_waited_for() {
    let ca = TestCa::new();
    let good = EchoServer::tls(&ca);
    // Accepts and never answers: the TLS handshake to it hangs.
    let silent = FaultRelay::start(good.addr(), Fault::Silent);
    let (listen, admin) = (free_addr(), free_addr());
    // Without racing, the request would wait for the 60 s TLS timeout and
    // curl (capped at 20 s) would give up: the cap is a hang guard, the
    // assertion is on what the client got.
    let cfg = format!(
        "[[listen]]\naddr = \"{fwd}\"\n\n[admin]\naddr = \"{admin}\"\n\n[health]\nenabled = false\n\n\
         [pool]\nrace_after = \"100ms\"\nbase_ejection = \"120s\"\n\n[timeouts]\ntls = \"60s\"\n\n\
         [[route]]\nlisten = \"{listen}\"\nlocal_zone = \"zone-a\"\ntimeout = \"60s\"\nsni = \"localhost\"\nca_file = \"{ca}\"\n\n\
         [[route.backend]]\nurl = \"https://{silent}\"\nzone = \"zone-a\"\nmax_fails = 1\n\n\
         [[route.backend]]\nurl = \"https://{good}\"\nzone = \"zone-b\"\nmax_fails = 1\n",
        fwd = free_addr(),
        ca = ca.ca_path().display(),
        silent = silent.addr,
        good = good.addr(),
    );
    let mut pg = Proxyguard::start(&cfg);
    pg.wait_listening(listen);
    let url = format!("http://{listen}/raced");
    let r = curl(&["-s", "-m", "20", &url]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    assert!(r.body.starts_with("GET /raced"), "{}", r.body);
    assert_eq!(silent.accepted(), 1, "the local backend was tried first");
    assert_eq!(good.requests(), 1);
    // The silent loser was blamed (a timeout) and ejected (max_fails 1).
    let st = status(admin);
    let silent_status = &st["routes"][0]["backends"][0];
    assert_eq!(silent_status["state"], "ejected", "{st}");
    assert_eq!(silent_status["ejection_reason"], "timeout", "{st}");
    assert_eq!(st["routes"][0]["backends"][1]["state"], "healthy", "{st}");
    // Ejected: the next requests go to the other zone without trying it.
    for i in 0..5 {
        let r = curl(&["-s", "-m", "20", &format!("{url}/{i}")]);
        assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    }
    assert_eq!(silent.accepted(), 1, "an ejected backend was dialled");
    assert_eq!(good.requests(), 6);
}

/// A chunked PUT (unknown length) of 512 bytes through a local backend that
/// resets, closes or never answers: the body was held in full (under
/// `retry_body_limit`), so the other backend gets the whole request. One
/// above the limit streams, is sent once and never replayed.
#[test]
fn a_small_chunked_body_is_held_and_retried_a_large_one_never() {
    let body = "p".repeat(512);
    for (name, fault) in [
        ("reset", Fault::Reset),
        ("accept+close", Fault::AcceptClose),
        ("half-dead", Fault::Silent),
    ] {
        let (bad, good) = (EchoServer::start(), EchoServer::start());
        let relay = FaultRelay::start(bad.addr(), fault);
        let listen = free_addr();
        // The faulty backend is first for every request (local zone, never
        // ejected); `timeout` bounds the wait for the half-dead one.
        let cfg = format!(
            "[[listen]]\naddr = \"{fwd}\"\n\n[health]\nenabled = false\n\n\
             [[route]]\nlisten = \"{listen}\"\nlocal_zone = \"zone-a\"\ntimeout = \"2s\"\nretry_body_limit = 1024\n\n\
             [[route.backend]]\nurl = \"http://{relay}\"\nzone = \"zone-a\"\nmax_fails = 100\n\n\
             [[route.backend]]\nurl = \"http://{good}\"\nzone = \"zone-b\"\nmax_fails = 100\n",
            fwd = free_addr(),
            relay = relay.addr,
            good = good.addr(),
        );
        let mut pg = Proxyguard::start(&cfg);
        pg.wait_listening(listen);
        let put = |path: &str, data: &str| {
            curl(&[
                "-s",
                "-m",
                "20",
                "-X",
                "PUT",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                data,
                &format!("http://{listen}{path}"),
            ])
        };
        for i in 0..2 {
            let r = put(&format!("/small-{i}"), &body);
            assert_eq!(r.status, 200, "{name}: {r:?}\n{}", pg.logs());
            let seen = good.last_request().unwrap_or_default();
            assert!(
                seen.starts_with(&format!("PUT /small-{i} ")) && seen.contains("body-length: 512"),
                "{name}: the other backend did not get the whole body: {seen}"
            );
            assert_eq!(good.requests(), i + 1, "{name}");
            assert_eq!(
                relay.accepted(),
                i + 1,
                "{name}: the faulty backend is tried first"
            );
        }
        assert_eq!(bad.requests(), 0, "{name}");
        // Above the limit: streamed once into the faulty backend, never
        // replayed (empty or partial) on the other one.
        let r = put("/large", &"q".repeat(4096));
        assert!(
            matches!(r.status, 502 | 504),
            "{name}: a streamed body was answered {}: {r:?}",
            r.status
        );
        assert_eq!(good.requests(), 2, "{name}: a streamed PUT was replayed");
        println!("MATRIX|reverse chunked PUT 512 B|{name}|2|0|-|retried with its body");
    }
}

/// A plain-HTTP backend that accepts and never answers (a hung process):
/// TCP connects, so racing cannot help, and the route's `timeout` (60 s) is
/// far past the client's patience. A GET still unanswered after
/// `hedge_after` goes to the next backend too, and the client gets its
/// answer from there; a POST is never hedged.
#[test]
fn a_get_to_a_backend_that_never_answers_is_hedged_on_the_next() {
    let good = EchoServer::start();
    let silent = FaultRelay::start(good.addr(), Fault::Silent);
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = format!(
        "[[listen]]\naddr = \"{fwd}\"\n\n[admin]\naddr = \"{admin}\"\n\n[health]\nenabled = false\n\n\
         [pool]\nhedge_after = \"200ms\"\n\n\
         [[route]]\nlisten = \"{listen}\"\nlocal_zone = \"zone-a\"\ntimeout = \"60s\"\n\n\
         [[route.backend]]\nurl = \"http://{silent}\"\nzone = \"zone-a\"\n\n\
         [[route.backend]]\nurl = \"http://{good}\"\nzone = \"zone-b\"\n",
        fwd = free_addr(),
        silent = silent.addr,
        good = good.addr(),
    );
    let mut pg = Proxyguard::start(&cfg);
    pg.wait_listening(listen);
    for i in 0..3 {
        // The cap is a hang guard: unhedged, each GET waits 60 s.
        let r = curl(&["-s", "-m", "20", &format!("http://{listen}/hedged/{i}")]);
        assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
        assert!(
            r.body.starts_with(&format!("GET /hedged/{i}")),
            "{}",
            r.body
        );
    }
    assert!(silent.accepted() >= 1, "the local backend was never tried");
    let metrics = curl(&["-s", &format!("http://{admin}/metrics")]).body;
    let won = metrics
        .lines()
        .find_map(|l| l.strip_prefix("proxyguard_hedges_won_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(won, Some(3.0), "{metrics}");
    // A POST is not hedged: it waits on the silent backend (curl gives up
    // first), and the good backend never sees it.
    let before = good.requests();
    let r = curl(&[
        "-s",
        "-m",
        "2",
        "-d",
        "x=1",
        &format!("http://{listen}/post"),
    ]);
    assert_ne!(r.status, 200, "{r:?}");
    assert_eq!(good.requests(), before, "a POST was sent twice");
}

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

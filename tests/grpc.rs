//! gRPC through a reverse route, with real `grpcio` servers (Python) as
//! backends in two zones and a real `grpcio` client: unary and
//! server-streaming calls, a kill of the local zone between calls, a
//! backend answering UNAVAILABLE, a stream that already answered (never
//! replayed), deadlines, and health over `grpc.health.v1`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::grpc::*;
use support::*;

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    backends: &[(&GrpcBackend, &str)],
    extra_route: &str,
    backend_extra: &str,
) -> String {
    let mut s = format!(
        "[[listen]]\naddr = \"{}\"\n\n[admin]\naddr = \"{admin}\"\n\n[health]\ninterval = \"300ms\"\ntimeout = \"2s\"\n\n[[route]]\nlisten = \"{listen}\"\nlocal_zone = \"zone-a\"\n{extra_route}\n",
        free_addr()
    );
    for (b, zone) in backends {
        s.push_str(&format!(
            "[[route.backend]]\nurl = \"{}\"\nzone = \"{zone}\"\nmax_fails = 1\nfail_timeout = \"30s\"\n{backend_extra}\n\n",
            b.url()
        ));
    }
    s
}

fn status(admin: SocketAddr) -> serde_json::Value {
    let r = curl(&["-s", &format!("http://{admin}/status")]);
    serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null)
}

fn backend_state(admin: SocketAddr, port: u16) -> Option<(String, String)> {
    let st = status(admin);
    let backends = st["routes"][0]["backends"].as_array()?.clone();
    backends.iter().find_map(|b| {
        let name = b["name"].as_str()?;
        name.ends_with(&format!(":{port}")).then(|| {
            (
                b["state"].as_str().unwrap_or("").to_string(),
                b["protocol"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

#[test]
fn unary_and_streaming_calls_survive_a_kill_of_the_local_zone() {
    let mut a = GrpcBackend::start("a");
    let b = GrpcBackend::start("b");
    let (listen, admin) = (free_addr(), free_addr());
    let pg = Proxyguard::start(&config(
        listen,
        admin,
        &[(&a, "zone-a"), (&b, "zone-b")],
        "grpc = true",
        "",
    ));
    let target = listen.to_string();
    let before = grpc_client(&target, Some(10.0), &["Unary*10", "Stream*3"]);
    assert_eq!(
        (before.ok, before.failed),
        (13, 0),
        "{before:?}\n{}",
        pg.logs()
    );
    assert_eq!(
        before.lines("OK Unary a:ping").len(),
        10,
        "local zone serves: {before:?}"
    );
    assert_eq!(
        before.lines("OK Stream a:0,a:1,a:2").len(),
        3,
        "all stream messages: {before:?}"
    );
    assert_eq!(
        b.calls("Unary") + b.calls("Stream"),
        0,
        "remote zone idle while local is up"
    );

    a.child.kill9();
    let after = grpc_client(&target, Some(10.0), &["Unary*10", "Stream*3"]);
    assert_eq!(
        (after.ok, after.failed),
        (13, 0),
        "0 failed calls after the kill: {after:?}\n{}",
        pg.logs()
    );
    assert_eq!(after.lines("OK Unary b:ping").len(), 10, "{after:?}");
    assert_eq!(after.lines("OK Stream b:0,b:1,b:2").len(), 3, "{after:?}");

    // Nothing left: the gateway's own answer is a gRPC status, not HTML.
    drop(b);
    let none = grpc_client(&target, Some(10.0), &["Unary"]);
    let fail = none.lines("FAIL Unary");
    assert_eq!(fail.len(), 1, "{none:?}");
    assert!(
        fail[0].starts_with("FAIL Unary UNAVAILABLE") && fail[0].contains("proxyguard"),
        "{none:?}"
    );
}

#[test]
fn unavailable_backend_is_skipped_and_an_answered_stream_is_not_replayed() {
    let a = GrpcBackend::start("a");
    let b = GrpcBackend::start("b");
    a.set_mode("unavailable");
    let (listen, admin) = (free_addr(), free_addr());
    // Detected by content-type (no `grpc = true`).
    let pg = Proxyguard::start(&config(
        listen,
        admin,
        &[(&a, "zone-a"), (&b, "zone-b")],
        "",
        "",
    ));
    let target = listen.to_string();
    let r = grpc_client(&target, Some(10.0), &["Unary*10"]);
    assert_eq!((r.ok, r.failed), (10, 0), "{r:?}\n{}", pg.logs());
    assert_eq!(r.lines("OK Unary b:ping").len(), 10, "{r:?}");
    assert!(
        a.calls("Unary") >= 1,
        "the draining backend was asked first"
    );

    // b sends one message then UNAVAILABLE: the client sees exactly that,
    // and the call is not run again anywhere.
    let s = grpc_client(&target, Some(10.0), &["StreamThenFail"]);
    assert_eq!(s.failed, 1, "{s:?}");
    assert_eq!(
        s.lines("MSGS StreamThenFail b:first"),
        vec!["MSGS StreamThenFail b:first".to_string()],
        "{s:?}"
    );
    assert!(
        s.lines("FAIL StreamThenFail UNAVAILABLE")[0].contains("gone after one message"),
        "{s:?}"
    );
    assert_eq!(
        b.calls("StreamThenFail"),
        1,
        "an answered stream is never replayed\n{}",
        b.child.log()
    );
}

#[test]
fn route_deadline_is_the_shorter_of_timeout_and_grpc_timeout() {
    let a = GrpcBackend::start("a");
    let (listen, admin) = (free_addr(), free_addr());
    let pg = Proxyguard::start(&config(
        listen,
        admin,
        &[(&a, "zone-a")],
        "grpc = true\ntimeout = \"400ms\"",
        "",
    ));
    let target = listen.to_string();
    // No client deadline: the route's 400 ms applies.
    let t0 = Instant::now();
    let r = grpc_client(&target, None, &["Slow"]);
    let took = t0.elapsed();
    let fail = r.lines("FAIL Slow");
    assert!(
        !fail.is_empty() && fail[0].starts_with("FAIL Slow DEADLINE_EXCEEDED"),
        "{r:?}\n{}",
        pg.logs()
    );
    // Slow runs 10 s unless cancelled: a hang guard, not a speed check.
    assert!(
        took < Duration::from_secs(9),
        "the deadline did not end the call: {took:?}"
    );
    // The client's shorter deadline reaches the backend (grpc-timeout).
    let r = grpc_client(&target, Some(0.25), &["Slow"]);
    assert_eq!(r.failed, 1, "{r:?}");
    let seen = a.remaining("Slow");
    assert_eq!(seen.len(), 2, "{}", a.child.log());
    let route_deadline = seen[0].expect("the backend got a grpc-timeout from the route");
    assert!(
        route_deadline <= 0.401,
        "route deadline passed on: {seen:?}"
    );
    let client_deadline = seen[1].expect("grpc-timeout passed on");
    assert!(
        client_deadline <= 0.251,
        "the client's shorter deadline wins: {seen:?}"
    );
}

#[test]
fn grpc_health_check_takes_a_not_serving_backend_out() {
    let a = GrpcBackend::start("a");
    let b = GrpcBackend::start("b");
    let (listen, admin) = (free_addr(), free_addr());
    let pg = Proxyguard::start(&config(
        listen,
        admin,
        &[(&a, "zone-a"), (&b, "zone-b")],
        "grpc = true",
        "check = \"grpc\"",
    ));
    assert!(
        wait_until(Duration::from_secs(20), || a.calls("Health") >= 2
            && b.calls("Health") >= 2),
        "health checks over grpc.health.v1 did not run\n{}\n{}",
        a.child.log(),
        pg.logs()
    );
    assert_eq!(
        backend_state(admin, a.port).map(|s| s.1),
        Some("h2c".to_string())
    );
    a.set_health("NOT_SERVING");
    assert!(
        wait_until(Duration::from_secs(20), || backend_state(admin, a.port)
            .is_some_and(|(state, _)| state != "healthy")),
        "a NOT_SERVING backend stays in: {:?}\n{}",
        status(admin),
        pg.logs()
    );
    let before = a.calls("Unary");
    let r = grpc_client(&listen.to_string(), Some(10.0), &["Unary*10"]);
    assert_eq!((r.ok, r.failed), (10, 0), "{r:?}");
    assert_eq!(r.lines("OK Unary b:ping").len(), 10, "{r:?}");
    assert_eq!(
        a.calls("Unary"),
        before,
        "the NOT_SERVING backend got calls"
    );
    a.set_health("SERVING");
    assert!(
        wait_until(Duration::from_secs(20), || backend_state(admin, a.port)
            .is_some_and(|(state, _)| state == "healthy")),
        "back to SERVING, back in: {:?}",
        status(admin)
    );
}

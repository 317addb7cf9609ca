//! OTLP span export (cargo feature `otlp`): spans reach a real local
//! OTLP/HTTP receiver. Run with `cargo test --features otlp --test otlp`.
#![cfg(feature = "otlp")]

mod support;

use std::time::Duration;

use support::*;

#[test]
fn spans_are_exported_over_otlp_http() {
    let sink = HttpSink::start();
    let echo = EchoServer::start();
    let listen = free_addr();
    let cfg = format!("[[listen]]\naddr = \"{listen}\"\n[admin]\nenabled = false\n");
    let endpoint = format!("http://{}", sink.addr);
    let pg = Proxyguard::start_with(
        &cfg,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let r = curl(&[
        "-x",
        &format!("http://{listen}"),
        &format!("{}/traced", echo.url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        wait_until(Duration::from_secs(10), || sink
            .bodies()
            .iter()
            .any(|b| b.contains("proxyguard") && b.contains("conn"))),
        "no OTLP span export received\n{}",
        pg.logs()
    );
    assert!(pg.logs().contains("exporting spans over OTLP/HTTP"));
}

//! The generic relay's watch: first answer, cut and stall inside a
//! followed message, on duplex stubs with paused time.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Relays a duplex pair under a 3 s first-answer limit; `answer`: the
/// stub upstream's reply to the client's first bytes (None: silence).
async fn run(client_sends: bool, answer: Option<&'static [u8]>) -> RelayStats {
    let (client, mut client_far) = tokio::io::duplex(1024);
    let (upstream, mut upstream_far) = tokio::io::duplex(1024);
    let stub = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        if client_sends {
            client_far.write_all(b"hello").await.unwrap();
        }
        let n = upstream_far.read(&mut buf).await.unwrap_or(0);
        if let (Some(a), true) = (answer, n > 0) {
            upstream_far.write_all(a).await.unwrap();
        }
        // Keep both far ends open until the relay ends.
        let _ = client_far.read(&mut buf).await;
        let _ = upstream_far.read(&mut buf).await;
    });
    let watch = Watch {
        first_answer: Some(Duration::from_secs(3)),
        ..Watch::idle(Duration::from_secs(60))
    };
    let stats = relay(client, upstream, watch, std::future::pending::<()>()).await;
    stub.abort();
    stats
}

#[tokio::test(start_paused = true)]
async fn silent_upstream_after_client_bytes_ends_with_no_answer() {
    let t0 = Instant::now();
    let stats = run(true, None).await;
    assert_eq!(stats.end, RelayEnd::NoAnswer);
    assert_eq!((stats.up, stats.down), (5, 0));
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn an_answer_or_a_quiet_client_is_never_cut_early() {
    // The upstream answered: only the idle timeout ends it.
    let stats = run(true, Some(b"world")).await;
    assert_eq!(stats.end, RelayEnd::Idle);
    assert_eq!((stats.up, stats.down), (5, 5));
    // The client sent nothing (server-speaks-first, or just idle).
    let stats = run(false, None).await;
    assert_eq!(stats.end, RelayEnd::Idle);
}

/// A TLS handshake record header announcing `len` bytes.
fn record(len: u16) -> Vec<u8> {
    let mut r = vec![22, 3, 3];
    r.extend_from_slice(&len.to_be_bytes());
    r
}

fn followed() -> Watch {
    Watch {
        first_answer: Some(Duration::from_secs(3)),
        body_idle: Some(Duration::from_secs(5)),
        ..Watch::idle(Duration::from_secs(60))
    }
}

/// The client sends a ClientHello-sized hello and keeps reading; the
/// far side sends `far` and then closes (`close`) or goes silent.
async fn exchange(far: Vec<u8>, close: bool, client_reads: bool) -> RelayStats {
    let (client, mut client_far) = tokio::io::duplex(1024);
    let (upstream, mut upstream_far) = tokio::io::duplex(64 * 1024);
    let stub = tokio::spawn(async move {
        let mut hello = record(5);
        hello.extend_from_slice(b"hello");
        client_far.write_all(&hello).await.unwrap();
        let mut buf = [0u8; 64];
        let _ = upstream_far.read(&mut buf).await;
        upstream_far.write_all(&far).await.unwrap();
        if close {
            drop(upstream_far);
            let mut sink = Vec::new();
            let _ = client_far.read_to_end(&mut sink).await;
            let _ = client_far.shutdown().await;
        } else {
            let reader = async {
                let mut sink = vec![0u8; 4096];
                while client_reads && client_far.read(&mut sink).await.unwrap_or(0) > 0 {}
                std::future::pending::<()>().await
            };
            let _ = tokio::join!(reader, upstream_far.read(&mut buf));
        }
    });
    let stats = relay(client, upstream, followed(), std::future::pending::<()>()).await;
    stub.abort();
    stats
}

#[tokio::test(start_paused = true)]
async fn a_close_inside_a_record_is_a_cut_and_between_records_is_not() {
    let mut far = record(100);
    far.extend_from_slice(&[0u8; 60]);
    let stats = exchange(far.clone(), true, true).await;
    assert_eq!(stats.end, RelayEnd::Cut);
    assert_eq!(stats.down, 65);
    far.extend_from_slice(&[0u8; 40]);
    let stats = exchange(far, true, true).await;
    assert_eq!(stats.end, RelayEnd::Closed);
    assert_eq!(stats.down, 105);
}

#[tokio::test(start_paused = true)]
async fn silence_inside_a_record_is_a_stall_after_body_idle() {
    let t0 = Instant::now();
    let mut far = record(100);
    far.extend_from_slice(&[0u8; 60]);
    let stats = exchange(far, false, true).await;
    assert_eq!(stats.end, RelayEnd::Stalled);
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    // Silence between records is a slow origin's right: only idle ends it.
    let mut far = record(10);
    far.extend_from_slice(&[0u8; 10]);
    let stats = exchange(far, false, true).await;
    assert_eq!(stats.end, RelayEnd::Idle);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_no_stall_of_the_far_side() {
    // 16 KB inside one record, into a client that reads nothing: the
    // relay waits on the client, not on the far side.
    let mut far = record(16_000);
    far.extend_from_slice(&[0u8; 12_000]);
    let stats = exchange(far, false, false).await;
    assert_eq!(stats.end, RelayEnd::Idle);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_followed_without_body_idle() {
    let (client, mut client_far) = tokio::io::duplex(1024);
    let (upstream, mut upstream_far) = tokio::io::duplex(1024);
    let stub = tokio::spawn(async move {
        client_far.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        let _ = upstream_far.read(&mut buf).await;
        let mut far = record(100);
        far.extend_from_slice(&[0u8; 10]);
        upstream_far.write_all(&far).await.unwrap();
        drop(upstream_far);
        let _ = client_far.read_to_end(&mut Vec::new()).await;
    });
    let watch = Watch::idle(Duration::from_secs(60));
    let stats = relay(client, upstream, watch, std::future::pending::<()>()).await;
    stub.abort();
    assert_eq!(stats.end, RelayEnd::Closed);
}

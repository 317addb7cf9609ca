//! TLS framing: hand-built record sequences, and the real records of an
//! in-memory rustls handshake and transfer (TLS 1.2 and 1.3).

use std::io::Write;
use std::sync::Arc;

use super::{Framing, Position};

use Position::{Between, Inside, Unknown};

/// A record of `kind` carrying `len` bytes, with TLS 1.2's record version.
pub(super) fn record(kind: u8, len: u16) -> Vec<u8> {
    let mut r = vec![kind, 3, 3];
    r.extend_from_slice(&len.to_be_bytes());
    r.extend((0..len).map(|i| (i % 251) as u8));
    r
}

/// A server's flight as TLS 1.3 sends it: ServerHello, change_cipher_spec,
/// encrypted handshake, a full application-data record, a short one, an
/// alert (close_notify).
pub(super) fn server_records() -> Vec<Vec<u8>> {
    vec![
        record(22, 122),
        record(20, 1),
        record(23, 2900),
        record(23, 16384 + 17),
        record(23, 35),
        record(21, 19),
    ]
}

#[test]
fn whole_records_are_between_and_parts_are_inside() {
    let mut f = Framing::new();
    f.client(&record(22, 512)); // a ClientHello
    assert_eq!(f.position(), Between);
    for (i, r) in server_records().iter().enumerate() {
        f.far(&r[..2]);
        assert_eq!(f.position(), Inside, "mid-header of record {i}");
        f.far(&r[2..5]);
        assert_eq!(f.position(), Inside, "header only of record {i}");
        f.far(&r[5..r.len() - 1]);
        assert_eq!(f.position(), Inside, "one byte short in record {i}");
        f.far(&r[r.len() - 1..]);
        assert_eq!(f.position(), Between, "after record {i}");
        assert_eq!(f.messages(), i as u64 + 1);
        // The client's side does not matter for TLS.
        f.client(b"\x17\x03\x03 any bytes");
    }
    assert!(f.following());
    // Several records and a part in one piece.
    let mut many = record(23, 10);
    many.extend(record(23, 0));
    many.extend(&record(23, 300)[..7]);
    f.far(&many);
    assert_eq!(f.position(), Inside);
    assert_eq!(f.messages(), 8);
}

fn after_server_hello() -> Framing {
    let mut f = Framing::new();
    f.client(&record(22, 300));
    f.far(&record(22, 90));
    assert_eq!(f.position(), Between);
    f
}

#[test]
fn invalid_records_give_up_for_good() {
    let bad_headers: [&[u8]; 5] = [
        &[99, 3, 3, 0, 5],           // no such content type
        &[23, 2, 0, 0, 5],           // not TLS's major version
        &[23, 3, 9, 0, 5],           // no such minor version
        &[23, 3, 3, 0x48, 0x01],     // 18433 bytes: over 2^14 + 2048
        b"HTTP/1.1 400 Bad Request", // plain HTTP after TLS
    ];
    for bad in bad_headers {
        let mut f = after_server_hello();
        f.far(bad);
        assert_eq!(f.position(), Unknown, "{bad:?}");
        assert!(!f.following());
        f.far(&record(23, 10));
        assert_eq!(f.position(), Unknown, "stays unknown");
    }
    // The largest record allowed is followed.
    let mut f = after_server_hello();
    f.far(&record(23, 16384 + 2048));
    assert_eq!(f.position(), Between);
}

#[test]
fn the_far_side_must_open_with_handshake_or_alert() {
    let mut f = Framing::new();
    f.client(&record(22, 300));
    f.far(&record(23, 10));
    assert_eq!(f.position(), Unknown);
    // An alert refusing the hello is a TLS answer.
    let mut f = Framing::new();
    f.client(&record(22, 300));
    f.far(&record(21, 2));
    assert_eq!(f.position(), Between);
    // Garbage from the far side.
    let mut f = Framing::new();
    f.client(&record(22, 300));
    f.far(b"SSH-2.0-OpenSSH_9.6\r\n");
    assert_eq!(f.position(), Unknown);
    assert!(!f.following());
}

#[test]
fn unseen_client_bytes_do_not_stop_tls() {
    let mut f = Framing::new();
    f.client_unseen();
    f.client(b"mid-stream client bytes");
    assert!(f.following());
    f.far(&record(22, 90));
    f.client_unseen();
    f.far(&record(23, 50)[..20]);
    assert_eq!(f.position(), Inside);
    assert!(f.following());
}

/// Runs a real TLS handshake and transfer between in-memory rustls peers;
/// returns the server's output, one entry per flight (each ends on a record
/// boundary), and the client's bytes.
pub(super) fn rustls_exchange(
    version: &'static rustls::SupportedProtocolVersion,
) -> (Vec<Vec<u8>>, Vec<u8>) {
    let certified = rcgen::generate_simple_self_signed(vec!["framing.test".to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("framing.test").unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();

    let mut far = Vec::new();
    let mut near = Vec::new();
    let mut pump = |client: &mut rustls::ClientConnection,
                    server: &mut rustls::ServerConnection| {
        while client.wants_write() {
            let mut out = Vec::new();
            client.write_tls(&mut out).unwrap();
            server.read_tls(&mut &out[..]).unwrap();
            server.process_new_packets().unwrap();
            near.extend(out);
        }
        let mut flight = Vec::new();
        while server.wants_write() {
            let mut out = Vec::new();
            server.write_tls(&mut out).unwrap();
            client.read_tls(&mut &out[..]).unwrap();
            client.process_new_packets().unwrap();
            flight.extend(out);
        }
        if !flight.is_empty() {
            far.push(flight);
        }
    };
    for _ in 0..10 {
        pump(&mut client, &mut server);
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    assert!(!server.is_handshaking(), "the handshake completes");
    client
        .writer()
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    pump(&mut client, &mut server);
    server.writer().write_all(&[7; 40_000]).unwrap();
    pump(&mut client, &mut server);
    server.send_close_notify();
    pump(&mut client, &mut server);
    (far, near)
}

#[test]
fn real_rustls_records_are_followed() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (far, near) = rustls_exchange(version);
        let mut f = Framing::new();
        f.client(&near);
        for (i, flush) in far.iter().enumerate() {
            let before = f.messages();
            // A cut a few bytes into this flush is a cut inside a record.
            let mut probe = Framing::new();
            probe.client(&near);
            far[..i].iter().for_each(|earlier| probe.far(earlier));
            probe.far(&flush[..3]);
            assert_eq!(probe.position(), Inside, "{version:?}: cut in a header");
            f.far(flush);
            assert_eq!(f.position(), Between, "{version:?}: after a whole flush");
            assert!(f.messages() > before);
        }
        // 40 000 bytes of application data take three records, the
        // close_notify one more.
        let data_flush = far.iter().find(|e| e.len() > 40_000).unwrap();
        let mut f = Framing::new();
        f.client(&near);
        f.far(&record(22, 1)); // stands in for the handshake flushes
        let before = f.messages();
        f.far(&data_flush[..20_000]);
        assert_eq!(f.position(), Inside, "{version:?}: mid application data");
        f.far(&data_flush[20_000..]);
        assert_eq!(f.position(), Between);
        assert_eq!(f.messages() - before, 3, "{version:?}");
        assert!(f.following());
    }
}

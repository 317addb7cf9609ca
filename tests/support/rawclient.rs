//! Raw-socket clients for security tests: exact request bytes (curl would
//! normalise hosts), chosen source addresses in 127.0.0.0/8, SOCKS5 by hand.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A TCP connection from `src` (a 127.0.0.0/8 address) to `to`.
pub fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Reads a response head (up to the blank line); "" on EOF or timeout.
pub fn read_head<S: Read>(s: &mut S) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") && got.len() < 16384 {
        match s.read(&mut b) {
            Ok(1) => got.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends a raw request head and returns the response head.
pub fn raw(proxy: SocketAddr, src: &str, head: &str) -> (TcpStream, String) {
    let mut s = connect_from(src, proxy);
    s.write_all(head.as_bytes()).unwrap();
    let h = read_head(&mut s);
    (s, h)
}

pub fn connect_tunnel(proxy: SocketAddr, src: &str, target: &str) -> (TcpStream, String) {
    raw(
        proxy,
        src,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
    )
}

/// A SOCKS5 CONNECT with a domain-name address; returns the stream and
/// the reply code (None when the proxy closed without one).
pub fn socks5_domain(
    proxy: SocketAddr,
    src: &str,
    name: &[u8],
    port: u16,
) -> (TcpStream, Option<u8>) {
    let mut s = connect_from(src, proxy);
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0]);
    let mut req = vec![5, 1, 0, 3, name.len() as u8];
    req.extend_from_slice(name);
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut r = [0u8; 10];
    let code = s.read_exact(&mut r).ok().map(|_| r[1]);
    (s, code)
}

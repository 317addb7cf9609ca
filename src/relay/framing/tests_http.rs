//! HTTP/1.x framing: bodies by length and chunked, bodiless responses,
//! interim responses, pipelining, request bodies skipped, and every way the
//! tracker must give up.

use super::{Framing, Position};

use Position::{Between, Inside, Unknown};

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n";
const HEAD: &[u8] = b"HEAD /a HTTP/1.1\r\nHost: origin.test\r\n\r\n";

/// A tracker after the client sent `requests`.
fn after(requests: &[u8]) -> Framing {
    let mut f = Framing::new();
    f.client(requests);
    assert_eq!(f.position(), Between, "requests alone owe nothing");
    f
}

/// Feeds far-side pieces, checking the position after each.
fn far_steps(f: &mut Framing, steps: &[(&[u8], Position)]) {
    for (i, (bytes, want)) in steps.iter().enumerate() {
        f.far(bytes);
        assert_eq!(
            f.position(),
            *want,
            "after far piece {i}: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

fn gives_up(f: &Framing) {
    assert_eq!(f.position(), Unknown);
    assert!(!f.following());
}

#[test]
fn content_length_body_is_inside_until_its_last_byte() {
    let mut f = after(GET);
    far_steps(
        &mut f,
        &[
            (b"HTTP/1.1 200 OK\r\nContent-", Inside),
            (b"Length: 10\r\n\r\n", Inside),
            (b"01234", Inside),
            (b"5678", Inside),
            (b"9", Between),
        ],
    );
    assert_eq!(f.messages(), 1);
    assert!(f.following());
}

#[test]
fn chunked_body_with_extensions_and_trailers_ends_at_the_final_empty_line() {
    let mut f = after(GET);
    far_steps(
        &mut f,
        &[
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                Inside,
            ),
            (b"5;name=value\r\nhello\r\n", Inside),
            (b"A ; q=\"x;y\"\r\n0123456789\r\n", Inside),
            (b"0;last\r\n", Inside),
            (b"Trailer-A: 1\r\nTrailer-B: 2\r\n", Inside),
            (b"\r\n", Between),
        ],
    );
    assert_eq!(f.messages(), 1);
    // The next exchange on the same tunnel is followed too.
    f.client(GET);
    far_steps(
        &mut f,
        &[
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n3\r\nabc\r\n",
                Inside,
            ),
            (b"0\r\n\r\n", Between),
        ],
    );
    assert_eq!(f.messages(), 2);
}

#[test]
fn a_malformed_chunk_gives_up() {
    for bad in [
        &b"zz\r\n"[..],
        b"5\r\nhelloX",
        b"5\r\nhello\r\n0\r\n\rX",
        b"11111111111111111\r\n",
        b";ext-without-size\r\n",
    ] {
        let mut f = after(GET);
        f.far(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(f.position(), Inside);
        f.far(bad);
        gives_up(&f);
    }
}

#[test]
fn head_response_has_no_body_whatever_it_declares() {
    let mut f = after(HEAD);
    far_steps(
        &mut f,
        &[(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", Between)],
    );
    assert_eq!(f.messages(), 1);
    // The next response is read as a response, not as that "body".
    f.client(GET);
    far_steps(
        &mut f,
        &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", Inside),
            (b"ok", Between),
        ],
    );
    assert_eq!(f.messages(), 2);
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    let mut f = after(GET);
    f.far(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n");
    assert_eq!(f.position(), Between);
    f.client(GET);
    f.far(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 512\r\nETag: \"x\"\r\n\r\n");
    assert_eq!(f.position(), Between);
    assert_eq!(f.messages(), 2);
    assert!(f.following());
}

#[test]
fn continue_is_interim_and_the_final_response_follows() {
    let mut f = after(
        b"POST /up HTTP/1.1\r\nHost: o.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    far_steps(&mut f, &[(b"HTTP/1.1 100 Continue\r\n\r\n", Between)]);
    assert_eq!(f.messages(), 1);
    f.client(b"abcd");
    far_steps(
        &mut f,
        &[
            (
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
                Between,
            ),
            (
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\no",
                Inside,
            ),
            (b"k", Between),
        ],
    );
    assert_eq!(f.messages(), 3);
}

#[test]
fn switching_protocols_gives_up() {
    let mut f = after(
        b"GET /ws HTTP/1.1\r\nHost: o.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    f.far(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
    gives_up(&f);
    f.far(b"more frames");
    gives_up(&f);
}

#[test]
fn close_delimited_bodies_give_up() {
    for head in [
        &b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"[..],
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    ] {
        let mut f = after(GET);
        f.far(head);
        gives_up(&f);
    }
}

#[test]
fn pipelined_get_then_head_pair_in_order() {
    let mut both = GET.to_vec();
    both.extend_from_slice(HEAD);
    let mut f = after(&both);
    far_steps(
        &mut f,
        &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", Inside),
            // The GET's last byte and the HEAD's whole answer in one piece.
            (b"cHTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", Between),
        ],
    );
    assert_eq!(f.messages(), 2);
    // No request left: a further response cannot be paired.
    f.far(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    gives_up(&f);
}

/// A request body that looks like a HEAD request: if it were not skipped,
/// the second response would be paired with a HEAD and its body misread.
const DECOY: &[u8] = b"HEAD / HTTP/1.1\r\n\r\n";

fn second_response_reads_as_a_get(f: &mut Framing) {
    f.client(GET);
    far_steps(
        f,
        &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Between),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", Inside),
            (b"abc", Between),
        ],
    );
    assert_eq!(f.messages(), 2);
}

#[test]
fn a_request_body_by_length_is_skipped() {
    let mut req = format!(
        "POST /p HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        DECOY.len()
    )
    .into_bytes();
    req.extend_from_slice(DECOY);
    let mut f = after(&req);
    second_response_reads_as_a_get(&mut f);
}

#[test]
fn a_chunked_request_body_is_skipped() {
    let mut req = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(format!("{:x};e=1\r\n", DECOY.len()).as_bytes());
    req.extend_from_slice(DECOY);
    req.extend_from_slice(b"\r\n0\r\nX-Sum: 1\r\n\r\n");
    let mut f = Framing::new();
    // The body arrives in pieces, as a streaming client sends it.
    for piece in req.chunks(7) {
        f.client(piece);
    }
    second_response_reads_as_a_get(&mut f);
}

#[test]
fn a_response_to_no_request_gives_up() {
    // Nothing from the client at all.
    let mut f = Framing::new();
    f.far(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    gives_up(&f);
    // More responses than requests.
    let mut f = after(GET);
    f.far(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(f.position(), Between);
    f.far(b"HTTP/1.1 200 OK\r\n");
    gives_up(&f);
}

#[test]
fn unseen_client_bytes_end_http() {
    let mut f = after(GET);
    f.client_unseen();
    gives_up(&f);
    // Before the client spoke: HTTP can no longer be paired.
    let mut f = Framing::new();
    f.client_unseen();
    assert!(f.following(), "TLS could still be followed");
    f.client(GET);
    f.far(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    gives_up(&f);
}

#[test]
fn an_oversized_response_head_gives_up_whole_or_in_pieces() {
    let mut head = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 17 * 1024));
    head.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    let mut f = after(GET);
    f.far(&head);
    gives_up(&f);
    let mut f = after(GET);
    let mut seen_inside = false;
    for piece in head.chunks(1000) {
        f.far(piece);
        seen_inside |= f.position() == Inside;
    }
    assert!(seen_inside, "a head in progress is inside a message");
    gives_up(&f);
}

#[test]
fn invalid_content_lengths_give_up() {
    for cl in [
        &b"Content-Length: abc\r\n"[..],
        b"Content-Length: 5, 6\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999999999999999\r\n",
        b"Content-Length: \r\n",
    ] {
        let mut f = after(GET);
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        head.extend_from_slice(cl);
        head.extend_from_slice(b"\r\n");
        f.far(&head);
        gives_up(&f);
    }
    // Repeated but agreeing values are one length.
    let mut f = after(GET);
    f.far(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\ncontent-length: 2\r\n\r\no");
    assert_eq!(f.position(), Inside);
    f.far(b"k");
    assert_eq!(f.position(), Between);
}

#[test]
fn what_is_not_http_or_tls_gives_up_at_once() {
    for opening in [&b"\x05\x01\x00"[..], b"\x00\x00", b" GET"] {
        let mut f = Framing::new();
        f.client(opening);
        gives_up(&f);
    }
    // A tunnel inside the tunnel.
    let mut f = Framing::new();
    f.client(b"CONNECT o.test:443 HTTP/1.1\r\nHost: o.test:443\r\n\r\n");
    gives_up(&f);
    // A request head that is not one.
    let mut f = Framing::new();
    f.client(b"GET / HTTP/9.9\r\n\r\n");
    gives_up(&f);
    // A far side that answers a request with something other than HTTP/1.
    let mut f = after(GET);
    f.far(b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
    gives_up(&f);
}

#[test]
fn empty_lines_between_messages_are_allowed() {
    let mut req = b"POST /p HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n".to_vec();
    req.extend_from_slice(GET);
    let mut f = after(&req);
    f.far(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    f.far(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n");
    assert_eq!(f.position(), Inside);
    f.far(b"z");
    assert_eq!(f.position(), Between);
    assert_eq!(f.messages(), 2);
}

//! HTTP/1.x message boundaries (RFC 9112 §6): the client's requests are
//! followed to learn each one's method (a response to HEAD has no body) and
//! to skip their bodies; the far side's responses are paired with them in
//! order (pipelining allowed) and their bodies delimited.

use std::collections::VecDeque;

use super::chunked::Chunked;
use super::head::{Fed, Head};
use super::Lost;

/// A request head larger than this is not followed.
const REQUEST_HEAD_LIMIT: usize = 64 * 1024;
/// A response head larger than this is not followed.
const RESPONSE_HEAD_LIMIT: usize = 16 * 1024;
/// Header fields per head (httparse needs room for all of them).
const MAX_HEADERS: usize = 128;
/// Requests sent and not yet answered, at most.
const MAX_OUTSTANDING: usize = 256;

/// Whether a client's first byte can open an HTTP request: methods are
/// tokens (RFC 9110 §5.6.2).
pub(super) fn may_open_request(first: u8) -> bool {
    first.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&first)
}

/// What a response must be read against: its request's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Head,
    Other,
}

/// How a message's body is delimited, as its header fields declare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    Chunked,
    Length(u64),
    /// Neither field: no body for a request, close-delimited for a response.
    Neither,
}

/// A body being read.
enum Body {
    Length(u64),
    Chunked(Chunked),
}

impl Body {
    /// A body as declared, or `None` when it is empty.
    fn declared(declared: Declared) -> Option<Body> {
        match declared {
            Declared::Chunked => Some(Body::Chunked(Chunked::new())),
            Declared::Length(0) | Declared::Neither => None,
            Declared::Length(n) => Some(Body::Length(n)),
        }
    }

    /// Body bytes coming next that are only counted.
    fn opaque(&self) -> u64 {
        match self {
            Body::Length(owed) => *owed,
            Body::Chunked(chunked) => chunked.opaque(),
        }
    }

    /// `n <= opaque()` bytes went by unseen; whether the body is complete.
    fn skip(&mut self, n: u64) -> bool {
        match self {
            Body::Length(owed) => {
                *owed -= n;
                *owed == 0
            }
            // Chunk data is never a chunked body's last byte.
            Body::Chunked(chunked) => {
                chunked.skip(n);
                false
            }
        }
    }

    /// Takes the body's next bytes: how many were part of it, and whether
    /// it is now complete.
    fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), Lost> {
        match self {
            Body::Length(owed) => {
                let n = bytes
                    .len()
                    .min(usize::try_from(*owed).unwrap_or(usize::MAX));
                // n <= owed.
                *owed -= n as u64;
                Ok((n, *owed == 0))
            }
            Body::Chunked(chunked) => chunked.feed(bytes),
        }
    }
}

/// One direction's messages: a head being read, or a body.
struct Messages {
    head: Head,
    body: Option<Body>,
}

impl Messages {
    fn new(limit: usize) -> Messages {
        Messages {
            head: Head::new(limit),
            body: None,
        }
    }

    /// Some of a message read, the rest still owed.
    fn inside(&self) -> bool {
        self.head.started() || self.body.is_some()
    }

    /// Takes the current body's share of `bytes`; returns the rest and
    /// whether a body was completed.
    fn body_bytes<'a>(&mut self, bytes: &'a [u8]) -> Result<(&'a [u8], bool), Lost> {
        let Some(body) = &mut self.body else {
            return Ok((bytes, false));
        };
        let (used, done) = body.feed(bytes)?;
        if done {
            self.body = None;
        }
        Ok((&bytes[used..], done))
    }
}

/// A response head, as far as framing goes.
struct ResponseHead {
    code: u16,
    declared: Result<Declared, Lost>,
}

/// Both directions of an HTTP/1.x exchange.
pub(super) struct Exchange {
    requests: Messages,
    responses: Messages,
    /// Methods of the requests not yet answered, oldest first.
    outstanding: VecDeque<Method>,
}

impl Exchange {
    pub(super) fn new() -> Exchange {
        Exchange {
            requests: Messages::new(REQUEST_HEAD_LIMIT),
            responses: Messages::new(RESPONSE_HEAD_LIMIT),
            outstanding: VecDeque::new(),
        }
    }

    /// A response head partly read or body bytes owed.
    pub(super) fn inside(&self) -> bool {
        self.responses.inside()
    }

    /// Response body bytes coming next that are only counted.
    pub(super) fn far_opaque(&self) -> u64 {
        self.responses.body.as_ref().map_or(0, Body::opaque)
    }

    /// `n <= far_opaque()` response body bytes went by unseen.
    pub(super) fn far_skipped(&mut self, n: u64, messages: &mut u64) {
        if let Some(body) = &mut self.responses.body {
            if body.skip(n) {
                self.responses.body = None;
                *messages += 1;
            }
        }
    }

    /// The client's next bytes: request heads and bodies.
    pub(super) fn client(&mut self, mut bytes: &[u8]) -> Result<(), Lost> {
        while !bytes.is_empty() {
            if self.requests.body.is_some() {
                bytes = self.requests.body_bytes(bytes)?.0;
                continue;
            }
            match self.requests.head.feed(bytes, parse_request)? {
                Fed::Partial => return Ok(()),
                Fed::Done {
                    value: (method, declared),
                    used,
                } => {
                    if self.outstanding.len() >= MAX_OUTSTANDING {
                        return Err(Lost);
                    }
                    self.outstanding.push_back(method);
                    self.requests.body = Body::declared(declared);
                    bytes = &bytes[used..];
                }
            }
        }
        Ok(())
    }

    /// The far side's next bytes: response heads and bodies; counts whole
    /// responses into `messages`.
    pub(super) fn far(&mut self, mut bytes: &[u8], messages: &mut u64) -> Result<(), Lost> {
        while !bytes.is_empty() {
            if self.responses.body.is_some() {
                let (rest, done) = self.responses.body_bytes(bytes)?;
                if done {
                    *messages += 1;
                }
                bytes = rest;
                continue;
            }
            if !self.responses.head.started() && self.outstanding.is_empty() {
                // A response to no request we saw: cannot be paired.
                return Err(Lost);
            }
            match self.responses.head.feed(bytes, parse_response)? {
                Fed::Partial => return Ok(()),
                Fed::Done { value, used } => {
                    self.response_head(value, messages)?;
                    bytes = &bytes[used..];
                }
            }
        }
        Ok(())
    }

    /// A response head is complete: decide its body (RFC 9112 §6.3).
    fn response_head(&mut self, head: ResponseHead, messages: &mut u64) -> Result<(), Lost> {
        match head.code {
            // The protocol switched: no more HTTP to follow.
            101 => return Err(Lost),
            // Interim: no body, the same request is still owed an answer.
            100..=199 if !self.outstanding.is_empty() => {
                *messages += 1;
                return Ok(());
            }
            _ => {}
        }
        let method = self.outstanding.pop_front().ok_or(Lost)?;
        let body = if method == Method::Head || head.code == 204 || head.code == 304 {
            None
        } else {
            match head.declared? {
                // Ends at the connection's end: a cut cannot be told.
                Declared::Neither => return Err(Lost),
                declared => Body::declared(declared),
            }
        };
        match body {
            Some(body) => self.responses.body = Some(body),
            None => *messages += 1,
        }
        Ok(())
    }
}

/// A request head: its method and how its body is delimited.
fn parse_request(head: &[u8]) -> Result<(Method, Declared), Lost> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err(Lost);
    }
    let method = match request.method.ok_or(Lost)? {
        "HEAD" => Method::Head,
        // What follows a CONNECT is a tunnel (if the far side agrees).
        "CONNECT" => return Err(Lost),
        _ => Method::Other,
    };
    Ok((method, declared(request.headers)?))
}

/// A response head: its status and how its body is delimited (checked only
/// when the response has a body).
fn parse_response(head: &[u8]) -> Result<ResponseHead, Lost> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    if !matches!(response.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err(Lost);
    }
    Ok(ResponseHead {
        code: response.code.ok_or(Lost)?,
        declared: declared(response.headers),
    })
}

/// How the fields delimit the body (RFC 9112 §6.1-6.3): a transfer coding
/// overrides a length and must end in `chunked` (anything else would be
/// close-delimited, or is an error in a request); all `Content-Length`
/// values must agree.
fn declared(headers: &[httparse::Header<'_>]) -> Result<Declared, Lost> {
    let mut last_coding: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let coding = header.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            last_coding = Some(coding.trim_ascii());
        } else if header.name.eq_ignore_ascii_case("content-length") {
            for value in header.value.split(|&b| b == b',') {
                let n = parse_length(value.trim_ascii())?;
                if length.is_some_and(|l| l != n) {
                    return Err(Lost);
                }
                length = Some(n);
            }
        }
    }
    match (last_coding, length) {
        (Some(coding), _) if coding.eq_ignore_ascii_case(b"chunked") => Ok(Declared::Chunked),
        (Some(_), _) => Err(Lost),
        (None, Some(n)) => Ok(Declared::Length(n)),
        (None, None) => Ok(Declared::Neither),
    }
}

/// A `Content-Length` value: digits only.
fn parse_length(value: &[u8]) -> Result<u64, Lost> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(Lost);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Lost)
}

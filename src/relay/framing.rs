//! A passive message-boundary tracker for one tunnel.
//!
//! A CONNECT or SOCKS5 tunnel through an upstream proxy is opaque bytes to
//! the relay. When the upstream *cuts* such a tunnel (FIN or reset) or
//! *stalls* it, the relay alone cannot tell that from an origin that simply
//! finished or is slow, so it cannot blame the faulty upstream. Most tunnels
//! carry TLS or HTTP/1.x, whose framing says where each message ends: a
//! stream that ends in the middle of a TLS record, or before an HTTP
//! response's `Content-Length` / final chunk arrived, was cut — an origin
//! never ends a stream there on purpose.
//!
//! [`Framing`] follows that framing from the bytes the relay shows it, in
//! both directions, and answers one question: is the far side
//! [`Position::Between`] messages (an end here is a normal end), or
//! [`Position::Inside`] one (it owes more bytes: an end here is a cut, a
//! stall here is a stall mid-message), or is it a protocol we cannot follow
//! ([`Position::Unknown`]: say nothing)?
//!
//! What it can tell:
//! - **TLS** (decided by the far side's first record, handshake or alert):
//!   record boundaries from the 5-byte record headers, across any split of
//!   the stream. The client's direction is not needed.
//! - **HTTP/1.x** (the client opens with a request, the far side answers
//!   `HTTP/1.`): each response paired with its request's method (pipelining
//!   allowed); bodies delimited by `Content-Length` or chunked coding, per
//!   RFC 9112 §6.3 (HEAD, 204, 304 and interim 1xx carry none).
//!
//! What it cannot tell (it says `Between` or `Unknown` there, never blames):
//! - a stall or an end *between* TLS records, or between HTTP responses, is
//!   indistinguishable from a slow or finished origin;
//! - a close-delimited HTTP body (neither length nor chunked) ends at the
//!   EOF, so a cut cannot be told from its end: `Unknown`;
//! - after `101 Switching Protocols`, a 2xx to CONNECT, or any byte that
//!   breaks the framing, the stream is `Unknown` for good;
//! - HTTP needs every client byte (to pair responses with requests): once
//!   client bytes went by unseen ([`Framing::client_unseen`]), HTTP is
//!   `Unknown`; TLS does not care.
//!
//! Cost: no copy of body or record bytes (they are skipped by counting, O(1)
//! per chunk); only HTTP heads are scanned, and a head split across reads is
//! kept in a bounded buffer (over the bound: `Unknown`). No allocation per
//! byte or per chunk once the head buffers have grown.
//!
//! The caller must show client bytes before forwarding them, so that a
//! response is never seen before the request that caused it.

mod chunked;
mod head;
mod http;
mod tls;

#[cfg(test)]
mod tests_http;
#[cfg(test)]
mod tests_split;
#[cfg(test)]
mod tests_tls;

/// Where a tunnel's far-side byte stream stands, as far as can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Not a protocol we follow (or we gave up): say nothing about it.
    Unknown,
    /// Between messages (or before the first): an end here is a normal end.
    Between,
    /// Inside a message: the far side owes more bytes; an end here is a cut.
    Inside,
}

/// The framing broke or cannot be followed: the tracker gives up for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lost;

/// What the tracker follows.
enum State {
    /// The far side has not spoken yet and the client's first bytes did not
    /// decide the protocol. `unseen`: client bytes went by unseen, so the
    /// client's later bytes are mid-stream and cannot open anything.
    Start { unseen: bool },
    /// TLS records (the client opened with a TLS record, or the far side did).
    Tls(tls::Records),
    /// HTTP/1.x (the client opened with what looks like a request).
    Http(Box<http::Exchange>),
    /// Given up.
    Unknown,
}

/// Follows the message framing of both directions of one tunnel without
/// buffering the stream (only a response/request head, bounded).
pub struct Framing {
    state: State,
    messages: u64,
}

impl Default for Framing {
    fn default() -> Self {
        Framing::new()
    }
}

impl Framing {
    pub fn new() -> Framing {
        Framing {
            state: State::Start { unseen: false },
            messages: 0,
        }
    }

    /// Bytes the client sent towards the far side, in order.
    pub fn client(&mut self, bytes: &[u8]) {
        let Some(&first) = bytes.first() else {
            return;
        };
        let outcome = match &mut self.state {
            State::Start { unseen: true } | State::Tls(_) | State::Unknown => Ok(()),
            State::Start { unseen: false } => {
                if first == tls::HANDSHAKE {
                    self.state = State::Tls(tls::Records::new());
                    Ok(())
                } else if http::may_open_request(first) {
                    let mut exchange = Box::new(http::Exchange::new());
                    let fed = exchange.client(bytes);
                    self.state = State::Http(exchange);
                    fed
                } else {
                    Err(Lost)
                }
            }
            State::Http(exchange) => exchange.client(bytes),
        };
        self.settle(outcome);
    }

    /// Client bytes went by without being shown (the relay's bulk path):
    /// anything that needs the client's side (HTTP) gives up -> Unknown.
    pub fn client_unseen(&mut self) {
        match self.state {
            State::Start { .. } => self.state = State::Start { unseen: true },
            State::Http(_) => self.state = State::Unknown,
            State::Tls(_) | State::Unknown => {}
        }
    }

    /// Bytes the far side sent towards the client, in order.
    pub fn far(&mut self, bytes: &[u8]) {
        let Some(&first) = bytes.first() else {
            return;
        };
        if let State::Start { .. } = self.state {
            // Only a TLS server can speak without a request we saw.
            self.state = if tls::may_open_far(first) {
                State::Tls(tls::Records::new())
            } else {
                State::Unknown
            };
        }
        let outcome = match &mut self.state {
            State::Tls(records) => records.far(bytes, &mut self.messages),
            State::Http(exchange) => exchange.far(bytes, &mut self.messages),
            State::Start { .. } | State::Unknown => Ok(()),
        };
        self.settle(outcome);
    }

    /// Far-side bytes coming next that are only counted, never looked at
    /// (the rest of a TLS record, of a body's data or chunk): the relay may
    /// pass up to this many without showing them (splice), then report them
    /// with [`Framing::far_skipped`].
    pub fn far_opaque(&self) -> u64 {
        match &self.state {
            State::Tls(records) => records.opaque(),
            State::Http(exchange) => exchange.far_opaque(),
            State::Start { .. } | State::Unknown => 0,
        }
    }

    /// `n` far-side bytes went by unseen: the same as showing them when
    /// `n <= far_opaque()`; more than that cannot be followed (Unknown).
    pub fn far_skipped(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        if n > self.far_opaque() {
            self.state = State::Unknown;
            return;
        }
        match &mut self.state {
            State::Tls(records) => records.skip(n, &mut self.messages),
            State::Http(exchange) => exchange.far_skipped(n, &mut self.messages),
            State::Start { .. } | State::Unknown => {}
        }
    }

    pub fn position(&self) -> Position {
        let inside = match &self.state {
            State::Start { .. } => false,
            State::Tls(records) => records.inside(),
            State::Http(exchange) => exchange.inside(),
            State::Unknown => return Position::Unknown,
        };
        if inside {
            Position::Inside
        } else {
            Position::Between
        }
    }

    /// False once the position can only ever be Unknown again: the relay then
    /// stops showing bytes (takes its zero-copy path).
    pub fn following(&self) -> bool {
        !matches!(self.state, State::Unknown)
    }

    /// Whole far-side messages seen (TLS records, HTTP responses — interim
    /// 1xx responses included).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    fn settle(&mut self, outcome: Result<(), Lost>) {
        if outcome.is_err() {
            self.state = State::Unknown;
        }
    }
}

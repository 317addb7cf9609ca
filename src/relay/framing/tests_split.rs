//! Split invariance: however a stream is cut into reads, the tracker must
//! land where feeding it whole lands — after every whole message and at the
//! end — and a cut strictly inside a message must read as inside it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tests_tls::{record, rustls_exchange, server_records};
use super::{Framing, Position};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Far,
    /// Client bytes went by unseen (no bytes).
    Unseen,
}

/// One unit of an exchange, in the order a real exchange has them.
struct Step {
    side: Side,
    bytes: Vec<u8>,
    /// A far step holding exactly one whole message.
    one_message: bool,
}

fn client(bytes: &[u8]) -> Step {
    Step {
        side: Side::Client,
        bytes: bytes.to_vec(),
        one_message: false,
    }
}

fn far(bytes: &[u8]) -> Step {
    Step {
        side: Side::Far,
        bytes: bytes.to_vec(),
        one_message: true,
    }
}

type Snapshot = (Position, u64, bool);

fn snapshot(f: &Framing) -> Snapshot {
    (f.position(), f.messages(), f.following())
}

fn feed(f: &mut Framing, side: Side, bytes: &[u8]) {
    match side {
        Side::Client => f.client(bytes),
        Side::Far => f.far(bytes),
        Side::Unseen => f.client_unseen(),
    }
}

/// Bytes [`feed_skipping`] passed unseen (only its test uses it).
static SKIPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Like [`feed`], but far bytes the tracker only counts go by unseen
/// (reported with `far_skipped`), as the relay's splice path passes them.
fn feed_skipping(f: &mut Framing, side: Side, mut bytes: &[u8]) {
    if side != Side::Far {
        return feed(f, side, bytes);
    }
    while !bytes.is_empty() {
        let opaque = usize::try_from(f.far_opaque()).unwrap_or(usize::MAX);
        let n = if opaque > 0 {
            let n = opaque.min(bytes.len());
            f.far_skipped(n as u64);
            SKIPPED.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            n
        } else {
            // Show one byte at a time outside opaque spans, so that every
            // span is met at its very start.
            f.far(&bytes[..1]);
            1
        };
        bytes = &bytes[n..];
    }
}

/// The snapshot after each step, each step fed whole.
fn reference(steps: &[Step]) -> Vec<Snapshot> {
    let mut f = Framing::new();
    steps
        .iter()
        .map(|s| {
            feed(&mut f, s.side, &s.bytes);
            snapshot(&f)
        })
        .collect()
}

/// Consecutive steps of one side, run together (a read may span them).
struct Group {
    side: Side,
    /// Index of the group's first step.
    first: usize,
    bytes: Vec<u8>,
    /// Where each of its steps ends, as offsets into `bytes`.
    ends: Vec<usize>,
}

fn groups(steps: &[Step]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        match out.last_mut() {
            Some(g) if g.side == s.side && s.side != Side::Unseen => {}
            _ => out.push(Group {
                side: s.side,
                first: i,
                bytes: Vec::new(),
                ends: Vec::new(),
            }),
        }
        let g = out.last_mut().unwrap();
        g.bytes.extend_from_slice(&s.bytes);
        g.ends.push(g.bytes.len());
    }
    out
}

/// A sample stream, its groups and the reference snapshots.
struct Sample<'a> {
    name: &'a str,
    steps: &'a [Step],
    groups: Vec<Group>,
    want: Vec<Snapshot>,
    /// Far bytes the tracker only counts go by unseen.
    skip_opaque: bool,
}

impl<'a> Sample<'a> {
    fn new(name: &'a str, steps: &'a [Step]) -> Sample<'a> {
        Sample {
            name,
            steps,
            groups: groups(steps),
            want: reference(steps),
            skip_opaque: false,
        }
    }

    /// Feeds the stream with each group cut where `cuts` says (sorted
    /// offsets into the group's bytes), checking against the reference
    /// after every piece that ends on a step boundary, and checking that a
    /// piece ending inside a one-message far step reads as inside.
    fn check(&self, cuts: &mut dyn FnMut(usize, usize) -> Vec<usize>) {
        let name = self.name;
        let mut f = Framing::new();
        for (g, group) in self.groups.iter().enumerate() {
            let mut points = cuts(g, group.bytes.len());
            points.push(group.bytes.len());
            let mut from = 0;
            for to in points {
                if self.skip_opaque {
                    feed_skipping(&mut f, group.side, &group.bytes[from..to]);
                } else {
                    feed(&mut f, group.side, &group.bytes[from..to]);
                }
                from = to;
                let k = group.ends.partition_point(|&e| e < to);
                let i = group.first + k;
                if group.ends[k] == to {
                    assert_eq!(
                        snapshot(&f),
                        self.want[i],
                        "{name}: after step {i}, cut at {to}"
                    );
                } else if group.side == Side::Far
                    && self.steps[i].one_message
                    && self.want[i].0 != Position::Unknown
                {
                    assert_eq!(
                        f.position(),
                        Position::Inside,
                        "{name}: step {i} cut at {to}"
                    );
                }
            }
        }
        assert_eq!(
            snapshot(&f),
            *self.want.last().unwrap(),
            "{name}: at the end"
        );
    }

    fn every_two_way_split(&self) {
        for (g, group) in self.groups.iter().enumerate() {
            for c in 1..group.bytes.len() {
                self.check(&mut |group, _| if group == g { vec![c] } else { vec![] });
            }
        }
    }

    fn random_splits(&self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..200 {
            self.check(&mut |_, len| {
                let mut points: Vec<usize> = match len {
                    0 | 1 => vec![],
                    _ => (0..rng.gen_range(0..12))
                        .map(|_| rng.gen_range(1..len))
                        .collect(),
                };
                points.sort_unstable();
                points.dedup();
                points
            });
        }
        // One byte at a time.
        self.check(&mut |_, len| (1..len).collect());
    }
}

fn tls_synthetic() -> Vec<Step> {
    let records = server_records();
    let mut steps = vec![client(&record(22, 517))];
    steps.extend(records[..3].iter().map(|r| far(r)));
    steps.push(client(&record(20, 1)));
    steps.push(client(&record(23, 80)));
    steps.push(Step {
        side: Side::Unseen,
        bytes: vec![],
        one_message: false,
    });
    steps.extend(records[3..].iter().map(|r| far(r)));
    steps
}

fn tls_real(version: &'static rustls::SupportedProtocolVersion) -> Vec<Step> {
    let (flights, near) = rustls_exchange(version);
    let mut steps = vec![client(&near)];
    for flight in flights {
        steps.push(Step {
            one_message: false,
            ..far(&flight)
        });
    }
    steps
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n";
const HEAD: &[u8] = b"HEAD /a HTTP/1.1\r\nHost: origin.test\r\n\r\n";
const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

fn http_keep_alive() -> Vec<Step> {
    vec![
        client(GET),
        far(OK_5),
        client(GET),
        far(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1A ; c\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n"),
        client(HEAD),
        far(b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n"),
        client(GET),
        far(b"HTTP/1.1 204 No Content\r\n\r\n"),
        client(GET),
        far(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
        client(b"POST /p HTTP/1.1\r\nContent-Length: 19\r\n\r\nHEAD / HTTP/1.1\r\n\r\n"),
        far(OK_5),
        client(b"PUT /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n13;x\r\nHEAD / HTTP/1.1\r\n\r\n\r\n0\r\n\r\n"),
        far(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        client(b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
        far(b"HTTP/1.1 100 Continue\r\n\r\n"),
        client(b"abcd"),
        far(OK_5),
    ]
}

fn http_pipelined() -> Vec<Step> {
    vec![
        client(GET),
        client(HEAD),
        client(b"DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        far(OK_5),
        far(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"),
        far(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ]
}

fn http_ends_unknown() -> Vec<Step> {
    vec![
        client(GET),
        far(OK_5),
        client(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        far(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"),
    ]
}

fn http_close_delimited() -> Vec<Step> {
    vec![
        client(GET),
        far(OK_5),
        client(GET),
        far(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"),
    ]
}

fn samples() -> Vec<(&'static str, Vec<Step>)> {
    vec![
        ("tls synthetic", tls_synthetic()),
        ("http keep-alive", http_keep_alive()),
        ("http pipelined", http_pipelined()),
        ("http 101", http_ends_unknown()),
        ("http close-delimited", http_close_delimited()),
    ]
}

#[test]
fn the_samples_end_where_they_should() {
    let ends: Vec<Snapshot> = samples()
        .iter()
        .map(|(_, s)| *reference(s).last().unwrap())
        .collect();
    assert_eq!(
        ends,
        [
            (Position::Between, 6, true),
            (Position::Between, 9, true),
            (Position::Between, 3, true),
            (Position::Unknown, 1, false),
            (Position::Unknown, 1, false),
        ]
    );
}

#[test]
fn every_two_way_split_lands_where_whole_feeding_does() {
    for (name, steps) in samples() {
        Sample::new(name, &steps).every_two_way_split();
    }
}

#[test]
fn random_splits_land_where_whole_feeding_does() {
    for (seed, (name, steps)) in samples().into_iter().enumerate() {
        Sample::new(name, &steps).random_splits(seed as u64);
    }
}

/// The relay may splice what the tracker only counts: passing those bytes
/// unseen (`far_skipped`) lands exactly where showing them does, whatever
/// the splits, in TLS (synthetic and real) and HTTP streams.
#[test]
fn skipping_opaque_spans_lands_where_showing_them_does() {
    let mut all = samples();
    all.push(("rustls 1.3", tls_real(&rustls::version::TLS13)));
    for (seed, (name, steps)) in all.into_iter().enumerate() {
        let mut sample = Sample::new(name, &steps);
        sample.skip_opaque = true;
        sample.every_two_way_split();
        sample.random_splits(100 + seed as u64);
    }
    let skipped = SKIPPED.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        skipped > 10_000,
        "hardly anything was skipped: {skipped} bytes"
    );
}

#[test]
fn more_than_the_opaque_span_unseen_cannot_be_followed() {
    let mut f = Framing::new();
    f.client(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    f.far(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(f.far_opaque(), 10);
    f.far_skipped(4);
    assert_eq!((f.far_opaque(), f.position()), (6, Position::Inside));
    f.far_skipped(6);
    assert_eq!(
        (f.far_opaque(), f.position(), f.messages()),
        (0, Position::Between, 1)
    );
    f.client(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    f.far(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    f.far_skipped(11);
    assert_eq!(f.position(), Position::Unknown);
}

#[test]
fn real_tls_streams_are_split_invariant() {
    for (name, version) in [
        ("rustls 1.3", &rustls::version::TLS13),
        ("rustls 1.2", &rustls::version::TLS12),
    ] {
        let steps = tls_real(version);
        let sample = Sample::new(name, &steps);
        assert_eq!(sample.want.last().unwrap().0, Position::Between, "{name}");
        assert!(
            sample.want.last().unwrap().1 >= 6,
            "{name}: records counted"
        );
        sample.every_two_way_split();
        sample.random_splits(7);
    }
}

#[test]
fn corrupted_streams_never_panic_and_unknown_is_for_good() {
    let mut rng = StdRng::seed_from_u64(99);
    for (_, steps) in samples() {
        for _ in 0..300 {
            let mut f = Framing::new();
            let mut lost = false;
            for step in &steps {
                let mut bytes = step.bytes.clone();
                for _ in 0..rng.gen_range(0..3) {
                    if !bytes.is_empty() {
                        let at = rng.gen_range(0..bytes.len());
                        bytes[at] = rng.gen();
                    }
                }
                // Pieces of 1..=len bytes; an empty step (unseen) once.
                let mut from = 0;
                loop {
                    let to = bytes
                        .len()
                        .min(from + rng.gen_range(1..=bytes.len().max(1)));
                    feed(&mut f, step.side, &bytes[from..to]);
                    from = to;
                    assert_eq!(f.following(), f.position() != Position::Unknown);
                    assert!(!(lost && f.following()), "Unknown came back to life");
                    lost |= !f.following();
                    if from == bytes.len() {
                        break;
                    }
                }
            }
        }
    }
}

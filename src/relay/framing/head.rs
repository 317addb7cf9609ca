//! Collects one HTTP message head (start line and fields, up to the empty
//! line) from a stream that arrives in arbitrary pieces, without copying it
//! when it arrives whole, and within a bound.

use super::Lost;

/// A head buffer larger than this is given back once its head is done.
const RETAIN: usize = 4096;

/// A head being read.
pub(super) struct Head {
    /// The part of a head that arrived in earlier pieces (empty otherwise).
    buf: Vec<u8>,
    limit: usize,
}

/// What feeding a piece gave.
pub(super) enum Fed<T> {
    /// The whole piece was taken; the head is not complete yet.
    Partial,
    /// The head is complete and parsed; `used` bytes of the piece were
    /// taken (the rest follows the head).
    Done { value: T, used: usize },
}

impl Head {
    pub(super) fn new(limit: usize) -> Head {
        Head {
            buf: Vec::new(),
            limit,
        }
    }

    /// Some of a head read, the rest still owed.
    pub(super) fn started(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Takes the next piece of the stream. Empty lines before a head are
    /// skipped (RFC 9112 §2.2). Once the head is complete, `parse` gets it
    /// whole (start line to empty line included).
    pub(super) fn feed<T>(
        &mut self,
        bytes: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<T, Lost>,
    ) -> Result<Fed<T>, Lost> {
        if self.buf.is_empty() {
            let skip = bytes
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(bytes.len());
            let rest = &bytes[skip..];
            if let Some(end) = head_end(rest, 0) {
                if end > self.limit {
                    return Err(Lost);
                }
                let value = parse(&rest[..end])?;
                return Ok(Fed::Done {
                    value,
                    used: skip + end,
                });
            }
            return self.keep(rest).map(|()| Fed::Partial);
        }
        let old = self.buf.len();
        let room = self.limit - old;
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        // The end mark ("\n\n" or "\n\r\n") may start in the earlier bytes.
        match head_end(&self.buf, old.saturating_sub(2)) {
            Some(end) => {
                let parsed = parse(&self.buf[..end]);
                self.buf.clear();
                if self.buf.capacity() > RETAIN {
                    // A rare big head: do not hold its buffer for the
                    // tunnel's life.
                    self.buf = Vec::new();
                }
                Ok(Fed::Done {
                    value: parsed?,
                    used: end - old,
                })
            }
            None if bytes.len() > room || self.buf.len() >= self.limit => Err(Lost),
            None => Ok(Fed::Partial),
        }
    }

    /// Keeps the start of a head that did not arrive whole.
    fn keep(&mut self, bytes: &[u8]) -> Result<(), Lost> {
        if bytes.len() >= self.limit {
            return Err(Lost);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// Where the head in `bytes` ends (just past its empty line), searching
/// for the end mark from `from`. Lines may end in CRLF or a bare LF.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            match bytes.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if bytes.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

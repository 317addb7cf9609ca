//! TLS record boundaries (RFC 8446 §5.1, RFC 5246 §6.2): each record is a
//! 5-byte header — content type, protocol version (major 3), length — and
//! `length` bytes. Only the headers are read; record bytes are counted off.

use super::Lost;

/// Content type of an alert record.
const ALERT: u8 = 21;
/// Content type of a handshake record (a ClientHello opens with it).
pub(super) const HANDSHAKE: u8 = 22;
/// Content types from change_cipher_spec (20) to heartbeat (24).
const CONTENT_TYPES: std::ops::RangeInclusive<u8> = 20..=24;
/// The largest record: 2^14 bytes of plaintext plus 2048 of expansion
/// (TLSCiphertext, RFC 5246 §6.2.3; TLS 1.3 allows less).
const MAX_RECORD: u16 = 16384 + 2048;
const HEADER: usize = 5;

/// Whether a far side's first byte can open a TLS stream: a server answers
/// a ClientHello with a handshake record, or refuses it with an alert.
pub(super) fn may_open_far(first: u8) -> bool {
    first == HANDSHAKE || first == ALERT
}

/// Where the far side's record stream stands.
pub(super) struct Records {
    header: [u8; HEADER],
    /// Header bytes read so far (0 between records).
    have: usize,
    /// Bytes of the current record still owed.
    owed: u16,
    /// No record seen yet: the first must be handshake or alert.
    first: bool,
}

impl Records {
    pub(super) fn new() -> Records {
        Records {
            header: [0; HEADER],
            have: 0,
            owed: 0,
            first: true,
        }
    }

    /// The far side's next bytes; counts whole records into `messages`.
    pub(super) fn far(&mut self, mut bytes: &[u8], messages: &mut u64) -> Result<(), Lost> {
        while !bytes.is_empty() {
            if self.owed > 0 {
                let n = bytes.len().min(usize::from(self.owed));
                // n <= owed, which is a u16.
                self.owed -= n as u16;
                bytes = &bytes[n..];
                if self.owed == 0 {
                    *messages += 1;
                }
                continue;
            }
            let n = bytes.len().min(HEADER - self.have);
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER {
                self.have = 0;
                self.owed = self.record_length()?;
                self.first = false;
                if self.owed == 0 {
                    // An empty record (allowed for application data).
                    *messages += 1;
                }
            }
        }
        Ok(())
    }

    /// Record bytes still owed (only counted).
    pub(super) fn opaque(&self) -> u64 {
        u64::from(self.owed)
    }

    /// `n <= opaque()` record bytes went by unseen.
    pub(super) fn skip(&mut self, n: u64, messages: &mut u64) {
        // n <= owed, which is a u16.
        self.owed -= n as u16;
        if self.owed == 0 {
            *messages += 1;
        }
    }

    /// A header partly read or record bytes still owed.
    pub(super) fn inside(&self) -> bool {
        self.have > 0 || self.owed > 0
    }

    /// Checks the complete header and returns the record's length.
    fn record_length(&self) -> Result<u16, Lost> {
        let [kind, major, minor, hi, lo] = self.header;
        let length = u16::from_be_bytes([hi, lo]);
        let kind_ok = if self.first {
            may_open_far(kind)
        } else {
            CONTENT_TYPES.contains(&kind)
        };
        // Versions SSL 3.0 (3,0) to TLS 1.3's unused (3,4).
        if kind_ok && major == 3 && minor <= 4 && length <= MAX_RECORD {
            Ok(length)
        } else {
            Err(Lost)
        }
    }
}

//! The end of a chunked body (RFC 9112 §7.1): chunk-size lines (with
//! extensions), chunk data (counted off, never copied), the last `0` chunk,
//! trailer fields and the final empty line — across any split of the stream.

use super::Lost;

/// A chunk-size line longer than this (extensions included) is not one.
const MAX_SIZE_LINE: u32 = 4096;
/// Trailer fields longer than this in all are not followed.
const MAX_TRAILERS: u32 = 16 * 1024;
/// A chunk size of more hex digits than this does not fit in a u64.
const MAX_SIZE_DIGITS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// In the hex digits of a chunk size.
    Size,
    /// After the size: whitespace or extensions, up to the line's end.
    Extension,
    /// Got the CR ending a chunk-size line.
    SizeLf,
    /// In chunk data (`owed` bytes left).
    Data,
    /// After chunk data: its CR.
    DataCr,
    /// After chunk data: its LF.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Got the CR of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// Where a chunked body stands.
pub(super) struct Chunked {
    step: Step,
    /// The chunk size being read, then the chunk data still owed.
    owed: u64,
    /// Bytes of the current chunk-size line (digits, extensions).
    line: u32,
    /// Bytes of trailer fields so far.
    trailers: u32,
}

impl Chunked {
    pub(super) fn new() -> Chunked {
        Chunked {
            step: Step::Size,
            owed: 0,
            line: 0,
            trailers: 0,
        }
    }

    /// Takes the body's next bytes; returns how many were part of the body
    /// and whether the body is now complete.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), Lost> {
        let mut i = 0;
        while i < bytes.len() && self.step != Step::Done {
            if self.step == Step::Data {
                let n = (bytes.len() - i).min(usize::try_from(self.owed).unwrap_or(usize::MAX));
                // n <= owed.
                self.owed -= n as u64;
                i += n;
                if self.owed == 0 {
                    self.step = Step::DataCr;
                }
                continue;
            }
            self.byte(bytes[i])?;
            i += 1;
        }
        Ok((i, self.step == Step::Done))
    }

    /// Chunk data bytes still owed (only counted).
    pub(super) fn opaque(&self) -> u64 {
        if self.step == Step::Data {
            self.owed
        } else {
            0
        }
    }

    /// `n <= opaque()` chunk data bytes went by unseen.
    pub(super) fn skip(&mut self, n: u64) {
        self.owed -= n;
        if self.owed == 0 {
            self.step = Step::DataCr;
        }
    }

    /// One byte outside chunk data.
    fn byte(&mut self, b: u8) -> Result<(), Lost> {
        self.step = match (self.step, b) {
            (Step::Size, _) if b.is_ascii_hexdigit() => {
                self.line += 1;
                if self.line > MAX_SIZE_DIGITS {
                    return Err(Lost);
                }
                // The digit count bounds the value below 2^64.
                self.owed = (self.owed << 4) | u64::from(hex_value(b));
                Step::Size
            }
            (Step::Size, b' ' | b'\t' | b';') if self.line > 0 => Step::Extension,
            (Step::Size, b'\r') if self.line > 0 => Step::SizeLf,
            (Step::Size, b'\n') if self.line > 0 => self.size_line_end(),
            (Step::Extension, b'\r') => Step::SizeLf,
            (Step::Extension, b'\n') => self.size_line_end(),
            (Step::Extension, _) => {
                self.line += 1;
                if self.line > MAX_SIZE_LINE {
                    return Err(Lost);
                }
                Step::Extension
            }
            (Step::SizeLf, b'\n') => self.size_line_end(),
            (Step::DataCr, b'\r') => Step::DataLf,
            (Step::DataCr | Step::DataLf, b'\n') => Step::Size,
            (Step::TrailerStart, b'\r') => Step::EndLf,
            (Step::TrailerStart | Step::EndLf, b'\n') => Step::Done,
            (Step::TrailerStart | Step::Trailer, _) => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(Lost);
                }
                if b == b'\n' {
                    Step::TrailerStart
                } else {
                    Step::Trailer
                }
            }
            _ => return Err(Lost),
        };
        Ok(())
    }

    /// A chunk-size line ended: data follows, or the trailers after the
    /// last chunk.
    fn size_line_end(&mut self) -> Step {
        self.line = 0;
        if self.owed == 0 {
            Step::TrailerStart
        } else {
            Step::Data
        }
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

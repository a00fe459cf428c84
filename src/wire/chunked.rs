//! A strict, streaming scanner for chunked bodies (RFC 9112 section 7.1).
//!
//! Used where drover passes a chunked body through as bytes: to find where a client's
//! chunked request body ends (so a carrier never reads past it into the next pipelined
//! request) and where a worker's chunked response ends (so the next response on that
//! worker connection is not mistaken for more body). Because the bytes pass through
//! unchanged, leniency here would hand a malformed body on to a client or worker that may
//! read it differently; so every line must end in CRLF, a size line needs at least one
//! hex digit, and chunk extensions and trailer fields are bounded.
//!
//! Trailer fields are reported apart from the body so a forwarder can drop them: drover
//! does not forward HTTP/1 trailers (Pingora's HTTP/1 path does not either), which also
//! keeps a worker's internal fields out of reach of clients.

/// Most hex digits in a chunk size (a `u64`).
const MAX_SIZE_DIGITS: u8 = 16;
/// Largest chunk extension drover skips over on one size line.
const MAX_EXTENSION: u32 = 4096;
/// Largest trailer section.
const MAX_TRAILERS: u32 = 16 * 1024;

/// Malformed chunked framing (bad size line, missing CRLF, oversized extension or
/// trailers): the message cannot be delimited, so its connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first byte of a size line.
    #[default]
    Size,
    SizeDigits,
    /// Whitespace after the size, before a `;`.
    SizeWs,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Where the body is after one [`ChunkedScanner::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Leading bytes of the scanned buffer that are chunks, up to and including the last
    /// chunk's size line (what a forwarder passes on).
    pub body: usize,
    /// Leading bytes that belong to the message (`body` plus trailer bytes).
    pub consumed: usize,
    /// The message ended after `consumed` bytes; what follows is not part of it.
    pub done: bool,
}

/// Incremental state of one chunked body; feed it successive buffers with
/// [`ChunkedScanner::scan`]. A fresh (default) scanner expects the first size line.
#[derive(Debug, Default, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    digits: u8,
    counted: u32,
}

fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

impl ChunkedScanner {
    /// True once the last chunk and the trailer section's final CRLF have been scanned.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// In the trailer section: bytes scanned now are not body bytes.
    fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart | State::TrailerLine | State::TrailerLf | State::EndLf
        )
    }

    /// Scans the next bytes of the body.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scan, ChunkError> {
        self.scan_data(buf, |_| {})
    }

    /// [`ChunkedScanner::scan`], also handing `on_data` each run of chunk data (ranges
    /// of `buf`, in order): what a body is once its chunk framing is removed, for a
    /// recipient that cannot read chunked framing (an HTTP/1.0 client).
    pub fn scan_data(
        &mut self,
        buf: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Scan, ChunkError> {
        let mut i = 0;
        let mut body = 0;
        while i < buf.len() {
            if self.state == State::Done {
                break;
            }
            if self.state == State::Data {
                let take = (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= take as u64;
                on_data(i..i + take);
                i += take;
                body = i;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = buf[i];
            let was_body = !self.in_trailers();
            if self.state == State::SizeLf && b == b'\n' && self.size == 0 {
                self.counted = 0;
            }
            self.state = self.step(b)?;
            i += 1;
            if was_body {
                body = i;
            } else {
                self.counted += 1;
                if self.counted > MAX_TRAILERS {
                    return Err(ChunkError);
                }
            }
        }
        Ok(Scan {
            body,
            consumed: i,
            done: self.state == State::Done,
        })
    }

    /// The state after byte `b` (not in `Data`, which `scan` consumes in runs).
    fn step(&mut self, b: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::Size => {
                self.size = hex(b).ok_or(ChunkError)?;
                self.digits = 1;
                State::SizeDigits
            }
            State::SizeDigits => match b {
                b'\r' => State::SizeLf,
                b' ' | b'\t' => State::SizeWs,
                b';' => {
                    self.counted = 0;
                    State::Extension
                }
                _ => {
                    let d = hex(b).ok_or(ChunkError)?;
                    if self.digits >= MAX_SIZE_DIGITS {
                        return Err(ChunkError);
                    }
                    self.digits += 1;
                    self.size = (self.size << 4) | d;
                    State::SizeDigits
                }
            },
            State::SizeWs => match b {
                b' ' | b'\t' => State::SizeWs,
                b';' => {
                    self.counted = 0;
                    State::Extension
                }
                _ => return Err(ChunkError),
            },
            State::Extension => match b {
                b'\r' => State::SizeLf,
                _ if is_ctl(b) => return Err(ChunkError),
                _ => {
                    self.counted += 1;
                    if self.counted > MAX_EXTENSION {
                        return Err(ChunkError);
                    }
                    State::Extension
                }
            },
            State::SizeLf => match b {
                b'\n' if self.size == 0 => State::TrailerStart,
                b'\n' => State::Data,
                _ => return Err(ChunkError),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError),
            },
            State::DataLf => match b {
                b'\n' => State::Size,
                _ => return Err(ChunkError),
            },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                _ if is_ctl(b) || b == b':' || b == b' ' => return Err(ChunkError),
                _ => State::TrailerLine,
            },
            State::TrailerLine => match b {
                b'\r' => State::TrailerLf,
                _ if is_ctl(b) => return Err(ChunkError),
                _ => State::TrailerLine,
            },
            State::TrailerLf => match b {
                b'\n' => State::TrailerStart,
                _ => return Err(ChunkError),
            },
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(ChunkError),
            },
            State::Data | State::Done => self.state,
        })
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Scans `input` in pieces split at `cuts`; returns (body bytes, consumed, done).
    fn scan_split(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut s = ChunkedScanner::default();
        let mut body = Vec::new();
        let mut at = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        points.push(input.len());
        for p in points {
            if p < at {
                continue;
            }
            let scan = s.scan(&input[at..p])?;
            body.extend_from_slice(&input[at..at + scan.body]);
            at += scan.consumed;
            if scan.done {
                return Ok((body, at, true));
            }
        }
        Ok((body, at, false))
    }

    #[test]
    fn finds_the_end_and_separates_trailers() {
        let input = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\nX-Drover-A: 2\r\n\r\nNEXT";
        let (body, consumed, done) = scan_split(input, &[]).unwrap();
        assert!(done);
        assert_eq!(consumed, input.len() - 4);
        assert_eq!(body, b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\n");
        let (body, consumed, done) = scan_split(b"0\r\n\r\nX", &[]).unwrap();
        assert_eq!((body.as_slice(), consumed, done), (&b"0\r\n"[..], 5, true));
    }

    #[test]
    fn data_runs_are_the_body_without_framing() {
        let input = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..input.len() {
            let mut s = ChunkedScanner::default();
            let mut data = Vec::new();
            let (a, b) = input.split_at(split);
            let first = s.scan_data(a, |r| data.extend_from_slice(&a[r])).unwrap();
            if !first.done {
                assert_eq!(first.consumed, a.len());
                let second = s.scan_data(b, |r| data.extend_from_slice(&b[r])).unwrap();
                assert!(second.done, "split {split}");
            }
            assert_eq!(data, b"Wikipedia", "split {split}");
        }
    }

    #[test]
    fn rejects_lax_framing() {
        for bad in [
            &b"\r\n2\r\nok\r\n0\r\n\r\n"[..],
            b"2\nok\n0\n\n",
            b"2\r\nok\n0\r\n\r\n",
            b"2\r\nokX\r\n",
            b"zz\r\n",
            b"ffffffffffffffffff\r\n",
            b"2 \r\nok\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"0\r\n: no name\r\n\r\n",
            b"2;\x01\r\nok\r\n",
        ] {
            assert!(
                scan_split(bad, &[]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut big = b"0\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        assert!(scan_split(&big, &[]).is_err());
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_answer(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            trailer in proptest::option::of("[A-Za-z-]{1,10}: [a-z0-9]{0,10}"),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let mut input = Vec::new();
            for c in &chunks {
                input.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                input.extend_from_slice(c);
                input.extend_from_slice(b"\r\n");
            }
            input.extend_from_slice(b"0\r\n");
            let body_len = input.len();
            if let Some(t) = &trailer {
                input.extend_from_slice(t.as_bytes());
                input.extend_from_slice(b"\r\n");
            }
            input.extend_from_slice(b"\r\nGET / HTTP/1.1\r\n");
            let whole = scan_split(&input, &[]).unwrap();
            let split = scan_split(&input, &cuts).unwrap();
            prop_assert_eq!(&whole, &split);
            prop_assert!(whole.2);
            prop_assert_eq!(whole.0.len(), body_len);
            prop_assert_eq!(&input[whole.1..], &b"GET / HTTP/1.1\r\n"[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_never_overrun(input in proptest::collection::vec(any::<u8>(), 0..300), cuts in proptest::collection::vec(0usize..300, 0..4)) {
            if let Ok((body, consumed, _)) = scan_split(&input, &cuts) {
                prop_assert!(consumed <= input.len());
                prop_assert!(body.len() <= consumed);
            }
        }
    }
}

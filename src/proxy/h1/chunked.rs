//! A strict decoder for an upstream's `Transfer-Encoding: chunked` response body.
//!
//! The fast path re-encodes what it decodes, so the client sees only canonical chunks:
//! no extensions, no trailers, nothing the upstream smuggled into the framing.

/// Longest chunk-size line (size, extensions) and trailer section accepted.
const MAX_FRAMING_BYTES: usize = 4096;

/// Where the decoder is in the chunked stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace or an extension after the size, up to the CR.
    Extension {
        size: u64,
    },
    /// The LF ending a size line.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the empty line ending the body).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// The upstream broke the chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked framing from the upstream")]
pub struct BadChunk;

/// Decodes a chunked body fed in pieces.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Framing bytes seen since the last data, bounded by [`MAX_FRAMING_BYTES`].
    framing: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            state: State::Size { size: 0, digits: 0 },
            framing: 0,
        }
    }
}

impl Decoder {
    /// Whether the final chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as possible, appending each data piece re-encoded as a
    /// chunk to `out` (and the last chunk once the body ends). Returns the bytes consumed:
    /// all of `input`, or fewer when the body ended inside it.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BadChunk> {
        let mut at = 0;
        while at < input.len() && self.state != State::Done {
            if let State::Data { left } = self.state {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - at);
                write_chunk(out, &input[at..at + take]);
                at += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            self.framing += 1;
            if self.framing > MAX_FRAMING_BYTES {
                return Err(BadChunk);
            }
            self.state = self.step(input[at])?;
            at += 1;
            if self.state == State::Done {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        Ok(at)
    }

    /// One framing byte.
    fn step(&mut self, b: u8) -> Result<State, BadChunk> {
        Ok(match (self.state, b) {
            (State::Size { size, digits }, _) if b.is_ascii_hexdigit() => {
                // 16 hex digits fill a u64; a 17th would overflow.
                if digits == 16 {
                    return Err(BadChunk);
                }
                let digit = u64::from(hex_value(b));
                State::Size {
                    size: size << 4 | digit,
                    digits: digits + 1,
                }
            }
            (State::Size { digits: 0, .. }, _) => return Err(BadChunk),
            (State::Size { size, .. } | State::Extension { size }, b'\r') => State::SizeLf { size },
            (State::Size { size, .. }, b' ' | b'\t' | b';') => State::Extension { size },
            // Extensions are dropped unread; only line breaks inside them are refused.
            (State::Extension { size }, _) if b != b'\n' => State::Extension { size },
            (State::SizeLf { size: 0 }, b'\n') => State::TrailerStart,
            (State::SizeLf { size }, b'\n') => {
                self.framing = 0;
                State::Data { left: size }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => {
                self.framing = 0;
                State::Size { size: 0, digits: 0 }
            }
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::TrailerLine, b) if b != b'\n' && b != b'\r' => {
                State::TrailerLine
            }
            (State::TrailerLine, b'\r') => State::TrailerLf,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf, b'\n') => State::Done,
            _ => return Err(BadChunk),
        })
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Appends `data` as one chunk; empty data writes nothing (an empty chunk would end the body).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut size = [0u8; 16];
    let mut n = data.len();
    let mut at = size.len();
    while n > 0 || at == size.len() {
        at -= 1;
        size[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
    }
    out.extend_from_slice(&size[at..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), BadChunk> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in input.chunks(step) {
            consumed += decoder.decode(piece, &mut out)?;
            if decoder.is_done() {
                break;
            }
        }
        Ok((out, consumed, decoder.is_done()))
    }

    #[test]
    fn chunks_extensions_and_trailers_come_out_canonical() {
        let input =
            b"5;name=value\r\nhello\r\n6 \t; x\r\n world\r\n0\r\nExpires: never\r\nX-T: 1\r\n\r\n";
        for step in [1, 2, 3, 7, input.len()] {
            let (out, consumed, done) = decode_in_steps(input, step).expect("valid");
            assert!(done, "step {step}");
            assert_eq!(consumed, input.len(), "step {step}");
            let text = String::from_utf8(out).expect("ascii");
            // Pieces may be split differently, but the data is the same and canonical.
            let data: String = text
                .split("\r\n")
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, s)| s)
                .collect();
            assert_eq!(data, "hello world", "step {step}: {text:?}");
            assert!(text.ends_with("0\r\n\r\n") && !text.contains(';'));
            assert!(!text.contains("Expires"));
        }
    }

    #[test]
    fn bytes_after_the_body_are_not_consumed() {
        let input = b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n";
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        let consumed = decoder.decode(input, &mut out).expect("valid");
        assert!(decoder.is_done());
        assert_eq!(&input[consumed..], b"HTTP/1.1 200 OK\r\n");
        assert_eq!(out, b"3\r\nabc\r\n0\r\n\r\n");
    }

    #[test]
    fn broken_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"-1\r\n",
            b"3\nabc\r\n",
            b"3\r\nabcd\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"3;\next\r\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(
                decode_in_steps(bad, 1).map(|_| ()),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn endless_extensions_or_trailers_are_cut() {
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_FRAMING_BYTES));
        assert_eq!(decode_in_steps(&long, 100).map(|_| ()), Err(BadChunk));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_FRAMING_BYTES / 4 {
            trailers.extend_from_slice(b"X: 12\r\n");
        }
        assert_eq!(decode_in_steps(&trailers, 100).map(|_| ()), Err(BadChunk));
    }

    #[test]
    fn large_chunk_sizes_are_followed() {
        let mut input = b"FFFF\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', 0xffff));
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        let (out, _, done) = decode_in_steps(&input, 1000).expect("valid");
        assert!(done);
        let data_len: usize = out.len();
        assert!(data_len > 0xffff);
    }

    /// The data inside canonical chunks, in order.
    fn dechunk(mut canonical: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            let line = canonical
                .iter()
                .position(|&b| b == b'\r')
                .expect("size line");
            let size =
                usize::from_str_radix(std::str::from_utf8(&canonical[..line]).expect("hex"), 16)
                    .expect("size");
            canonical = &canonical[line + 2..];
            if size == 0 {
                assert_eq!(canonical, b"\r\n");
                return data;
            }
            data.extend_from_slice(&canonical[..size]);
            assert_eq!(&canonical[size..size + 2], b"\r\n");
            canonical = &canonical[size + 2..];
        }
    }

    #[test]
    fn random_bodies_split_anywhere_decode_to_the_same_data() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let mut wire = Vec::new();
            let mut data = Vec::new();
            for _ in 0..rng.gen_range(0..6) {
                let chunk: Vec<u8> = (0..rng.gen_range(1..300)).map(|_| rng.r#gen()).collect();
                let ext = if rng.gen_bool(0.3) { ";a=b" } else { "" };
                wire.extend_from_slice(format!("{:X}{ext}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(&chunk);
                wire.extend_from_slice(b"\r\n");
                data.extend_from_slice(&chunk);
            }
            wire.extend_from_slice(b"0\r\n");
            if rng.gen_bool(0.3) {
                wire.extend_from_slice(b"X-Trailer: 1\r\n");
            }
            wire.extend_from_slice(b"\r\nNEXT");
            let step = rng.gen_range(1..64);
            let (out, consumed, done) = decode_in_steps(&wire, step).expect("valid");
            assert!(done);
            assert_eq!(&wire[consumed..], b"NEXT", "step {step}");
            assert_eq!(dechunk(&out), data, "step {step}");
        }
    }

    #[test]
    fn chunk_sizes_are_written_in_hex() {
        let mut out = Vec::new();
        write_chunk(&mut out, &[b'x'; 0x1a]);
        assert!(out.starts_with(b"1a\r\n"));
        out.clear();
        write_chunk(&mut out, b"");
        assert!(out.is_empty());
    }
}

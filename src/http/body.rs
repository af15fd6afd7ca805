//! Request-body framing: turning the bytes after a head into body data.
//!
//! This module owns the two request framings gunicorn reads (RFC 9112 section 6.3):
//! `Content-Length` and `chunked` (section 7.1), with gunicorn 27's rules for chunk-size
//! lines, chunk extensions, chunk terminators and trailers (`gunicorn/http/body.py`
//! `ChunkedReader`). The [`Decoder`] never owns a buffer or touches a socket: it is
//! handed whatever is buffered, says how much of it it consumed and which part is body
//! data, and keeps only its position in the framing, so the layers above choose their
//! buffering and read sizes.

use std::ops::Range;

use memchr::memmem;

use super::error::{latin1, HttpError};
use super::parse::{parse_fields, BlockScan, BodyKind, FieldPolicy, Limits, Section, Version};

/// A streaming request-body decoder: a state machine over the body's framing.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// A `Content-Length` body with `remaining` bytes still to come.
    Length {
        /// Bytes of body data not yet decoded.
        remaining: u64,
    },
    /// A chunked body, somewhere in its framing.
    Chunked(ChunkedDecoder),
    /// The body has ended; what follows belongs to the next request.
    Done,
}

/// Where a chunked body stands, plus the limits its framing lines obey.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    limits: Limits,
}

/// The parts of a chunked body (RFC 9112 section 7.1).
#[derive(Debug, Clone, Copy)]
enum ChunkState {
    /// Expecting a chunk-size line: `hex-size [chunk-ext] CRLF`.
    Size,
    /// Inside chunk data, `remaining` bytes to go.
    Data { remaining: u64 },
    /// Chunk data ended; its CRLF must follow.
    DataEnd,
    /// After the last chunk: field lines, then the final CRLF. Nothing is consumed
    /// until the whole section is in; the scan remembers how far it got.
    Trailers(BlockScan),
}

/// What one [`Decoder::decode`] call did with its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// How many bytes at the front of the input were used up (framing and data); the
    /// caller drops them before the next call.
    pub consumed: usize,
    /// The body data found, as a range of the input (empty if none this call). It always
    /// lies within the consumed bytes.
    pub data: Range<usize>,
}

impl Decoder {
    /// A decoder for a body framed as `kind`. Chunk-size lines are bounded by
    /// `limits.field_size`; trailers by the same field count and size limits as the
    /// head (gunicorn's `ChunkedReader`).
    pub fn new(kind: BodyKind, limits: &Limits) -> Decoder {
        match kind {
            BodyKind::Empty | BodyKind::Length(0) => Decoder::Done,
            BodyKind::Length(n) => Decoder::Length { remaining: n },
            BodyKind::Chunked => Decoder::Chunked(ChunkedDecoder {
                state: ChunkState::Size,
                limits: *limits,
            }),
        }
    }

    /// Whether the body has ended (for chunked: after the trailers' final CRLF).
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// Decode from `input`, the bytes buffered after the head (minus what earlier calls
    /// consumed).
    ///
    /// Returns how many input bytes were consumed and the sub-range of `input` that is
    /// body data: at most one contiguous run per call, possibly empty. The caller drops
    /// `consumed` bytes and calls again; when a call consumes nothing and the decoder is
    /// not done, it needs more input (read from the socket, keeping the unconsumed
    /// bytes). At EOF while not done, [`Decoder::eof_error`] says what gunicorn makes of
    /// it. Once done, nothing more is consumed: the rest is the next request.
    ///
    /// The outcome does not depend on how the body was split into reads.
    ///
    /// # Errors
    ///
    /// Chunked framing faults as gunicorn 27 reports them: [`HttpError::InvalidChunkSize`],
    /// [`HttpError::InvalidChunkExtension`], [`HttpError::ChunkMissingTerminator`], and
    /// for trailers the field errors of the head plus [`HttpError::InvalidTrailer`].
    /// After an error the body's end is unknown, so the connection must close.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, HttpError> {
        match self {
            Decoder::Done => Ok(Decoded {
                consumed: 0,
                data: 0..0,
            }),
            Decoder::Length { remaining } => {
                let take = clamp(*remaining, input.len());
                *remaining -= take as u64;
                if *remaining == 0 {
                    *self = Decoder::Done;
                }
                Ok(Decoded {
                    consumed: take,
                    data: 0..take,
                })
            }
            Decoder::Chunked(chunked) => {
                let (decoded, done) = chunked.decode(input)?;
                if done {
                    *self = Decoder::Done;
                }
                Ok(decoded)
            }
        }
    }

    /// The error for the client closing the connection now, with `pending` the bytes
    /// still buffered and unconsumed; only meaningful while `!is_done()`.
    ///
    /// Mostly [`HttpError::IncompleteBody`] (no response, as gunicorn's `NoMoreData`),
    /// but gunicorn answers 400 `ChunkMissingTerminator` when the close comes where a
    /// chunk's CRLF or the trailer section's final CRLF was due (26.1+: a truncated
    /// chunked body is not taken as a complete one).
    pub fn eof_error(&self, pending: &[u8]) -> HttpError {
        match self {
            Decoder::Chunked(ChunkedDecoder {
                state: ChunkState::DataEnd,
                ..
            }) => HttpError::ChunkMissingTerminator(latin1(&pending[..pending.len().min(2)])),
            Decoder::Chunked(ChunkedDecoder {
                state: ChunkState::Trailers(_),
                ..
            }) => HttpError::ChunkMissingTerminator(String::new()),
            _ => HttpError::IncompleteBody,
        }
    }
}

/// `min(remaining, available)` as a usize.
fn clamp(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

impl ChunkedDecoder {
    /// Advance through framing until a data run is found, more input is needed, or the
    /// body ends. Returns what was done and whether the body ended.
    fn decode(&mut self, input: &[u8]) -> Result<(Decoded, bool), HttpError> {
        let mut pos = 0;
        let need_more = |pos: usize| {
            Ok((
                Decoded {
                    consumed: pos,
                    data: pos..pos,
                },
                false,
            ))
        };
        loop {
            match &mut self.state {
                ChunkState::Size => {
                    let rest = &input[pos..];
                    let Some((size, line_len)) =
                        chunk_size_line(rest, self.limits.field_size_max())?
                    else {
                        return need_more(pos);
                    };
                    pos += line_len;
                    self.state = if size == 0 {
                        ChunkState::Trailers(BlockScan::default())
                    } else {
                        ChunkState::Data { remaining: size }
                    };
                }
                ChunkState::Data { remaining } => {
                    let take = clamp(*remaining, input.len() - pos);
                    if take == 0 {
                        return need_more(pos);
                    }
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    return Ok((
                        Decoded {
                            consumed: pos + take,
                            data: pos..pos + take,
                        },
                        false,
                    ));
                }
                ChunkState::DataEnd => {
                    // gunicorn reads until it has two bytes and reports those two, so
                    // wait for both rather than fail on the first.
                    let Some(term) = input.get(pos..pos + 2) else {
                        return need_more(pos);
                    };
                    if term != b"\r\n" {
                        return Err(HttpError::ChunkMissingTerminator(latin1(term)));
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers(scan) => {
                    let rest = &input[pos..];
                    let Some(end) = scan.scan(rest, &self.limits)? else {
                        return need_more(pos);
                    };
                    // Trailers are validated like head fields (forbidden names, syntax,
                    // singletons) and then dropped: gunicorn keeps them in req.trailers,
                    // which WSGI never exposes.
                    let mut policy = FieldPolicy::new(Section::Trailers, Version::Http11);
                    parse_fields(&rest[..end], scan.lines, &mut policy)?;
                    return Ok((
                        Decoded {
                            consumed: pos + end,
                            data: pos + end..pos + end,
                        },
                        true,
                    ));
                }
            }
        }
    }
}

/// Parse a chunk-size line at the start of `rest` with gunicorn's `parse_chunk_size`
/// rules: `Some((size, line length with CRLF))`, or `None` while it is incomplete.
///
/// The line is bounded by `limit` bytes: gunicorn fails once it has buffered more than
/// that without a CRLF, so the CRLF must end within the first `limit + 1` bytes.
fn chunk_size_line(rest: &[u8], limit: usize) -> Result<Option<(u64, usize)>, HttpError> {
    let window = &rest[..rest.len().min(limit.saturating_add(1))];
    let Some(idx) = memmem::find(window, b"\r\n") else {
        if rest.len() > limit {
            return Err(HttpError::InvalidChunkSize(format!(
                "line over {limit} bytes with no terminator"
            )));
        }
        return Ok(None);
    };
    let line = &rest[..idx];
    // RFC 9112 section 7.1.1: BWS is allowed before a chunk extension, and only then.
    let (size, ext) = match memchr::memchr(b';', line) {
        Some(semi) => {
            let ext = &line[semi..];
            if ext.contains(&b'\r') {
                return Err(HttpError::InvalidChunkExtension(
                    "bare CR not allowed".to_string(),
                ));
            }
            let mut size = &line[..semi];
            while let [rest @ .., b' ' | b'\t'] = size {
                size = rest;
            }
            (size, Some(ext))
        }
        None => (line, None),
    };
    // Hex digits only: no sign, no "0x", no inner spaces (gunicorn 27). The size is
    // checked before the extension so that a bad size is reported as such.
    if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(HttpError::InvalidChunkSize(latin1(size)));
    }
    if let Some(ext) = ext {
        if !chunk_ext_is_valid(ext) {
            return Err(HttpError::InvalidChunkExtension(
                "invalid chunk extension".to_string(),
            ));
        }
    }
    // Python's int() has no ceiling; a size past u64 could never be sent anyway.
    let value = size.iter().try_fold(0u64, |acc, &d| {
        let digit = u64::from(char::from(d).to_digit(16).unwrap_or(0));
        acc.checked_mul(16).and_then(|v| v.checked_add(digit))
    });
    match value {
        Some(v) => Ok(Some((v, idx + 2))),
        None => Err(HttpError::InvalidChunkSize(latin1(size))),
    }
}

/// gunicorn's `CHUNK_EXT_RE.fullmatch` on the text from the first `;` (RFC 9112 section
/// 7.1.1): `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_ext_is_valid(ext: &[u8]) -> bool {
    let skip_ws = |mut i: usize| {
        while matches!(ext.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        i
    };
    let token_end = |mut i: usize| {
        while ext.get(i).is_some_and(|&b| super::parse::is_tchar(b)) {
            i += 1;
        }
        i
    };
    let mut i = 0;
    while i < ext.len() {
        i = skip_ws(i);
        if ext.get(i) != Some(&b';') {
            return false;
        }
        i = skip_ws(i + 1);
        let name_end = token_end(i);
        if name_end == i {
            return false;
        }
        i = name_end;
        let after_ws = skip_ws(i);
        if ext.get(after_ws) == Some(&b'=') {
            i = skip_ws(after_ws + 1);
            if ext.get(i) == Some(&b'"') {
                match quoted_string_end(ext, i) {
                    Some(end) => i = end,
                    None => return false,
                }
            } else {
                let value_end = token_end(i);
                if value_end == i {
                    return false;
                }
                i = value_end;
            }
        }
    }
    true
}

/// The index just past the quoted-string (RFC 9110 section 5.6.4) opening at `start`.
fn quoted_string_end(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match *s.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *s.get(i + 1)? {
                // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
                b'\t' | b' '..=b'~' | 0x80..=0xff => i += 2,
                _ => return None,
            },
            // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            b'\t' | b' ' | b'!' | b'#'..=b'[' | b']'..=b'~' | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::http::parse::tests::splittings;

    /// Decode `input` fed in reads of `steps` bytes, as a caller would: append each
    /// read, decode until no progress, drop what was consumed. Returns the body, the
    /// bytes left over after the body, or the error (EOF mapped with eof_error).
    fn run(
        kind: BodyKind,
        limits: &Limits,
        input: &[u8],
        steps: &[usize],
    ) -> Result<(Vec<u8>, Vec<u8>), HttpError> {
        let mut dec = Decoder::new(kind, limits);
        let mut buf: Vec<u8> = Vec::new();
        let mut body = Vec::new();
        let mut fed = 0;
        let mut steps = steps.iter();
        loop {
            loop {
                let d = dec.decode(&buf)?;
                assert!(d.data.end <= d.consumed);
                body.extend_from_slice(&buf[d.data.clone()]);
                buf.drain(..d.consumed);
                if d.consumed == 0 || dec.is_done() {
                    break;
                }
            }
            if dec.is_done() {
                buf.extend_from_slice(&input[fed..]);
                return Ok((body, buf));
            }
            match steps.next() {
                Some(&n) => {
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
                None => return Err(dec.eof_error(&buf)),
            }
        }
    }

    /// `run` with every splitting; all must agree (errors by kind).
    fn run_all(
        kind: BodyKind,
        limits: &Limits,
        input: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), HttpError> {
        let whole = run(kind, limits, input, &[input.len()]);
        for (i, steps) in splittings(input.len(), input.len() as u64 * 17 + 3)
            .iter()
            .enumerate()
        {
            let split = run(kind, limits, input, steps);
            match (&whole, &split) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "split #{i} on {:?}", latin1(input)),
                (Err(a), Err(b)) => assert_eq!(
                    std::mem::discriminant(a),
                    std::mem::discriminant(b),
                    "split #{i}: {a:?} vs {b:?} on {:?}",
                    latin1(input)
                ),
                _ => panic!("split #{i}: {whole:?} vs {split:?} on {:?}", latin1(input)),
            }
        }
        whole
    }

    fn chunked(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), HttpError> {
        run_all(BodyKind::Chunked, &Limits::default(), input)
    }

    fn chunked_err(input: &[u8]) -> HttpError {
        match chunked(input) {
            Err(e) => e,
            Ok(v) => panic!("expected an error from {:?}, got {v:?}", latin1(input)),
        }
    }

    #[test]
    fn empty_and_zero_length_are_done() {
        assert!(Decoder::new(BodyKind::Empty, &Limits::default()).is_done());
        assert!(Decoder::new(BodyKind::Length(0), &Limits::default()).is_done());
        let mut dec = Decoder::new(BodyKind::Empty, &Limits::default());
        assert_eq!(
            dec.decode(b"GET / HTTP/1.1\r\n").unwrap(),
            Decoded {
                consumed: 0,
                data: 0..0
            }
        );
    }

    #[test]
    fn content_length_bodies() {
        for (n, input) in [
            (1u64, &b"a"[..]),
            (5, b"hello"),
            (3, b"abcGET / HTTP/1.1\r\n\r\n"),
            (10, b"0123456789"),
        ] {
            let (body, rest) = run_all(BodyKind::Length(n), &Limits::default(), input).unwrap();
            assert_eq!(body, &input[..n as usize]);
            assert_eq!(rest, &input[n as usize..]);
        }
        let mut dec = Decoder::new(BodyKind::Length(4), &Limits::default());
        assert_eq!(
            dec.decode(b"ab").unwrap(),
            Decoded {
                consumed: 2,
                data: 0..2
            }
        );
        assert!(!dec.is_done());
        assert_eq!(dec.eof_error(b""), HttpError::IncompleteBody);
        assert_eq!(
            run_all(BodyKind::Length(5), &Limits::default(), b"abc"),
            Err(HttpError::IncompleteBody)
        );
    }

    #[test]
    fn chunked_bodies() {
        for (input, body, rest) in [
            (&b"0\r\n\r\n"[..], &b""[..], &b""[..]),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
            (
                b"5\r\nhello\r\n1a;name=value;q=\"quoted\"\r\nabcdefghijklmnopqrstuvwxyz\r\nA\r\n0123456789\r\n0\r\nX-Checksum: 42\r\n\r\n",
                b"helloabcdefghijklmnopqrstuvwxyz0123456789",
                b"",
            ),
            (b"3\r\n\x00\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n", b"\x00\r\n", b"GET / HTTP/1.1\r\n\r\n"),
            (b"000001\r\nx\r\n00\r\n\r\n", b"x", b""),
            (b"1 ; a\t;b = c ;d=\"x\\\"y\"\r\nz\r\n0;e\r\nA: 1\r\nContent-Type: x\r\n\r\n", b"z", b""),
        ] {
            let (got, left) = chunked(input).unwrap();
            assert_eq!(got, body, "{:?}", latin1(input));
            assert_eq!(left, rest);
        }
        let mut big = b"fF\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'q', 255));
        big.extend_from_slice(b"\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n");
        let (got, _) = chunked(&big).unwrap();
        assert_eq!(got.len(), 255 + 16);
    }

    #[test]
    fn one_data_run_per_call() {
        let mut dec = Decoder::new(BodyKind::Chunked, &Limits::default());
        let input = b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n";
        let d = dec.decode(input).unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 5,
                data: 3..5
            }
        );
        let d = dec.decode(&input[5..]).unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 8,
                data: 5..8
            }
        );
        let d = dec.decode(&input[13..]).unwrap();
        assert_eq!(
            d,
            Decoded {
                consumed: 7,
                data: 7..7
            }
        );
        assert!(dec.is_done());
    }

    #[test]
    fn chunk_size_rules() {
        for (input, expected) in [
            (&b"-1\r\n"[..], HttpError::InvalidChunkSize("-1".into())),
            (b"+1\r\n", HttpError::InvalidChunkSize("+1".into())),
            (b"0x1\r\n", HttpError::InvalidChunkSize("0x1".into())),
            (b" 1\r\n", HttpError::InvalidChunkSize(" 1".into())),
            (b"1 \r\n", HttpError::InvalidChunkSize("1 ".into())),
            (b"1 2;a\r\n", HttpError::InvalidChunkSize("1 2".into())),
            (b"\r\n", HttpError::InvalidChunkSize(String::new())),
            (b";a\r\n", HttpError::InvalidChunkSize(String::new())),
            (b"g\r\n", HttpError::InvalidChunkSize("g".into())),
            (b"1\n\r\n", HttpError::InvalidChunkSize("1\n".into())),
            (
                b"10000000000000000\r\n",
                HttpError::InvalidChunkSize("10000000000000000".into()),
            ),
        ] {
            assert_eq!(chunked_err(input), expected, "{:?}", latin1(input));
        }
        assert_eq!(
            HttpError::InvalidChunkSize("-1".into()).to_string(),
            "Invalid chunk size: b'-1'"
        );
        // u64::MAX itself is a valid size (the client would just never finish).
        let mut dec = Decoder::new(BodyKind::Chunked, &Limits::default());
        let d = dec.decode(b"ffffffffffffffff\r\nab").unwrap();
        assert_eq!(d.data, 18..20);
    }

    #[test]
    fn chunk_size_line_is_bounded_by_field_size() {
        let limits = Limits {
            field_size: 10,
            ..Limits::default()
        };
        // A 9-byte line with its CRLF ends within limit + 1 bytes.
        let ok_line = b"1;abcdefg\r\nx\r\n0\r\n\r\n";
        assert_eq!(
            run_all(BodyKind::Chunked, &limits, ok_line).unwrap().0,
            b"x"
        );
        let e = run_all(BodyKind::Chunked, &limits, b"1;abcdefgh\r\nx\r\n0\r\n\r\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid chunk size: b'line over 10 bytes with no terminator'"
        );
        // Refused while incomplete, not waited on.
        let mut dec = Decoder::new(BodyKind::Chunked, &limits);
        assert!(dec.decode(b"1;aaaaaaaaaaaa").is_err());
        let mut dec = Decoder::new(BodyKind::Chunked, &limits);
        assert_eq!(dec.decode(b"1;aaaaaaa").unwrap().consumed, 0);
    }

    #[test]
    fn chunk_extension_rules() {
        let bad = HttpError::InvalidChunkExtension("invalid chunk extension".into());
        for input in [
            &b"1;\r\nx\r\n0\r\n\r\n"[..],
            b"1;=a\r\nx\r\n0\r\n\r\n",
            b"1;a=\r\nx\r\n0\r\n\r\n",
            b"1;a b\r\nx\r\n0\r\n\r\n",
            b"1;a \r\nx\r\n0\r\n\r\n",
            b"1;a=\"x\r\nx\r\n0\r\n\r\n",
            b"1;a=\"\x01\"\r\nx\r\n0\r\n\r\n",
            b"1;a=\"\\\x7f\"\r\nx\r\n0\r\n\r\n",
            b"1;a;;b\r\nx\r\n0\r\n\r\n",
            b"1;a(b)\r\nx\r\n0\r\n\r\n",
            b"1;a\nb\r\nx\r\n0\r\n\r\n",
        ] {
            assert_eq!(chunked_err(input), bad, "{:?}", latin1(input));
        }
        assert_eq!(
            chunked_err(b"1;a\rb\r\nx\r\n0\r\n\r\n"),
            HttpError::InvalidChunkExtension("bare CR not allowed".into())
        );
        for input in [
            &b"1;a\r\nx\r\n0\r\n\r\n"[..],
            b"1 \t;a=b\r\nx\r\n0\r\n\r\n",
            b"1;a=\"\"\r\nx\r\n0\r\n\r\n",
            b"1;a=\"\xff\\\xff \\\"\"\r\nx\r\n0\r\n\r\n",
            b"1;a;b;c=d\r\nx\r\n0\r\n\r\n",
        ] {
            assert_eq!(chunked(input).unwrap().0, b"x", "{:?}", latin1(input));
        }
    }

    #[test]
    fn chunk_terminators() {
        let e = chunked_err(b"3\r\nabcdef\r\n0\r\n\r\n");
        assert_eq!(e, HttpError::ChunkMissingTerminator("de".into()));
        assert_eq!(
            e.to_string(),
            "Invalid chunk terminator is not '\\r\\n': b'de'"
        );
        assert_eq!(e.status(), 400);
        // EOF where the CRLF was due: 400, not a silent close (gunicorn 26.1+/27).
        assert_eq!(
            chunked_err(b"3\r\nabc"),
            HttpError::ChunkMissingTerminator(String::new())
        );
        assert_eq!(
            chunked_err(b"3\r\nabc\r"),
            HttpError::ChunkMissingTerminator("\r".into())
        );
        // EOF after the last chunk, before the final CRLF.
        assert_eq!(
            chunked_err(b"3\r\nabc\r\n0\r\n"),
            HttpError::ChunkMissingTerminator(String::new())
        );
        assert_eq!(
            chunked_err(b"0\r\nA: b\r\n"),
            HttpError::ChunkMissingTerminator(String::new())
        );
        // EOF in a size line or in data: the client went away, no response.
        assert_eq!(chunked_err(b"3\r\nab"), HttpError::IncompleteBody);
        assert_eq!(chunked_err(b"3"), HttpError::IncompleteBody);
        assert_eq!(chunked_err(b""), HttpError::IncompleteBody);
        assert_eq!(chunked_err(b"3\r\nabc\r\n"), HttpError::IncompleteBody);
    }

    #[test]
    fn trailer_rules() {
        for name in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Trailer",
            "Authorization",
            "TE",
        ] {
            let input = format!("1\r\nx\r\n0\r\n{name}: v\r\n\r\n");
            let e = chunked_err(input.as_bytes());
            assert_eq!(e, HttpError::InvalidTrailer(name.to_ascii_uppercase()));
            assert_eq!(
                e.to_string(),
                format!("Invalid HTTP header name: '{}'", name.to_ascii_uppercase())
            );
        }
        assert_eq!(
            chunked_err(b"0\r\nBad Name: v\r\n\r\n"),
            HttpError::InvalidHeaderName("Bad Name".into())
        );
        assert_eq!(
            chunked_err(b"0\r\nA: \x01\r\n\r\n"),
            HttpError::InvalidHeader("A".into())
        );
        assert_eq!(
            chunked_err(b"0\r\nA: b\r\n c\r\n\r\n"),
            HttpError::ObsoleteFolding("A".into())
        );
        assert_eq!(
            chunked_err(b"0\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n"),
            HttpError::InvalidHeader("CONTENT-TYPE".into())
        );
        assert_eq!(
            chunked_err(b"0\r\nA: b\n\r\n"),
            HttpError::InvalidHeader("bare LF as line terminator".into())
        );
        // Expect is not policed in trailers.
        assert_eq!(chunked(b"0\r\nExpect: nonsense\r\n\r\n").unwrap().0, b"");
        // Trailers obey the field limits.
        let limits = Limits {
            fields: 1,
            field_size: 8,
            ..Limits::default()
        };
        assert!(run_all(BodyKind::Chunked, &limits, b"0\r\nA: 123\r\n\r\n").is_ok());
        assert_eq!(
            run_all(BodyKind::Chunked, &limits, b"0\r\nA: 1234\r\n\r\n"),
            Err(HttpError::LimitRequestHeaders(
                "limit request headers fields size".into()
            ))
        );
        assert_eq!(
            run_all(BodyKind::Chunked, &limits, b"0\r\nA: 1\r\nB: 2\r\n\r\n"),
            Err(HttpError::LimitRequestHeaders(
                "limit request headers fields".into()
            ))
        );
        // Incomplete trailers are not consumed until the section is whole.
        let mut dec = Decoder::new(BodyKind::Chunked, &Limits::default());
        assert_eq!(dec.decode(b"0\r\nA: 1\r\n").unwrap().consumed, 3);
        assert_eq!(dec.decode(b"A: 1\r\n").unwrap().consumed, 0);
        assert_eq!(dec.decode(b"A: 1\r\n\r\nNEXT").unwrap().consumed, 8);
        assert!(dec.is_done());
    }
}

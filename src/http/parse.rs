//! The request head parser: request line, field lines and the framing they imply, with
//! gunicorn 27's acceptance rules.
//!
//! This module owns everything from the first byte of a request to the blank line that
//! ends its head. It works in three steps:
//!
//! 1. **Line scan** (prefix-closed): as bytes arrive, each line is located and checked
//!    for the things that must fail *before* the head is complete: a bare LF, a request
//!    line over `limit_request_line` (414), a field line over `limit_request_field_size`
//!    or one field too many (431). Each check depends only on the bytes up to the point
//!    where it fires, so the outcome is the same however the input is split into reads,
//!    and an over-long head fails as soon as it is over instead of waiting forever.
//! 2. **Request line** (hand-parsed, checked as soon as its CRLF arrives, like gunicorn's
//!    `parse_request_line`): method, request-target and version.
//! 3. **Fields** (once the blank line is in): tokenized by `httparse`, then gunicorn's
//!    policy (singleton fields, `Expect`), then framing (`Content-Length`,
//!    `Transfer-Encoding`) and persistence (`Connection`).
//!
//! [`HeadParser`] keeps the scan position between calls so a head that trickles in is
//! scanned once, not once per read; [`parse_head`] is the stateless form.
//!
//! Where this differs from gunicorn on purpose, the comment at the spot says so. The main
//! one: gunicorn checks a complete head's lines one at a time for everything, so a bad
//! line before an over-long one gives 400; here the length and count limits are checked
//! first (while the head is read), so that the answer does not depend on how the bytes
//! were split into reads.

use std::ops::Range;

use memchr::{memchr, memmem};

use super::error::{latin1, HttpError};

/// gunicorn's ceiling for `limit_request_line` (`MAX_REQUEST_LINE`).
const MAX_REQUEST_LINE: usize = 8190;
/// gunicorn's ceiling for `limit_request_fields` (`MAX_HEADERS`).
const MAX_HEADERS: usize = 32768;
/// gunicorn's default for a non-positive `limit_request_field_size`.
const DEFAULT_MAX_HEADERFIELD_SIZE: usize = 8190;
/// The request-line cap used when `limit_request_line` is 0 ("unlimited").
///
/// gunicorn's Python parser then never stops reading a request line; its C parser
/// (`gunicorn_h1c`, used by 27.x whenever it is installed) uses 1 MiB instead, which is
/// what we do so that a client cannot grow the buffer without bound.
const UNLIMITED_REQUEST_LINE_CAP: usize = 1024 * 1024;

/// What gunicorn says for a bare LF: RFC 9112 section 2.2 makes CRLF the only line
/// terminator, and 27.x refuses a lone LF at once rather than wait for a CRLF.
const BARE_LF: &str = "bare LF as line terminator";

/// Size limits on the request head (gunicorn's `limit_request_*` settings).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest request line, CRLF excluded (`limit_request_line`); 0 means unlimited.
    pub request_line: usize,
    /// Most field lines in the head, and in a trailer section (`limit_request_fields`).
    pub fields: usize,
    /// Longest field line, CRLF included (`limit_request_field_size`). Also bounds a
    /// chunk-size line.
    pub field_size: usize,
}

impl Limits {
    /// Limits from the raw setting values, clamped as gunicorn 27 does: `request_line`
    /// above 8190 becomes 8190 (gunicorn logs nothing about it either), 0 stays
    /// unlimited and a negative value means 8190; `fields` of 0 or less, or above
    /// 32768, becomes 32768; `field_size` of 0 or less becomes 8190 (27.x: 0 is no
    /// longer "unlimited").
    pub fn from_settings(request_line: i64, fields: i64, field_size: i64) -> Limits {
        let request_line = match usize::try_from(request_line) {
            Ok(n) => n.min(MAX_REQUEST_LINE),
            Err(_) => MAX_REQUEST_LINE,
        };
        let fields = match usize::try_from(fields) {
            Ok(n) if (1..=MAX_HEADERS).contains(&n) => n,
            _ => MAX_HEADERS,
        };
        let field_size = match usize::try_from(field_size) {
            Ok(n) if n > 0 => n,
            _ => DEFAULT_MAX_HEADERFIELD_SIZE,
        };
        Limits {
            request_line,
            fields,
            field_size,
        }
    }

    /// The request-line limit the scanner enforces (the 1 MiB cap stands in for 0).
    fn request_line_max(&self) -> usize {
        if self.request_line == 0 {
            UNLIMITED_REQUEST_LINE_CAP
        } else {
            self.request_line
        }
    }

    /// The field-count limit, with a hand-built 0 read the way `from_settings` would.
    pub(crate) fn fields_max(&self) -> usize {
        if self.fields == 0 {
            MAX_HEADERS
        } else {
            self.fields
        }
    }

    /// The field-line size limit, with a hand-built 0 read the way `from_settings`
    /// would.
    pub(crate) fn field_size_max(&self) -> usize {
        if self.field_size == 0 {
            DEFAULT_MAX_HEADERFIELD_SIZE
        } else {
            self.field_size
        }
    }
}

impl Default for Limits {
    /// gunicorn's defaults: 4094, 100, 8190.
    fn default() -> Limits {
        Limits {
            request_line: 4094,
            fields: 100,
            field_size: 8190,
        }
    }
}

/// The protocol version of a request. gunicorn accepts `HTTP/1.0` to `HTTP/1.9`; this
/// parser only 1.0 and 1.1 (see [`parse_head`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`: close by default, no chunked request bodies, `Expect` ignored.
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

impl Version {
    /// The version as written on the wire and in `SERVER_PROTOCOL`, e.g. `"HTTP/1.0"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// How the request body is delimited (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// Neither Content-Length nor Transfer-Encoding: no body. Requests are never read
    /// until the connection closes.
    Empty,
    /// `Content-Length: n` (possibly 0).
    Length(u64),
    /// `Transfer-Encoding: ..., chunked`.
    Chunked,
}

/// A parsed and accepted request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method as sent (an uppercase token, 3 to 20 characters).
    pub method: String,
    /// The request-target exactly as sent (printable ASCII), with `?query` and
    /// `#fragment` (gunicorn's `RAW_URI`).
    pub target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: Version,
    /// Field lines in order: the name as sent (an ASCII token, not case-folded) and the
    /// value with leading and trailing SP/HTAB removed, as raw bytes (0x80-0xff kept).
    pub headers: Vec<(String, Vec<u8>)>,
    /// How the body is delimited.
    pub body: BodyKind,
    /// Whether the connection may serve another request after this one
    /// (gunicorn's `not Message.should_close()`).
    pub keep_alive: bool,
    /// An HTTP/1.1 request with `Expect: 100-continue`: send `100 Continue` before
    /// reading the body.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The target split into raw (still percent-encoded) path, query and fragment,
    /// the way gunicorn's `split_request_uri` (`urllib.parse.urlsplit`) does.
    ///
    /// Absolute-form `http://h/p?q` gives path `/p`; a target starting with `//` is a
    /// path, never an authority (gunicorn #297); `*` gives path `*`. For CONNECT's
    /// authority-form, urlsplit reads `host:443` as scheme `host` and path `443`, and so
    /// does this.
    pub fn split_target(&self) -> (&str, &str, &str) {
        let target = self.target.as_str();
        if target.starts_with("//") {
            return split_path_query_fragment(target);
        }
        split_path_query_fragment(&target[urlsplit_prefix(target).end..])
    }

    /// The value of the first field with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Percent-decode a path the way Python's `urllib.parse.unquote_to_bytes` does:
/// `%2F` becomes `/`, and a `%` not followed by two hex digits is kept as it is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|&c| hex_value(c)),
                bytes.get(i + 2).and_then(|&c| hex_value(c)),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// Parse a request head from the start of `buf`.
///
/// Returns `Ok(None)` when the head is not complete yet and what is buffered is still
/// within the limits; `Ok(Some((head, consumed)))` once the blank line is in, where
/// `consumed` counts the bytes through that blank line (a pipelined request or the body
/// starts at `buf[consumed..]`); `Err` as soon as the bytes seen so far are refused.
///
/// One CRLF before the request line is skipped (RFC 9112 section 2.2, gunicorn >= 27);
/// a second one is an empty request line. `HTTP/1.2` to `HTTP/1.9`, which gunicorn
/// accepts, are refused with [`HttpError::InvalidVersion`] because [`Version`] has no
/// way to carry them.
///
/// This re-scans `buf` from the start on every call; a caller that calls again after
/// every small read should keep a [`HeadParser`] instead.
///
/// # Errors
///
/// The [`HttpError`] gunicorn 27 raises for the first fault in the bytes: a bad request
/// line, method, target or version, a bad field line, a limit exceeded (414, 431), bad
/// framing headers, an unknown transfer coding (501) or an unmet `Expect` (417).
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HttpError> {
    HeadParser::new(limits).parse(buf)
}

/// An incremental [`parse_head`] that remembers how far it has scanned.
///
/// Call [`HeadParser::parse`] with the whole buffered input each time more bytes
/// arrive; the bytes already passed must not change between calls (append only). After
/// it returns a head it starts over, ready for the next request once the caller has
/// dropped the consumed bytes. Results are the same as [`parse_head`]'s on the same
/// bytes, whatever the read sizes.
#[derive(Debug, Clone)]
pub struct HeadParser {
    limits: Limits,
    state: HeadState,
    /// Length of the buffer at the last call. A shorter one breaks the append-only
    /// contract; the parser then starts over rather than index past the end.
    seen: usize,
}

/// Where a head parse stands.
#[derive(Debug, Clone)]
enum HeadState {
    /// Nothing decided yet: waiting for two bytes to know whether the buffer starts
    /// with the one CRLF that may be skipped.
    Start,
    /// Reading the request line, which starts at `start`.
    RequestLine { start: usize },
    /// The request line was accepted; reading field lines from `fields_start`.
    Fields {
        line: RequestLine,
        fields_start: usize,
        scan: BlockScan,
    },
}

impl HeadParser {
    /// A parser for one request head at a time, under `limits`.
    pub fn new(limits: &Limits) -> HeadParser {
        HeadParser {
            limits: *limits,
            state: HeadState::Start,
            seen: 0,
        }
    }

    /// Continue parsing; same contract as [`parse_head`] on `buf`.
    ///
    /// # Errors
    ///
    /// As [`parse_head`]. After an error the connection is done with; the parser is not
    /// meant to be called again.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
        if buf.len() < self.seen {
            self.state = HeadState::Start;
        }
        self.seen = buf.len();
        loop {
            // The state is taken by value and put back when more bytes are needed; an
            // error leaves it at Start, and the connection is finished anyway.
            match std::mem::replace(&mut self.state, HeadState::Start) {
                HeadState::Start => match buf {
                    [] | [b'\r'] => return Ok(None),
                    [b'\r', b'\n', ..] => self.state = HeadState::RequestLine { start: 2 },
                    _ => self.state = HeadState::RequestLine { start: 0 },
                },
                HeadState::RequestLine { start } => {
                    match scan_request_line(buf, start, self.limits.request_line_max())? {
                        None => {
                            self.state = HeadState::RequestLine { start };
                            return Ok(None);
                        }
                        Some(line_end) => {
                            let line = parse_request_line(&buf[start..line_end])?;
                            self.state = HeadState::Fields {
                                line,
                                // line_end is the CR; the fields start after the LF.
                                fields_start: line_end + 2,
                                scan: BlockScan::default(),
                            };
                        }
                    }
                }
                HeadState::Fields {
                    line,
                    fields_start,
                    mut scan,
                } => match scan.scan(&buf[fields_start..], &self.limits)? {
                    None => {
                        self.state = HeadState::Fields {
                            line,
                            fields_start,
                            scan,
                        };
                        return Ok(None);
                    }
                    Some(end) => {
                        // Done with this head; the parser is ready for the next one.
                        self.seen = 0;
                        let block = &buf[fields_start..fields_start + end];
                        return finish_head(line, block, scan.lines)
                            .map(|head| Some((head, fields_start + end)));
                    }
                },
            }
        }
    }
}

/// A checked request line.
#[derive(Debug, Clone)]
struct RequestLine {
    method: String,
    target: String,
    version: Version,
}

/// Find the end of the request line starting at `start`: the index of its CR once the
/// CRLF is in, `None` while more bytes may still make a valid line.
///
/// gunicorn's `read_line` refuses a line longer than `max` (CRLF excluded). An LF at
/// offset `p` ends a line of `p - 1` bytes, so it must come by offset `max + 1`: once
/// `max + 2` bytes have no LF the line is too long, whatever follows.
fn scan_request_line(buf: &[u8], start: usize, max: usize) -> Result<Option<usize>, HttpError> {
    let rest = &buf[start..];
    let window = &rest[..rest.len().min(max.saturating_add(2))];
    match memchr(b'\n', window) {
        Some(p) => {
            if p == 0 || rest[p - 1] != b'\r' {
                return Err(HttpError::InvalidRequestLine(BARE_LF.to_string()));
            }
            Ok(Some(start + p - 1))
        }
        None if rest.len() >= max.saturating_add(2) => {
            // Report what gunicorn reports: the line's length when its CRLF is already
            // buffered, else how much was buffered.
            let size = memmem::find(rest, b"\r\n").unwrap_or(rest.len());
            Err(HttpError::LimitRequestLine { size, max })
        }
        None => Ok(None),
    }
}

/// Check a request line (CRLF excluded) with gunicorn's `parse_request_line` rules, in
/// its order: three parts, then the method, then the target, then the version.
///
/// Hand-parsed rather than with `httparse` because httparse cannot express these rules:
/// it skips any number of empty lines before the request line (gunicorn skips one CRLF,
/// a second is an empty request line), reports a bad method and a bad target alike as
/// `Error::Token` while gunicorn tells `InvalidRequestMethod` from `InvalidRequestLine`
/// (and names the offending part in the message), and accepts raw 0x80-0xff in the
/// target. Splitting on single spaces gives those answers directly.
fn parse_request_line(line: &[u8]) -> Result<RequestLine, HttpError> {
    let invalid_line = || HttpError::InvalidRequestLine(latin1(line));
    // gunicorn: line_bytes.split(b" ", 2), and exactly three parts.
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid_line());
    };

    // RFC 9110 section 9.1: a method is a token. gunicorn also refuses lowercase and '#'
    // and asks for 3 to 20 characters (unless permit_unconventional_http_method), which
    // covers every IANA-registered method.
    if method.iter().any(|&b| b.is_ascii_lowercase() || b == b'#')
        || !(3..=20).contains(&method.len())
        || !method.iter().all(|&b| is_tchar(b))
    {
        return Err(HttpError::InvalidMethod(latin1(method)));
    }
    let method = latin1(method);

    // RFC 9112 section 3.2 / RFC 3986 section 2: the target is printable ASCII, the rest
    // must be percent-encoded (27.x refuses CTLs and raw non-ASCII).
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(invalid_line());
    }
    let target = latin1(target);
    // RFC 9112 section 3.2.4: asterisk-form only with OPTIONS.
    if target == "*" && method != "OPTIONS" {
        return Err(invalid_line());
    }
    // RFC 9112 section 3.2.3: authority-form only with CONNECT. gunicorn takes anything
    // that is not origin-form ('/'), absolute-form ("://") or '*' to be authority-form.
    if method != "CONNECT" && target != "*" && !target.starts_with('/') && !target.contains("://") {
        return Err(invalid_line());
    }
    // urlsplit raises ValueError (answered as InvalidRequestLine) for a bad bracketed
    // host in an absolute-form target.
    if !target.starts_with("//") && !netloc_is_valid(&target[urlsplit_prefix(&target)]) {
        return Err(invalid_line());
    }

    // gunicorn: VERSION_RE.fullmatch(r"HTTP/(\d)\.(\d)"), then 1.0 <= version < 2.0.
    let version = match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0'] => Version::Http10,
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'1'] => Version::Http11,
        // The rest, well formed or not, is refused; the error's Display renders a well
        // formed one as gunicorn's tuple, e.g. "(2, 0)". HTTP/1.2-1.9 land here too (see
        // parse_head).
        _ => return Err(HttpError::InvalidVersion(latin1(version))),
    };
    Ok(RequestLine {
        method,
        target,
        version,
    })
}

/// Python's `urlsplit` on `target` up to the start of the path: a scheme (letters,
/// digits, `+-.`, starting with a letter, before the first ':'), then `//authority`.
/// Returns the byte range of the authority (netloc), which ends where the path starts.
fn urlsplit_prefix(target: &str) -> Range<usize> {
    let bytes = target.as_bytes();
    let mut pos = 0;
    if let Some(colon) = memchr(b':', bytes) {
        let scheme = &bytes[..colon];
        if scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            pos = colon + 1;
        }
    }
    if bytes[pos..].starts_with(b"//") {
        let start = pos + 2;
        let len = bytes[start..]
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(bytes.len() - start);
        start..start + len
    } else {
        pos..pos
    }
}

/// Whether Python's `urlsplit` accepts this netloc (`_check_bracketed_netloc`):
/// brackets must pair up and hold an IPv6 address or an `IPvFuture` literal.
fn netloc_is_valid(netloc: &str) -> bool {
    let (open, close) = (netloc.contains('['), netloc.contains(']'));
    if open != close {
        return false;
    }
    if !open {
        return true;
    }
    let host_port = netloc.rsplit_once('@').map_or(netloc, |(_, h)| h);
    let host = match host_port.split_once('[') {
        Some((before, bracketed)) => {
            if !before.is_empty() {
                return false;
            }
            let (host, port) = bracketed.split_once(']').unwrap_or((bracketed, ""));
            if !port.is_empty() && !port.starts_with(':') {
                return false;
            }
            host
        }
        None => host_port.split_once(':').map_or(host_port, |(h, _)| h),
    };
    if let Some(rest) = host.strip_prefix('v') {
        // IPvFuture: r"\Av[a-fA-F0-9]+\..+\z"
        return match rest.split_once('.') {
            Some((hex, tail)) => {
                !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !tail.is_empty()
            }
            None => false,
        };
    }
    // ipaddress.ip_address: an IPv4 address in brackets is refused, an IPv6 one may
    // carry a non-empty %scope.
    let addr = match host.split_once('%') {
        Some((addr, scope)) if !scope.is_empty() && !scope.contains('%') => addr,
        Some(_) => return false,
        None => host,
    };
    addr.parse::<std::net::Ipv6Addr>().is_ok()
}

/// urlsplit's last step: split off `#fragment`, then `?query`.
fn split_path_query_fragment(s: &str) -> (&str, &str, &str) {
    let (rest, fragment) = s.split_once('#').unwrap_or((s, ""));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    (path, query, fragment)
}

/// The value of an ASCII hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 section 5.6.2 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// A resumable line scan over a field section (the head's fields or a chunked body's
/// trailers), enforcing what must fail before the section is complete.
///
/// The section is field lines then an empty line, every line ending in CRLF. The checks,
/// in the order gunicorn's `parse_headers` makes them for each line: one field over
/// `fields` (431 "limit request headers fields"), then a field line over `field_size`
/// bytes CRLF included (431 "limit request headers fields size"). A bare LF anywhere is
/// `InvalidHeader("bare LF as line terminator")` (RFC 9112 section 2.2).
///
/// gunicorn applies these limits once the section is complete and meanwhile only caps
/// the whole buffer at `fields * (field_size + 2) + 4` bytes; the per-line limits are
/// tighter than that cap, so checking them early refuses the same sections, sooner.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BlockScan {
    /// Offset of the first line not yet complete.
    line_start: usize,
    /// Complete field lines so far.
    pub(crate) lines: usize,
}

impl BlockScan {
    /// Scan `block` (which must start where the previous calls' block started, with
    /// bytes only appended) from where the last call stopped. `Some(end)` once the empty
    /// line is in, with `end` just after it.
    pub(crate) fn scan(
        &mut self,
        block: &[u8],
        limits: &Limits,
    ) -> Result<Option<usize>, HttpError> {
        let (fields, field_size) = (limits.fields_max(), limits.field_size_max());
        loop {
            let Some(rest) = block.get(self.line_start..) else {
                // The block shrank (the caller broke the append-only contract):
                // rescan it from the start instead of indexing past its end.
                *self = BlockScan::default();
                continue;
            };
            match rest {
                // A lone CR may still become the empty line.
                [] | [b'\r'] => return Ok(None),
                [b'\r', b'\n', ..] => return Ok(Some(self.line_start + 2)),
                _ => {}
            }
            // gunicorn counts before it looks at the line.
            if self.lines >= fields {
                return Err(HttpError::LimitRequestHeaders(
                    "limit request headers fields".to_string(),
                ));
            }
            // A line of n bytes plus CRLF fits when n + 2 <= field_size, so its LF (at
            // offset n + 1) must be within the first field_size bytes.
            let window = &rest[..rest.len().min(field_size)];
            match memchr(b'\n', window) {
                Some(p) => {
                    if p == 0 || rest[p - 1] != b'\r' {
                        return Err(HttpError::InvalidHeader(BARE_LF.to_string()));
                    }
                    self.lines += 1;
                    self.line_start += p + 1;
                }
                None if rest.len() >= field_size => {
                    return Err(HttpError::LimitRequestHeaders(
                        "limit request headers fields size".to_string(),
                    ));
                }
                None => return Ok(None),
            }
        }
    }
}

/// Which field section is being checked: trailers forbid some names and skip `Expect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Head,
    Trailers,
}

/// gunicorn's per-field policy (`HeaderPolicy._apply_header_policy`, and the trailer
/// check in `parse_headers`), applied to each field in order.
#[derive(Debug)]
pub(crate) struct FieldPolicy {
    section: Section,
    version: Version,
    seen_host: bool,
    seen_content_type: bool,
    expect_continue: bool,
}

impl FieldPolicy {
    pub(crate) fn new(section: Section, version: Version) -> FieldPolicy {
        FieldPolicy {
            section,
            version,
            seen_host: false,
            seen_content_type: false,
            expect_continue: false,
        }
    }

    /// RFC 9110 section 6.5.1: fields that change routing, framing or authentication
    /// may not come as trailers. gunicorn checks this right after the name's syntax.
    fn check_name(&self, name: &str) -> Result<(), HttpError> {
        const FORBIDDEN_TRAILERS: [&str; 6] = [
            "host",
            "content-length",
            "transfer-encoding",
            "trailer",
            "authorization",
            "te",
        ];
        if self.section == Section::Trailers
            && FORBIDDEN_TRAILERS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(name))
        {
            return Err(HttpError::InvalidTrailer(name.to_ascii_uppercase()));
        }
        Ok(())
    }

    /// The checks gunicorn makes once a field's syntax is accepted.
    fn apply(&mut self, name: &str, value: &[u8]) -> Result<(), HttpError> {
        // RFC 9110 section 5.3: Host and Content-Type admit one member only, so a
        // second one leaves the message ambiguous (26.1+). Content-Length duplicates
        // are refused later, with the framing.
        let seen = if name.eq_ignore_ascii_case("host") {
            Some(&mut self.seen_host)
        } else if name.eq_ignore_ascii_case("content-type") {
            Some(&mut self.seen_content_type)
        } else {
            None
        };
        if let Some(seen) = seen {
            if *seen {
                return Err(HttpError::InvalidHeader(name.to_ascii_uppercase()));
            }
            *seen = true;
        }
        if self.section == Section::Head && name.eq_ignore_ascii_case("expect") {
            // RFC 9110 section 10.1.1: the value is case-insensitive; an HTTP/1.0
            // 100-continue MUST be ignored; any other expectation gets 417 (27.x).
            if value.eq_ignore_ascii_case(b"100-continue") {
                if self.version == Version::Http11 {
                    self.expect_continue = true;
                }
            } else {
                return Err(HttpError::ExpectationFailed(latin1(value)));
            }
        }
        Ok(())
    }
}

/// Tokenize a complete field section (`count` field lines then the empty line, no bare
/// LF, as [`BlockScan`] leaves it) and apply `policy` to each field in order.
///
/// `httparse` tokenizes. Its errors do not say which line failed or why in gunicorn's
/// terms (a missing colon, a space before it and a name with a bad byte are all
/// `Error::HeaderName`), so when it refuses the section, the lines are walked again by
/// hand with gunicorn's own checks, in its order, to name the first offending line the
/// way gunicorn does. Both accept exactly the same lines (a test checks this on random
/// input): a token name followed at once by ':', and a value of HTAB, SP, VCHAR and
/// obs-text.
pub(crate) fn parse_fields(
    block: &[u8],
    count: usize,
    policy: &mut FieldPolicy,
) -> Result<Vec<(String, Vec<u8>)>, HttpError> {
    let mut slots = vec![httparse::EMPTY_HEADER; count];
    match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((len, parsed)))
            if len == block.len() && parsed.len() == count =>
        {
            let mut fields = Vec::with_capacity(count);
            for field in parsed {
                policy.check_name(field.name)?;
                policy.apply(field.name, field.value)?;
                fields.push((field.name.to_string(), field.value.to_vec()));
            }
            Ok(fields)
        }
        _ => {
            let result = parse_fields_by_hand(block, policy);
            debug_assert!(
                result.is_err(),
                "httparse refused a field section that gunicorn accepts: {:?}",
                latin1(block)
            );
            result
        }
    }
}

/// gunicorn's `parse_headers`, line by line: no colon (or nothing before it) is
/// `InvalidHeader(line)`; a name that is not a token is `InvalidHeaderName(name)`
/// (this is where `Name : v` fails); a forbidden trailer; a following line starting
/// with SP/HTAB is `ObsoleteFolding` (RFC 9112 section 5.2, refused unless
/// `permit_obsolete_folding`); a CTL other than HTAB, or DEL, in the value is
/// `InvalidHeader(NAME)` (RFC 9110 section 5.5); then the policy.
fn parse_fields_by_hand(
    block: &[u8],
    policy: &mut FieldPolicy,
) -> Result<Vec<(String, Vec<u8>)>, HttpError> {
    let lines = field_lines(block);
    let mut fields = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let colon = match memchr(b':', line) {
            Some(c) if c > 0 => c,
            _ => return Err(HttpError::InvalidHeader(latin1(line))),
        };
        let name = &line[..colon];
        if !name.iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::InvalidHeaderName(latin1(name)));
        }
        let name = latin1(name);
        policy.check_name(&name)?;
        let value = trim_sp_htab(&line[colon + 1..]);
        if lines
            .get(i + 1)
            .is_some_and(|next| matches!(next.first(), Some(b' ' | b'\t')))
        {
            return Err(HttpError::ObsoleteFolding(name.to_ascii_uppercase()));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HttpError::InvalidHeader(name.to_ascii_uppercase()));
        }
        policy.apply(&name, value)?;
        fields.push((name, value.to_vec()));
    }
    Ok(fields)
}

/// The field lines of a section, CRLF removed, the empty line left out.
fn field_lines(block: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut rest = block;
    while let Some(lf) = memchr(b'\n', rest) {
        let line = &rest[..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        lines.push(line);
        rest = &rest[lf + 1..];
    }
    lines
}

/// Strip leading and trailing SP and HTAB (gunicorn's `strip(" \t")`).
pub(crate) fn trim_sp_htab(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Build the head once its fields are in: fields and policy, then framing, then
/// persistence.
fn finish_head(line: RequestLine, block: &[u8], count: usize) -> Result<RequestHead, HttpError> {
    let mut policy = FieldPolicy::new(Section::Head, line.version);
    let headers = parse_fields(block, count, &mut policy)?;
    let (body, must_close) = framing(&headers, line.version)?;
    let keep_alive =
        !must_close && line.method != "CONNECT" && wants_keep_alive(&headers, line.version);
    Ok(RequestHead {
        method: line.method,
        target: line.target,
        version: line.version,
        headers,
        body,
        keep_alive,
        expect_continue: policy.expect_continue,
    })
}

/// gunicorn's `set_body_reader` (RFC 9112 section 6): returns the body kind and whether
/// the connection must close after this request.
///
/// Fields are taken in order and a fault raises as soon as it is seen, as gunicorn's
/// loop does, so with two faults the first one wins.
fn framing(headers: &[(String, Vec<u8>)], version: Version) -> Result<(BodyKind, bool), HttpError> {
    let bad_cl = || HttpError::InvalidHeader("CONTENT-LENGTH".to_string());
    let bad_te = || HttpError::InvalidHeader("TRANSFER-ENCODING".to_string());
    let mut content_length: Option<&[u8]> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut must_close = false;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(bad_cl());
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // A comma list; only SP/HTAB are trimmed around each coding (27.x, #3364).
            for coding in value.split(|&b| b == b',') {
                let coding = trim_sp_htab(coding);
                if coding.eq_ignore_ascii_case(b"chunked") {
                    // Stacked chunking is never intended (RFC 9112 section 6.1).
                    if chunked {
                        return Err(bad_te());
                    }
                    chunked = true;
                } else if coding.eq_ignore_ascii_case(b"identity") {
                    if chunked {
                        return Err(bad_te());
                    }
                } else if [&b"compress"[..], b"deflate", b"gzip"]
                    .iter()
                    .any(|c| coding.eq_ignore_ascii_case(c))
                {
                    // chunked must be the last coding.
                    if chunked {
                        return Err(bad_te());
                    }
                    // gunicorn does not decode these; it serves the request and closes.
                    must_close = true;
                } else {
                    return Err(HttpError::UnsupportedTransferCoding(latin1(value)));
                }
            }
        }
    }
    // RFC 9112 section 6.3: a request whose Transfer-Encoding does not end in chunked
    // has no determinable length and MUST get 400, whatever Content-Length says.
    if transfer_encoding && !chunked {
        return Err(bad_te());
    }
    if chunked {
        // RFC 9112 section 6.1: chunked framing is HTTP/1.1-only; with a
        // Content-Length too, an intermediary may have framed it differently.
        if version == Version::Http10 {
            return Err(bad_te());
        }
        if content_length.is_some() {
            return Err(bad_cl());
        }
        return Ok((BodyKind::Chunked, must_close));
    }
    match content_length {
        // gunicorn: str.isnumeric() then int(), so ASCII digits only: no sign, no
        // spaces, no list. Python's int has no ceiling; a length past u64 is refused.
        Some(v) => {
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(bad_cl());
            }
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(bad_cl)?;
            Ok((BodyKind::Length(n), must_close))
        }
        None => Ok((BodyKind::Empty, must_close)),
    }
}

/// gunicorn's `should_close`, inverted, for the `Connection` part: only the first
/// Connection field counts, and only when it is exactly `close` or `keep-alive`;
/// otherwise HTTP/1.1 persists and HTTP/1.0 closes.
fn wants_keep_alive(headers: &[(String, Vec<u8>)], version: Version) -> bool {
    if let Some((_, value)) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        if value.eq_ignore_ascii_case(b"close") {
            return false;
        }
        if value.eq_ignore_ascii_case(b"keep-alive") {
            return true;
        }
    }
    version == Version::Http11
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// A tiny deterministic PRNG (xorshift64*), so split tests need no rand crate.
    pub(crate) struct XorShift(pub(crate) u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A value in `1..=max`.
        pub(crate) fn upto(&mut self, max: usize) -> usize {
            1 + (self.next() % max as u64) as usize
        }
    }

    /// Split points for `len` bytes: whole, byte by byte, and random reads.
    pub(crate) fn splittings(len: usize, seed: u64) -> Vec<Vec<usize>> {
        let mut out = vec![vec![len], vec![1; len]];
        let mut rng = XorShift(seed | 1);
        for max in [2, 3, 7, 16, 64] {
            let mut steps = Vec::new();
            let mut total = 0;
            while total < len {
                let step = rng.upto(max).min(len - total);
                steps.push(step);
                total += step;
            }
            out.push(steps);
        }
        out
    }

    /// Feed `input` to one HeadParser read by read (each read appends `step` bytes) and
    /// return the first definite result, or `Ok(None)` if the input ran out first.
    fn feed(
        input: &[u8],
        steps: &[usize],
        limits: &Limits,
    ) -> Result<Option<(RequestHead, usize)>, HttpError> {
        let mut parser = HeadParser::new(limits);
        let mut have = 0;
        for &step in steps {
            have += step;
            match parser.parse(&input[..have]) {
                Ok(None) => {}
                done => return done,
            }
        }
        Ok(None)
    }

    /// Parse `input` whole and in many splittings; every way must agree (errors by kind,
    /// since a size in a message may depend on how much was buffered). Also checks that
    /// a fresh `parse_head` on each prefix agrees with the incremental parser.
    fn parse_all_ways(
        input: &[u8],
        limits: &Limits,
    ) -> Result<Option<(RequestHead, usize)>, HttpError> {
        let whole = parse_head(input, limits);
        for (i, steps) in splittings(input.len(), input.len() as u64 * 31 + 7)
            .iter()
            .enumerate()
        {
            let split = feed(input, steps, limits);
            match (&whole, &split) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "split #{i} differs on {:?}", latin1(input)),
                (Err(a), Err(b)) => assert_eq!(
                    std::mem::discriminant(a),
                    std::mem::discriminant(b),
                    "split #{i}: {a:?} vs {b:?} on {:?}",
                    latin1(input)
                ),
                _ => panic!("split #{i}: {whole:?} vs {split:?} on {:?}", latin1(input)),
            }
        }
        // Stateless parse of every prefix: None until complete, never an error for a
        // prefix of a valid request.
        if let Ok(Some((_, consumed))) = &whole {
            for cut in 0..*consumed {
                assert_eq!(parse_head(&input[..cut], limits), Ok(None), "prefix {cut}");
            }
        }
        whole
    }

    fn ok(input: &[u8]) -> (RequestHead, usize) {
        ok_with(input, &Limits::default())
    }

    fn ok_with(input: &[u8], limits: &Limits) -> (RequestHead, usize) {
        match parse_all_ways(input, limits) {
            Ok(Some(done)) => done,
            other => panic!("expected a head from {:?}, got {other:?}", latin1(input)),
        }
    }

    fn err(input: &[u8]) -> HttpError {
        err_with(input, &Limits::default())
    }

    fn err_with(input: &[u8], limits: &Limits) -> HttpError {
        match parse_all_ways(input, limits) {
            Err(e) => e,
            other => panic!("expected an error from {:?}, got {other:?}", latin1(input)),
        }
    }

    fn status(input: &[u8]) -> u16 {
        err(input).status()
    }

    #[test]
    fn simple_get() {
        let (head, consumed) =
            ok(b"GET /p?q=1 HTTP/1.1\r\nHost: example.org\r\nX-A:  b c \t\r\n\r\n");
        assert_eq!(consumed, 55);
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/p?q=1");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(
            head.headers,
            vec![
                ("Host".to_string(), b"example.org".to_vec()),
                ("X-A".to_string(), b"b c".to_vec())
            ]
        );
        assert_eq!(head.body, BodyKind::Empty);
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        assert_eq!(head.header("host"), Some(&b"example.org"[..]));
        assert_eq!(head.header("x-b"), None);
    }

    #[test]
    fn no_fields_and_empty_values() {
        let (head, consumed) = ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(consumed, 18);
        assert!(head.headers.is_empty());
        assert!(!head.keep_alive);
        let (head, _) = ok(b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Sp:   \r\n\r\n");
        assert_eq!(head.headers[0].1, b"");
        assert_eq!(head.headers[1].1, b"");
    }

    #[test]
    fn values_keep_obs_text_and_names_keep_case() {
        let (head, _) =
            ok(b"GET / HTTP/1.1\r\nx-MiXeD: caf\xe9 \xff\r\n!#$%&'*+-.^_`|~09az: t\r\n\r\n");
        assert_eq!(
            head.headers[0],
            ("x-MiXeD".to_string(), b"caf\xe9 \xff".to_vec())
        );
        assert_eq!(head.headers[1].0, "!#$%&'*+-.^_`|~09az");
    }

    #[test]
    fn pipelined_requests() {
        let input = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n";
        let (first, n1) = ok(input);
        assert_eq!(first.target, "/a");
        let rest = &input[n1..];
        let (second, n2) = parse_head(rest, &Limits::default()).unwrap().unwrap();
        assert_eq!(second.target, "/b");
        assert_eq!(second.body, BodyKind::Length(3));
        let rest = &rest[n2 + 3..];
        let (third, n3) = parse_head(rest, &Limits::default()).unwrap().unwrap();
        assert_eq!(third.target, "/c");
        assert_eq!(n3, rest.len());

        // A reused HeadParser starts over after each head.
        let mut parser = HeadParser::new(&Limits::default());
        let (a, n) = parser.parse(input).unwrap().unwrap();
        assert_eq!(a.target, "/a");
        let (b, _) = parser.parse(&input[n..]).unwrap().unwrap();
        assert_eq!(b.target, "/b");
    }

    #[test]
    fn one_leading_crlf_is_skipped() {
        let (head, consumed) = ok(b"\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(head.target, "/");
        assert_eq!(consumed, 20);
        // A second one is an empty request line.
        assert_eq!(
            err(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            HttpError::InvalidRequestLine(String::new())
        );
        // A lone LF is a bare LF.
        assert_eq!(
            err(b"\nGET / HTTP/1.1\r\n\r\n"),
            HttpError::InvalidRequestLine(BARE_LF.into())
        );
        assert_eq!(parse_head(b"\r", &Limits::default()), Ok(None));
    }

    #[test]
    fn bare_lf_is_refused_at_once() {
        assert_eq!(
            err(b"GET / HTTP/1.1\nHost: h\r\n\r\n"),
            HttpError::InvalidRequestLine(BARE_LF.into())
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: h\n\r\n"),
            HttpError::InvalidHeader(BARE_LF.into())
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: h\r\n\n"),
            HttpError::InvalidHeader(BARE_LF.into())
        );
        // Refused without waiting for the rest of the head.
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nA: b\nB", &Limits::default()),
            Err(HttpError::InvalidHeader(BARE_LF.into()))
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\n", &Limits::default()),
            Err(HttpError::InvalidRequestLine(BARE_LF.into()))
        );
    }

    #[test]
    fn request_line_shape() {
        for (input, expected) in [
            (
                &b"GET /\r\n\r\n"[..],
                HttpError::InvalidRequestLine("GET /".into()),
            ),
            (b"GET\r\n\r\n", HttpError::InvalidRequestLine("GET".into())),
            (
                b"GET  / HTTP/1.1\r\n\r\n",
                HttpError::InvalidRequestLine("GET  / HTTP/1.1".into()),
            ),
            (
                b"GET /  HTTP/1.1\r\n\r\n",
                HttpError::InvalidVersion(" HTTP/1.1".into()),
            ),
            (
                b"GET / HTTP/1.1 \r\n\r\n",
                HttpError::InvalidVersion("HTTP/1.1 ".into()),
            ),
            (
                b"GET / HTTP/1.1\r\r\n\r\n",
                HttpError::InvalidVersion("HTTP/1.1\r".into()),
            ),
            (
                b" / HTTP/1.1\r\n\r\n",
                HttpError::InvalidMethod(String::new()),
            ),
        ] {
            assert_eq!(err(input), expected, "{:?}", latin1(input));
        }
    }

    #[test]
    fn method_rules() {
        assert_eq!(
            err(b"get / HTTP/1.1\r\n\r\n"),
            HttpError::InvalidMethod("get".into())
        );
        assert_eq!(
            err(b"GE#T / HTTP/1.1\r\n\r\n"),
            HttpError::InvalidMethod("GE#T".into())
        );
        assert_eq!(status(b"GE / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            err(b"GE(T / HTTP/1.1\r\n\r\n"),
            HttpError::InvalidMethod("GE(T".into())
        );
        assert_eq!(
            err(b"G\xc9T / HTTP/1.1\r\n\r\n"),
            HttpError::InvalidMethod("G\u{c9}T".into())
        );
        // Uppercase tokens of 3-20 characters are fine, registered or not.
        assert_eq!(
            ok(b"ABCDEFGHIJKLMNOPQRST / HTTP/1.1\r\n\r\n").0.method,
            "ABCDEFGHIJKLMNOPQRST"
        );
        assert_eq!(ok(b"M-SEARCH /x HTTP/1.1\r\n\r\n").0.method, "M-SEARCH");
        assert_eq!(ok(b"PROPFIND /x HTTP/1.1\r\n\r\n").0.method, "PROPFIND");
        assert_eq!(ok(b"X_1$ /x HTTP/1.1\r\n\r\n").0.method, "X_1$");
    }

    #[test]
    fn target_rules() {
        let bad = |t: &[u8]| {
            let mut input = b"GET ".to_vec();
            input.extend_from_slice(t);
            input.extend_from_slice(b" HTTP/1.1\r\n\r\n");
            err(&input)
        };
        assert_eq!(
            bad(b"/a\x00b"),
            HttpError::InvalidRequestLine("GET /a\u{0}b HTTP/1.1".into())
        );
        assert_eq!(status(b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n"), 400);
        assert!(matches!(bad(b"/\x7f"), HttpError::InvalidRequestLine(_)));
        assert!(matches!(
            bad(b"relative/path"),
            HttpError::InvalidRequestLine(_)
        ));
        assert!(matches!(bad(b"*"), HttpError::InvalidRequestLine(_)));
        assert!(matches!(
            bad(b"example.com:443"),
            HttpError::InvalidRequestLine(_)
        ));
        assert!(matches!(
            bad(b"http://[::1/"),
            HttpError::InvalidRequestLine(_)
        ));
        assert!(matches!(
            bad(b"http://::1]/"),
            HttpError::InvalidRequestLine(_)
        ));
        assert!(matches!(
            bad(b"http://[1.2.3.4]/"),
            HttpError::InvalidRequestLine(_)
        ));
        assert!(matches!(
            bad(b"http://[nothost]/"),
            HttpError::InvalidRequestLine(_)
        ));
        assert!(matches!(
            bad(b"http://[::1]x/"),
            HttpError::InvalidRequestLine(_)
        ));
        assert!(matches!(
            bad(b"http://a[::1]/"),
            HttpError::InvalidRequestLine(_)
        ));

        assert_eq!(
            ok(b"OPTIONS * HTTP/1.1\r\n\r\n").0.split_target(),
            ("*", "", "")
        );
        let (connect, _) = ok(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        assert!(!connect.keep_alive, "CONNECT closes (RFC 9931 section 8)");
        assert_eq!(connect.split_target(), ("443", "", ""));
        assert_eq!(
            ok(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n").0.target,
            "[::1]:443"
        );
        assert_eq!(
            ok(b"GET http://[::1]:80/x HTTP/1.1\r\n\r\n")
                .0
                .split_target(),
            ("/x", "", "")
        );
        assert_eq!(
            ok(b"GET http://[fe80::1%25eth0]/ HTTP/1.1\r\n\r\n")
                .0
                .target
                .len(),
            24
        );
        assert_eq!(
            ok(b"GET http://[v1.x]/ HTTP/1.1\r\n\r\n")
                .0
                .split_target()
                .0,
            "/"
        );
        // Everything printable is allowed raw, including what RFC 3986 would encode.
        let (head, _) = ok(b"GET /a\"<>\\^`{|}#f?g HTTP/1.1\r\n\r\n");
        assert_eq!(head.target, "/a\"<>\\^`{|}#f?g");
        assert_eq!(head.split_target(), ("/a\"<>\\^`{|}", "", "f?g"));
    }

    #[test]
    fn split_target_like_urlsplit() {
        let split = |t: &str| {
            let head = RequestHead {
                method: "GET".into(),
                target: t.into(),
                version: Version::Http11,
                headers: vec![],
                body: BodyKind::Empty,
                keep_alive: true,
                expect_continue: false,
            };
            let (p, q, f) = head.split_target();
            (p.to_string(), q.to_string(), f.to_string())
        };
        let s = |p: &str, q: &str, f: &str| (p.to_string(), q.to_string(), f.to_string());
        assert_eq!(split("/p?q=1&r#frag"), s("/p", "q=1&r", "frag"));
        assert_eq!(split("/p#f?notq"), s("/p", "", "f?notq"));
        assert_eq!(split("http://h/p?q#f"), s("/p", "q", "f"));
        assert_eq!(split("http://h"), s("", "", ""));
        assert_eq!(split("http://h?x"), s("", "x", ""));
        assert_eq!(split("HTTPS://user@h:8/a/b"), s("/a/b", "", ""));
        assert_eq!(split("//x/y?z"), s("//x/y", "z", ""));
        assert_eq!(split("//"), s("//", "", ""));
        assert_eq!(split("/a:b//c"), s("/a:b//c", "", ""));
        assert_eq!(split("/a?b://c"), s("/a", "b://c", ""));
        assert_eq!(split("x?y://z"), s("x", "y://z", ""));
        assert_eq!(split("1http://h/p"), s("1http://h/p", "", ""));
        assert_eq!(split("*"), s("*", "", ""));
    }

    #[test]
    fn percent_decode_like_unquote_to_bytes() {
        assert_eq!(percent_decode("/a%2Fb%2fc"), b"/a/b/c");
        assert_eq!(percent_decode("%e2%82%AC"), "\u{20ac}".as_bytes());
        assert_eq!(percent_decode("%zz%4%"), b"%zz%4%");
        assert_eq!(percent_decode("%%41"), b"%A");
        assert_eq!(percent_decode("%00"), b"\x00");
        assert_eq!(percent_decode(""), b"");
    }

    #[test]
    fn version_rules() {
        assert_eq!(ok(b"GET / HTTP/1.0\r\n\r\n").0.version, Version::Http10);
        assert_eq!(Version::Http10.as_str(), "HTTP/1.0");
        assert_eq!(Version::Http11.as_str(), "HTTP/1.1");
        for (v, shown) in [
            ("HTTP/2.0", "(2, 0)"),
            ("HTTP/0.9", "(0, 9)"),
            ("HTTP/1.2", "(1, 2)"),
            ("http/1.1", "'http/1.1'"),
            ("HTTP/1.10", "'HTTP/1.10'"),
            ("HTTP/1", "'HTTP/1'"),
            ("HTTP/\u{b9}.1", "'HTTP/\u{b9}.1'"),
        ] {
            let mut input = b"GET / ".to_vec();
            input.extend(v.chars().map(|c| c as u8));
            input.extend_from_slice(b"\r\n\r\n");
            let e = err(&input);
            assert_eq!(e, HttpError::InvalidVersion(v.into()));
            assert_eq!(e.to_string(), format!("Invalid HTTP Version: {shown}"));
        }
    }

    #[test]
    fn field_syntax() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n"),
            HttpError::InvalidHeaderName("Host ".into())
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"),
            HttpError::InvalidHeader("NoColon".into())
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\n: empty name\r\n\r\n"),
            HttpError::InvalidHeader(": empty name".into())
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nBad(Name): v\r\n\r\n"),
            HttpError::InvalidHeaderName("Bad(Name)".into())
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\n Leading: v\r\n\r\n"),
            HttpError::InvalidHeaderName(" Leading".into())
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nX-Fold: a\r\n  b\r\n\r\n"),
            HttpError::ObsoleteFolding("X-FOLD".into())
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nX-Fold: a\r\n\tb\r\n\r\n"),
            HttpError::ObsoleteFolding("X-FOLD".into())
        );
        for ctl in [0u8, 1, 8, 0x0b, 0x0c, 0x0d, 0x1f, 0x7f] {
            let mut input = b"GET / HTTP/1.1\r\nx-ctl: a".to_vec();
            input.push(ctl);
            input.extend_from_slice(b"b\r\n\r\n");
            assert_eq!(
                err(&input),
                HttpError::InvalidHeader("X-CTL".into()),
                "{ctl:#x}"
            );
        }
        // HTAB inside a value is fine.
        assert_eq!(
            ok(b"GET / HTTP/1.1\r\nA: b\tc\r\n\r\n").0.headers[0].1,
            b"b\tc"
        );
        // The first offending line wins, checked in gunicorn's order within a line.
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nA: \x01\r\nB C: d\r\n\r\n"),
            HttpError::InvalidHeader("A".into())
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nA: \x01\r\n b\r\n\r\n"),
            HttpError::ObsoleteFolding("A".into())
        );
    }

    #[test]
    fn singleton_fields() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            HttpError::InvalidHeader("HOST".into())
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Type: a\r\nX: y\r\ncontent-type: a\r\n\r\n"),
            HttpError::InvalidHeader("CONTENT-TYPE".into())
        );
        // Policy runs line by line, so a duplicate Host before a syntax error wins.
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nBad Name: c\r\n\r\n"),
            HttpError::InvalidHeader("HOST".into())
        );
        // Other repeats are kept in order.
        let (head, _) = ok(b"GET / HTTP/1.1\r\nX-Bar: 2\r\nX-Bar: 3\r\n\r\n");
        assert_eq!(head.headers.len(), 2);
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n").0.body,
            BodyKind::Length(12)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0.body,
            BodyKind::Length(0)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nContent-Length: 007\r\n\r\n").0.body,
            BodyKind::Length(7)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n")
                .0
                .body,
            BodyKind::Length(u64::MAX)
        );
        let cl = HttpError::InvalidHeader("CONTENT-LENGTH".into());
        for value in [
            &b"+1"[..],
            b"-1",
            b"1,1",
            b"1 1",
            b"0x10",
            b"",
            b"\xb2",
            b"18446744073709551616",
        ] {
            let mut input = b"POST / HTTP/1.1\r\nContent-Length: ".to_vec();
            input.extend_from_slice(value);
            input.extend_from_slice(b"\r\n\r\n");
            assert_eq!(err(&input), cl, "{:?}", latin1(value));
        }
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            cl
        );
    }

    #[test]
    fn transfer_encoding_rules() {
        let te = HttpError::InvalidHeader("TRANSFER-ENCODING".into());
        let post =
            |te: &str| format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n").into_bytes();
        assert_eq!(ok(&post("chunked")).0.body, BodyKind::Chunked);
        assert_eq!(ok(&post("CHUNKED")).0.body, BodyKind::Chunked);
        let (head, _) = ok(&post("gzip, chunked"));
        assert_eq!(head.body, BodyKind::Chunked);
        assert!(!head.keep_alive, "gzip forces close");
        let (head, _) = ok(&post("identity,\tchunked"));
        assert!(head.keep_alive);
        let (head, _) = ok(&post("deflate ,compress, chunked"));
        assert!(!head.keep_alive);
        // Split across two fields.
        let (head, _) =
            ok(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(head.body, BodyKind::Chunked);

        assert_eq!(err(&post("chunked, chunked")), te);
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            te
        );
        assert_eq!(err(&post("chunked, gzip")), te);
        assert_eq!(err(&post("chunked, identity")), te);
        assert_eq!(err(&post("gzip")), te);
        assert_eq!(err(&post("identity")), te);
        let e = err(&post("br, chunked"));
        assert_eq!(
            e,
            HttpError::UnsupportedTransferCoding("br, chunked".into())
        );
        assert_eq!(e.status(), 501);
        assert_eq!(err(&post("chunked,")).status(), 501);
        assert_eq!(err(&post("x-chunked")).status(), 501);
        // CL together with chunked; TE + CL with a non-chunked TE is a TE error.
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::InvalidHeader("CONTENT-LENGTH".into())
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\n"),
            te
        );
        // Chunked on HTTP/1.0.
        assert_eq!(
            err(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            te
        );
        // Faults are raised in field order, as gunicorn's loop does.
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nTransfer-Encoding: br\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n")
                .status(),
            501
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\nTransfer-Encoding: br\r\n\r\n")
                .status(),
            400
        );
    }

    #[test]
    fn expect_rules() {
        let (head, _) = ok(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(head.expect_continue);
        let (head, _) = ok(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(
            !head.expect_continue,
            "ignored on HTTP/1.0 (RFC 9110 section 10.1.1)"
        );
        let e = err(b"GET / HTTP/1.1\r\nExpect: something\r\n\r\n");
        assert_eq!(e, HttpError::ExpectationFailed("something".into()));
        assert_eq!(e.status(), 417);
        assert_eq!(err(b"GET / HTTP/1.0\r\nExpect: x\r\n\r\n").status(), 417);
        assert_eq!(err(b"GET / HTTP/1.1\r\nExpect:\r\n\r\n").status(), 417);
    }

    #[test]
    fn connection_persistence() {
        let ka = |input: &[u8]| ok(input).0.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        // Only the first Connection field, and only an exact value, counts.
        assert!(ka(
            b"GET / HTTP/1.1\r\nConnection: upgrade\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\nConnection: keep-alive, x\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: CLOSE\r\n\r\n"));
    }

    #[test]
    fn request_line_limit_is_414() {
        let limits = Limits {
            request_line: 20,
            ..Limits::default()
        };
        // A 20-byte request line is at the limit: fine.
        let ok20 = b"GET /aaaaaa HTTP/1.1\r\n\r\n";
        assert_eq!(ok20.len() - 4, 20);
        ok_with(ok20, &limits);
        let e = err_with(b"GET /aaaaaaa HTTP/1.1\r\n\r\n", &limits);
        assert_eq!(e, HttpError::LimitRequestLine { size: 21, max: 20 });
        assert_eq!(e.status(), 414);
        assert_eq!(e.reason(), "URI Too Long");
        // Incomplete but already over: refused without waiting for the CRLF.
        assert!(matches!(
            parse_head(&[b'G'; 22], &limits),
            Err(HttpError::LimitRequestLine { max: 20, .. })
        ));
        assert_eq!(parse_head(&[b'G'; 21], &limits), Ok(None));
        // The default: 4094.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'x', 5000));
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(
            parse_head(&long, &Limits::default()),
            Err(HttpError::LimitRequestLine {
                size: 5014,
                max: 4094
            })
        );
        // The leading CRLF does not count.
        ok_with(b"\r\nGET /aaaaaa HTTP/1.1\r\n\r\n", &limits);
        // 0 = unlimited, capped at 1 MiB.
        let unlimited = Limits::from_settings(0, 100, 8190);
        assert!(parse_head(&long, &unlimited).unwrap().is_some());
        let huge = vec![b'A'; UNLIMITED_REQUEST_LINE_CAP + 2];
        assert!(matches!(
            parse_head(&huge, &unlimited),
            Err(HttpError::LimitRequestLine { .. })
        ));
    }

    #[test]
    fn field_limits_are_431() {
        let limits = Limits {
            fields: 2,
            field_size: 10,
            ..Limits::default()
        };
        // A field line may be 10 bytes with its CRLF: "Abcd: 12" fits, "Abcd: 123" not.
        ok_with(b"GET / HTTP/1.1\r\nAb: 12\r\nAbcd: 12\r\n\r\n", &limits);
        let e = err_with(b"GET / HTTP/1.1\r\nAb: 12\r\nAbcd: 123\r\n\r\n", &limits);
        assert_eq!(
            e,
            HttpError::LimitRequestHeaders("limit request headers fields size".into())
        );
        assert_eq!(e.status(), 431);
        let e = err_with(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", &limits);
        assert_eq!(
            e,
            HttpError::LimitRequestHeaders("limit request headers fields".into())
        );
        // Incomplete heads already over a limit are refused, not waited on.
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nAbcdefghijkl", &limits),
            Err(HttpError::LimitRequestHeaders(_))
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC", &limits),
            Err(HttpError::LimitRequestHeaders(_))
        ));
        // ... but a third line that may still be the blank line is waited on.
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r", &limits),
            Ok(None)
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nAbcdefgh", &limits), Ok(None));
        // Defaults: 100 fields of up to 8190 bytes.
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut too_many = many.clone();
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_head(&many, &Limits::default())
                .unwrap()
                .unwrap()
                .0
                .headers
                .len(),
            100
        );
        too_many.extend_from_slice(b"X-100: v\r\n\r\n");
        assert_eq!(
            parse_head(&too_many, &Limits::default())
                .unwrap_err()
                .status(),
            431
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'v', 8190 - 5));
        big.extend_from_slice(b"\r\n\r\n");
        assert!(parse_head(&big, &Limits::default()).unwrap().is_some());
        big.insert(20, b'v');
        assert_eq!(
            parse_head(&big, &Limits::default()).unwrap_err().status(),
            431
        );
    }

    #[test]
    fn limits_from_settings() {
        let l = Limits::from_settings(9000, 0, 0);
        assert_eq!(
            (l.request_line, l.fields, l.field_size),
            (8190, 32768, 8190)
        );
        let l = Limits::from_settings(0, 40000, -1);
        assert_eq!((l.request_line, l.fields, l.field_size), (0, 32768, 8190));
        let l = Limits::from_settings(-5, -1, 20000);
        assert_eq!(
            (l.request_line, l.fields, l.field_size),
            (8190, 32768, 20000)
        );
        let l = Limits::from_settings(100, 10, 50);
        assert_eq!((l.request_line, l.fields, l.field_size), (100, 10, 50));
        let d = Limits::default();
        assert_eq!((d.request_line, d.fields, d.field_size), (4094, 100, 8190));
        // Hand-built zeros behave like from_settings' clamping.
        let zero = Limits {
            request_line: 0,
            fields: 0,
            field_size: 0,
        };
        assert!(parse_head(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", &zero)
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_shrunk_buffer_restarts_instead_of_panicking() {
        let mut parser = HeadParser::new(&Limits::default());
        assert_eq!(parser.parse(b"\r\nGET / HTTP/1.1\r\nA: b\r\n"), Ok(None));
        assert_eq!(parser.parse(b"\r"), Ok(None));
        let (head, n) = parser.parse(b"GET /x HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.target.as_str(), n), ("/x", 19));
        let mut scan = BlockScan::default();
        assert_eq!(scan.scan(b"A: b\r\nC: d\r\n", &Limits::default()), Ok(None));
        assert_eq!(scan.scan(b"\r\n", &Limits::default()), Ok(Some(2)));
    }

    #[test]
    fn incomplete_heads_wait() {
        let full = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab";
        for cut in 0..full.len() - 2 {
            assert_eq!(
                parse_head(&full[..cut], &Limits::default()),
                Ok(None),
                "cut {cut}"
            );
        }
        let (head, consumed) = ok(full);
        assert_eq!(consumed, full.len() - 2);
        assert_eq!(head.body, BodyKind::Length(2));
    }

    /// Random field lines: httparse and gunicorn's line rules (the by-hand path) must
    /// accept exactly the same ones, and agree on the tokens.
    #[test]
    fn httparse_agrees_with_gunicorn_line_rules() {
        let alphabet: &[u8] = b"aZ09-_ :\t\r\x00\x01\x7f\x80\xff(\",;=";
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = rng.upto(8);
            let mut line: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            // Keep the section's shape: no CRLF inside a line, no bare LF.
            while line.windows(2).any(|w| w == b"\r\n") || line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                continue;
            }
            let mut block = line.clone();
            block.extend_from_slice(b"\r\n\r\n");
            let mut slots = [httparse::EMPTY_HEADER; 1];
            let by_httparse = match httparse::parse_headers(&block, &mut slots) {
                Ok(httparse::Status::Complete((n, h))) if n == block.len() && h.len() == 1 => {
                    Some((h[0].name.to_string(), h[0].value.to_vec()))
                }
                _ => None,
            };
            let mut policy = FieldPolicy::new(Section::Trailers, Version::Http11);
            let by_hand = parse_fields_by_hand(&block, &mut policy)
                .ok()
                .map(|mut v| v.remove(0));
            assert_eq!(by_httparse, by_hand, "{:?}", latin1(&line));
            accepted += usize::from(by_hand.is_some());
        }
        assert!(
            accepted > 100,
            "the generator should produce valid lines too"
        );
    }

    /// Every valid request from the table parses the same way whole, byte by byte and
    /// in random splits, and every prefix is "need more".
    #[test]
    fn valid_requests_all_splits() {
        let requests: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n\r\n",
            b"\r\nGET /a?b#c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"POST /upload HTTP/1.1\r\nHost: example.org\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\nX-Tab:\tv\t\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET http://h:1/p?q HTTP/1.1\r\nA: \xe9\xff\r\nB:\r\n\r\n",
            b"GET //double/slash HTTP/1.1\r\n\r\n",
        ];
        for input in requests {
            ok(input);
        }
    }
}

//! Every way a client's request can be refused, and how gunicorn answers each.
//!
//! This module owns the one table that maps a parse failure to a status line and an
//! error-page message. It mirrors gunicorn 27.0.1: one variant per exception class in
//! `gunicorn/http/errors.py`, the `Display` text is that class's `__str__` (including
//! Python's `%r` quoting of the offending bytes), and [`HttpError::status`],
//! [`HttpError::reason`] and [`HttpError::response_message`] follow
//! `Worker.handle_error` in `gunicorn/workers/base.py`, quirks included (a 501 is sent
//! with the reason text "Bad Request").
//!
//! The `String` carried by most variants is the offending text decoded as latin-1, one
//! `char` per byte, exactly as gunicorn holds it (`bytes_to_str`), so rendering it with
//! Python's `repr` rules gives gunicorn's message byte for byte.

use std::fmt::{self, Write as _};

/// A request gunicorn would refuse, or a client that went away mid-request.
///
/// Variants are named after gunicorn's exception classes. The ones that only the upper
/// layers raise (PROXY protocol, scheme headers, `SCRIPT_NAME`) live here too so that
/// the status mapping stays in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// `InvalidRequestLine`: not three space-separated parts, a bad target, or a bare LF.
    /// Holds the request line (or gunicorn's short reason).
    InvalidRequestLine(String),
    /// `InvalidRequestMethod`: lowercase, `#`, outside 3-20 characters, or not a token.
    InvalidMethod(String),
    /// `InvalidHTTPVersion`. Holds the version part as sent; when it is well formed
    /// (`HTTP/d.d`) but out of range it is shown as a tuple, as gunicorn does.
    InvalidVersion(String),
    /// `InvalidHeader`: a field line without a colon, a control character in a value, a
    /// repeated singleton field, or bad framing headers. Holds the line or field name.
    InvalidHeader(String),
    /// `InvalidHeaderName`: a field name that is not a token (space before the colon).
    InvalidHeaderName(String),
    /// `ObsoleteFolding`: a field continued on a line starting with SP or HTAB.
    ObsoleteFolding(String),
    /// `LimitRequestLine`: the request line is longer than `limit_request_line` (414).
    LimitRequestLine {
        /// Length gunicorn reports: the line up to its CRLF, or what was buffered.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// `LimitRequestHeaders`: too many fields, a field line over
    /// `limit_request_field_size`, or a trailer section too large (431). Holds
    /// gunicorn's short message, e.g. "limit request headers fields size".
    LimitRequestHeaders(String),
    /// `UnsupportedTransferCoding`: a transfer coding gunicorn does not know (501).
    /// Holds the whole Transfer-Encoding value.
    UnsupportedTransferCoding(String),
    /// `ExpectationFailed`: an `Expect` other than `100-continue` (417).
    ExpectationFailed(String),
    /// `InvalidChunkSize`: a chunk-size line that is not plain hex, or overlong.
    /// Holds the offending bytes (latin-1), shown as a Python `bytes` literal.
    InvalidChunkSize(String),
    /// `ChunkMissingTerminator`: chunk data, or the trailer section, not ended by CRLF.
    /// Holds the (at most two) bytes found instead.
    ChunkMissingTerminator(String),
    /// `InvalidChunkExtension`: a chunk extension outside RFC 9112 section 7.1.1.
    /// Holds gunicorn's reason text.
    InvalidChunkExtension(String),
    /// A trailer field that RFC 9110 section 6.5.1 forbids (Host, Content-Length, ...).
    /// gunicorn raises `InvalidHeaderName` for it; the text is the same, the variant
    /// only lets logs tell trailers apart.
    InvalidTrailer(String),
    /// `InvalidProxyLine`: a malformed PROXY protocol header (raised above this layer).
    InvalidProxyLine(String),
    /// `ForbiddenProxyRequest`: PROXY protocol from a peer not in `proxy_allow_ips` (403).
    ForbiddenProxyRequest(String),
    /// `InvalidSchemeHeaders`: two secure-scheme headers that disagree.
    InvalidSchemeHeaders,
    /// `ConfigurationProblem`: the path does not start with `SCRIPT_NAME` (500).
    ConfigurationProblem(String),
    /// The client closed the connection before the request (head or body) ended.
    /// Like gunicorn's `NoMoreData`, this gets no response at all.
    IncompleteBody,
}

impl HttpError {
    /// The status code gunicorn 27 answers with (`Worker.handle_error`).
    pub fn status(&self) -> u16 {
        match self {
            HttpError::LimitRequestLine { .. } => 414,
            HttpError::LimitRequestHeaders(_) => 431,
            HttpError::UnsupportedTransferCoding(_) => 501,
            HttpError::ExpectationFailed(_) => 417,
            HttpError::ForbiddenProxyRequest(_) => 403,
            HttpError::ConfigurationProblem(_) => 500,
            // Everything else is 400, including IncompleteBody, which is never sent
            // (wants_response is false) but must still log as something.
            _ => 400,
        }
    }

    /// The reason text gunicorn puts on the status line and in the page title.
    ///
    /// gunicorn starts from "Bad Request" and only changes it for 414, 417, 431 and
    /// 403, so 501 and 500 go out as "501 Bad Request" and "500 Bad Request".
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::LimitRequestLine { .. } => "URI Too Long",
            HttpError::LimitRequestHeaders(_) => "Request Header Fields Too Large",
            HttpError::ExpectationFailed(_) => "Expectation Failed",
            HttpError::ForbiddenProxyRequest(_) => "Forbidden",
            _ => "Bad Request",
        }
    }

    /// Whether the client should get an error page. False when it already went away
    /// (gunicorn logs `NoMoreData` at debug level and just closes).
    pub fn wants_response(&self) -> bool {
        !matches!(self, HttpError::IncompleteBody)
    }

    /// The message shown in the error page (`mesg` in `Worker.handle_error`): for some
    /// classes gunicorn wraps the exception text, e.g.
    /// `Invalid Request Line 'Invalid HTTP request line: ...'`.
    pub fn response_message(&self) -> String {
        match self {
            HttpError::InvalidRequestLine(_) => format!("Invalid Request Line '{self}'"),
            HttpError::InvalidMethod(_) => format!("Invalid Method '{self}'"),
            HttpError::InvalidVersion(_) => format!("Invalid HTTP Version '{self}'"),
            HttpError::LimitRequestHeaders(_) => format!("Error parsing headers: '{self}'"),
            HttpError::InvalidProxyLine(_) => format!("'{self}'"),
            HttpError::ForbiddenProxyRequest(_) => "Request forbidden".to_string(),
            HttpError::IncompleteBody => String::new(),
            _ => self.to_string(),
        }
    }

    /// The complete error response gunicorn writes for this error (`util.write_error`).
    pub fn to_response(&self) -> Vec<u8> {
        super::response::error_response(self.status(), self.reason(), &self.response_message())
    }
}

impl fmt::Display for HttpError {
    /// gunicorn's `str(exc)` for the matching exception class.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidRequestLine(s) => {
                write!(f, "Invalid HTTP request line: {}", py_repr_str(s))
            }
            HttpError::InvalidMethod(s) => write!(f, "Invalid HTTP method: {}", py_repr_str(s)),
            HttpError::InvalidVersion(s) => match version_tuple(s) {
                // gunicorn raises InvalidHTTPVersion(self.version), a tuple, when the
                // version matched HTTP/d.d but is not 1.x.
                Some((major, minor)) => write!(f, "Invalid HTTP Version: ({major}, {minor})"),
                None => write!(f, "Invalid HTTP Version: {}", py_repr_str(s)),
            },
            HttpError::InvalidHeader(s) => write!(f, "Invalid HTTP Header: {}", py_repr_str(s)),
            HttpError::InvalidHeaderName(s) | HttpError::InvalidTrailer(s) => {
                write!(f, "Invalid HTTP header name: {}", py_repr_str(s))
            }
            HttpError::ObsoleteFolding(s) => write!(
                f,
                "Obsolete line folding is unacceptable: {}",
                py_repr_str(s)
            ),
            HttpError::LimitRequestLine { size, max } => {
                write!(f, "Request Line is too large ({size} > {max})")
            }
            HttpError::LimitRequestHeaders(s) => f.write_str(s),
            HttpError::UnsupportedTransferCoding(s) => {
                write!(f, "Unsupported transfer coding: {}", py_repr_str(s))
            }
            HttpError::ExpectationFailed(s) => {
                write!(f, "Unable to comply with expectation: {}", py_repr_str(s))
            }
            HttpError::InvalidChunkSize(s) => {
                write!(f, "Invalid chunk size: {}", py_repr_bytes(s))
            }
            HttpError::ChunkMissingTerminator(s) => write!(
                f,
                "Invalid chunk terminator is not '\\r\\n': {}",
                py_repr_bytes(s)
            ),
            HttpError::InvalidChunkExtension(s) => write!(f, "Invalid chunk extension: {s}"),
            HttpError::InvalidProxyLine(s) => write!(f, "Invalid PROXY line: {}", py_repr_str(s)),
            HttpError::ForbiddenProxyRequest(s) => {
                write!(f, "Proxy request from {} not allowed", py_repr_str(s))
            }
            HttpError::InvalidSchemeHeaders => f.write_str("Contradictory scheme headers"),
            HttpError::ConfigurationProblem(s) => write!(f, "Configuration problem: {s}"),
            HttpError::IncompleteBody => f.write_str("No more data"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Decode bytes as latin-1, one `char` per byte, as gunicorn's `bytes_to_str` does.
pub(crate) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// `(major, minor)` when `s` is exactly `HTTP/<digit>.<digit>`.
fn version_tuple(s: &str) -> Option<(u8, u8)> {
    match s.as_bytes() {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Some((major - b'0', minor - b'0'))
        }
        _ => None,
    }
}

/// Python's quote choice for `repr`: single quotes unless the text has a single quote
/// and no double quote.
fn repr_quote(mut chars: impl Iterator<Item = char> + Clone) -> char {
    let has_single = chars.clone().any(|c| c == '\'');
    let has_double = chars.any(|c| c == '"');
    if has_single && !has_double {
        '"'
    } else {
        '\''
    }
}

/// Python's `repr()` of a `str` whose characters are all below U+0100 (latin-1 text).
///
/// Printable characters stay as they are, including latin-1 letters such as `é`;
/// U+0080..=U+00A0 and U+00AD are not printable for Python and become `\xNN`.
pub(crate) fn py_repr_str(s: &str) -> String {
    let quote = repr_quote(s.chars());
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr()` of a `bytes` object, given its bytes as latin-1 text: `b'...'`.
pub(crate) fn py_repr_bytes(s: &str) -> String {
    let quote = repr_quote(s.chars());
    let mut out = String::with_capacity(s.len() + 3);
    out.push('b');
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_maps_each_byte_to_one_char() {
        assert_eq!(latin1(b"GET /a?b=c"), "GET /a?b=c");
        assert_eq!(latin1(b"caf\xe9 \x80\xff"), "caf\u{e9} \u{80}\u{ff}");
        assert_eq!(latin1(b""), "");
    }

    #[test]
    fn statuses_and_reasons_follow_gunicorn_27() {
        let cases: Vec<(HttpError, u16, &str)> = vec![
            (
                HttpError::InvalidRequestLine("x".into()),
                400,
                "Bad Request",
            ),
            (HttpError::InvalidMethod("get".into()), 400, "Bad Request"),
            (
                HttpError::InvalidVersion("HTTP/2.0".into()),
                400,
                "Bad Request",
            ),
            (HttpError::InvalidHeader("HOST".into()), 400, "Bad Request"),
            (
                HttpError::InvalidHeaderName("A B".into()),
                400,
                "Bad Request",
            ),
            (HttpError::ObsoleteFolding("X".into()), 400, "Bad Request"),
            (
                HttpError::LimitRequestLine {
                    size: 5014,
                    max: 4094,
                },
                414,
                "URI Too Long",
            ),
            (
                HttpError::LimitRequestHeaders("limit request headers fields".into()),
                431,
                "Request Header Fields Too Large",
            ),
            (
                HttpError::UnsupportedTransferCoding("br".into()),
                501,
                "Bad Request",
            ),
            (
                HttpError::ExpectationFailed("x".into()),
                417,
                "Expectation Failed",
            ),
            (HttpError::InvalidChunkSize("zz".into()), 400, "Bad Request"),
            (
                HttpError::ChunkMissingTerminator("ab".into()),
                400,
                "Bad Request",
            ),
            (
                HttpError::InvalidChunkExtension("bare CR not allowed".into()),
                400,
                "Bad Request",
            ),
            (HttpError::InvalidTrailer("HOST".into()), 400, "Bad Request"),
            (
                HttpError::InvalidProxyLine("PROXY".into()),
                400,
                "Bad Request",
            ),
            (
                HttpError::ForbiddenProxyRequest("10.0.0.1".into()),
                403,
                "Forbidden",
            ),
            (HttpError::InvalidSchemeHeaders, 400, "Bad Request"),
            (
                HttpError::ConfigurationProblem("x".into()),
                500,
                "Bad Request",
            ),
        ];
        for (err, status, reason) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.reason(), reason, "{err:?}");
            assert!(err.wants_response());
        }
        assert!(!HttpError::IncompleteBody.wants_response());
    }

    #[test]
    fn messages_match_gunicorn_str() {
        let e = HttpError::LimitRequestLine {
            size: 5014,
            max: 4094,
        };
        assert_eq!(e.to_string(), "Request Line is too large (5014 > 4094)");
        assert_eq!(
            e.response_message(),
            "Request Line is too large (5014 > 4094)"
        );

        let e = HttpError::InvalidMethod("get".into());
        assert_eq!(e.to_string(), "Invalid HTTP method: 'get'");
        assert_eq!(
            e.response_message(),
            "Invalid Method 'Invalid HTTP method: 'get''"
        );

        let e = HttpError::InvalidRequestLine("GET /\u{e9} HTTP/1.1".into());
        assert_eq!(
            e.to_string(),
            "Invalid HTTP request line: 'GET /\u{e9} HTTP/1.1'"
        );
        let e = HttpError::InvalidRequestLine("GET /\u{0}\u{80}\u{a0}\u{ad}\t'".into());
        assert_eq!(
            e.to_string(),
            "Invalid HTTP request line: \"GET /\\x00\\x80\\xa0\\xad\\t'\""
        );

        assert_eq!(
            HttpError::InvalidVersion("HTTP/2.0".into()).to_string(),
            "Invalid HTTP Version: (2, 0)"
        );
        assert_eq!(
            HttpError::InvalidVersion("http/1.1".into()).to_string(),
            "Invalid HTTP Version: 'http/1.1'"
        );
        assert_eq!(
            HttpError::InvalidHeader("CONTENT-LENGTH".into()).to_string(),
            "Invalid HTTP Header: 'CONTENT-LENGTH'"
        );
        assert_eq!(
            HttpError::ObsoleteFolding("X-A".into()).to_string(),
            "Obsolete line folding is unacceptable: 'X-A'"
        );
        let e = HttpError::LimitRequestHeaders("limit request headers fields size".into());
        assert_eq!(
            e.response_message(),
            "Error parsing headers: 'limit request headers fields size'"
        );
        assert_eq!(
            HttpError::UnsupportedTransferCoding("br, chunked".into()).to_string(),
            "Unsupported transfer coding: 'br, chunked'"
        );
        assert_eq!(
            HttpError::ExpectationFailed("x-y".into()).to_string(),
            "Unable to comply with expectation: 'x-y'"
        );
        assert_eq!(
            HttpError::InvalidChunkSize("-1".into()).to_string(),
            "Invalid chunk size: b'-1'"
        );
        assert_eq!(
            HttpError::InvalidChunkSize("\u{ff}'".into()).to_string(),
            "Invalid chunk size: b\"\\xff'\""
        );
        assert_eq!(
            HttpError::ChunkMissingTerminator("ef".into()).to_string(),
            "Invalid chunk terminator is not '\\r\\n': b'ef'"
        );
        assert_eq!(
            HttpError::InvalidChunkExtension("bare CR not allowed".into()).to_string(),
            "Invalid chunk extension: bare CR not allowed"
        );
        assert_eq!(
            HttpError::InvalidTrailer("HOST".into()).to_string(),
            "Invalid HTTP header name: 'HOST'"
        );
        assert_eq!(
            HttpError::ForbiddenProxyRequest("10.0.0.1".into()).response_message(),
            "Request forbidden"
        );
        assert_eq!(
            HttpError::InvalidProxyLine("PROXY x".into()).response_message(),
            "'Invalid PROXY line: 'PROXY x''"
        );
    }

    #[test]
    fn repr_quoting_and_escapes() {
        assert_eq!(py_repr_str("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(py_repr_str("a'b"), "\"a'b\"");
        assert_eq!(py_repr_str("\\\r\n\u{7f}"), "'\\\\\\r\\n\\x7f'");
        assert_eq!(py_repr_str("caf\u{e9}"), "'caf\u{e9}'");
        assert_eq!(py_repr_bytes("caf\u{e9}"), "b'caf\\xe9'");
        assert_eq!(py_repr_bytes(""), "b''");
    }

    #[test]
    fn to_response_is_the_error_page() {
        let page = HttpError::ExpectationFailed("x".into()).to_response();
        assert!(page.starts_with(b"HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\n"));
    }
}

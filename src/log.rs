//! The access log: gunicorn's `access_log_format` atoms rendered in Rust and written
//! with one `write(2)` per line.
//!
//! The format is parsed once per worker into [`Piece`]s. Values are escaped so that a
//! client cannot forge a log line: gunicorn escapes only `"` (its #2457), we also
//! escape `\`, control bytes and non-ASCII as `\xHH`, so every line is one line of
//! printable ASCII whatever the request held. The file descriptor belongs to the Python
//! side, which reopens it in place (dup2) on USR1.

use std::fmt::Write as _;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, SystemTime};

use base64::Engine;

/// One piece of a parsed access-log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as is.
    Literal(String),
    /// A single-letter atom such as `h` or `s`.
    Atom(char),
    /// `{name}i`: a request header (lower-cased name).
    RequestHeader(String),
    /// `{name}o`: a response header (lower-cased name).
    ResponseHeader(String),
    /// `{name}e`: an environ variable.
    Environ(String),
    /// An atom gunicorn does not know: rendered as `-`.
    Unknown,
}

/// Parses a Python %-style format such as `%(h)s %(l)s "%(r)s"`.
pub fn parse_format(fmt: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = fmt;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('%') {
            lit.push('%');
            rest = stripped;
            continue;
        }
        let parsed = after.strip_prefix('(').and_then(|a| {
            let close = a.find(')')?;
            let name = &a[..close];
            // Skip Python conversion flags/width, then the conversion char.
            let tail = &a[close + 1..];
            let conv = tail.find(|c: char| c.is_ascii_alphabetic())?;
            Some((name, &tail[conv + 1..]))
        });
        match parsed {
            Some((name, tail)) => {
                if !lit.is_empty() {
                    out.push(Piece::Literal(std::mem::take(&mut lit)));
                }
                out.push(atom(name));
                rest = tail;
            }
            None => {
                lit.push('%');
                rest = after;
            }
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Piece::Literal(lit));
    }
    out
}

fn atom(name: &str) -> Piece {
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        if "hlutrmUqHsBbfaTDMLp".contains(c) {
            return Piece::Atom(c);
        }
        return Piece::Unknown;
    }
    if let Some(inner) = name.strip_prefix('{') {
        if let Some(key) = inner.strip_suffix("}i") {
            return Piece::RequestHeader(key.to_ascii_lowercase());
        }
        if let Some(key) = inner.strip_suffix("}o") {
            return Piece::ResponseHeader(key.to_ascii_lowercase());
        }
        if let Some(key) = inner.strip_suffix("}e") {
            return Piece::Environ(key.to_owned());
        }
    }
    Piece::Unknown
}

/// Appends `s` escaped: `"` and `\` get a backslash; control and non-ASCII
/// characters become `\xHH` (or `\uHHHH` beyond Latin-1).
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
    }
}

fn escape_bytes_into(out: &mut String, b: &[u8]) {
    let s: String = b.iter().map(|&x| char::from(x)).collect();
    escape_into(out, &s);
}

/// What one finished request contributes to its log line.
pub struct Record<'a> {
    /// `REMOTE_ADDR`.
    pub remote_addr: &'a str,
    /// Method, raw target and protocol.
    pub method: &'a str,
    /// The request-target as sent.
    pub raw_uri: &'a str,
    /// `PATH_INFO`-like path (percent-decoded path of the target).
    pub path: &'a str,
    /// The query string.
    pub query: &'a str,
    /// "HTTP/1.1" or "HTTP/1.0".
    pub protocol: &'a str,
    /// Request headers as received.
    pub request_headers: &'a [(String, Vec<u8>)],
    /// Response status code.
    pub status: u16,
    /// Response headers as sent.
    pub response_headers: &'a [(String, String)],
    /// Body bytes sent; `None` when no response was started.
    pub bytes_sent: Option<u64>,
    /// Time from the head being parsed to the last byte written.
    pub duration: Duration,
    /// Looks up an environ variable for `{var}e`.
    pub environ: &'a dyn Fn(&str) -> Option<String>,
}

impl std::fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("method", &self.method)
            .field("raw_uri", &self.raw_uri)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn req_header<'a>(r: &'a Record<'_>, name: &str) -> Option<&'a [u8]> {
    r.request_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn basic_user(r: &Record<'_>) -> Option<String> {
    let auth = req_header(r, "authorization")?;
    let auth = std::str::from_utf8(auth).ok()?;
    let (scheme, cred) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(cred.trim())
        .ok()?;
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    Some(
        decoded
            .split_once(':')
            .map_or(decoded.clone(), |(u, _)| u.to_owned()),
    )
}

/// `[25/Nov/2026:16:26:13 +0000]` in local time, as gunicorn's `t` atom.
fn clf_time(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: `tm` is a plain C struct for which all-zero bytes are a valid value;
    // localtime_r only writes into it and reads `t`, both valid for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: see above; both pointers are to live locals.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return "[-]".to_owned();
    }
    let mut buf = [0u8; 64];
    let fmt = c"[%d/%b/%Y:%H:%M:%S %z]";
    // SAFETY: `buf` is writable for its full length, `fmt` is NUL-terminated and `tm`
    // was filled by localtime_r; strftime writes at most `buf.len()` bytes.
    let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm) };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A parsed format plus the descriptor lines go to.
#[derive(Debug)]
pub struct AccessLog {
    pieces: Vec<Piece>,
    fd: RawFd,
}

impl AccessLog {
    /// An access log writing `format` lines to `fd`.
    pub fn new(format: &str, fd: RawFd) -> Self {
        AccessLog {
            pieces: parse_format(format),
            fd,
        }
    }

    /// Renders the line for `r` (without the newline).
    pub fn render(&self, r: &Record<'_>) -> String {
        let mut out = String::with_capacity(160);
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Unknown => out.push('-'),
                Piece::RequestHeader(n) => match req_header(r, n) {
                    Some(v) => escape_bytes_into(&mut out, v),
                    None => out.push('-'),
                },
                Piece::ResponseHeader(n) => match r
                    .response_headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                {
                    Some((_, v)) => escape_into(&mut out, v),
                    None => out.push('-'),
                },
                Piece::Environ(k) => match (r.environ)(k) {
                    Some(v) => escape_into(&mut out, &v),
                    None => out.push('-'),
                },
                Piece::Atom(c) => self.render_atom(&mut out, *c, r),
            }
        }
        out
    }

    fn render_atom(&self, out: &mut String, c: char, r: &Record<'_>) {
        let d = r.duration;
        match c {
            'h' => escape_into(out, r.remote_addr),
            'l' => out.push('-'),
            'u' => match basic_user(r) {
                Some(u) => escape_into(out, &u),
                None => out.push('-'),
            },
            't' => out.push_str(&clf_time(SystemTime::now())),
            'r' => {
                escape_into(out, r.method);
                out.push(' ');
                escape_into(out, r.raw_uri);
                out.push(' ');
                out.push_str(r.protocol);
            }
            'm' => escape_into(out, r.method),
            'U' => escape_into(out, r.path),
            'q' => escape_into(out, r.query),
            'H' => out.push_str(r.protocol),
            's' => {
                let _ = write!(out, "{}", r.status);
            }
            'B' => match r.bytes_sent {
                Some(b) => {
                    let _ = write!(out, "{b}");
                }
                None => out.push('-'),
            },
            'b' => match r.bytes_sent {
                Some(b) => {
                    let _ = write!(out, "{b}");
                }
                None => out.push('-'),
            },
            'f' => match req_header(r, "referer") {
                Some(v) => escape_bytes_into(out, v),
                None => out.push('-'),
            },
            'a' => match req_header(r, "user-agent") {
                Some(v) => escape_bytes_into(out, v),
                None => out.push('-'),
            },
            'T' => {
                let _ = write!(out, "{}", d.as_secs());
            }
            'D' => {
                let _ = write!(out, "{}", d.as_micros());
            }
            'M' => {
                let _ = write!(out, "{}", d.as_millis());
            }
            'L' => {
                let _ = write!(out, "{}.{:06}", d.as_secs(), d.subsec_micros());
            }
            'p' => {
                let _ = write!(out, "<{}>", std::process::id());
            }
            _ => out.push('-'),
        }
    }

    /// Writes one line. Errors are ignored on purpose: a full disk or a closed stdout
    /// must not fail the request that was already answered.
    pub fn write(&self, r: &Record<'_>) {
        let mut line = self.render(r);
        line.push('\n');
        // SAFETY: the Python side keeps this descriptor open for the worker's whole
        // life (it reopens log files with dup2 onto the same number).
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let mut buf = line.as_bytes();
        while !buf.is_empty() {
            match nix::unistd::write(fd, buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf = &buf[n..],
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(
        headers: &'a [(String, Vec<u8>)],
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Record<'a> {
        Record {
            remote_addr: "127.0.0.1",
            method: "GET",
            raw_uri: "/p?q=1",
            path: "/p",
            query: "q=1",
            protocol: "HTTP/1.1",
            request_headers: headers,
            status: 200,
            response_headers: &[],
            bytes_sent: Some(767),
            duration: Duration::from_micros(1_234_567),
            environ: env,
        }
    }

    #[test]
    fn default_format_matches_gunicorn_shape() {
        let log = AccessLog::new(
            r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#,
            2,
        );
        let headers = vec![
            ("Referer".to_owned(), b"http://r/\"x\"".to_vec()),
            ("User-Agent".to_owned(), b"curl/7.88.1".to_vec()),
            (
                "Authorization".to_owned(),
                b"Basic Ym9iOnNlY3JldA==".to_vec(),
            ),
        ];
        let env = |_: &str| None;
        let line = log.render(&record(&headers, &env));
        assert!(line.starts_with("127.0.0.1 - bob ["), "{line}");
        assert!(
            line.ends_with(r#"] "GET /p?q=1 HTTP/1.1" 200 767 "http://r/\"x\"" "curl/7.88.1""#),
            "{line}"
        );
    }

    #[test]
    fn durations_pid_and_unknown_atoms() {
        let log = AccessLog::new("%(T)s %(M)s %(D)s %(L)s %(z)s %(p)s %%", 2);
        let env = |_: &str| None;
        let line = log.render(&record(&[], &env));
        let pid = std::process::id();
        assert_eq!(line, format!("1 1234 1234567 1.234567 - <{pid}> %"));
    }

    #[test]
    fn header_and_environ_atoms_are_escaped() {
        let log = AccessLog::new(
            "%({x-evil}i)s|%({content-type}o)s|%({REMOTE_ADDR}e)s|%({nope}i)s",
            2,
        );
        let headers = vec![("X-Evil".to_owned(), b"a\"b\\c\x01\xff".to_vec())];
        let env = |k: &str| (k == "REMOTE_ADDR").then(|| "1.2.3.4".to_owned());
        let mut r = record(&headers, &env);
        let resp = vec![("Content-Type".to_owned(), "text/plain".to_owned())];
        r.response_headers = &resp;
        assert_eq!(log.render(&r), r#"a\"b\\c\x01\xff|text/plain|1.2.3.4|-"#);
    }

    #[test]
    fn parse_keeps_literals_and_conversions() {
        assert_eq!(
            parse_format("x %(s)d y %(h)-10s"),
            vec![
                Piece::Literal("x ".into()),
                Piece::Atom('s'),
                Piece::Literal(" y ".into()),
                Piece::Atom('h'),
            ]
        );
    }
}

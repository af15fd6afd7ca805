//! Bytes this layer writes on its own: gunicorn's error pages, status reason phrases and
//! the `Date` header value.
//!
//! Application responses are framed by the layers above; what lives here is what has to
//! match gunicorn byte for byte without any application involved (`util.write_error`),
//! and the small per-response helpers every writer needs.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// gunicorn's error response (`util.write_error`), byte for byte.
///
/// The layout is always `HTTP/1.1 <status> <reason>`, then `Connection: close`,
/// `Content-Type: text/html` and `Content-Length`, with no `Server` or `Date` header,
/// whatever the request's version. The page carries `reason` as given and `message`
/// HTML-escaped the way Python's `html.escape` does (`& < > " '`).
///
/// gunicorn encodes the page as latin-1, and the messages it builds hold latin-1 text
/// (`repr` of the request's bytes). Characters up to U+00FF are therefore written as
/// one byte each; anything above, which gunicorn's own messages never contain, becomes
/// `?` rather than failing.
pub fn error_response(status: u16, reason: &str, message: &str) -> Vec<u8> {
    let mut page = String::with_capacity(160 + 2 * reason.len() + message.len());
    page.push_str("<html>\n  <head>\n    <title>");
    page.push_str(reason);
    page.push_str("</title>\n  </head>\n  <body>\n    <h1><p>");
    page.push_str(reason);
    page.push_str("</p></h1>\n    ");
    html_escape_into(&mut page, message);
    page.push_str("\n  </body>\n</html>\n");
    let body = latin1_encode(&page);

    let mut out = Vec::with_capacity(body.len() + 96);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(&latin1_encode(reason));
    out.extend_from_slice(b"\r\nConnection: close\r\nContent-Type: text/html\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

/// Python's `html.escape(s, quote=True)`.
fn html_escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
}

/// Encode text as latin-1, one byte per character; characters above U+00FF become `?`.
fn latin1_encode(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// The reason phrase for a status code, for status lines this server writes itself
/// (`""` when the code is unknown).
///
/// These are RFC 9110's phrases, which Python 3.13+'s `http.HTTPStatus` also uses
/// (uvicorn takes its phrases from there). Python 3.11 and 3.12 still said
/// "Request-URI Too Long", "Request Entity Too Large", "Requested Range Not
/// Satisfiable" and "Unprocessable Entity" for 414, 413, 416 and 422.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a Teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// Length of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
const HTTP_DATE_LEN: usize = 29;

thread_local! {
    /// The last formatted date and the Unix second it is for. Per thread, so the hot
    /// path takes no lock; formatting happens at most once per second per thread.
    static DATE_CACHE: RefCell<(u64, [u8; HTTP_DATE_LEN])> =
        const { RefCell::new((u64::MAX, [0; HTTP_DATE_LEN])) };
}

/// Append the current time as an HTTP `Date` value (RFC 9110 section 5.6.7
/// IMF-fixdate, as gunicorn's `util.http_date` writes it) to `out`.
///
/// This is the allocation-free form for response writers; the value is cached per
/// thread and reformatted only when the second changes.
pub fn write_http_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    // A clock before 1970 is a broken host; formatting it as 1970 is harmless.
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == HTTP_DATE_LEN {
                cache.1.copy_from_slice(text.as_bytes());
                cache.0 = secs;
            } else {
                // Years past 9999 format longer; don't cache what doesn't fit.
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&cache.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_page_is_byte_identical_to_gunicorn() {
        // Produced by gunicorn 27.0.1's util.write_error on CPython 3.11.
        let expected: &[u8] = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\
Content-Type: text/html\r\nContent-Length: 208\r\n\r\n<html>\n  <head>\n    \
<title>Bad Request</title>\n  </head>\n  <body>\n    <h1><p>Bad Request</p></h1>\n    \
Invalid Request Line &#x27;Invalid HTTP request line: &#x27;x&lt;y&gt;&amp;&#x27;&#x27;\n  \
</body>\n</html>\n";
        let got = error_response(
            400,
            "Bad Request",
            "Invalid Request Line 'Invalid HTTP request line: 'x<y>&''",
        );
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    #[test]
    fn error_page_encodes_latin1_and_counts_bytes() {
        let got = error_response(400, "Bad Request", "caf\u{e9} \u{20ac}\"");
        let text: Vec<u8> = got.clone();
        let body_start = text
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(0);
        let body = &text[body_start..];
        assert!(body.windows(7).any(|w| w == b"caf\xe9 ?&"));
        let header = String::from_utf8_lossy(&text[..body_start]);
        assert!(header.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(!header.contains("Date:"));
        assert!(!header.contains("Server:"));
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(404), "Not Found");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(599), "");
    }

    #[test]
    fn http_date_is_imf_fixdate_and_cached() {
        let mut a = Vec::new();
        write_http_date(&mut a);
        let a = String::from_utf8(a).expect("ASCII");
        assert_eq!(a.len(), HTTP_DATE_LEN);
        assert!(a.ends_with(" GMT"));
        assert!(httpdate::parse_http_date(&a).is_ok());
        let mut buf = b"Date: ".to_vec();
        write_http_date(&mut buf);
        assert_eq!(buf.len(), 6 + HTTP_DATE_LEN);
    }
}

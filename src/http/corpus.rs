//! Replays the project's request corpus (`tests/requests/{valid,invalid}`) against this
//! layer, without a server: each `.http` case is decoded the way gunicorn's
//! `tests/treq.py` does, parsed whole and in random splits, its body decoded to the end,
//! and the outcome compared with the expectation in the paired `.py` file (the status
//! for invalid cases, method and body for valid ones).
//!
//! The black-box suite checks the same cases through a real server; this one pins the
//! parser's part of them, and runs in milliseconds.

#![cfg(test)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use super::body::Decoder;
use super::error::HttpError;
use super::parse::tests::splittings;
use super::parse::{HeadParser, Limits, RequestHead};

/// The bytes of a `.http` case (`tests/treq.py`): real newlines dropped, then `\r`,
/// `\n`, `\t`, `\0`, `\\` and `\xHH` escapes.
fn decode_http(text: &str) -> Vec<u8> {
    let text: Vec<u8> = text.bytes().filter(|&b| b != b'\n').collect();
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\' && i + 1 < text.len() {
            let (byte, used) = match text[i + 1] {
                b'r' => (b'\r', 2),
                b'n' => (b'\n', 2),
                b't' => (b'\t', 2),
                b'0' => (0, 2),
                b'\\' => (b'\\', 2),
                b'x' => {
                    let hex = std::str::from_utf8(&text[i + 2..i + 4]).unwrap();
                    (u8::from_str_radix(hex, 16).unwrap(), 4)
                }
                other => panic!("unknown escape \\{}", other as char),
            };
            out.push(byte);
            i += used;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// A Python `b'...'` literal's bytes, when `src` is one.
fn python_bytes_literal(src: &str) -> Option<Vec<u8>> {
    let inner = src.strip_prefix("b'")?.strip_suffix('\'')?;
    let bytes = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let (byte, used) = match *bytes.get(i + 1)? {
                b'r' => (b'\r', 2),
                b'n' => (b'\n', 2),
                b't' => (b'\t', 2),
                b'0' => (0, 2),
                b'\\' => (b'\\', 2),
                b'\'' => (b'\'', 2),
                b'x' => (
                    u8::from_str_radix(std::str::from_utf8(bytes.get(i + 2..i + 4)?).ok()?, 16)
                        .ok()?,
                    4,
                ),
                _ => return None,
            };
            out.push(byte);
            i += used;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The value of `key` in the `.py` file, as source text (single line only).
fn py_value<'a>(py: &'a str, key: &str) -> Option<&'a str> {
    py.lines().find_map(|line| {
        let rest = match line.find(&format!("'{key}': ")) {
            Some(at) => &line[at + key.len() + 4..],
            None => line.strip_prefix(&format!("{key} = "))?,
        };
        Some(rest.trim_end_matches([',', '}']).trim())
    })
}

/// Limits for the case's `args`, or `None` when it sets something this layer does not
/// model (header_map, PROXY protocol, ...): such a case is left to the black-box suite.
fn limits_for(py: &str) -> Option<Limits> {
    let mut limits = Limits::default();
    if let Some(args) = py_value(py, "args") {
        let parts: Vec<&str> = args
            .trim_matches(['[', ']'])
            .split(',')
            .map(|s| s.trim().trim_matches('\''))
            .collect();
        for pair in parts.chunks(2) {
            let value: i64 = pair.get(1)?.parse().ok()?;
            match pair[0] {
                "--limit-request-line" => {
                    limits.request_line = Limits::from_settings(value, 100, 8190).request_line;
                }
                "--limit-request-fields" => {
                    limits.fields = Limits::from_settings(4094, value, 8190).fields;
                }
                "--limit-request-field_size" | "--limit-request-field-size" => {
                    limits.field_size = Limits::from_settings(4094, 100, value).field_size;
                }
                _ => return None,
            }
        }
    }
    Some(limits)
}

/// What a server would do with the whole exchange: the parsed heads (pipelined ones
/// too) with their bodies, then the error that ended it, if any. `None` for the error
/// means the input ended cleanly between requests; `IncompleteBody` means the client
/// went away mid-request.
type Outcome = (Vec<(RequestHead, Vec<u8>)>, Option<HttpError>);

fn serve(input: &[u8], steps: &[usize], limits: &Limits) -> Outcome {
    let mut requests = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut steps = steps.iter();
    let mut read = |buf: &mut Vec<u8>| match steps.next() {
        Some(&n) => {
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
            true
        }
        None => false,
    };
    loop {
        let mut parser = HeadParser::new(limits);
        let (head, consumed) = loop {
            match parser.parse(&buf) {
                Ok(Some(done)) => break done,
                Ok(None) => {
                    if !read(&mut buf) {
                        let err = (!buf.is_empty()).then_some(HttpError::IncompleteBody);
                        return (requests, err);
                    }
                }
                Err(e) => return (requests, Some(e)),
            }
        };
        buf.drain(..consumed);
        let mut decoder = Decoder::new(head.body, limits);
        let mut body = Vec::new();
        while !decoder.is_done() {
            match decoder.decode(&buf) {
                Ok(d) => {
                    body.extend_from_slice(&buf[d.data.clone()]);
                    buf.drain(..d.consumed);
                    if d.consumed == 0 && !decoder.is_done() && !read(&mut buf) {
                        let err = decoder.eof_error(&buf);
                        requests.push((head, body));
                        return (requests, Some(err));
                    }
                }
                Err(e) => {
                    requests.push((head, body));
                    return (requests, Some(e));
                }
            }
        }
        let keep_alive = head.keep_alive;
        requests.push((head, body));
        if !keep_alive {
            return (requests, None);
        }
    }
}

fn cases(kind: &str) -> Vec<(PathBuf, Vec<u8>, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/requests")
        .join(kind);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "http"))
        .map(|p| {
            let input = decode_http(&fs::read_to_string(&p).unwrap());
            let py = fs::read_to_string(p.with_extension("py")).unwrap_or_default();
            (p, input, py)
        })
        .collect();
    out.sort();
    out
}

/// Serve the case whole and in every splitting; all must agree.
fn serve_all_ways(name: &str, input: &[u8], limits: &Limits) -> Outcome {
    let whole = serve(input, &[input.len()], limits);
    for steps in splittings(input.len(), input.len() as u64) {
        let split = serve(input, &steps, limits);
        assert_eq!(whole.0, split.0, "{name}: split changes the requests");
        assert_eq!(
            whole.1.as_ref().map(std::mem::discriminant),
            split.1.as_ref().map(std::mem::discriminant),
            "{name}: split changes the error"
        );
    }
    whole
}

#[test]
fn valid_corpus() {
    let cases = cases("valid");
    eprintln!("{} valid cases", cases.len());
    for (path, input, py) in cases {
        let name = path.display().to_string();
        let Some(limits) = limits_for(&py) else {
            eprintln!("{name}: skipped (config this layer does not model)");
            continue;
        };
        let (requests, error) = serve_all_ways(&name, &input, &limits);
        assert!(
            error.is_none(),
            "{name}: {error:?} after {} request(s)",
            requests.len()
        );
        let (first, body) = requests.first().expect("at least one request");
        if let Some(method) = py_value(&py, "method") {
            assert_eq!(format!("'{}'", first.method), method, "{name}");
        }
        if let Some(expected) = py_value(&py, "body").and_then(python_bytes_literal) {
            assert_eq!(body, &expected, "{name}");
        }
    }
}

/// Each invalid case this layer refuses must get the expected status. A case it serves
/// must be one that a layer above refuses (scheme headers, SCRIPT_NAME, ...): those are
/// listed, not failed, and left to the black-box suite.
#[test]
fn invalid_corpus() {
    let cases = cases("invalid");
    eprintln!("{} invalid cases", cases.len());
    for (path, input, py) in cases {
        let name = path.display().to_string();
        let Some(limits) = limits_for(&py) else {
            eprintln!("{name}: skipped (config this layer does not model)");
            continue;
        };
        let (_, error) = serve_all_ways(&name, &input, &limits);
        let expected = py_value(&py, "status").expect("status");
        let got = match &error {
            Some(e) if e.wants_response() => e.status().to_string(),
            Some(_) => "'closed'".to_string(),
            None => {
                eprintln!("{name}: accepted here, expected {expected} from a layer above");
                continue;
            }
        };
        assert_eq!(got, expected, "{name}: {error:?}");
    }
}

//! Builds the PEP 3333 environ for one request, key for key as gunicorn's
//! `http/wsgi.py` does (section 4.5 of the reference): `RAW_URI`, `SCRIPT_NAME`
//! handling, `SERVER_NAME`/`SERVER_PORT` from the listening socket, header joins with
//! ",", underscore headers dropped, and `wsgi.url_scheme` from the secure-scheme
//! headers only for trusted peers.
//!
//! The per-worker constant keys live in a base dict built once by the Python side; each
//! request starts from a C-level `dict.copy()` of it. Environ keys for header names are
//! cached as Python strings, so a header seen before costs one dict insert.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::http::{percent_decode, HttpError, RequestHead};
use crate::net::Peer;

/// One `forwarded_allow_ips` entry: an address (its bytes, worked out once) and its
/// prefix length in bits.
#[derive(Debug, Clone)]
pub struct Network {
    addr: IpBytes,
    bits: u8,
}

/// The trusted front ends (`forwarded_allow_ips`).
#[derive(Debug, Clone)]
pub enum Trust {
    /// `*`: every peer is trusted.
    All,
    /// Only these addresses or networks (and Unix-socket peers).
    Listed(Vec<Network>),
}

fn prefix_match(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rem = bits % 8;
    if a.len() != b.len() || full > a.len() {
        return false;
    }
    if a[..full] != b[..full] {
        return false;
    }
    if rem == 0 || full == a.len() {
        return true;
    }
    let mask = 0xffu8 << (8 - rem);
    (a[full] & mask) == (b[full] & mask)
}

/// An address's bytes (an IPv4-mapped IPv6 address as its IPv4 form), on the stack:
/// a `Vec` here was three allocations per request for the default two-entry list.
#[derive(Debug, Clone)]
struct IpBytes {
    bytes: [u8; 16],
    len: usize,
}

impl std::ops::Deref for IpBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn ip_bytes(ip: &IpAddr) -> IpBytes {
    let v4 = |v4: std::net::Ipv4Addr| {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&v4.octets());
        IpBytes { bytes, len: 4 }
    };
    match ip {
        IpAddr::V4(a) => v4(*a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(mapped) => v4(mapped),
            None => IpBytes {
                bytes: a.octets(),
                len: 16,
            },
        },
    }
}

impl Trust {
    /// Parses gunicorn's list: IPs, `[v6]`, CIDR networks, or `*`. Unparsable entries
    /// are reported so the caller can refuse the configuration.
    pub fn parse(entries: &[String]) -> Result<Trust, String> {
        let mut out = Vec::new();
        for raw in entries {
            let e = raw.trim();
            if e.is_empty() {
                continue;
            }
            if e == "*" {
                return Ok(Trust::All);
            }
            let (addr, bits) = match e.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (e, None),
            };
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("{raw:?} is not an IP address or network"))?;
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{raw:?} has an invalid prefix length"))?,
                None => max,
            };
            out.push(Network {
                addr: ip_bytes(&ip),
                bits,
            });
        }
        Ok(Trust::Listed(out))
    }

    /// Whether `peer` may set forwarded headers. Unix-socket peers are always trusted,
    /// as in gunicorn.
    pub fn allows(&self, peer: &Peer) -> bool {
        match peer.ip() {
            None => true,
            Some(ip) => self.allows_ip(&ip),
        }
    }

    /// Whether a front end at `ip` may set forwarded headers.
    pub fn allows_ip(&self, ip: &std::net::IpAddr) -> bool {
        match self {
            Trust::All => true,
            Trust::Listed(list) => {
                let pb = ip_bytes(ip);
                list.iter().any(|n| prefix_match(&n.addr, &pb, n.bits))
            }
        }
    }
}

/// Why an environ could not be built; answered with gunicorn's status.
#[derive(Debug)]
pub enum EnvironError {
    /// Contradictory secure-scheme headers: 400.
    Http(HttpError),
    /// The path is not under `SCRIPT_NAME`: gunicorn answers 500 "Configuration problem".
    ScriptName(String),
    /// A Python error while filling the dict.
    Py(PyErr),
}

impl From<PyErr> for EnvironError {
    fn from(e: PyErr) -> Self {
        EnvironError::Py(e)
    }
}

/// Static settings that shape every environ.
#[derive(Debug)]
pub struct EnvironConfig {
    /// Trusted front ends.
    pub trust: Trust,
    /// `secure_scheme_headers`: upper-cased header name and the value that means https.
    pub secure_scheme_headers: Vec<(String, String)>,
    /// Upper-cased underscore header names a trusted peer may send (`forwarder_headers`).
    pub forwarder_headers: Vec<String>,
    /// `SCRIPT_NAME` from the process environment.
    pub script_name: String,
}

/// Per-listener facts the environ needs.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// `SERVER_NAME` and `SERVER_PORT` for TCP listeners, as the Python strings every
    /// request's environ shares (not two `String`s cloned and converted per request).
    pub server: Option<Arc<(Py<PyString>, Py<PyString>)>>,
}

impl ListenerInfo {
    pub fn new(py: Python<'_>, listener: &crate::net::Listener) -> ListenerInfo {
        ListenerInfo {
            server: listener.server_name_port().map(|(name, port)| {
                Arc::new((
                    PyString::new(py, &name).unbind(),
                    PyString::new(py, &port).unbind(),
                ))
            }),
        }
    }
}

/// Builds environ dicts; one per worker.
#[derive(Debug)]
pub struct EnvironBuilder {
    base: Py<PyDict>,
    cfg: EnvironConfig,
    header_keys: HashMap<Vec<u8>, Py<PyString>>,
}

/// Header-key cache bound: enough for every header real clients send, small enough
/// that a client inventing names cannot grow a worker's memory.
const HEADER_KEY_CACHE: usize = 512;

fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.is_ascii() => PyString::new(py, s),
        _ => {
            let s: String = bytes.iter().map(|&b| char::from(b)).collect();
            PyString::new(py, &s)
        }
    }
}

/// The keys [`EnvironBuilder::build`] sets for every request (`REMOTE_PORT` aside: a
/// Unix-socket peer has none). The base holds them as placeholders, so each request's
/// copy already has their slots: filling them replaces values rather than inserting,
/// and the copy is not resized on the way (callgrind, gthread hello world: one
/// `dictresize` a request, 0.55k instructions, besides the insertions themselves).
const PER_REQUEST_KEYS: [&str; 11] = [
    "REQUEST_METHOD",
    "QUERY_STRING",
    "RAW_URI",
    "SERVER_PROTOCOL",
    "PATH_INFO",
    "SCRIPT_NAME",
    "SERVER_NAME",
    "SERVER_PORT",
    "wsgi.url_scheme",
    "wsgi.input",
    "REMOTE_ADDR",
];

impl EnvironBuilder {
    /// A builder starting each environ from a copy of `base` (with the
    /// [`PER_REQUEST_KEYS`] added).
    pub fn new(base: &Bound<'_, PyDict>, cfg: EnvironConfig) -> PyResult<Self> {
        let py = base.py();
        let base = base.copy()?;
        for key in PER_REQUEST_KEYS {
            // Interned, as `pyo3::intern!` in `build`: the same objects.
            base.set_item(PyString::intern(py, key), py.None())?;
        }
        Ok(EnvironBuilder {
            base: base.unbind(),
            cfg,
            header_keys: HashMap::new(),
        })
    }

    /// Whether `peer` is a trusted front end.
    pub fn trusts(&self, peer: &Peer) -> bool {
        self.cfg.trust.allows(peer)
    }

    fn header_key<'py>(&mut self, py: Python<'py>, name: &str) -> Bound<'py, PyString> {
        if let Some(k) = self.header_keys.get(name.as_bytes()) {
            return k.bind(py).clone();
        }
        let upper = name.to_ascii_uppercase().replace('-', "_");
        let key = match upper.as_str() {
            "CONTENT_TYPE" | "CONTENT_LENGTH" => upper,
            _ => format!("HTTP_{upper}"),
        };
        let k = PyString::intern(py, &key);
        if self.header_keys.len() < HEADER_KEY_CACHE {
            self.header_keys
                .insert(name.as_bytes().to_vec(), k.clone().unbind());
        }
        k
    }

    /// Builds the environ for `head`, received from `peer` on `listener`, with
    /// `input` as `wsgi.input`.
    pub fn build<'py>(
        &mut self,
        py: Python<'py>,
        head: &RequestHead,
        peer: &Peer,
        listener: &ListenerInfo,
        input: Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyDict>, EnvironError> {
        let env = self.base.bind(py).copy()?;
        let trusted = self.cfg.trust.allows(peer);
        let mut script_name = self.cfg.script_name.clone();
        let mut host: Option<&[u8]> = None;
        let mut scheme: Option<&'static str> = None;

        for (name, value) in &head.headers {
            let upper = name.to_ascii_uppercase();
            if upper.contains('_') {
                // gunicorn ≥22 drops underscore names (#2799) so `X_Forwarded_For`
                // cannot alias `X-Forwarded-For`; trusted proxies may still send the
                // names listed in forwarder_headers.
                if !(trusted && self.cfg.forwarder_headers.contains(&upper)) {
                    continue;
                }
            }
            if trusted {
                for (hname, hval) in &self.cfg.secure_scheme_headers {
                    if *hname == upper {
                        let this = if value.as_slice() == hval.as_bytes() {
                            "https"
                        } else {
                            "http"
                        };
                        if scheme.is_some_and(|s| s != this) {
                            return Err(EnvironError::Http(HttpError::InvalidHeader(
                                "Contradictory scheme headers".to_owned(),
                            )));
                        }
                        scheme = Some(this);
                    }
                }
            }
            match upper.as_str() {
                "HOST" => host = Some(value),
                "SCRIPT_NAME" => script_name = latin1(py, value).to_string(),
                _ => {}
            }
            let key = self.header_key(py, name);
            let val = latin1(py, value);
            match env.get_item(&key)? {
                Some(prev) => {
                    let joined = format!(
                        "{},{}",
                        prev.cast::<PyString>().map_err(PyErr::from)?.to_str()?,
                        val.to_str()?
                    );
                    env.set_item(key, joined)?;
                }
                None => env.set_item(key, val)?,
            }
        }

        let url_scheme = scheme.unwrap_or("http");
        let (raw_path, query, _fragment) = head.split_target();
        let path_bytes = percent_decode(raw_path);
        let mut path_info = latin1(py, &path_bytes).to_string();
        if !script_name.is_empty() {
            let script = script_name.trim_end_matches('/');
            if !path_info.starts_with(script) {
                return Err(EnvironError::ScriptName(format!(
                    "Request path '{path_info}' does not start with SCRIPT_NAME '{script}'"
                )));
            }
            path_info = path_info[script.len()..].to_owned();
            script_name = script.to_owned();
        }

        let (server_name, server_port) = match &listener.server {
            Some(server) => (server.0.bind(py).clone(), server.1.bind(py).clone()),
            None => {
                let (n, p) = host_to_server(host, url_scheme);
                (PyString::new(py, &n), PyString::new(py, &p))
            }
        };

        // Common values interned: building each from UTF-8 per request showed up in
        // the asgi worker's profile (the same dict-building work as here).
        let method = method_str(py, &head.method);
        let protocol = match head.version {
            crate::http::Version::Http11 => pyo3::intern!(py, "HTTP/1.1"),
            crate::http::Version::Http10 => pyo3::intern!(py, "HTTP/1.0"),
        };
        env.set_item(pyo3::intern!(py, "REQUEST_METHOD"), method)?;
        env.set_item(pyo3::intern!(py, "QUERY_STRING"), query)?;
        env.set_item(pyo3::intern!(py, "RAW_URI"), head.target.as_str())?;
        env.set_item(pyo3::intern!(py, "SERVER_PROTOCOL"), protocol)?;
        env.set_item(pyo3::intern!(py, "PATH_INFO"), path_info)?;
        env.set_item(pyo3::intern!(py, "SCRIPT_NAME"), script_name)?;
        env.set_item(pyo3::intern!(py, "SERVER_NAME"), server_name)?;
        env.set_item(pyo3::intern!(py, "SERVER_PORT"), server_port)?;
        let url_scheme = if url_scheme == "https" {
            pyo3::intern!(py, "https")
        } else {
            pyo3::intern!(py, "http")
        };
        env.set_item(pyo3::intern!(py, "wsgi.url_scheme"), url_scheme)?;
        env.set_item(pyo3::intern!(py, "wsgi.input"), input)?;
        match peer {
            Peer::Tcp { addr, host } => {
                env.set_item(pyo3::intern!(py, "REMOTE_ADDR"), &**host)?;
                let mut port = itoa::Buffer::new();
                env.set_item(pyo3::intern!(py, "REMOTE_PORT"), port.format(addr.port()))?;
            }
            Peer::Unix => {
                env.set_item(pyo3::intern!(py, "REMOTE_ADDR"), "")?;
            }
        }
        Ok(env)
    }
}

/// The request method as a Python string, interned for the common methods: the
/// WSGI environ and the ASGI scope both need one per request.
pub fn method_str<'py>(py: Python<'py>, method: &str) -> Bound<'py, PyString> {
    match method {
        "GET" => pyo3::intern!(py, "GET").clone(),
        "POST" => pyo3::intern!(py, "POST").clone(),
        "HEAD" => pyo3::intern!(py, "HEAD").clone(),
        "PUT" => pyo3::intern!(py, "PUT").clone(),
        "DELETE" => pyo3::intern!(py, "DELETE").clone(),
        "PATCH" => pyo3::intern!(py, "PATCH").clone(),
        "OPTIONS" => pyo3::intern!(py, "OPTIONS").clone(),
        other => PyString::new(py, other),
    }
}

/// For Unix-socket listeners gunicorn takes `SERVER_NAME`/`SERVER_PORT` from Host, with
/// the scheme's default port.
fn host_to_server(host: Option<&[u8]>, scheme: &str) -> (String, String) {
    let default_port = if scheme == "https" { "443" } else { "80" };
    let host = match host {
        Some(h) => String::from_utf8_lossy(h).into_owned(),
        None => return (String::new(), default_port.to_owned()),
    };
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').unwrap_or(default_port);
            return (format!("[{h}]"), port.to_owned());
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (h.to_owned(), p.to_owned())
        }
        _ => (host, default_port.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn peer(s: &str) -> Peer {
        #[allow(clippy::unwrap_used)]
        Peer::tcp(s.parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn trust_lists_and_networks() {
        #[allow(clippy::unwrap_used)]
        let t = Trust::parse(&["127.0.0.1".into(), "[::1]".into(), "10.0.0.0/8".into()]).unwrap();
        assert!(t.allows(&peer("127.0.0.1:1")));
        assert!(t.allows(&peer("[::1]:1")));
        assert!(t.allows(&peer("10.20.30.40:1")));
        assert!(!t.allows(&peer("11.0.0.1:1")));
        assert!(!t.allows(&peer("127.0.0.2:1")));
        assert!(t.allows(&Peer::Unix));
        assert!(Trust::parse(&["nonsense".into()]).is_err());
        assert!(Trust::parse(&["10.0.0.0/33".into()]).is_err());
        #[allow(clippy::unwrap_used)]
        let all = Trust::parse(&["*".into()]).unwrap();
        assert!(all.allows(&peer("8.8.8.8:1")));
    }

    #[test]
    fn host_header_for_unix_listeners() {
        assert_eq!(
            host_to_server(Some(b"example.com:8080"), "http"),
            ("example.com".into(), "8080".into())
        );
        assert_eq!(
            host_to_server(Some(b"example.com"), "https"),
            ("example.com".into(), "443".into())
        );
        assert_eq!(
            host_to_server(Some(b"[::1]:9"), "http"),
            ("[::1]".into(), "9".into())
        );
        assert_eq!(host_to_server(None, "http"), ("".into(), "80".into()));
    }
}

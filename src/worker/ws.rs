//! The WebSocket protocol after the handshake (RFC 6455), with permessage-deflate
//! (RFC 7692), for the asgi worker.
//!
//! tungstenite parses and formats frame headers and names opcodes and close codes;
//! this module does the rest: unmasking, fragment assembly, size limits, control
//! frame rules, UTF-8 checks and compression. tungstenite's own protocol layer
//! (`WebSocketStream`) cannot carry permessage-deflate: 0.30 rejects every frame with
//! RSV1 set (`NonZeroReservedBits` in `protocol/mod.rs`) and has no extension hook.
//! Raw deflate itself is flate2's.
//!
//! [`WsConn::next`] is cancel-safe (it only awaits a read into its own buffer, and a
//! frame is consumed only once it is whole), so the caller can `select!` on it.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// The tail every deflate-compressed message loses on the wire and regains before
/// inflating (RFC 7692 §7.2.1, §7.2.2).
const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Messages shorter than this go out uncompressed (RSV1 clear, allowed per message):
/// deflate cannot shrink them by more than its own overhead.
const COMPRESS_MIN: usize = 64;

/// permessage-deflate as agreed in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeflateParams {
    /// The server starts a fresh compression context for every message.
    pub server_no_context_takeover: bool,
    /// The client does, so the server's decompressor is reset after each message.
    pub client_no_context_takeover: bool,
}

impl DeflateParams {
    /// The first permessage-deflate offer in a `Sec-WebSocket-Extensions` value that
    /// the server can honour, and the value of the header that accepts it. An offer
    /// asking the server for a window under 2^15 is declined: flate2's Rust backend
    /// compresses with 15-bit windows only (the client's own window may be anything,
    /// a 15-bit decompressor reads them all).
    pub(crate) fn negotiate(header: &str) -> Option<(DeflateParams, String)> {
        header.split(',').find_map(Self::accept_offer)
    }

    fn accept_offer(offer: &str) -> Option<(DeflateParams, String)> {
        let mut parts = offer.split(';').map(str::trim);
        if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
            return None;
        }
        let mut params = DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
        };
        let mut server_bits_offered = false;
        let mut client_bits_seen = false;
        for p in parts {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (p, None),
            };
            let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok());
            match name.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" if value.is_none() => {
                    if std::mem::replace(&mut params.server_no_context_takeover, true) {
                        return None;
                    }
                }
                "client_no_context_takeover" if value.is_none() => {
                    if std::mem::replace(&mut params.client_no_context_takeover, true) {
                        return None;
                    }
                }
                "server_max_window_bits" => match bits(value) {
                    Some(15) if !server_bits_offered => server_bits_offered = true,
                    _ => return None,
                },
                "client_max_window_bits" => match (value, bits(value)) {
                    (None, _) | (_, Some(8..=15)) if !client_bits_seen => client_bits_seen = true,
                    _ => return None,
                },
                _ => return None,
            }
        }
        let mut answer = String::from("permessage-deflate");
        if params.server_no_context_takeover {
            answer.push_str("; server_no_context_takeover");
        }
        if params.client_no_context_takeover {
            answer.push_str("; client_no_context_takeover");
        }
        if server_bits_offered {
            answer.push_str("; server_max_window_bits=15");
        }
        Some((params, answer))
    }
}

/// A message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The close code and reason, or `None` for a close frame without a body (1005).
    Close(Option<(u16, String)>),
}

/// Why the connection cannot go on; each maps to the close code the server sends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WsError {
    /// A protocol violation: 1002.
    Protocol(&'static str),
    /// A text message (or close reason) that is not UTF-8: 1007.
    InvalidUtf8,
    /// A message over the size limit, compressed or not: 1009.
    TooBig,
    /// The connection ended without a close frame, or failed: 1006, nothing to send.
    Closed,
}

impl WsError {
    /// The close code to send (and report), `None` when nothing can be sent.
    pub(crate) fn close_code(&self) -> Option<u16> {
        match self {
            WsError::Protocol(_) => Some(1002),
            WsError::InvalidUtf8 => Some(1007),
            WsError::TooBig => Some(1009),
            WsError::Closed => None,
        }
    }
}

/// A message being assembled from fragments.
#[derive(Debug)]
struct Partial {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
}

#[derive(Debug)]
struct Deflater {
    params: DeflateParams,
    compress: Compress,
    decompress: Decompress,
}

/// One WebSocket connection, server side.
#[derive(Debug)]
pub(crate) struct WsConn<S> {
    io: S,
    buf: Vec<u8>,
    max_message: usize,
    partial: Option<Partial>,
    deflate: Option<Deflater>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// Takes over `io` after the 101 answer; `leftover` holds bytes already read past
    /// the handshake request.
    pub(crate) fn new(
        io: S,
        leftover: Vec<u8>,
        max_message: usize,
        deflate: Option<DeflateParams>,
    ) -> Self {
        WsConn {
            io,
            buf: leftover,
            max_message,
            partial: None,
            deflate: deflate.map(|params| Deflater {
                params,
                compress: Compress::new(Compression::fast(), false),
                decompress: Decompress::new(false),
            }),
        }
    }

    /// The next message or control frame. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Result<Incoming, WsError> {
        loop {
            if let Some(item) = self.parse()? {
                return Ok(item);
            }
            self.buf.reserve(8192);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(WsError::Closed),
                Ok(_) => {}
            }
        }
    }

    /// Takes whole frames from the buffer until one completes a message or is a
    /// control frame; `None` when more bytes are needed.
    fn parse(&mut self) -> Result<Option<Incoming>, WsError> {
        loop {
            let mut cursor = std::io::Cursor::new(&self.buf[..]);
            let Some((header, len)) =
                FrameHeader::parse(&mut cursor).map_err(|_| WsError::Protocol("bad frame"))?
            else {
                return Ok(None);
            };
            let start = usize::try_from(cursor.position()).map_err(|_| WsError::TooBig)?;
            let len = usize::try_from(len).map_err(|_| WsError::TooBig)?;
            let held = self.partial.as_ref().map_or(0, |p| p.data.len());
            if len > self.max_message.saturating_sub(held) {
                return Err(WsError::TooBig);
            }
            if self.buf.len() - start < len {
                return Ok(None);
            }
            let mut payload: Vec<u8> = self.buf[start..start + len].to_vec();
            self.buf.drain(..start + len);
            let Some(mask) = header.mask else {
                return Err(WsError::Protocol("unmasked client frame"));
            };
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            if header.rsv2 || header.rsv3 {
                return Err(WsError::Protocol("reserved bits set"));
            }
            if let Some(item) = self.frame(&header, payload)? {
                return Ok(Some(item));
            }
        }
    }

    fn frame(&mut self, h: &FrameHeader, payload: Vec<u8>) -> Result<Option<Incoming>, WsError> {
        match h.opcode {
            OpCode::Control(c) => {
                if !h.is_final || h.rsv1 || payload.len() > 125 {
                    return Err(WsError::Protocol("bad control frame"));
                }
                match c {
                    Control::Ping => Ok(Some(Incoming::Ping(payload))),
                    Control::Pong => Ok(Some(Incoming::Pong)),
                    Control::Close => close_payload(&payload).map(|c| Some(Incoming::Close(c))),
                    Control::Reserved(_) => Err(WsError::Protocol("unknown control opcode")),
                }
            }
            OpCode::Data(d) => {
                let partial = match d {
                    Data::Continue => {
                        if h.rsv1 {
                            return Err(WsError::Protocol("RSV1 on a continuation frame"));
                        }
                        let Some(mut p) = self.partial.take() else {
                            return Err(WsError::Protocol("continuation without a message"));
                        };
                        p.data.extend_from_slice(&payload);
                        p
                    }
                    Data::Text | Data::Binary => {
                        if self.partial.is_some() {
                            return Err(WsError::Protocol("new message inside a fragmented one"));
                        }
                        if h.rsv1 && self.deflate.is_none() {
                            return Err(WsError::Protocol("RSV1 without permessage-deflate"));
                        }
                        Partial {
                            text: d == Data::Text,
                            compressed: h.rsv1,
                            data: payload,
                        }
                    }
                    Data::Reserved(_) => return Err(WsError::Protocol("unknown data opcode")),
                };
                if !h.is_final {
                    self.partial = Some(partial);
                    return Ok(None);
                }
                let data = if partial.compressed {
                    self.inflate(partial.data)?
                } else {
                    partial.data
                };
                if partial.text {
                    String::from_utf8(data)
                        .map(|t| Some(Incoming::Text(t)))
                        .map_err(|_| WsError::InvalidUtf8)
                } else {
                    Ok(Some(Incoming::Binary(data)))
                }
            }
        }
    }

    /// Inflates one message, refusing to produce more than the size limit (a small
    /// compressed message can expand a thousandfold).
    fn inflate(&mut self, mut data: Vec<u8>) -> Result<Vec<u8>, WsError> {
        let max = self.max_message;
        let Some(d) = self.deflate.as_mut() else {
            return Err(WsError::Protocol("RSV1 without permessage-deflate"));
        };
        data.extend_from_slice(&DEFLATE_TAIL);
        let mut out: Vec<u8> = Vec::with_capacity((data.len() * 4).clamp(64, max + 1));
        let mut input = &data[..];
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(WsError::TooBig);
                }
                // Grow geometrically, never past one byte over the limit.
                out.reserve_exact((max + 1 - out.len()).min(out.len().max(1024)));
            }
            let (before_in, before_out) = (d.decompress.total_in(), out.len());
            let status = d
                .decompress
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|_| WsError::Protocol("bad deflate data"))?;
            let used = usize::try_from(d.decompress.total_in() - before_in).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            if out.len() > max {
                return Err(WsError::TooBig);
            }
            let room_left = out.len() < out.capacity();
            let stuck = used == 0 && out.len() == before_out && room_left;
            if status == Status::StreamEnd || (input.is_empty() && room_left) || stuck {
                break;
            }
        }
        if d.params.client_no_context_takeover {
            d.decompress.reset(false);
        }
        Ok(out)
    }

    /// Sends a text or binary message (compressed when agreed and worth it).
    pub(crate) async fn send_data(&mut self, text: bool, data: &[u8]) -> std::io::Result<()> {
        let opcode = OpCode::Data(if text { Data::Text } else { Data::Binary });
        match self.deflate.as_mut() {
            Some(d) if data.len() >= COMPRESS_MIN => {
                let body = deflate(d, data)?;
                self.send_frame(opcode, true, &body).await
            }
            _ => self.send_frame(opcode, false, data).await,
        }
    }

    pub(crate) async fn send_ping(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.send_frame(OpCode::Control(Control::Ping), false, payload)
            .await
    }

    pub(crate) async fn send_pong(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.send_frame(OpCode::Control(Control::Pong), false, payload)
            .await
    }

    /// A close frame; `None` sends one without a body.
    pub(crate) async fn send_close(&mut self, close: Option<(u16, &str)>) -> std::io::Result<()> {
        let mut body = Vec::new();
        if let Some((code, reason)) = close {
            body.extend_from_slice(&code.to_be_bytes());
            // A control frame carries at most 125 bytes: cut the reason on a char
            // boundary to fit.
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            body.extend_from_slice(&reason.as_bytes()[..end]);
        }
        self.send_frame(OpCode::Control(Control::Close), false, &body)
            .await
    }

    async fn send_frame(
        &mut self,
        opcode: OpCode,
        rsv1: bool,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.io.write_all(&frame(opcode, rsv1, payload)?).await
    }

    /// Bytes already framed (the rest of a frame someone else began writing).
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// Waits (cancel-safely) for the client's reply to our close frame: returns when
    /// it arrives, the connection ends, or the client breaks the protocol.
    pub(crate) async fn wait_close_reply(&mut self) {
        while let Ok(item) = self.next().await {
            if matches!(item, Incoming::Close(_)) {
                return;
            }
        }
    }
}

/// One unmasked, final server frame.
fn frame(opcode: OpCode, rsv1: bool, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let header = FrameHeader {
        is_final: true,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    let mut out = Vec::with_capacity(14 + payload.len());
    header
        .format(payload.len() as u64, &mut out)
        .map_err(std::io::Error::other)?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// An uncompressed text or binary message as one frame, as [`WsConn::send_data`]
/// writes it without permessage-deflate.
pub(crate) fn data_frame(text: bool, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    frame(
        OpCode::Data(if text { Data::Text } else { Data::Binary }),
        false,
        payload,
    )
}

/// Compresses one message: raw deflate, sync-flushed, without the 4-byte tail.
fn deflate(d: &mut Deflater, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(data.len() / 2 + 64);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let before = d.compress.total_in();
        d.compress
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .map_err(std::io::Error::other)?;
        let used = usize::try_from(d.compress.total_in() - before).unwrap_or(usize::MAX);
        input = input.get(used..).unwrap_or_default();
        // Done when all input is in and the sync flush fit (room left over).
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&DEFLATE_TAIL) {
        out.truncate(out.len() - DEFLATE_TAIL.len());
    }
    if d.params.server_no_context_takeover {
        d.compress.reset();
    }
    Ok(out)
}

/// A close frame's body: nothing (1005), or a valid code and a UTF-8 reason.
fn close_payload(p: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match p {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("one-byte close frame")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn params(s: bool, c: bool) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: s,
            client_no_context_takeover: c,
        }
    }

    #[test]
    fn negotiation_takes_the_first_acceptable_offer() {
        let (p, answer) =
            DeflateParams::negotiate("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(p, params(false, false));
        assert_eq!(answer, "permessage-deflate");
        // A smaller server window cannot be honoured; the second offer can.
        let (p, answer) = DeflateParams::negotiate(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate; server_no_context_takeover",
        )
        .unwrap();
        assert_eq!(p, params(true, false));
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover");
        let (_, answer) = DeflateParams::negotiate(
            "permessage-deflate; server_max_window_bits=\"15\"; client_no_context_takeover",
        )
        .unwrap();
        assert_eq!(
            answer,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=15"
        );
        assert!(DeflateParams::negotiate("x-webkit-deflate-frame").is_none());
        assert!(DeflateParams::negotiate("permessage-deflate; unknown=1").is_none());
        assert!(DeflateParams::negotiate("permessage-deflate; client_max_window_bits=7").is_none());
        assert!(DeflateParams::negotiate(
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
        )
        .is_none());
    }

    /// A client frame: masked, with the given opcode byte (FIN and RSV bits included).
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn conn(input: Vec<u8>, deflate: Option<DeflateParams>) -> WsConn<tokio::io::DuplexStream> {
        let (a, _b) = tokio::io::duplex(1);
        WsConn::new(a, input, 1 << 20, deflate)
    }

    fn parse_all(c: &mut WsConn<tokio::io::DuplexStream>) -> Vec<Result<Incoming, WsError>> {
        let mut out = Vec::new();
        loop {
            match c.parse() {
                Ok(Some(i)) => out.push(Ok(i)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn fragments_and_control_frames_in_between() {
        let mut input = client_frame(0x01, b"hel"); // text, not final
        input.extend(client_frame(0x89, b"p")); // ping in the middle
        input.extend(client_frame(0x80, b"lo")); // final continuation
        input.extend(client_frame(0x88, &[0x03, 0xe8, b'o', b'k'])); // close 1000 "ok"
        let mut c = conn(input, None);
        assert_eq!(
            parse_all(&mut c),
            vec![
                Ok(Incoming::Ping(b"p".to_vec())),
                Ok(Incoming::Text("hello".into())),
                Ok(Incoming::Close(Some((1000, "ok".into())))),
            ]
        );
    }

    #[test]
    fn a_frame_split_anywhere_waits_for_the_rest() {
        let whole = client_frame(0x82, &[7u8; 300]);
        for cut in [1, 2, 5, 8, 100, whole.len() - 1] {
            let mut c = conn(whole[..cut].to_vec(), None);
            assert!(parse_all(&mut c).is_empty());
            c.buf.extend_from_slice(&whole[cut..]);
            assert_eq!(
                parse_all(&mut c),
                vec![Ok(Incoming::Binary(vec![7u8; 300]))]
            );
        }
    }

    #[test]
    fn protocol_errors_have_their_close_codes() {
        let cases: Vec<(Vec<u8>, Option<u16>)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], Some(1002)), // unmasked
            (client_frame(0x80, b"x"), Some(1002)),     // continuation, nothing started
            (client_frame(0x91, b"x"), Some(1002)),     // RSV1 without deflate
            (client_frame(0x09, b"x"), Some(1002)),     // fragmented ping
            (client_frame(0x83, b"x"), Some(1002)),     // reserved opcode
            (client_frame(0x81, &[0xff, 0xfe]), Some(1007)), // bad UTF-8
            (client_frame(0x88, &[0x03, 0xed]), Some(1002)), // close code 1005 on the wire
            (client_frame(0x88, &[0x03]), Some(1002)),  // one-byte close body
        ];
        for (input, code) in cases {
            let mut c = conn(input.clone(), None);
            let got = parse_all(&mut c).pop().unwrap();
            assert_eq!(got.err().and_then(|e| e.close_code()), code, "{input:?}");
        }
        let mut c = conn(client_frame(0x82, &[0u8; 100]), None);
        c.max_message = 99;
        assert_eq!(parse_all(&mut c), vec![Err(WsError::TooBig)]);
    }

    #[test]
    fn deflate_round_trip_with_and_without_context_takeover() {
        for reset in [false, true] {
            let p = params(reset, reset);
            let mut server = conn(Vec::new(), Some(p));
            // Our compressor stands in for the client's: both sides speak raw deflate.
            let mut client = Deflater {
                params: p,
                compress: Compress::new(Compression::default(), false),
                decompress: Decompress::new(false),
            };
            for round in 0..3 {
                let text = format!("{round} {}", "all work and no play ".repeat(200));
                let body = deflate(&mut client, text.as_bytes()).unwrap();
                assert!(body.len() < text.len() / 10);
                server.buf.extend(client_frame(0xc1, &body)); // FIN + RSV1 + text
                assert_eq!(parse_all(&mut server), vec![Ok(Incoming::Text(text))]);
            }
        }
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let p = params(false, false);
        let mut client = Deflater {
            params: p,
            compress: Compress::new(Compression::best(), false),
            decompress: Decompress::new(false),
        };
        let body = deflate(&mut client, &vec![0u8; 4 << 20]).unwrap();
        assert!(body.len() < 10_000);
        let mut server = conn(client_frame(0xc2, &body), Some(p));
        assert_eq!(parse_all(&mut server), vec![Err(WsError::TooBig)]);
    }
}

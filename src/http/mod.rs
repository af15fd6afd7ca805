//! HTTP/1.x wire protocol, with no Python in it.
//!
//! This layer owns everything between raw socket bytes and a parsed request: the
//! request head parser with gunicorn 27's acceptance rules ([`parse`]), request-body
//! framing decoders ([`body`]) and the bytes of the error responses gunicorn sends
//! ([`response`]). It never touches pyo3, sockets or threads, so it is unit-tested and
//! fuzzed on plain byte slices; the worker layers above feed it buffers.
//!
//! Tests: each module's `mod tests` feeds byte literals whole, byte by byte and in random
//! splits; `corpus` (tests only) replays `tests/requests` through the parser and
//! decoders; `fuzz/` (cargo-fuzz target `parse_request`) checks that no input panics and
//! that splitting never changes an outcome.

pub mod body;
mod corpus;
pub mod error;
pub mod parse;
pub mod response;

pub use body::{Decoded, Decoder};
pub use error::HttpError;
pub use parse::{parse_head, BodyKind, Limits, RequestHead, Version};
pub use parse::{percent_decode, HeadParser};
pub use response::{error_response, reason_phrase, write_http_date};

//! Fuzz the request parser and body decoders: no panic on any input, and the same
//! outcome whether the bytes arrive at once or split into random reads.
//!
//! Input layout: byte 0 picks the limits (defaults, or tiny ones that reach the 414/431
//! paths), bytes 1..9 seed the split PRNG, the rest is what the client sends. The
//! exchange is served the way a keep-alive worker would: parse a head, decode its body,
//! repeat while the connection persists.

#![no_main]

use ferrocorn::http::{percent_decode, Decoder, HeadParser, HttpError, Limits, RequestHead};
use libfuzzer_sys::fuzz_target;

/// xorshift64*: deterministic read sizes from the input's seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The requests served (head and body) and the error that ended the exchange, if any.
type Outcome = (Vec<(RequestHead, Vec<u8>)>, Option<HttpError>);

/// Serve `input` delivered in reads of `steps` bytes.
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
        assert!(consumed > 0 && consumed <= buf.len());
        buf.drain(..consumed);

        // Things the layers above do with every head must not panic either.
        let (path, _, _) = head.split_target();
        let _ = percent_decode(path);

        let mut decoder = Decoder::new(head.body, limits);
        let mut body = Vec::new();
        while !decoder.is_done() {
            match decoder.decode(&buf) {
                Ok(d) => {
                    assert!(d.data.start <= d.data.end && d.data.end <= d.consumed);
                    assert!(d.consumed <= buf.len());
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

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((seed, input)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let limits = if selector & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            request_line: usize::from(selector >> 1) % 40,
            fields: 3,
            field_size: 12 + usize::from(selector >> 4),
        }
    };

    let whole = serve(input, &[input.len()], &limits);

    let mut rng = XorShift(u64::from_le_bytes(*seed) | 1);
    let max_step = 1 + (rng.next() % 16) as usize;
    let mut steps = Vec::new();
    let mut total = 0;
    while total < input.len() {
        let step = (1 + (rng.next() as usize) % max_step).min(input.len() - total);
        steps.push(step);
        total += step;
    }
    let split = serve(input, &steps, &limits);

    assert_eq!(whole.0, split.0, "the split changed the requests");
    assert_eq!(
        whole.1.as_ref().map(std::mem::discriminant),
        split.1.as_ref().map(std::mem::discriminant),
        "the split changed the error: {:?} vs {:?}",
        whole.1,
        split.1
    );
    if let Some(err) = &whole.1 {
        // Rendering the error page must not panic.
        let _ = err.to_string();
        if err.wants_response() {
            let _ = err.to_response();
        }
    }
});

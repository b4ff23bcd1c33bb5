//! A bound on what a `multipart/form-data` parser holds that is not part data.
//!
//! The parser (multer, under axum's `Multipart`) buffers the bytes before the first boundary and
//! each part's header block until it finds their end, and searches that buffer from its start
//! again on every read: a body whose header block never ends grows one buffer up to the body
//! limit (hundreds of MiB for an upload) and costs time quadratic in it, before any of the
//! service's own part limits can see a byte. [`guard`] scans the body as it streams, beside the
//! parser, and ends it with an error once a preamble or a header block passes
//! [`MAX_FRAMING_BYTES`]; the handler then answers 400 with [`FRAMING_MESSAGE`].
//! Part data itself is not limited here: the handlers bound it as they read it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{body::Body, extract::Request, http::header};
use futures::StreamExt;

/// Longest preamble (before the first boundary) or part header block accepted. A browser's or
/// an HTTP client's part headers are a few hundred bytes.
pub const MAX_FRAMING_BYTES: usize = 64 * 1024;

/// What a handler answers (as a 400) when [`Guarded::tripped`] (a sentence without its full stop,
/// which each service's error style adds).
pub const FRAMING_MESSAGE: &str = "A multipart part's headers, or the bytes before the first boundary, run past 64 KiB; send the parts with short headers";

/// The flag a guarded body raises when it ended the body.
#[derive(Debug, Clone, Default)]
pub struct Guarded(Arc<AtomicBool>);

impl Guarded {
    /// Whether the guard ended the body (the parser's error is then its doing).
    pub fn tripped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a handler answers (as a 400) when [`guard`] refuses the content type.
pub const BOUNDARY_MESSAGE: &str =
    "A multipart/form-data body needs a boundary parameter of 1 to 200 characters in its Content-Type";

/// Wraps a `multipart/form-data` request's body in the framing scanner; `Err` (answer 400 with
/// [`BOUNDARY_MESSAGE`]) when its content type has no boundary the scanner can follow, since the
/// parser would take a longer one and buffer the body unguarded.
pub fn guard(request: Request) -> Result<(Request, Guarded), &'static str> {
    let flag = Guarded::default();
    let Some(boundary) = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(boundary)
    else {
        return Err(BOUNDARY_MESSAGE);
    };
    let (parts, body) = request.into_parts();
    let mut scanner = Scanner::new(&boundary);
    let raised = flag.clone();
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk?;
        if scanner.feed(&chunk).is_err() {
            raised.0.store(true, Ordering::Relaxed);
            return Err(axum::Error::new(std::io::Error::other(FRAMING_MESSAGE)));
        }
        Ok(chunk)
    });
    Ok((Request::from_parts(parts, Body::from_stream(stream)), flag))
}

/// The `boundary` parameter of a `multipart/form-data` content type (quoted or not).
fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .find_map(|param| {
            let (name, value) = param.split_once('=')?;
            name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_owned())
        })
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Before the first delimiter (`--boundary`), with the bytes seen so far.
    Preamble(usize),
    /// Just after a delimiter: `--` closes the body, anything else starts a header block.
    Delimited,
    /// In a header block, with its bytes so far, until the blank line.
    Headers(usize),
    /// In part data, until the next `\r\n--boundary`.
    Data,
    /// After the closing delimiter: nothing more is parsed.
    Closed,
}

/// The framing of a multipart body, followed chunk by chunk with a carry of at most a
/// delimiter's length, so the scan is linear in the body.
struct Scanner {
    delimiter: Vec<u8>,
    next_part: Vec<u8>,
    state: State,
    carry: Vec<u8>,
}

struct TooLong;

impl Scanner {
    fn new(boundary: &str) -> Self {
        let delimiter = [b"--", boundary.as_bytes()].concat();
        let next_part = [b"\r\n", delimiter.as_slice()].concat();
        Scanner { delimiter, next_part, state: State::Preamble(0), carry: Vec::new() }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), TooLong> {
        if self.state == State::Closed {
            return Ok(());
        }
        let mut hay = std::mem::take(&mut self.carry);
        hay.extend_from_slice(chunk);
        let mut at = 0;
        loop {
            let rest = &hay[at..];
            match self.state {
                State::Closed => return Ok(()),
                State::Preamble(seen) | State::Headers(seen) => {
                    let (pattern, next): (&[u8], State) = match self.state {
                        State::Preamble(_) => (&self.delimiter, State::Delimited),
                        _ => (b"\r\n\r\n", State::Data),
                    };
                    match memchr::memmem::find(rest, pattern) {
                        Some(found) if seen + found <= MAX_FRAMING_BYTES => {
                            at += found + pattern.len();
                            self.state = next;
                        }
                        Some(_) => return Err(TooLong),
                        None => {
                            let keep = rest.len().min(pattern.len() - 1);
                            let seen = seen + rest.len() - keep;
                            if seen > MAX_FRAMING_BYTES {
                                return Err(TooLong);
                            }
                            self.state = if matches!(self.state, State::Preamble(_)) {
                                State::Preamble(seen)
                            } else {
                                State::Headers(seen)
                            };
                            self.carry = rest[rest.len() - keep..].to_vec();
                            return Ok(());
                        }
                    }
                }
                State::Delimited => {
                    if rest.len() < 2 {
                        self.carry = rest.to_vec();
                        return Ok(());
                    }
                    self.state = if rest.starts_with(b"--") { State::Closed } else { State::Headers(0) };
                }
                State::Data => match memchr::memmem::find(rest, &self.next_part) {
                    Some(found) => {
                        at += found + self.next_part.len();
                        self.state = State::Delimited;
                    }
                    None => {
                        let keep = rest.len().min(self.next_part.len() - 1);
                        self.carry = rest[rest.len() - keep..].to_vec();
                        return Ok(());
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(body: &[u8], chunk: usize) -> Result<State, ()> {
        let mut scanner = Scanner::new("XyZ");
        for piece in body.chunks(chunk.max(1)) {
            scanner.feed(piece).map_err(|TooLong| ())?;
        }
        Ok(scanner.state)
    }

    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (headers, data) in parts {
            body.extend_from_slice(b"--XyZ\r\n");
            body.extend_from_slice(headers.as_bytes());
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    #[test]
    fn well_formed_bodies_pass_in_any_chunking() {
        let data = vec![b'-'; 300_000];
        let body = form(&[
            ("Content-Disposition: form-data; name=\"dataset\"", b"pets"),
            ("Content-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg", &data),
            ("Content-Disposition: form-data; name=\"file\"", b"x--XyZ inside data is not a delimiter"),
        ]);
        for chunk in [1, 2, 3, 7, 64, 4096, 1 << 20] {
            assert_eq!(scan(&body, chunk), Ok(State::Closed), "chunks of {chunk}");
        }
    }

    #[test]
    fn a_header_block_that_never_ends_is_cut_off_at_the_bound() {
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Junk: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_FRAMING_BYTES + 10));
        for chunk in [1, 1000, 1 << 20] {
            assert_eq!(scan(&body, chunk), Err(()), "chunks of {chunk}");
        }
        let long = "X-Long: ".to_owned() + &"b".repeat(MAX_FRAMING_BYTES);
        assert_eq!(scan(&form(&[(&long, b"x")]), 4096), Err(()), "an ended but oversized block");
        let fits = "X-Fits: ".to_owned() + &"b".repeat(MAX_FRAMING_BYTES - 100);
        assert_eq!(scan(&form(&[(&fits, b"x")]), 4096), Ok(State::Closed));
    }

    #[test]
    fn a_preamble_without_a_boundary_is_cut_off_at_the_bound() {
        let body = vec![b'z'; MAX_FRAMING_BYTES + 10];
        assert_eq!(scan(&body, 8192), Err(()));
        let mut small = b"a short preamble\r\n".to_vec();
        small.extend(form(&[("Content-Disposition: form-data; name=\"file\"", b"1")]));
        assert_eq!(scan(&small, 5), Ok(State::Closed));
    }

    #[test]
    fn the_boundary_is_read_from_the_content_type() {
        assert_eq!(boundary("multipart/form-data; boundary=abc").as_deref(), Some("abc"));
        assert_eq!(boundary("Multipart/Form-Data;Boundary=\"a b\"").as_deref(), Some("a b"));
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("image/png; boundary=abc"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
    }
}

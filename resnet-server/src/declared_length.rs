//! A `Content-Length` too large for hyper to hold, answered 413 like every other over-limit body.
//!
//! hyper keeps the two largest `u64` values as internal markers (chunked, close-delimited), and a
//! decimal length past `u64::MAX` does not fit at all, so a request head declaring one of them is
//! refused by hyper's own parser with an automatic `431 Request Header Fields Too Large` (or `400`
//! for the overflow) before any handler runs, although the head is small and what is too large is
//! the body. Every other length over `--max-body-mb` gets `413 body_too_large` from
//! [`crate::body`]. [`DeclaredLength`] makes the answer the same for all of them: it watches the
//! bytes the client sends for a `Content-Length` field whose value hyper cannot represent, and if
//! hyper's next answer is one of those automatic parse-error heads, it writes the 413 instead.
//! Every other byte passes through untouched, in both directions.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest length hyper accepts (`hyper::body::length::MAX_LEN`).
const HYPER_MAX_LENGTH: u128 = (u64::MAX - 2) as u128;

/// `\ncontent-length:`, matched case-insensitively (field names are case-insensitive).
const FIELD: &[u8] = b"\ncontent-length:";

/// Where the scanner is in the client's bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scan {
    /// Matching [`FIELD`]: this many of its bytes seen.
    Name(usize),
    /// After the colon, before the first digit (optional whitespace).
    Space,
    /// Reading the digits: their value so far, saturated above `u64::MAX`.
    Digits(u128),
}

/// Finds `Content-Length` values above hyper's limit in a byte stream that arrives in pieces.
#[derive(Debug)]
pub struct LengthScanner {
    state: Scan,
    /// A value hyper cannot represent has been declared on this connection.
    found: bool,
}

impl Default for LengthScanner {
    fn default() -> Self {
        // Nothing matched yet: the stream starts with a request line, never with a field.
        LengthScanner {
            state: Scan::Name(0),
            found: false,
        }
    }
}

impl LengthScanner {
    /// Feeds the next bytes the client sent.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state = match self.state {
                // `n < FIELD.len()`: the name's last byte moves on to `Space`.
                Scan::Name(n) => {
                    if b.to_ascii_lowercase() == FIELD[n] {
                        if n + 1 == FIELD.len() {
                            Scan::Space
                        } else {
                            Scan::Name(n + 1)
                        }
                    } else if b == b'\n' {
                        Scan::Name(1)
                    } else {
                        Scan::Name(0)
                    }
                }
                Scan::Space => match b {
                    b' ' | b'\t' => Scan::Space,
                    b'0'..=b'9' => Scan::Digits(u128::from(b - b'0')),
                    b'\n' => Scan::Name(1),
                    _ => Scan::Name(0),
                },
                Scan::Digits(v) => match b {
                    // Saturating at 2^64 keeps "too large" true for any number of digits.
                    b'0'..=b'9' => Scan::Digits((v * 10 + u128::from(b - b'0')).min(1 << 64)),
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        if v > HYPER_MAX_LENGTH {
                            self.found = true;
                        }
                        if b == b'\n' {
                            Scan::Name(1)
                        } else {
                            Scan::Name(0)
                        }
                    }
                    _ => Scan::Name(0),
                },
            };
        }
    }

    /// Whether a value hyper cannot represent has been declared.
    pub fn found(&self) -> bool {
        self.found
    }
}

/// Whether `head` starts one of hyper's automatic parse-error answers that an oversized
/// `Content-Length` produces (431 for the reserved values, 400 for an overflow).
fn is_hyper_parse_error(head: &[u8]) -> bool {
    [
        b"HTTP/1.1 431 ",
        b"HTTP/1.1 400 ",
        b"HTTP/1.0 431 ",
        b"HTTP/1.0 400 ",
    ]
    .iter()
    .any(|p| head.starts_with(*p))
}

/// `io` whose answer to an unrepresentable `Content-Length` is the server's 413.
pub struct DeclaredLength<I> {
    io: I,
    scanner: LengthScanner,
    /// The 413 being written in place of hyper's answer, and how much of it has gone.
    replacing: Option<(Vec<u8>, usize)>,
    /// The 413 has been written: hyper's own answer (head only) is swallowed.
    replaced: bool,
    max_body_bytes: usize,
}

impl<I> DeclaredLength<I> {
    /// Wraps `io`; `max_body_bytes` is the limit the 413 names (`--max-body-mb`).
    pub fn new(io: I, max_body_bytes: usize) -> DeclaredLength<I> {
        DeclaredLength {
            io,
            scanner: LengthScanner::default(),
            replacing: None,
            replaced: false,
            max_body_bytes,
        }
    }

    /// The whole answer written instead of hyper's: the same status, code and message as the
    /// handlers' `body_too_large`, and the connection closes (hyper closes it after a parse error).
    fn payload_too_large(&self) -> Vec<u8> {
        let error = crate::body::too_large(self.max_body_bytes);
        let body = serde_json::to_vec(&crate::api::ErrorBody {
            error: &error.message,
            code: error.code,
        })
        .unwrap_or_else(|_| b"{}".to_vec());
        let mut out = format!(
            "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

impl<I: AsyncWrite + Unpin> DeclaredLength<I> {
    /// Writes the rest of the replacement; `Ready(Ok)` once all of it is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.replacing {
            if *done == bytes.len() {
                self.replacing = None;
                self.replaced = true;
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Starts the replacement when `first` is the head of hyper's parse-error answer to an
    /// unrepresentable length; returns whether this write is taken over.
    fn take_over(&mut self, first: &[u8]) -> bool {
        if self.replaced || self.replacing.is_some() {
            return true;
        }
        if self.scanner.found() && is_hyper_parse_error(first) {
            self.replacing = Some((self.payload_too_large(), 0));
            return true;
        }
        false
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for DeclaredLength<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.scanner.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for DeclaredLength<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.take_over(buf) {
            return this.poll_replacement(cx).map_ok(|()| buf.len());
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
        if this.take_over(first) {
            let total = bufs.iter().map(|b| b.len()).sum();
            return this.poll_replacement(cx).map_ok(|()| total);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> bool {
        let mut s = LengthScanner::default();
        for p in pieces {
            s.feed(p);
        }
        s.found()
    }

    #[test]
    fn finds_the_values_hyper_cannot_hold_and_only_those() {
        let head = |v: &str| format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n");
        for v in [
            "18446744073709551615",
            "18446744073709551614",
            "99999999999999999999999",
        ] {
            assert!(scan(&[head(v).as_bytes()]), "{v} is past hyper's limit");
        }
        // u64::MAX - 2 is hyper's largest: hyper parses it, and the body limit answers 413.
        for v in ["18446744073709551613", "0", "1048576", "abc", "12abc"] {
            assert!(
                !scan(&[head(v).as_bytes()]),
                "{v} is not past hyper's limit"
            );
        }
    }

    #[test]
    fn matches_across_reads_in_any_case_and_with_whitespace() {
        let bytes = b"POST / HTTP/1.1\r\ncOnTeNt-LeNgTh:\t 18446744073709551615 \r\n\r\n";
        for cut in 0..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert!(scan(&[a, b]), "split at {cut}");
        }
        // The name must start a line: a longer field name ending in it is another field.
        assert!(!scan(&[
            b"GET / HTTP/1.1\r\nX-Content-Length: 18446744073709551615\r\n\r\n"
        ]));
    }

    #[test]
    fn recognises_hyper_parse_error_heads() {
        assert!(is_hyper_parse_error(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        ));
        assert!(is_hyper_parse_error(b"HTTP/1.1 400 Bad Request\r\n"));
        assert!(!is_hyper_parse_error(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_hyper_parse_error(b"{\"error\""));
    }
}

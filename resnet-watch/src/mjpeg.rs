//! An MJPEG camera's `multipart/x-mixed-replace` stream, cut into its parts (one JPEG each).
//!
//! The parser is incremental ([`PartParser::push`] bytes as they arrive, then take parts with
//! [`PartParser::next_part`]) and emits a part only once it is whole: a stream cut mid-part
//! never yields a torn frame. Parts with a `Content-Length` are taken by length (and the length
//! is checked against the delimiter that must follow; a wrong one falls back to searching);
//! parts without it end at the next delimiter line. Cameras disagree on the delimiter: the
//! declared boundary may or may not carry the `--` that RFC 2046 puts in front of it, so a
//! delimiter line is two or more dashes followed by the boundary without its leading dashes.
//! Memory is bounded by the part limit: a longer part is skipped with an error, and the parser
//! finds the next delimiter.

use memchr::memmem;

/// Longest header block or delimiter line accepted (cameras send a few short headers).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Why a part was skipped. The parser goes on with the next part after each of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("MJPEG part larger than the limit of {limit} bytes (skipped)")]
    TooLarge { limit: usize },
    #[error("MJPEG part headers longer than {MAX_HEADER_BYTES} bytes (skipped)")]
    HeadersTooLong,
    #[error("MJPEG part has a bad Content-Length '{0}' (skipped)")]
    BadLength(String),
}

/// The boundary of a `multipart/x-mixed-replace; boundary=...` content type, with its leading
/// dashes removed; `None` when the type is not multipart or names no usable boundary.
pub fn boundary_from_content_type(content_type: &str) -> Option<Vec<u8>> {
    let mut fields = content_type.split(';');
    let media = fields.next()?.trim();
    if !media.to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    for field in fields {
        let Some((name, value)) = field.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("boundary") {
            let value = value.trim().trim_matches('"').trim_start_matches('-');
            return (!value.is_empty() && value.len() <= 200).then(|| value.as_bytes().to_vec());
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for a delimiter line (before the first part, between parts, after a skip).
    Seeking,
    /// Inside a part's header block.
    Headers { length: Option<usize> },
    /// Inside a part's body.
    Body { length: Option<usize> },
}

/// Incremental multipart parser; see the module documentation.
pub struct PartParser {
    /// The boundary without leading dashes.
    core: Vec<u8>,
    /// `--` + core: what a delimiter line contains.
    needle: Vec<u8>,
    max_part: usize,
    buf: Vec<u8>,
    state: State,
    /// Discarding the rest of an over-long line while seeking.
    skipping_line: bool,
    /// Bytes of `buf` (in body search mode) already searched for a delimiter.
    searched: usize,
    /// Bytes of header block consumed so far for the current part.
    header_bytes: usize,
}

impl PartParser {
    /// A parser for `boundary` (as [`boundary_from_content_type`] returns it) that refuses parts
    /// over `max_part` bytes.
    pub fn new(boundary: &[u8], max_part: usize) -> PartParser {
        let core: Vec<u8> = boundary
            .iter()
            .copied()
            .skip_while(|&b| b == b'-')
            .collect();
        let mut needle = b"--".to_vec();
        needle.extend_from_slice(&core);
        PartParser {
            core,
            needle,
            max_part,
            buf: Vec::new(),
            state: State::Seeking,
            skipping_line: false,
            searched: 0,
            header_bytes: 0,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that do not yet form a part (what is lost if the stream ends now).
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next whole part, a skipped part's error, or `None` when more bytes are needed.
    pub fn next_part(&mut self) -> Option<Result<Vec<u8>, PartError>> {
        loop {
            match self.state {
                State::Seeking => {
                    let line = self.take_line()?;
                    if let Some(close) = self.delimiter(&line) {
                        if !close {
                            self.header_bytes = 0;
                            self.state = State::Headers { length: None };
                        }
                    }
                }
                State::Headers { length } => {
                    let Some(line) = self.take_line() else {
                        if self.buf.len() + self.header_bytes > MAX_HEADER_BYTES {
                            return Some(Err(self.skip(PartError::HeadersTooLong)));
                        }
                        return None;
                    };
                    self.header_bytes += line.len() + 1;
                    if self.header_bytes > MAX_HEADER_BYTES {
                        return Some(Err(self.skip(PartError::HeadersTooLong)));
                    }
                    let text = trim_line(&line);
                    if text.is_empty() {
                        self.searched = 0;
                        self.state = State::Body { length };
                        continue;
                    }
                    if let Some(close) = self.delimiter(&line) {
                        // An empty part (no blank line, no body): start over at this delimiter.
                        self.header_bytes = 0;
                        self.state = if close {
                            State::Seeking
                        } else {
                            State::Headers { length: None }
                        };
                        continue;
                    }
                    let text = String::from_utf8_lossy(text);
                    if let Some((name, value)) = text.split_once(':') {
                        if name.trim().eq_ignore_ascii_case("content-length") {
                            let value = value.trim();
                            match value.parse::<usize>() {
                                Ok(n) if n > self.max_part => {
                                    let limit = self.max_part;
                                    return Some(Err(self.skip(PartError::TooLarge { limit })));
                                }
                                Ok(n) => self.state = State::Headers { length: Some(n) },
                                Err(_) => {
                                    let shown: String = value.chars().take(40).collect();
                                    return Some(Err(self.skip(PartError::BadLength(shown))));
                                }
                            }
                        }
                    }
                }
                State::Body { length: Some(n) } => {
                    if self.buf.len() >= n {
                        // Taken at once (cameras often send the next delimiter only with the
                        // next frame), unless the bytes already there after it contradict the
                        // delimiter that must follow: then the length is wrong.
                        let rest = &self.buf[n..];
                        let fits = |sep: &[u8]| {
                            let mut want = sep.to_vec();
                            want.extend_from_slice(&self.needle);
                            let k = rest.len().min(want.len());
                            rest[..k] == want[..k]
                        };
                        if fits(b"\r\n") || fits(b"\n") {
                            let part: Vec<u8> = self.buf.drain(..n).collect();
                            self.state = State::Seeking;
                            return Some(Ok(part));
                        }
                        return self.search_body();
                    }
                    // A delimiter before the announced end: the length is wrong.
                    if let Some(found) = self.find_delimiter() {
                        if found.line_start < n {
                            return self.search_body();
                        }
                    }
                    return None;
                }
                State::Body { length: None } => return self.search_body(),
            }
        }
    }

    /// Body without (or with a wrong) length: the part ends where the next delimiter line starts.
    fn search_body(&mut self) -> Option<Result<Vec<u8>, PartError>> {
        match self.find_delimiter() {
            Some(found) => {
                let mut end = found.line_start;
                if end > 0 && self.buf[end - 1] == b'\n' {
                    end -= 1;
                    if end > 0 && self.buf[end - 1] == b'\r' {
                        end -= 1;
                    }
                }
                if end > self.max_part {
                    let limit = self.max_part;
                    self.buf.drain(..found.line_start);
                    self.state = State::Seeking;
                    return Some(Err(PartError::TooLarge { limit }));
                }
                let part: Vec<u8> = self.buf[..end].to_vec();
                self.buf.drain(..found.line_start);
                self.state = State::Seeking;
                Some(Ok(part))
            }
            None => {
                if self.buf.len() > self.max_part + self.needle.len() + 2 {
                    let limit = self.max_part;
                    return Some(Err(self.skip(PartError::TooLarge { limit })));
                }
                None
            }
        }
    }

    /// The first delimiter line in the body buffer, searching only bytes not searched before.
    fn find_delimiter(&mut self) -> Option<Found> {
        let from = self.searched.saturating_sub(self.needle.len() + 2);
        let finder = memmem::Finder::new(&self.needle);
        let mut at = from;
        while let Some(i) = finder.find(&self.buf[at..]) {
            let hit = at + i;
            // Extend back over extra dashes; the run must start a line.
            let mut start = hit;
            while start > 0 && self.buf[start - 1] == b'-' {
                start -= 1;
            }
            if start == 0 || self.buf[start - 1] == b'\n' {
                // The rest of the line must be complete to tell a delimiter from data.
                let Some(nl) = memchr::memchr(b'\n', &self.buf[hit..]) else {
                    self.searched = hit;
                    return None;
                };
                let line = &self.buf[start..hit + nl];
                if self.delimiter(line).is_some() {
                    return Some(Found { line_start: start });
                }
            }
            at = hit + 1;
        }
        self.searched = self.buf.len();
        None
    }

    /// Whether `line` is a delimiter line: `Some(false)` for a part delimiter, `Some(true)` for
    /// the closing one (`--boundary--`).
    fn delimiter(&self, line: &[u8]) -> Option<bool> {
        let line = trim_line(line);
        let dashes = line.iter().take_while(|&&b| b == b'-').count();
        if dashes < 2 {
            return None;
        }
        let rest = line[dashes..].strip_prefix(self.core.as_slice())?;
        match rest {
            [] => Some(false),
            [b'-', b'-', ..] => Some(true),
            _ if rest.iter().all(|b| b.is_ascii_whitespace()) => Some(false),
            _ => None,
        }
    }

    /// One line from the buffer (without its `\n`), or `None` until a whole line is there.
    /// While seeking, an over-long line is discarded as it arrives.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        loop {
            match memchr::memchr(b'\n', &self.buf) {
                Some(nl) => {
                    let line: Vec<u8> = self.buf.drain(..=nl).take(nl).collect();
                    if std::mem::take(&mut self.skipping_line) {
                        continue; // the tail of a line already judged too long
                    }
                    return Some(line);
                }
                None => {
                    if self.state == State::Seeking && self.buf.len() > MAX_HEADER_BYTES {
                        self.buf.clear();
                        self.skipping_line = true;
                    }
                    return None;
                }
            }
        }
    }

    /// Gives up on the current part: back to seeking the next delimiter.
    fn skip(&mut self, error: PartError) -> PartError {
        self.state = State::Seeking;
        error
    }
}

struct Found {
    line_start: usize,
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && line[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_of(stream: &[u8], chunk: usize) -> Vec<Result<Vec<u8>, PartError>> {
        let mut p = PartParser::new(b"frame", 1000);
        let mut out = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            p.push(piece);
            while let Some(part) = p.next_part() {
                out.push(part);
            }
        }
        out
    }

    fn stream(with_length: bool, bodies: &[&[u8]]) -> Vec<u8> {
        let mut s = b"preamble text\r\n".to_vec();
        s.extend(parts(with_length, bodies));
        s
    }

    fn parts(with_length: bool, bodies: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for b in bodies {
            s.extend_from_slice(b"--frame\r\nContent-Type: image/jpeg\r\n");
            if with_length {
                s.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
            }
            s.extend_from_slice(b"\r\n");
            s.extend_from_slice(b);
            s.extend_from_slice(b"\r\n");
        }
        s
    }

    #[test]
    fn boundaries_with_and_without_dashes_and_quotes() {
        let b = |ct| boundary_from_content_type(ct);
        assert_eq!(
            b("multipart/x-mixed-replace; boundary=frame"),
            Some(b"frame".to_vec())
        );
        assert_eq!(
            b("multipart/x-mixed-replace;boundary=\"--myboundary\""),
            Some(b"myboundary".to_vec())
        );
        assert_eq!(b("image/jpeg"), None);
        assert_eq!(b("multipart/x-mixed-replace"), None);
        assert_eq!(b("multipart/x-mixed-replace; boundary=--"), None);
    }

    #[test]
    fn parts_with_and_without_length_in_any_chunking() {
        // Bodies hold CRLF, dashes and a fake delimiter that does not start a line.
        let bodies: [&[u8]; 3] = [b"\xff\xd8one\r\n-- x--frame\xff\xd9", b"", b"three\n\n"];
        for with_length in [true, false] {
            let s = stream(with_length, &bodies);
            for chunk in [1, 2, 7, 64, s.len()] {
                let got = parts_of(&s, chunk);
                // The last part is complete only once the next delimiter (or its length) is seen.
                let mut want: Vec<Result<Vec<u8>, PartError>> =
                    bodies.iter().map(|b| Ok(b.to_vec())).collect();
                if !with_length {
                    want.pop();
                }
                assert_eq!(got, want, "length {with_length}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_stream_cut_mid_part_yields_no_torn_part() {
        let s = stream(false, &[b"first", b"second-part-body"]);
        let cut = s.len() - 6;
        let got = parts_of(&s[..cut], 3);
        assert_eq!(got, vec![Ok(b"first".to_vec())]);
        let s = stream(true, &[b"first", b"second-part-body"]);
        let got = parts_of(&s[..s.len() - 8], 3);
        assert_eq!(got, vec![Ok(b"first".to_vec())]);
    }

    #[test]
    fn a_wrong_length_falls_back_to_the_delimiter() {
        // Bytes already there after a too-short length contradict it. (Read in pieces that
        // end exactly at the announced length, the part would be cut and fail to decode.)
        let s = b"--frame\r\nContent-Length: 3\r\n\r\nabcdef\r\n--frame\r\nContent-Length: 2\r\n\r\nxy\r\n--frame\r\n";
        assert_eq!(
            parts_of(s, s.len()),
            vec![Ok(b"abcdef".to_vec()), Ok(b"xy".to_vec())]
        );
        let s = b"--frame\r\nContent-Length: 30\r\n\r\nabc\r\n--frame\r\n\r\nxy\r\n--frame\r\n";
        assert_eq!(
            parts_of(s, 5),
            vec![Ok(b"abc".to_vec()), Ok(b"xy".to_vec())]
        );
    }

    #[test]
    fn oversized_and_garbage_parts_are_skipped_and_parsing_goes_on() {
        let big = vec![b'a'; 1500];
        let mut s = stream(true, &[&big, b"ok1"]);
        s.extend(parts(false, &[&big, b"ok2", b"x"]));
        s.extend_from_slice(b"--frame\r\nContent-Length: nine\r\n\r\nzz\r\n");
        s.extend(parts(true, &[b"ok3"]));
        let got = parts_of(&s, 100);
        let limit = 1000;
        assert_eq!(
            got,
            vec![
                Err(PartError::TooLarge { limit }),
                Ok(b"ok1".to_vec()),
                Err(PartError::TooLarge { limit }),
                Ok(b"ok2".to_vec()),
                Ok(b"x".to_vec()),
                Err(PartError::BadLength("nine".into())),
                Ok(b"ok3".to_vec()),
            ]
        );
        // Megabytes of noise without a newline hold bounded memory.
        let mut p = PartParser::new(b"frame", 1000);
        for _ in 0..100 {
            p.push(&[b'z'; 10_000]);
            assert!(p.next_part().is_none());
            assert!(p.pending_bytes() <= MAX_HEADER_BYTES + 10_000);
        }
    }
}

//! An MJPEG camera on 127.0.0.1 for the watch tests: it streams the repository's photos as
//! `multipart/x-mixed-replace` parts and, connection by connection, cuts mid-part, refuses or
//! sends garbage, as real cameras do. Shared by resnet-server's and resnet-cli's tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Frames the camera streams, in this order, over and over.
pub const MJPEG_FILES: [&str; 4] = [
    "cat_baseline.jpg",
    "coffee_progressive.jpg",
    "cameraman_gray.jpg",
    "tiny_7x5.jpg",
];

/// What the camera does on each connection, in order.
#[derive(Clone, Copy, Debug)]
pub enum Visit {
    /// `n` frames, then half of the next one, then the connection is closed.
    FramesThenCut(usize),
    /// `503 Service Unavailable`.
    Refuse,
    /// One garbage part, then frames until the client goes away.
    GarbageThenFrames,
    /// Frames until the client goes away.
    Frames,
}

fn photo(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/images")
        .join(name)
}

/// A camera sending one frame per `interval`; the `k`-th whole part sent overall (from 0) is
/// `MJPEG_FILES[k % 4]`, with and without Content-Length alternately. Returns its URL and the
/// count of whole parts sent. Connections past the last visit are closed unanswered.
pub fn mjpeg_camera(visits: Vec<Visit>, interval: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/video.mjpg", listener.local_addr().unwrap());
    let frames: Vec<Vec<u8>> = MJPEG_FILES
        .iter()
        .map(|f| std::fs::read(photo(f)).unwrap())
        .collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        let mut visits = visits.into_iter();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let Some(visit) = visits.next() else { return };
            read_request(&mut s);
            let _ = serve_visit(&mut s, visit, &frames, &counter, interval);
        }
    });
    (url, sent)
}

/// Reads a request head (up to the blank line) byte by byte; what was read.
pub fn read_request(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    head
}

fn part(body: &[u8], with_length: bool) -> Vec<u8> {
    let mut p = b"--camframe\r\nContent-Type: image/jpeg\r\n".to_vec();
    if with_length {
        p.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    p.extend_from_slice(b"\r\n");
    p.extend_from_slice(body);
    p.extend_from_slice(b"\r\n");
    p
}

fn serve_visit(
    s: &mut TcpStream,
    visit: Visit,
    frames: &[Vec<u8>],
    sent: &AtomicUsize,
    interval: Duration,
) -> std::io::Result<()> {
    if let Visit::Refuse = visit {
        return s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    }
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=camframe\r\nCache-Control: no-cache\r\n\r\n",
    )?;
    let frame = |s: &mut TcpStream| -> std::io::Result<()> {
        let k = sent.load(Ordering::SeqCst);
        // The delimiter after a part without length ends it: send it with the part.
        s.write_all(&part(&frames[k % frames.len()], k.is_multiple_of(2)))?;
        s.write_all(b"--camframe\r\n")?;
        sent.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(interval);
        Ok(())
    };
    match visit {
        Visit::FramesThenCut(n) => {
            for _ in 0..n {
                frame(s)?;
            }
            // Headers and half a body of a next part; its delimiter was sent already.
            let next = &frames[sent.load(Ordering::SeqCst) % frames.len()];
            s.write_all(b"Content-Type: image/jpeg\r\n\r\n")?;
            s.write_all(&next[..next.len() / 2])?;
            s.flush()?;
            std::thread::sleep(Duration::from_millis(200));
            s.shutdown(std::net::Shutdown::Both)
        }
        Visit::GarbageThenFrames => {
            s.write_all(
                b"--camframe\r\nContent-Type: image/jpeg\r\nContent-Length: 9\r\n\r\nnot jpeg!\r\n",
            )?;
            loop {
                frame(s)?;
            }
        }
        Visit::Frames => loop {
            frame(s)?;
        },
        Visit::Refuse => unreachable!(),
    }
}

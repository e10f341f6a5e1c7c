//! A small load generator for `resnet serve` (loopback only, bounded in time and requests).
//!
//! ```sh
//! cargo run --release -p resnet-server --example load -- \
//!     --addr 127.0.0.1:8080 --connections 16 --seconds 20 --image testdata/images/coffee_progressive.jpg
//! ```
//!
//! Each connection keeps one HTTP/1.1 keep-alive connection and sends `POST /v1/classify` with
//! the image as the raw body, one request at a time, until the time or the request budget runs
//! out. The image is re-encoded to `--width x --height` JPEG first (default 640x480) so runs are
//! comparable. With `--bad-every N`, every Nth request of a connection sends the JPEG cut in
//! half, which must be answered 400 (a soak mixes good and bad requests). Prints requests/s,
//! latency percentiles (and p99 per minute on long runs), errors by status, and, with `--pid`, the
//! server's peak RSS (`VmHWM`) and its RSS sampled every second (to see whether memory is flat).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    connections: usize,
    seconds: f64,
    max_requests: u64,
    image: String,
    width: u32,
    height: u32,
    pid: Option<u32>,
    token: Option<String>,
    path: String,
    /// Every Nth request of a connection sends a truncated JPEG, which must get 400 (0: none).
    bad_every: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().unwrap(),
        connections: 16,
        seconds: 20.0,
        max_requests: 1_000_000,
        image: "testdata/images/coffee_progressive.jpg".into(),
        width: 640,
        height: 480,
        pid: None,
        token: None,
        path: "/v1/classify".into(),
        bad_every: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--connections" => a.connections = value()?.parse().map_err(|e| format!("{e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--max-requests" => a.max_requests = value()?.parse().map_err(|e| format!("{e}"))?,
            "--image" => a.image = value()?,
            "--width" => a.width = value()?.parse().map_err(|e| format!("{e}"))?,
            "--height" => a.height = value()?.parse().map_err(|e| format!("{e}"))?,
            "--pid" => a.pid = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--token" => a.token = Some(value()?),
            "--path" => a.path = value()?,
            "--bad-every" => a.bad_every = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !a.addr.ip().is_loopback() {
        return Err("this load generator only targets loopback addresses".into());
    }
    if a.connections == 0 || !(a.seconds > 0.0 && a.seconds <= 600.0) {
        return Err("--connections must be >= 1 and --seconds in (0, 600]".into());
    }
    Ok(a)
}

fn jpeg(path: &str, w: u32, h: u32) -> Result<Vec<u8>, String> {
    let img = image::open(path).map_err(|e| format!("{path}: {e}"))?;
    let resized = img
        .resize_exact(w, h, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
    resized.write_with_encoder(enc).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads one response (headers + Content-Length body); returns its status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn rss_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let body = match jpeg(&args.image, args.width, args.height) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let auth = args
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = Arc::new(format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: image/jpeg\r\n{auth}Content-Length: {}\r\n\r\n",
        args.path,
        args.addr,
        body.len()
    ));
    // The bad request: the same JPEG cut in half (the server must answer 400, and go on).
    let bad_body = Arc::new(body[..body.len() / 2].to_vec());
    let bad_head = Arc::new(format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: image/jpeg\r\n{auth}Content-Length: {}\r\n\r\n",
        args.path,
        args.addr,
        bad_body.len()
    ));
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let sampler = args.pid.map(|pid| {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                samples.push(rss_kb(pid, "VmRSS:").unwrap_or(0));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    });

    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            let (head, body, sent) = (Arc::clone(&head), Arc::clone(&body), Arc::clone(&sent));
            let (bad_head, bad_body) = (Arc::clone(&bad_head), Arc::clone(&bad_body));
            let (addr, max, bad_every) = (args.addr, args.max_requests, args.bad_every);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
                let mut io_errors = 0u64;
                let mut unexpected = 0u64;
                let mut buf = Vec::with_capacity(4096);
                let mut conn: Option<TcpStream> = None;
                let mut k = 0u64;
                while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < max {
                    let bad = bad_every > 0 && k % bad_every == bad_every - 1;
                    k += 1;
                    let (head, body) = if bad {
                        (&bad_head, &bad_body)
                    } else {
                        (&head, &body)
                    };
                    if conn.is_none() {
                        match TcpStream::connect(addr).await {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                conn = Some(s);
                            }
                            Err(_) => {
                                io_errors += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let s = conn.as_mut().unwrap();
                    let t = Instant::now();
                    let result = async {
                        s.write_all(head.as_bytes()).await?;
                        s.write_all(body).await?;
                        read_response(s, &mut buf).await
                    }
                    .await;
                    match result {
                        Ok(status) => {
                            if !bad {
                                latencies
                                    .push((started.elapsed().as_secs_f64() as u64, t.elapsed()));
                            }
                            unexpected += (status != if bad { 400 } else { 200 }) as u64;
                            *statuses.entry(status).or_insert(0) += 1;
                        }
                        Err(_) => {
                            io_errors += 1;
                            conn = None;
                        }
                    }
                }
                (latencies, statuses, io_errors, unexpected)
            })
        })
        .collect();

    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut io_errors = 0;
    let mut unexpected = 0;
    for w in workers {
        let (l, s, e, u) = w.await.expect("worker");
        unexpected += u;
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_insert(0) += v;
        }
        io_errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let samples = match sampler {
        Some(s) => s.await.unwrap_or_default(),
        None => Vec::new(),
    };
    // p99 per minute (good requests), to see whether latency drifts over a long run.
    let mut per_minute: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    for (at, l) in &latencies {
        per_minute.entry(at / 60).or_default().push(*l);
    }
    let mut latencies: Vec<Duration> = latencies.into_iter().map(|(_, l)| l).collect();
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
        latencies[i].as_secs_f64() * 1e3
    };
    let ok = statuses.get(&200).copied().unwrap_or(0);
    // Errors: any answer other than 200 to a good request or 400 to a bad one, and any
    // connection failure.
    let errors: u64 = unexpected + io_errors;
    println!(
        "{} connections, {:.1} s, {}x{} JPEG ({} bytes) to {}{}",
        args.connections,
        elapsed,
        args.width,
        args.height,
        body.len(),
        args.addr,
        args.path
    );
    println!(
        "requests: {} ok, {} errors (statuses {:?}, connection errors {})",
        ok, errors, statuses, io_errors
    );
    println!("throughput: {:.1} requests/s", ok as f64 / elapsed);
    if per_minute.len() > 1 {
        let p99s: Vec<String> = per_minute
            .values_mut()
            .map(|v| {
                v.sort();
                let i = (0.99 * (v.len() - 1) as f64).round() as usize;
                format!("{:.0}", v[i].as_secs_f64() * 1e3)
            })
            .collect();
        println!("p99 latency per minute (ms): {}", p99s.join(", "));
    }
    println!(
        "latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(100.0)
    );
    if let Some(pid) = args.pid {
        let mb = |kb: u64| kb as f64 / 1024.0;
        println!(
            "server pid {pid}: peak RSS (VmHWM) {:.0} MB; RSS per second: first {:.0} MB, last {:.0} MB, max {:.0} MB",
            mb(rss_kb(pid, "VmHWM:").unwrap_or(0)),
            mb(samples.first().copied().unwrap_or(0)),
            mb(samples.last().copied().unwrap_or(0)),
            mb(samples.iter().copied().max().unwrap_or(0)),
        );
        let every_10s: Vec<String> = samples
            .iter()
            .step_by(10)
            .map(|kb| format!("{:.0}", mb(*kb)))
            .collect();
        println!("server RSS every 10 s (MB): {}", every_10s.join(", "));
    }
    if errors > 0 {
        std::process::exit(1);
    }
}

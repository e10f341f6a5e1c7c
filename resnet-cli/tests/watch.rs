//! `resnet watch` as a real process: real folders and file events, MJPEG and snapshot servers
//! and a webhook receiver on 127.0.0.1, real ffmpeg. Every wait is bounded in time.

mod common;

use common::resnet as resnet_cmd;
use common::{image, synth, KillOnDrop};

#[path = "../../resnet-server/tests/util/mjpeg_camera.rs"]
mod mjpeg_camera;
use mjpeg_camera::{mjpeg_camera, read_request, Visit, MJPEG_FILES};

/// The camera's pace in these tests: 10 frames/s.
const CAMERA_INTERVAL: Duration = Duration::from_millis(100);

fn mjpeg_server(visits: Vec<Visit>) -> (String, Arc<AtomicUsize>) {
    mjpeg_camera(visits, CAMERA_INTERVAL)
}

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `resnet classify --logits` of each file: path -> logits.
fn classify_logits(files: &[PathBuf]) -> Vec<Vec<f64>> {
    let out = resnet_cmd()
        .args([
            "classify",
            "--format",
            "jsonl",
            "--logits",
            "--batch-size",
            "1",
            "--weights",
        ])
        .arg(synth())
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| logits(&serde_json::from_str(l).unwrap()))
        .collect()
}

fn logits(event: &Value) -> Vec<f64> {
    event["logits"]
        .as_array()
        .unwrap_or_else(|| panic!("no logits in {event}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// A running `resnet watch`: its stdout lines (events) and stderr lines as they come.
struct Watch {
    /// Killed when the test ends, however it ends.
    child: KillOnDrop,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn json_event(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

fn watch(args: &[&str]) -> Watch {
    watch_with(resnet_cmd(), args)
}

fn watch_with(mut cmd: Command, args: &[&str]) -> Watch {
    let mut child = cmd
        .arg("watch")
        .arg("--weights")
        .arg(synth())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let err_lines = stderr.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            err_lines.lock().unwrap().push(line);
        }
    });
    Watch {
        child: KillOnDrop(child),
        lines,
        stderr,
    }
}

impl Watch {
    /// Waits (bounded) until stderr has a line containing `text`.
    fn wait_stderr(&self, text: &str, within: Duration) {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.stderr.lock().unwrap().iter().any(|l| l.contains(text)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no '{text}' on stderr within {within:?}: {:#?}",
            self.stderr()
        );
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn count_stderr(&self, text: &str) -> usize {
        self.stderr().iter().filter(|l| l.contains(text)).count()
    }

    /// The next stdout line, within `within`.
    fn next_line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no event within {within:?}; stderr: {:#?}", self.stderr()))
    }

    /// The next JSON event, within `within`.
    fn next(&self, within: Duration) -> Value {
        json_event(&self.next_line(within))
    }

    /// Events that arrive within `within`, without failing when none do.
    fn drain(&self, within: Duration) -> Vec<Value> {
        let end = Instant::now() + within;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(json_event(&line)),
                Err(_) => break,
            }
        }
        out
    }

    /// Sends `signal` (INT, TERM) and waits (bounded) for the exit; the rest of the events.
    fn stop(mut self, signal: &str) -> (i32, Vec<Value>, Vec<String>) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let code = self.wait_exit(Duration::from_secs(20));
        let rest: Vec<Value> = self.lines.iter().map(|l| json_event(&l)).collect();
        // The stderr reader ends with the process.
        std::thread::sleep(Duration::from_millis(100));
        (code, rest, self.stderr())
    }

    fn wait_exit(&mut self, within: Duration) -> i32 {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "resnet watch did not exit within {within:?}: {:#?}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The per-source counters `resnet watch` logs at exit: `(received, classified, skipped,
/// gated, dropped, errors, reconnects)`.
fn final_stats(stderr: &[String], source: &str) -> [u64; 7] {
    let line = stderr
        .iter()
        .find(|l| l.contains(&format!("{source}: ")) && l.contains(" received, "))
        .unwrap_or_else(|| panic!("no counters for {source}: {stderr:#?}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let n = nums.len();
    nums[n - 7..].try_into().unwrap()
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn folder_whole_copies_slow_writes_bad_files_and_new_subfolders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A file there before the start is not classified (no --existing).
    std::fs::copy(image("flower.gif"), d.join("old.gif")).unwrap();
    let w = watch(&["--logits", d.to_str().unwrap()]);
    w.wait_stderr("watching for new files (file events)", LONG);

    std::fs::copy(image("cat_baseline.jpg"), d.join("a.jpg")).unwrap();
    let a = w.next(LONG);
    assert_eq!(a["path"], d.join("a.jpg").display().to_string());

    // Written in four chunks with pauses longer than the settle time: taken once, complete.
    let png = std::fs::read(image("astronaut_rgb.png")).unwrap();
    {
        let mut f = std::fs::File::create(d.join("b.png")).unwrap();
        for chunk in png.chunks(png.len() / 4 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1300));
        }
    }
    let b = w.next(LONG);
    assert_eq!(b["path"], d.join("b.png").display().to_string(), "{b}");

    // Not an image although named like one: an error event, and the watcher goes on.
    std::fs::write(d.join("bad.jpg"), b"this is not a JPEG").unwrap();
    std::fs::write(d.join("notes.txt"), b"ignored: not an image name").unwrap();
    let bad = w.next(LONG);
    assert_eq!(bad["path"], d.join("bad.jpg").display().to_string());
    assert!(bad["error"].as_str().unwrap().contains("bad.jpg"), "{bad}");
    assert!(bad.get("predictions").is_none());

    // A subfolder made later, and a file in it right away.
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::copy(image("coffee_progressive.jpg"), d.join("sub/c.jpg")).unwrap();
    let c = w.next(LONG);
    assert_eq!(c["path"], d.join("sub/c.jpg").display().to_string());

    // Replacing a file (rename over it) classifies the new version.
    std::fs::copy(image("fig_lossy.webp"), d.join("tmp.part")).unwrap();
    std::fs::rename(d.join("tmp.part"), d.join("a.jpg")).unwrap();
    let a2 = w.next(LONG);
    assert_eq!(a2["path"], a["path"]);

    // Nothing more: no second event for the slow file, none for old.gif or notes.txt.
    let extra = w.drain(Duration::from_secs(3));
    assert!(extra.is_empty(), "unexpected events: {extra:#?}");
    let (code, rest, stderr) = w.stop("TERM");
    assert!(rest.is_empty(), "{rest:#?}");
    assert_eq!(code, 1, "an error event makes exit code 1: {stderr:#?}");
    let [received, classified, ..] = final_stats(&stderr, d.to_str().unwrap());
    assert_eq!((received, classified), (5, 4), "{stderr:#?}");

    // Bit-identical to `classify` on the same files (the slow one included: it was whole).
    let want = classify_logits(&[
        image("cat_baseline.jpg"),
        image("astronaut_rgb.png"),
        image("coffee_progressive.jpg"),
        image("fig_lossy.webp"),
    ]);
    for (event, want) in [a, b, c, a2].iter().zip(&want) {
        assert_eq!(&logits(event), want, "{}", event["path"]);
        assert_eq!(event["predictions"].as_array().unwrap().len(), 5);
    }
}

#[test]
fn folder_by_polling_waits_for_files_to_settle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let w = watch(&[
        "--poll-ms",
        "100",
        "--settle-ms",
        "1500",
        d.to_str().unwrap(),
    ]);
    w.wait_stderr("watching for new files (polling every 100 ms)", LONG);
    let png = std::fs::read(image("brushes_rgb16.png")).unwrap();
    {
        let mut f = std::fs::File::create(d.join("slow.png")).unwrap();
        for chunk in png.chunks(png.len() / 3 + 1) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let e = w.next(LONG);
    assert_eq!(e["path"], d.join("slow.png").display().to_string());
    assert!(
        e.get("error").is_none(),
        "taken before it was complete: {e}"
    );
    assert!(w.drain(Duration::from_secs(3)).is_empty());
    let (code, _, _) = w.stop("INT");
    assert_eq!(code, 0);
}

#[test]
fn mjpeg_stream_sampled_at_fps_cut_mid_part_and_reconnected() {
    let (url, _sent) = mjpeg_server(vec![
        Visit::FramesThenCut(30),
        Visit::Refuse,
        Visit::GarbageThenFrames,
    ]);
    let started = Instant::now();
    let w = watch(&[
        "--fps",
        "2",
        "--reconnect-max-s",
        "1",
        &format!("cam={url}"),
    ]);
    w.wait_stderr("cam: lost: the stream ended inside a frame", LONG);
    w.wait_stderr("cam: back after", LONG);
    // Some frames of the third connection.
    let _ = w.drain(Duration::from_secs(3));
    let elapsed = started.elapsed().as_secs_f64();
    let (code, _, stderr) = w.stop("INT");
    assert_eq!(code, 1, "the garbage part is an error event: {stderr:#?}");
    assert_eq!(
        w_count(&stderr, "cam: lost:"),
        1,
        "one line per outage: {stderr:#?}"
    );
    assert_eq!(w_count(&stderr, "cam: back after"), 1, "{stderr:#?}");
    let [received, classified, skipped, gated, dropped, errors, reconnects] =
        final_stats(&stderr, "cam");
    assert_eq!(reconnects, 1);
    assert_eq!(errors, 1, "the garbage part");
    assert_eq!(gated, 0);
    // Every frame is accounted for, but for at most one still in hand when SIGINT arrived
    // (received, not yet sampled: seen once in a full-suite run, 62 against 61).
    let accounted = classified + skipped + dropped + errors;
    assert!(
        received == accounted || received == accounted + 1,
        "received {received}, accounted {accounted}"
    );
    assert!(
        received >= 31,
        "30 whole frames, then the garbage: {received}"
    );
    // 10 frames/s sampled at 2/s: never more than 2 a second, and most frames skipped.
    assert!(
        (classified as f64) <= 2.0 * elapsed + 2.0,
        "{classified} in {elapsed:.1} s"
    );
    assert!(classified >= 4, "{stderr:#?}");
    assert!(
        skipped >= 3 * classified,
        "{skipped} skipped, {classified} classified"
    );
}

fn w_count(stderr: &[String], text: &str) -> usize {
    stderr.iter().filter(|l| l.contains(text)).count()
}

#[test]
fn mjpeg_events_are_the_frames_sent_whole_once_and_in_order() {
    let (url, _) = mjpeg_server(vec![Visit::FramesThenCut(12), Visit::FramesThenCut(12)]);
    let w = watch(&["--fps", "0", "--logits", "--reconnect-max-s", "1", &url]);
    let mut events = Vec::new();
    let end = Instant::now() + LONG;
    // Both visits end with a cut; after the second, no server: reconnect attempts fail.
    while w.count_stderr("lost:") < 1 || w.count_stderr("back after") < 1 || events.len() < 2 {
        assert!(Instant::now() < end, "{:#?}", w.stderr());
        events.extend(w.drain(Duration::from_millis(200)));
    }
    events.extend(w.drain(Duration::from_secs(4)));
    let (_, rest, stderr) = w.stop("INT");
    events.extend(rest);
    let [received, classified, _, _, dropped, errors, _] = final_stats(&stderr, &url);
    assert_eq!(
        received, 24,
        "every whole part and no torn one: {stderr:#?}"
    );
    assert_eq!(errors, 0);
    assert_eq!(classified + dropped, 24);
    assert_eq!(events.len() as u64, classified);
    let want = classify_logits(&MJPEG_FILES.map(image));
    let mut last = 0;
    for e in &events {
        let n = e["frame"].as_u64().unwrap();
        assert!(n > last, "frames in order, none twice: {n} after {last}");
        last = n;
        assert_eq!(logits(e), want[(n as usize - 1) % 4], "frame {n}");
    }
}

/// A camera faster than the model: the reference backend takes seconds a frame while the camera
/// sends 10 frames/s at `--fps 0`. Frames that find the model busy and the one-frame hand-off
/// full are dropped and counted, never queued: after the stream ends, only the frame that waited
/// in the hand-off is still classified.
#[test]
fn frames_faster_than_the_model_are_dropped_and_counted_not_queued() {
    let (url, sent) = mjpeg_server(vec![Visit::FramesThenCut(20)]);
    let source = format!("cam={url}");
    let w = watch(&["--fps", "0", "--backend", "reference", &source]);
    w.wait_stderr("cam: lost:", LONG);
    // The first frame, which the model took at once, and the second, which waited in the
    // one-frame hand-off meanwhile; then nothing more.
    let mut events = vec![w.next(LONG), w.next(LONG)];
    events.extend(w.drain(Duration::from_secs(1)));
    let (_, rest, stderr) = w.stop("INT");
    events.extend(rest);
    let [received, classified, skipped, gated, dropped, errors, _] = final_stats(&stderr, "cam");
    assert_eq!(
        received as usize,
        sent.load(Ordering::SeqCst),
        "{stderr:#?}"
    );
    assert_eq!((skipped, gated, errors), (0, 0, 0), "{stderr:#?}");
    assert_eq!(received, classified + dropped, "{stderr:#?}");
    assert_eq!(events.len() as u64, classified, "{events:#?}");
    // 20 frames in 2 s against seconds per forward pass: two classified, frame 1 and the next
    // one after the model took it (frame 2, or a little later on a loaded machine: frames come
    // every 100 ms); the 18 that found the hand-off full were dropped before decoding.
    let frames: Vec<u64> = events
        .iter()
        .map(|e| e["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0], 1, "{events:#?}");
    assert!((2..=5).contains(&frames[1]), "{frames:?}");
    assert_eq!(dropped, 18);
}

#[test]
fn snapshot_url_polled_at_fps() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/snapshot.jpg", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        let jpeg = std::fs::read(image("cat_baseline.jpg")).unwrap();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            read_request(&mut s);
            counted.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                jpeg.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&jpeg);
        }
    });
    let t0 = Instant::now();
    let w = watch(&["--fps", "4", "--on-change", &url]);
    let first = w.next(LONG);
    let more = w.drain(Duration::from_secs(3));
    let polled = requests.load(Ordering::SeqCst);
    let elapsed = t0.elapsed().as_secs_f64();
    let (code, _, stderr) = w.stop("TERM");
    assert_eq!(code, 0, "{stderr:#?}");
    assert!(first["predictions"].is_array());
    assert!(
        more.is_empty(),
        "--on-change: the same picture is reported once: {more:#?}"
    );
    // At most 4 requests a second (plus the first one), and polling did go on.
    assert!(
        polled as f64 <= 4.0 * elapsed + 2.0,
        "{polled} requests in {elapsed:.1} s"
    );
    assert!(polled >= 4, "{polled} requests in {elapsed:.1} s");
    let [received, classified, ..] = final_stats(&stderr, &url);
    assert_eq!(received, classified);
}

/// ffmpeg, or the reason it is missing (a failure unless RESNET_FFMPEG_TEST=skip).
fn have_ffmpeg() -> bool {
    let found = Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert_eq!(
            std::env::var("RESNET_FFMPEG_TEST").as_deref(),
            Ok("skip"),
            "ffmpeg is not installed: run tools/test.sh (it installs the test packages), or set RESNET_FFMPEG_TEST=skip"
        );
    }
    found
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn video_file_frames_at_fps_equal_classify_on_the_same_frames() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mkv");
    let clip_s = clip.to_str().unwrap();
    // 4 s at 25 frames/s, losslessly encoded (FFV1).
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25:duration=4",
        "-c:v",
        "ffv1",
        clip_s,
    ]);
    // The frames --fps 2 samples, as PNG files, by the same filter.
    let pattern = dir.path().join("frame_%03d.png");
    ffmpeg(&[
        "-i",
        clip_s,
        "-vf",
        "fps=2",
        "-pix_fmt",
        "rgb24",
        pattern.to_str().unwrap(),
    ]);
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    // 4 s sampled at 2/s (the filter may round one either way).
    assert!((7..=9).contains(&pngs.len()), "{pngs:?}");

    let mut w = watch(&["--fps", "2", "--logits", clip_s]);
    let code = w.wait_exit(LONG);
    let events: Vec<Value> = w.lines.iter().map(|l| json_event(&l)).collect();
    assert_eq!(code, 0, "{:#?}", w.stderr());
    assert_eq!(
        events.len(),
        pngs.len(),
        "a file is read whole, nothing dropped: {events:#?}"
    );
    let want = classify_logits(&pngs);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["frame"], i as u64 + 1);
        assert_eq!(
            (e["width"].as_u64(), e["height"].as_u64()),
            (Some(320), Some(240))
        );
        assert_eq!(logits(e), want[i], "frame {}", i + 1);
    }
}

#[test]
fn motion_gating_on_a_still_then_changing_clip() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("still_then_moving.mkv");
    // 2 s of a still grey picture, then 2 s brightening by 20/255 per frame (10 frames/s).
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "nullsrc=size=160x120:rate=10:duration=4,format=gray,geq=lum='if(lt(T,2),128,mod(20*(N-20),256))'",
        "-c:v",
        "ffv1",
        clip.to_str().unwrap(),
    ]);
    let mut w = watch(&["--fps", "0", "--motion", "0.02", clip.to_str().unwrap()]);
    let code = w.wait_exit(LONG);
    let events: Vec<Value> = w.lines.iter().map(|l| json_event(&l)).collect();
    let stderr = w.stderr();
    assert_eq!(code, 0, "{stderr:#?}");
    let [received, classified, skipped, gated, dropped, ..] =
        final_stats(&stderr, clip.to_str().unwrap());
    assert_eq!((received, skipped, dropped), (40, 0, 0), "{stderr:#?}");
    // The still part costs one classification; every changing frame differs by > 0.02.
    assert_eq!(gated, 19, "{stderr:#?}");
    assert_eq!(classified, 21);
    let frames: Vec<u64> = events
        .iter()
        .map(|e| e["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(frames[0], 1);
    assert_eq!(frames[1..], (21..=40).collect::<Vec<u64>>()[..]);
    assert!(events[1]["motion"].as_f64().unwrap() > 0.02);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn mjpeg_served_by_ffmpeg_and_an_mpegts_stream_read_by_ffmpeg() {
    if !have_ffmpeg() {
        return;
    }
    // ffmpeg as the camera: a live test pattern at 10 frames/s over HTTP, one client each.
    let serve = |format: &str, codec: &str| {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/live");
        let child = Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
            ])
            .args([
                "-i",
                "testsrc=size=320x240:rate=10",
                "-t",
                "60",
                "-c:v",
                codec,
            ])
            .args(["-f", format, "-listen", "1"])
            .args(if format == "mpjpeg" {
                // What a camera declares; ffmpeg's mpjpeg boundary is "ffmpeg".
                &["-content_type", "multipart/x-mixed-replace;boundary=ffmpeg"][..]
            } else {
                &[][..]
            })
            .arg(&url)
            .stdout(Stdio::null())
            // Killed at the end of the test: its complaints about the lost client are noise.
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (KillOnDrop(child), url)
    };
    let (_mjpeg_server, mjpeg_url) = serve("mpjpeg", "mjpeg");
    let (_ts_server, ts_url) = serve("mpegts", "mpeg2video");
    let ts_source = format!("ts=ffmpeg:{ts_url}");
    let w = watch(&[
        "--fps",
        "2",
        "--reconnect-max-s",
        "1",
        &format!("mj={mjpeg_url}"),
        &ts_source,
    ]);
    let mut per_source = std::collections::BTreeMap::<String, Vec<u64>>::new();
    let end = Instant::now() + LONG;
    while per_source.values().filter(|v| v.len() >= 3).count() < 2 {
        assert!(Instant::now() < end, "{per_source:?} {:#?}", w.stderr());
        let e = w.next(LONG);
        assert!(e.get("error").is_none(), "{e}");
        per_source
            .entry(e["source"].as_str().unwrap().to_string())
            .or_default()
            .push(e["frame"].as_u64().unwrap());
    }
    let started = Instant::now();
    let more = w.drain(Duration::from_secs(3));
    let secs = started.elapsed().as_secs_f64();
    let (code, _, stderr) = w.stop("TERM");
    assert_eq!(code, 0, "{stderr:#?}");
    for source in ["mj", "ts"] {
        let n = more.iter().filter(|e| e["source"] == source).count();
        // --fps 2 over ~3 s: about 6, never much more.
        assert!(
            n as f64 <= 2.0 * secs + 2.0,
            "{source}: {n} events in {secs:.1} s"
        );
        assert!(n >= 2, "{source}: {n} events in {secs:.1} s: {stderr:#?}");
    }
    let [received, classified, skipped, ..] = final_stats(&stderr, "mj");
    assert!(
        skipped > classified,
        "10 frames/s sampled at 2: {received} {classified} {skipped}"
    );
}

/// An ffmpeg source whose stream ends (the camera's ffmpeg stops after 3 s, so the watcher's
/// ffmpeg exits) is restarted with backoff while the camera is away (connection refused), with
/// one outage line and one recovery line, and its frames come again once the camera is back.
#[test]
fn an_ffmpeg_source_that_exits_is_restarted_with_one_outage_and_one_recovery_line() {
    if !have_ffmpeg() {
        return;
    }
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/live");
    let camera = |secs: &str| {
        let child = Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=10"])
            .args(["-t", secs, "-c:v", "mpeg2video", "-f", "mpegts"])
            .args(["-listen", "1", &url])
            .stdout(Stdio::null())
            // Killed at the end of the test: its complaints about the lost client are noise.
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    };
    let first = camera("3");
    // ffmpeg listens within a few ms of starting; a probe connection would be its one client.
    std::thread::sleep(Duration::from_millis(500));
    let source = format!("cam=ffmpeg:{url}");
    let w = watch(&["--fps", "2", "--reconnect-max-s", "1", &source]);
    let before = w.next(LONG);
    w.wait_stderr("cam: lost: ffmpeg", LONG);
    drop(first);
    let lost_at = Instant::now();
    // Away for 2 s: the restarts fail (nothing listens), each without a log line of its own.
    std::thread::sleep(Duration::from_secs(2));
    let _second = camera("60");
    w.wait_stderr("cam: back after", LONG);
    let away = lost_at.elapsed();
    // Frames after the recovery, numbered on from the first run's.
    let mut after = w.next(LONG);
    let end = Instant::now() + LONG;
    while after["frame"].as_u64() <= before["frame"].as_u64() {
        assert!(Instant::now() < end);
        after = w.next(LONG);
    }
    assert!(after.get("error").is_none(), "{after}");
    let (code, _, stderr) = w.stop("TERM");
    assert_eq!(
        code, 0,
        "a stream that ends is an outage, not an error: {stderr:#?}"
    );
    assert_eq!(
        w_count(&stderr, "cam: lost:"),
        1,
        "one line per outage: {stderr:#?}"
    );
    assert_eq!(w_count(&stderr, "cam: back after"), 1, "{stderr:#?}");
    let [.., errors, reconnects] = final_stats(&stderr, "cam");
    assert_eq!((errors, reconnects), (0, 1), "{stderr:#?}");
    assert!(away >= Duration::from_secs(2));
}

/// A webhook receiver's side of one POST: the request head, then the body by its
/// Content-Length.
fn read_post_body(s: &mut std::net::TcpStream) -> Vec<u8> {
    let head = String::from_utf8_lossy(&read_request(s)).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    body
}

#[test]
fn webhook_receiver_failing_then_slow_then_up_never_blocks_the_watcher() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::<Value>::new()));
    let release = Arc::new(AtomicBool::new(false));
    let (got, release_r) = (bodies.clone(), release.clone());
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { return };
            let body = read_post_body(&mut s);
            if i == 0 {
                // Down: the first attempt fails.
                let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            if i == 1 {
                // Slow: holds the retry until the test has seen the watcher go on.
                let end = Instant::now() + Duration::from_secs(30);
                while !release_r.load(Ordering::SeqCst) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            got.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let saved = tempfile::tempdir().unwrap();
    let w = watch(&[
        "--webhook",
        &hook,
        "--save-dir",
        saved.path().to_str().unwrap(),
        d.to_str().unwrap(),
    ]);
    w.wait_stderr("watching for new files", LONG);
    std::fs::copy(image("cat_baseline.jpg"), d.join("1.jpg")).unwrap();
    let first = w.next(LONG);
    w.wait_stderr(&format!("webhook {hook}: lost: HTTP 503"), LONG);
    // While the receiver holds the retry of event 1, the watcher goes on.
    std::fs::copy(image("coffee_progressive.jpg"), d.join("2.jpg")).unwrap();
    let second = w.next(LONG);
    assert!(
        bodies.lock().unwrap().is_empty(),
        "the receiver has answered nothing yet"
    );
    release.store(true, Ordering::SeqCst);
    let end = Instant::now() + LONG;
    while bodies.lock().unwrap().len() < 2 {
        assert!(Instant::now() < end, "{:#?}", w.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    w.wait_stderr(&format!("webhook {hook}: back after"), LONG);
    let (code, _, stderr) = w.stop("TERM");
    assert_eq!(code, 0, "{stderr:#?}");
    assert_eq!(w_count(&stderr, "lost: HTTP 503"), 1);
    let posted = bodies.lock().unwrap().clone();
    // The posts are the events as printed, with where the frame was saved.
    for (p, e) in posted.iter().zip([&first, &second]) {
        assert_eq!(p["path"], e["path"]);
        assert_eq!(p["predictions"], e["predictions"]);
        let jpeg = PathBuf::from(e["saved"].as_str().unwrap());
        assert!(jpeg.starts_with(saved.path()));
        let img = image_size(&jpeg);
        let orig = image_size(&PathBuf::from(e["path"].as_str().unwrap()));
        assert_eq!(img, orig);
    }
}

/// `resnet classify --format jsonl --top-k 1000` of each file: its classes, most probable
/// first, as `(index, label, probability)` (the probabilities the watcher compares with
/// `--min-prob`).
fn all_classes(files: &[PathBuf]) -> Vec<Vec<(u64, String, f64)>> {
    let out = resnet_cmd()
        .args([
            "classify",
            "--format",
            "jsonl",
            "--top-k",
            "1000",
            "--weights",
        ])
        .arg(synth())
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["index"].as_u64().unwrap(),
                        p["label"].as_str().unwrap().to_string(),
                        p["probability"].as_f64().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

/// `--alert` through the binary: of two photos dropped in, only the one whose probability for
/// the alert class reaches `--min-prob` is reported (as text, `--format text`), saved under
/// `--save-dir` and posted to the webhook; the receiver answers 500, so the post is tried
/// exactly four times, given up, and the exit summary says so.
#[test]
fn alerts_reported_as_text_saved_and_posted_with_bounded_retries() {
    // The alert class: the cat photo's top-1 under the synthetic weights. Of the two photos,
    // the one more probable in that class alerts, the other stays quiet.
    let photos = [image("cat_baseline.jpg"), image("coffee_progressive.jpg")];
    let classes = all_classes(&photos);
    let (class, label, _) = classes[0][0].clone();
    let prob = |photo: usize| {
        classes[photo]
            .iter()
            .find(|(i, _, _)| *i == class)
            .map(|c| c.2)
            .unwrap()
    };
    let (hi, lo) = if prob(0) > prob(1) { (0, 1) } else { (1, 0) };
    let (alerting, quiet) = (photos[hi].clone(), photos[lo].clone());
    let (p_alert, p_quiet) = (prob(hi), prob(lo));
    // The threshold halfway between: far from both in f32 (the watcher's probabilities).
    assert!(
        p_alert > p_quiet * 1.01,
        "class {class} must tell the photos apart: {p_alert} vs {p_quiet}"
    );
    let min_prob = format!("{}", (p_alert + p_quiet) / 2.0);
    // A label with a comma cannot be one item of the comma-separated list: use its index.
    let alert = if label.contains(',') {
        class.to_string()
    } else {
        label.clone()
    };

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::<Value>::new()));
    let got = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let body = read_post_body(&mut s);
            got.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            let _ = s.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let saved_dir = saved.path().to_str().unwrap();
    let w = watch(&[
        "--format",
        "text",
        "--alert",
        &alert,
        "--min-prob",
        &min_prob,
        "--webhook",
        &hook,
        "--save-dir",
        saved_dir,
        dir.path().to_str().unwrap(),
    ]);
    w.wait_stderr("watching for new files", LONG);
    // The quiet one first: if it were reported, it would be the first line.
    std::fs::copy(&quiet, dir.path().join("1.jpg")).unwrap();
    std::fs::copy(&alerting, dir.path().join("2.jpg")).unwrap();
    let line = w.next_line(LONG);
    // All four attempts of the one post (250 + 500 + 1000 ms apart), then none more.
    let end = Instant::now() + LONG;
    while requests.lock().unwrap().len() < 4 {
        assert!(Instant::now() < end, "{:#?}", w.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Nothing else is reported: the quiet photo did not reach the threshold.
    assert!(w.lines.try_recv().is_err(), "one line only");
    let (code, _, stderr) = w.stop("TERM");
    assert_eq!(code, 0, "{stderr:#?}");

    // `TIME SOURCE PATH  label p%, ...  ALERT label  saved FILE`
    assert!(
        line.contains("2.jpg"),
        "the alerting photo was copied in second: {line}"
    );
    assert!(line.contains(&format!("ALERT {label}")), "{line}");
    let saved_file = line
        .split("  saved ")
        .nth(1)
        .unwrap_or_else(|| panic!("no saved file in: {line}"));
    assert!(Path::new(saved_file).starts_with(saved.path()), "{line}");
    assert_eq!(image_size(Path::new(saved_file)), image_size(&alerting));
    assert_eq!(
        std::fs::read_dir(saved.path()).unwrap().count(),
        1,
        "only the alerting frame is saved"
    );

    let posted = requests.lock().unwrap().clone();
    assert_eq!(posted.len(), 4, "four attempts, then given up: {posted:#?}");
    for p in &posted {
        assert_eq!(p, &posted[0], "every attempt posts the same event");
    }
    assert_eq!(
        posted[0]["alert"][0]["index"].as_u64(),
        Some(class),
        "{}",
        posted[0]
    );
    assert_eq!(posted[0]["saved"].as_str(), Some(saved_file));
    assert_eq!(
        w_count(&stderr, &format!("webhook {hook}: lost: HTTP 500")),
        1
    );
    assert_eq!(
        w_count(
            &stderr,
            "webhook: 0 event(s) delivered, 1 given up after 4 attempts, 0 dropped"
        ),
        1,
        "{stderr:#?}"
    );
}

fn image_size(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn configuration_errors_exit_2_and_say_what_to_do() {
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let base = || {
        let mut c = resnet_cmd();
        c.arg("watch").arg("--weights").arg(synth());
        c
    };
    let (code, err) = run(base().arg("--alert").arg("unicorn").arg(dir.path()));
    assert_eq!(code, Some(2));
    assert!(err.contains("--alert 'unicorn'"), "{err}");
    let (code, err) = run(base().arg("gopher://cam"));
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown URL scheme"), "{err}");
    let (code, err) = run(base().arg(dir.path().join("missing")));
    assert_eq!(code, Some(2));
    assert!(err.contains("missing"), "{err}");
    let (code, err) = run(base().args(["--motion", "2"]).arg(dir.path()));
    assert_eq!(code, Some(2));
    assert!(err.contains("--motion"), "{err}");
    // No ffmpeg on PATH: the hint says how to install it.
    let (code, err) = run(base()
        .env("PATH", dir.path())
        .arg("rtsp://127.0.0.1:1/stream"));
    assert_eq!(code, Some(2));
    assert!(err.contains("apt-get install ffmpeg"), "{err}");
}

#[path = "../../resnet-server/tests/util/mosquitto.rs"]
mod mosquitto;

/// `--mqtt-url` with a real Mosquitto: each reported event is also one message, equal to the
/// JSON line on stdout; a broker that is not there holds nothing up (events still come, the
/// messages wait in the queue, none is dropped).
#[test]
fn events_are_published_to_mqtt_and_a_missing_broker_holds_nothing_up() {
    if !mosquitto::available() {
        return;
    }
    let broker = mosquitto::Broker::start_new();
    let topic = "cams/front";
    let mut sub = mosquitto::Subscriber::ready(&broker, topic);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = format!("front={}", d.display());
    let w = watch(&[&source, "--mqtt-url", &broker.url(topic)]);
    w.wait_stderr("watching for new files (file events)", LONG);
    w.wait_stderr("mqtt: publishing to", LONG);
    std::fs::copy(image("cat_baseline.jpg"), d.join("a.jpg")).unwrap();
    let a = w.next(LONG);
    std::fs::copy(image("coffee_progressive.jpg"), d.join("b.jpg")).unwrap();
    let b = w.next(LONG);
    let messages = sub.on_topic(topic, 2, Duration::from_secs(20));
    let published: Vec<Value> = messages
        .iter()
        .map(|m| serde_json::from_str(&m.payload).unwrap())
        .collect();
    assert_eq!(published, vec![a.clone(), b.clone()], "{messages:#?}");
    assert_eq!(a["source"], "front");
    let (code, _, stderr) = w.stop("INT");
    assert_eq!(code, 0, "{stderr:#?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("mqtt: 2 event(s) published, 0 dropped")),
        "{stderr:#?}"
    );
    let offline = sub.collect(Duration::from_secs(5), |m| m.payload == "offline");
    assert!(
        offline
            .iter()
            .any(|m| m.topic == format!("{topic}/available") && m.payload == "offline"),
        "{offline:#?}"
    );

    // No broker on that port: the events come all the same.
    let nobody = mosquitto::Broker::prepare(mosquitto::free_port());
    let w = watch(&[&source, "--mqtt-url", &nobody.url(topic)]);
    w.wait_stderr("watching for new files (file events)", LONG);
    std::fs::copy(image("fig_lossy.webp"), d.join("c.webp")).unwrap();
    let c = w.next(LONG);
    assert!(c["predictions"].is_array(), "{c}");
    w.wait_stderr("mqtt: mqtt://", LONG);
    let (code, _, stderr) = w.stop("INT");
    assert_eq!(code, 0, "{stderr:#?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("mqtt: 0 event(s) published, 0 dropped")),
        "{stderr:#?}"
    );
}

#[test]
fn a_bad_mqtt_url_is_a_configuration_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (url, why) in [
        ("http://broker/t", "scheme"),
        ("mqtt://broker", "no topic"),
        ("mqtt://broker/a/#", "not a topic"),
        ("mqtts://broker/t", "TLS"),
    ] {
        for command in ["watch", "serve"] {
            let mut cmd = resnet_cmd();
            cmd.arg(command).arg("--weights").arg(synth());
            if command == "watch" {
                cmd.arg(dir.path());
            }
            let out = cmd.args(["--mqtt-url", url]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} {url}: {err}");
            assert!(
                err.contains("--mqtt-url") && err.contains(why),
                "{command} {url}: {err}"
            );
        }
    }
}

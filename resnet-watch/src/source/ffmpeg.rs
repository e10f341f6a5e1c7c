//! A source decoded by an `ffmpeg` process: RTSP and other streams, video files, V4L2 devices.
//!
//! ffmpeg writes full-resolution RGB24 frames as PPM on a pipe (see [`crate::ppm`]): the same
//! pixels a lossless decode gives, with no re-encoding, so they reach the same preprocessing as
//! an image file. With `--fps`, ffmpeg's `fps` filter samples on the stream's own clock, so a
//! video file gives the same frames however fast it is read.

use crate::backoff::{Backoff, Outage};
use crate::engine::{bump, Feed};
use crate::WatchError;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Fails with the install hint when `ffmpeg` cannot be run.
pub(crate) fn check_installed(source: &str) -> Result<(), WatchError> {
    match Command::new("ffmpeg")
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(WatchError::FfmpegMissing {
            name: source.to_string(),
        }),
        Err(e) => Err(WatchError::BadSource {
            name: source.to_string(),
            reason: format!("cannot run ffmpeg: {e}"),
        }),
    }
}

fn command(input: &str, fps: f64) -> Command {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error"]);
    if input.to_ascii_lowercase().starts_with("rtsp") {
        // TCP: no lost packets, so no smeared frames, and it passes NAT and firewalls.
        cmd.args(["-rtsp_transport", "tcp"]);
    }
    cmd.args(["-i", input, "-an", "-sn", "-dn"]);
    if fps > 0.0 {
        cmd.args(["-vf", &format!("fps={fps}")]);
    }
    cmd.args(["-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "-"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Lines of ffmpeg's stderr kept to explain an exit.
const STDERR_LINES: usize = 8;

pub(crate) fn run(mut feed: Feed, input: &str, finite: bool) {
    let mut backoff = Backoff::new(feed.opts.reconnect_max);
    let mut outage = Outage::default();
    let what = feed.name.clone();
    let paced = feed.opts.fps > 0.0;
    let slot: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
    feed.register_child(slot.clone());
    while !feed.stopped() {
        let mut child = match command(input, feed.opts.fps).spawn() {
            Ok(c) => c,
            Err(e) => {
                feed.error(0, None, format!("cannot start ffmpeg: {e}"));
                return;
            }
        };
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        if feed.stopped() {
            kill(&slot);
            return;
        }
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail_writer = tail.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut t = tail_writer.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == STDERR_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let mut reader = BufReader::with_capacity(1 << 20, stdout);
        let mut frames = 0u64;
        let read_error = loop {
            match crate::ppm::read_frame(&mut reader, feed.opts.decode.max_pixels) {
                Ok(Some(rgb)) => {
                    if frames == 0 {
                        if outage.recovered(&what) {
                            bump(&feed.stats().reconnects);
                        }
                        backoff.reset();
                    }
                    frames += 1;
                    let (frame, take) = feed.arrive(paced);
                    if take {
                        feed.offer_image(frame, None, rgb, Instant::now());
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
            if feed.stopped() {
                break None;
            }
        };
        if read_error.is_some() {
            kill(&slot);
        }
        let status = slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|mut c| c.wait());
        let _ = stderr_thread.join();
        if feed.stopped() {
            return;
        }
        let said = tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ");
        let exit = match &status {
            Some(Ok(s)) if s.success() => "ffmpeg ended".to_string(),
            Some(Ok(s)) => format!("ffmpeg failed ({s})"),
            Some(Err(e)) => format!("ffmpeg: {e}"),
            None => "ffmpeg ended".to_string(),
        };
        let why = match (&read_error, said.is_empty()) {
            (Some(e), _) => format!("{exit}: {e}"),
            (None, true) => exit,
            (None, false) => format!("{exit}: {said}"),
        };
        if finite {
            let clean = read_error.is_none() && matches!(&status, Some(Ok(s)) if s.success());
            if !clean {
                feed.error(0, None, why);
            }
            return;
        }
        outage.failed(&what, &why);
        if !feed.sleep(backoff.next_delay()) {
            return;
        }
    }
}

fn kill(slot: &Mutex<Option<Child>>) {
    if let Some(c) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let _ = c.kill();
    }
}

//! Which frames are worth classifying: at most `--fps` per second, and with `--motion T` only
//! those that differ from the last classified one by more than `T`.

use image::RgbImage;
use std::time::{Duration, Instant};

/// Admits at most `fps` frames per second on a fixed schedule (due times advance by the period,
/// so a camera's jitter does not lower the rate; after a gap the schedule restarts).
#[derive(Debug)]
pub struct FpsGate {
    period: Option<Duration>,
    next_due: Option<Instant>,
}

impl FpsGate {
    /// `fps <= 0` admits every frame.
    pub fn new(fps: f64) -> FpsGate {
        FpsGate {
            period: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
            next_due: None,
        }
    }

    /// Whether a frame arriving at `now` is taken.
    pub fn admit(&mut self, now: Instant) -> bool {
        let Some(period) = self.period else {
            return true;
        };
        match self.next_due {
            Some(due) if now < due => false,
            Some(due) if now.duration_since(due) < period => {
                self.next_due = Some(due + period);
                true
            }
            _ => {
                self.next_due = Some(now + period);
                true
            }
        }
    }
}

/// The wall-clock bound for a source that already samples at `--fps` on its own clock (ffmpeg's
/// `fps` filter samples on the stream's timestamps): a token bucket of [`PacedGate::BURST`]
/// frames refilled at `fps`. In steady state the source's frames all pass, including the pairs
/// its demuxer hands over together; when the source races through buffered stream time (after a
/// stall, or a file read faster than real time) at most `BURST` frames more than `fps` per
/// second of wall time pass.
#[derive(Debug)]
pub struct PacedGate {
    fps: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl PacedGate {
    /// Frames that may pass at once.
    pub const BURST: f64 = 2.0;

    /// `fps <= 0` admits every frame.
    pub fn new(fps: f64) -> PacedGate {
        PacedGate {
            fps,
            tokens: Self::BURST,
            last: None,
        }
    }

    /// Whether a frame arriving at `now` is taken.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.fps <= 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.fps;
            self.tokens = (self.tokens + refill).min(Self::BURST);
        }
        self.last = Some(now);
        // The epsilon: refills summed from durations (0.1 ten times is 0.999...) still make a
        // whole frame.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Width of the grey thumbnails motion is measured on (the height keeps the aspect ratio).
const THUMB_WIDTH: u32 = 32;

/// A small grey version of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail {
    width: u32,
    height: u32,
    grey: Vec<f32>,
}

impl Thumbnail {
    /// Box-averaged luma (BT.601 weights), [`THUMB_WIDTH`] wide, in 0..1.
    pub fn of(rgb: &RgbImage) -> Thumbnail {
        let (w, h) = rgb.dimensions();
        let tw = THUMB_WIDTH.min(w.max(1));
        let th = ((u64::from(h) * u64::from(tw) / u64::from(w.max(1))) as u32).clamp(1, h.max(1));
        let mut sum = vec![0f64; (tw * th) as usize];
        let mut count = vec![0u32; (tw * th) as usize];
        for (x, y, p) in rgb.enumerate_pixels() {
            let cx = (u64::from(x) * u64::from(tw) / u64::from(w)) as u32;
            let cy = (u64::from(y) * u64::from(th) / u64::from(h)) as u32;
            let i = (cy * tw + cx) as usize;
            sum[i] += 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]);
            count[i] += 1;
        }
        let grey = sum
            .iter()
            .zip(&count)
            .map(|(s, &c)| (s / f64::from(c.max(1)) / 255.0) as f32)
            .collect();
        Thumbnail {
            width: tw,
            height: th,
            grey,
        }
    }

    /// Mean absolute difference, 0 (same) to 1 (black against white); 1 when the shapes differ
    /// (the camera changed resolution: treat it as a new scene).
    pub fn difference(&self, other: &Thumbnail) -> f64 {
        if (self.width, self.height) != (other.width, other.height) {
            return 1.0;
        }
        let total: f64 = self
            .grey
            .iter()
            .zip(&other.grey)
            .map(|(a, b)| f64::from((a - b).abs()))
            .sum();
        total / self.grey.len().max(1) as f64
    }
}

/// Passes a frame when it differs from the last passed one by more than the threshold.
#[derive(Debug)]
pub struct MotionGate {
    threshold: Option<f64>,
    last: Option<Thumbnail>,
}

impl MotionGate {
    /// `None`: no gating (every frame passes, no thumbnail is computed).
    pub fn new(threshold: Option<f64>) -> MotionGate {
        MotionGate {
            threshold,
            last: None,
        }
    }

    /// `Ok(difference)` (None for the first frame or without gating) when the frame passes and
    /// becomes the new reference; `Err(difference)` when it is gated out.
    pub fn check(&mut self, rgb: &RgbImage) -> Result<Option<f64>, f64> {
        let Some(threshold) = self.threshold else {
            return Ok(None);
        };
        let thumb = Thumbnail::of(rgb);
        let diff = self.last.as_ref().map(|last| thumb.difference(last));
        match diff {
            Some(d) if d <= threshold => Err(d),
            _ => {
                self.last = Some(thumb);
                Ok(diff)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fps_gate_keeps_the_rate_under_jitter_and_restarts_after_a_gap() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut g = FpsGate::new(2.0);
        // A 10 fps camera with +-20 ms jitter for 5 s: 2 fps means 10 frames.
        let admitted = (0..50u64)
            .filter(|&i| g.admit(ms(i * 100 + if i % 2 == 0 { 20 } else { 0 })))
            .count();
        assert_eq!(admitted, 10);
        // After a 10 s silence the next frame is taken at once, and the schedule restarts.
        assert!(g.admit(ms(15_000)));
        assert!(!g.admit(ms(15_400)));
        assert!(g.admit(ms(15_500)));
        let mut all = FpsGate::new(0.0);
        assert!((0..5).all(|_| all.admit(t0)));
    }

    #[test]
    fn paced_gate_passes_pairs_and_bounds_a_race_through_buffered_time() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        // 2 fps handed over in pairs every second (the demuxer's bursts): all 20 frames in 10 s.
        let mut g = PacedGate::new(2.0);
        let passed = (0..10u64)
            .flat_map(|s| [ms(s * 1000), ms(s * 1000 + 1)])
            .filter(|&t| g.admit(t))
            .count();
        assert_eq!(passed, 20);
        // 60 frames of stream time at once, then 3 s of them at 20 per second: 2 + 2 x 3 pass.
        let mut g = PacedGate::new(2.0);
        let burst = (0..60).filter(|_| g.admit(ms(0))).count();
        assert_eq!(burst, 2);
        let later = (1..=60u64).filter(|&i| g.admit(ms(i * 50))).count();
        assert_eq!(later, 6);
        let mut all = PacedGate::new(0.0);
        assert!((0..5).all(|_| all.admit(t0)));
    }

    #[test]
    fn motion_gate_passes_changes_above_the_threshold_only() {
        let grey = |v: u8| RgbImage::from_pixel(64, 48, image::Rgb([v, v, v]));
        let mut g = MotionGate::new(Some(0.02));
        assert_eq!(g.check(&grey(100)), Ok(None));
        // 3/255 = 0.0118: below the threshold, gated; the reference stays at 100.
        let d = g.check(&grey(103)).unwrap_err();
        assert!((d - 3.0 / 255.0).abs() < 1e-6, "{d}");
        // 6/255 = 0.0235 from the reference: passes.
        let d = g.check(&grey(106)).unwrap().unwrap();
        assert!((d - 6.0 / 255.0).abs() < 1e-6, "{d}");
        // A quarter of the picture turning white is a difference of about a quarter.
        let mut img = grey(106);
        for y in 0..24 {
            for x in 0..32 {
                img.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
        }
        let d = g.check(&img).unwrap().unwrap();
        assert!((d - 0.25 * 149.0 / 255.0).abs() < 1e-3, "{d}");
        assert_eq!(
            g.check(&RgbImage::from_pixel(10, 10, image::Rgb([0, 0, 0]))),
            Ok(Some(1.0))
        );
        assert_eq!(MotionGate::new(None).check(&grey(0)), Ok(None));
    }
}

//! What a watcher reports per frame, and which of those reports a user asked for.

use crate::error::WatchError;
use image::RgbImage;
use resnet_core::labels::Labels;
use resnet_core::postprocess::Prediction;
use serde::Serialize;
use std::sync::Arc;

/// One classified frame, or one problem with a frame or a source.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When the event was made, UTC, RFC 3339 with milliseconds.
    pub time: String,
    /// The source's name (its argument, or NAME of NAME=SOURCE).
    pub source: String,
    /// Frame number within the source, from 1, counting every frame received (also those
    /// skipped by `--fps`, gated by `--motion` or dropped); 0 for a problem with the source.
    pub frame: u64,
    /// The file, for a folder source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Frame size in pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// The top-k classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<Prediction>>,
    /// Whether the top-1 class differs from the source's previous classified frame (true for
    /// its first one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// `--alert` classes that reached `--min-prob` (empty: none did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<Vec<Prediction>>,
    /// Difference from the last classified frame (with `--motion`), 0..1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub motion: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// The 1000 raw logits (`--logits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
    /// Where `--save-dir` saved the frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved: Option<String>,
    /// What went wrong (then there are no predictions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The frame's pixels, kept when someone needs them (`--save-dir`, the server's panel).
    #[serde(skip)]
    pub image: Option<Arc<RgbImage>>,
}

/// Where a classified frame's time went, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timings {
    /// Decoding and preprocessing, on the source's thread.
    pub decode_ms: f64,
    /// Waiting for the model.
    pub wait_ms: f64,
    /// The forward pass of the batch this frame was in.
    pub infer_ms: f64,
    /// Frames in that batch.
    pub batch: usize,
}

impl Event {
    /// An event with only the common fields set.
    pub fn new(source: &str, frame: u64) -> Event {
        Event {
            time: resnet_core::time::now_rfc3339(),
            source: source.to_string(),
            frame,
            path: None,
            width: None,
            height: None,
            predictions: None,
            changed: None,
            alert: None,
            motion: None,
            timings: None,
            logits: None,
            saved: None,
            error: None,
            image: None,
        }
    }

    /// A problem with a frame (or, with frame 0, with the source).
    pub fn error(source: &str, frame: u64, path: Option<String>, error: String) -> Event {
        Event {
            path,
            error: Some(error),
            ..Event::new(source, frame)
        }
    }

    /// Whether any `--alert` class fired.
    pub fn is_alert(&self) -> bool {
        self.alert.as_ref().is_some_and(|a| !a.is_empty())
    }

    /// One line for people: time, source, frame, then the classes (or the error).
    pub fn to_text(&self) -> String {
        let what = match &self.path {
            Some(p) => p.clone(),
            None => format!("#{}", self.frame),
        };
        let mut line = format!("{} {} {what}", self.time, self.source);
        if let Some(e) = &self.error {
            line.push_str(&format!("  error: {e}"));
        }
        if let Some(preds) = &self.predictions {
            let classes: Vec<String> = preds
                .iter()
                .map(|p| format!("{} {:.1}%", p.label, 100.0 * p.probability))
                .collect();
            line.push_str(&format!("  {}", classes.join(", ")));
        }
        if let Some(hits) = self.alert.as_ref().filter(|a| !a.is_empty()) {
            let names: Vec<&str> = hits.iter().map(|p| p.label.as_str()).collect();
            line.push_str(&format!("  ALERT {}", names.join(", ")));
        }
        if let Some(s) = &self.saved {
            line.push_str(&format!("  saved {s}"));
        }
        line
    }
}

/// `--alert CLASSES --min-prob P`: classes by index or label name.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub classes: Vec<usize>,
    pub min_prob: f32,
}

impl AlertRule {
    /// Resolves each entry as an index (0..labels) or a label name (case-insensitive; a name
    /// shared by several classes in a custom label file names all of them).
    pub fn parse(
        entries: &[String],
        labels: &Labels,
        min_prob: f32,
    ) -> Result<AlertRule, WatchError> {
        if !(0.0..=1.0).contains(&min_prob) {
            return Err(WatchError::BadOption {
                option: "--min-prob",
                what: "a probability from 0 to 1",
                value: min_prob.to_string(),
            });
        }
        let mut classes = Vec::new();
        for entry in entries {
            let e = entry.trim();
            if let Ok(i) = e.parse::<usize>() {
                if i >= labels.len() {
                    return Err(WatchError::UnknownClass(entry.clone()));
                }
                classes.push(i);
                continue;
            }
            let found: Vec<usize> = (0..labels.len())
                .filter(|&i| labels.name(i).eq_ignore_ascii_case(e))
                .collect();
            if found.is_empty() {
                return Err(WatchError::UnknownClass(entry.clone()));
            }
            classes.extend(found);
        }
        classes.sort_unstable();
        classes.dedup();
        Ok(AlertRule { classes, min_prob })
    }

    /// The alert classes at or above the threshold, most probable first.
    pub fn hits(&self, probabilities: &[f32], labels: &Labels) -> Vec<Prediction> {
        let mut hits: Vec<Prediction> = self
            .classes
            .iter()
            .filter(|&&i| probabilities.get(i).is_some_and(|&p| p >= self.min_prob))
            .map(|&i| Prediction {
                rank: 0,
                index: i,
                label: labels.name(i).to_string(),
                probability: probabilities[i],
            })
            .collect();
        hits.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        for (r, h) in hits.iter_mut().enumerate() {
            h.rank = r + 1;
        }
        hits
    }
}

/// Which events are reported: errors always; classified frames all, or only those whose top-1
/// changed (`--on-change`), or only alerts (`--alert`); both options together: alerts whose
/// top-1 changed.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFilter {
    pub on_change: bool,
    pub alerts_only: bool,
}

impl EventFilter {
    pub fn wants(&self, event: &Event) -> bool {
        if event.error.is_some() {
            return true;
        }
        (!self.on_change || event.changed == Some(true)) && (!self.alerts_only || event.is_alert())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_classes_by_index_and_name_and_their_hits() {
        let labels = Labels::imagenet();
        let rule = AlertRule::parse(
            &["281".into(), "Tiger Cat".into(), "crane bird".into()],
            &labels,
            0.3,
        )
        .unwrap();
        assert_eq!(rule.classes, vec![134, 281, 282]);
        let mut probs = vec![0.0f32; 1000];
        probs[281] = 0.31;
        probs[282] = 0.5;
        probs[134] = 0.29;
        probs[517] = 0.9; // not an alert class
        let hits = rule.hits(&probs, &labels);
        let got: Vec<(usize, usize)> = hits.iter().map(|h| (h.rank, h.index)).collect();
        assert_eq!(got, vec![(1, 282), (2, 281)]);
        assert!(matches!(
            AlertRule::parse(&["unicorn".into()], &labels, 0.5),
            Err(WatchError::UnknownClass(c)) if c == "unicorn"
        ));
        assert!(AlertRule::parse(&["1000".into()], &labels, 0.5).is_err());
        assert!(AlertRule::parse(&["1".into()], &labels, 1.5).is_err());
    }

    #[test]
    fn filter_keeps_errors_and_what_was_asked() {
        let mut e = Event::new("cam", 3);
        e.changed = Some(false);
        e.alert = Some(vec![]);
        let all = EventFilter::default();
        let change = EventFilter {
            on_change: true,
            alerts_only: false,
        };
        let alerts = EventFilter {
            on_change: false,
            alerts_only: true,
        };
        assert!(all.wants(&e) && !change.wants(&e) && !alerts.wants(&e));
        e.changed = Some(true);
        assert!(change.wants(&e) && !alerts.wants(&e));
        let err = Event::error("cam", 4, None, "bad".into());
        assert!(change.wants(&err) && alerts.wants(&err));
    }
}

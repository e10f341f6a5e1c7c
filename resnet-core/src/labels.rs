//! The 1000 ImageNet class names in torchvision's order (index i names logit i).
//!
//! The built-in list is `weights/imagenet_classes.json`, embedded in the binary. Class names are
//! not guaranteed unique across label files (the classic list has two "crane" and two "maillot"
//! entries), so every output carries the class index beside the name.

use crate::arch::NUM_CLASSES;
use crate::error::{Error, Result};
use std::path::Path;

const IMAGENET_JSON: &str = include_str!("../../weights/imagenet_classes.json");

/// Class names, one per logit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    /// The built-in ImageNet-1k names.
    pub fn imagenet() -> Labels {
        Labels::parse(IMAGENET_JSON, "built-in labels").expect("the embedded label list is valid")
    }

    /// Reads a labels file: a JSON array of strings, or one name per line. It must hold exactly
    /// 1000 names.
    pub fn from_file(path: &Path) -> Result<Labels> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read labels", e))?;
        Labels::parse(&text, &path.display().to_string())
    }

    /// Parses labels text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Labels> {
        let err = |reason: String| Error::Labels {
            path: source.to_string(),
            reason,
        };
        let trimmed = text.trim_start_matches('\u{feff}').trim();
        let names: Vec<String> = if trimmed.starts_with('[') {
            serde_json::from_str(trimmed)
                .map_err(|e| err(format!("not a JSON array of strings: {e}")))?
        } else {
            trimmed
                .lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .collect()
        };
        if names.len() != NUM_CLASSES {
            return Err(err(format!(
                "expected exactly {NUM_CLASSES} class names, found {}",
                names.len()
            )));
        }
        if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
            return Err(err(format!("class {i} has an empty name")));
        }
        Ok(Labels { names })
    }

    /// The name of class `index`.
    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// Number of classes (always 1000).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: a label list holds 1000 names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_is_torchvision_order() {
        let l = Labels::imagenet();
        assert_eq!(l.len(), 1000);
        assert_eq!(l.name(0), "tench");
        assert_eq!(l.name(281), "tabby");
        assert_eq!(l.name(999), "toilet tissue");
    }

    #[test]
    fn json_and_lines_are_accepted_and_counts_checked() {
        let names: Vec<String> = (0..1000).map(|i| format!("class {i}")).collect();
        let json = serde_json::to_string(&names).unwrap();
        assert_eq!(Labels::parse(&json, "x").unwrap().name(5), "class 5");
        let lines = names.join("\r\n") + "\n";
        assert_eq!(Labels::parse(&lines, "x").unwrap().name(999), "class 999");
        let short = names[..999].join("\n");
        let e = Labels::parse(&short, "short.txt").unwrap_err().to_string();
        assert!(e.contains("short.txt") && e.contains("found 999"), "{e}");
        let e = Labels::parse("[1, 2]", "bad.json").unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("JSON"), "{e}");
    }
}

//! Spreading one batch of inputs over machines and runs, so that job runners (Kubernetes
//! Indexed Jobs, Slurm arrays, GNU parallel, Ray) can share the work out without a coordinator:
//!
//! - `--shard I/N` keeps the inputs whose path hashes to share I of N. The hash (64-bit FNV-1a
//!   of the path as written) is the same on every machine and every run, so N runs over the same
//!   list take disjoint shares that together are the whole list.
//! - `--files-from FILE|-` reads input paths one per line (from a file or standard input), for
//!   lists too long for a command line.
//! - `--resume OUT.jsonl` appends JSON lines to OUT and skips the inputs OUT already has, so a
//!   killed run started again finishes the job with every input exactly once. A last line torn
//!   by the crash is cut off first.

use crate::args::{ClassifyArgs, ClassifyFormat};
use crate::inputs::Input;
use anyhow::{bail, Context};
use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Share `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 1 to `count`.
    pub index: u64,
    /// How many shares.
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not I/N (e.g. 2/8)"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("'{s}' is not I/N (e.g. 2/8)"))
        };
        let (index, count) = (parse(i)?, parse(n)?);
        if count == 0 || index == 0 || index > count {
            return Err(format!(
                "shard '{s}': I must be from 1 to N and N at least 1"
            ));
        }
        Ok(Shard { index, count })
    }
}

/// 64-bit FNV-1a: fixed by its definition, unlike std's hasher, so every machine agrees.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Shard {
    /// Whether `path` (as written) belongs to this share.
    pub fn owns(self, path: &Path) -> bool {
        stable_hash(path.as_os_str().as_encoded_bytes()) % self.count == self.index - 1
    }
}

/// The paths listed in `source` (`-` is standard input), one per line; blank lines skipped.
pub fn read_list(source: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut text = String::new();
    if source == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the input list from standard input")?;
    } else {
        text = std::fs::read_to_string(source)
            .with_context(|| format!("--files-from {}", source.display()))?;
    }
    Ok(text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .map(PathBuf::from)
        .collect())
}

/// An output file resumed: the paths it already has, and the file opened for appending.
pub struct Resumed {
    /// `path` of every complete line.
    pub done: HashSet<String>,
    /// Lines kept.
    pub lines: usize,
    /// Bytes cut off the end (a torn last line), 0 when the file was whole.
    pub repaired_bytes: u64,
    /// Open for appending after the last complete line.
    pub file: std::fs::File,
}

/// Opens (or creates) `path` for `--resume`: reads its complete JSON lines, and cuts off the
/// end from the first line that is incomplete or not a JSON object with a `path`.
pub fn resume(path: &Path) -> anyhow::Result<Resumed> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("--resume {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut done = HashSet::new();
    let mut good_end = 0u64;
    let mut lines = 0usize;
    {
        let mut reader = std::io::BufReader::new(&mut file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let parsed: Option<String> = serde_json::from_slice::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("path")?.as_str().map(str::to_string));
            let Some(p) = parsed else { break };
            done.insert(p);
            lines += 1;
            good_end += n as u64;
        }
    }
    if good_end < len {
        file.set_len(good_end)
            .with_context(|| format!("repairing {}", path.display()))?;
    }
    file.seek(SeekFrom::Start(good_end))?;
    Ok(Resumed {
        done,
        lines,
        repaired_bytes: len - good_end,
        file,
    })
}

/// What `resnet classify` runs and where it writes.
pub struct Plan {
    /// The inputs left: listed, in this shard, not yet in the resumed output.
    pub inputs: Vec<Input>,
    /// Standard output, or the resumed file.
    pub sink: Box<dyn Write>,
    /// The output format (JSON lines with `--resume`).
    pub format: ClassifyFormat,
}

/// Expands the inputs (arguments, then `--files-from`), keeps this shard's, and with
/// `--resume` drops those the output already has and opens it for appending.
pub fn plan(args: &ClassifyArgs) -> anyhow::Result<Plan> {
    let mut listed = args.inputs.clone();
    if let Some(source) = &args.files_from {
        listed.extend(read_list(source)?);
    }
    let mut inputs = crate::inputs::expand(&listed);
    if let Some(shard) = args.shard {
        let before = inputs.len();
        inputs.retain(|i| shard.owns(i.path()));
        log::info!(
            "shard {}/{}: {} of {before} inputs",
            shard.index,
            shard.count,
            inputs.len()
        );
    }
    let Some(out) = &args.resume else {
        return Ok(Plan {
            inputs,
            sink: Box::new(std::io::stdout().lock()),
            format: args.format,
        });
    };
    if !matches!(args.format, ClassifyFormat::Jsonl | ClassifyFormat::Text) {
        bail!("--resume writes JSON lines: use it with --format jsonl (or no --format)");
    }
    let resumed = resume(out)?;
    if resumed.repaired_bytes > 0 {
        log::warn!(
            "{}: cut off a torn last line ({} bytes) left by an interrupted run",
            out.display(),
            resumed.repaired_bytes
        );
    }
    let before = inputs.len();
    inputs.retain(|i| !resumed.done.contains(&i.path().display().to_string()));
    log::info!(
        "resuming {}: {} lines there, {} of {before} inputs to go",
        out.display(),
        resumed.lines,
        inputs.len()
    );
    Ok(Plan {
        inputs,
        sink: Box::new(resumed.file),
        format: ClassifyFormat::Jsonl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_a_list_into_disjoint_shares() {
        assert_eq!("2/8".parse::<Shard>(), Ok(Shard { index: 2, count: 8 }));
        for bad in ["0/3", "4/3", "1/0", "x/2", "3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let paths: Vec<PathBuf> = (0..500)
            .map(|i| PathBuf::from(format!("img/{i:05}.jpg")))
            .collect();
        let shards: Vec<Shard> = (1..=4).map(|i| Shard { index: i, count: 4 }).collect();
        let mut sizes = Vec::new();
        for p in &paths {
            assert_eq!(
                shards.iter().filter(|s| s.owns(p)).count(),
                1,
                "{}",
                p.display()
            );
        }
        for s in &shards {
            sizes.push(paths.iter().filter(|p| s.owns(p)).count());
        }
        // FNV-1a spreads 500 names evenly enough: each share within 40% of 125.
        assert!(sizes.iter().all(|&n| (75..=175).contains(&n)), "{sizes:?}");
        // The definition's test vectors: the hash is the same everywhere.
        assert_eq!(stable_hash(b""), 0xcbf29ce484222325);
        assert_eq!(stable_hash(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn resume_keeps_complete_lines_and_cuts_a_torn_end() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        std::fs::write(
            &out,
            b"{\"path\":\"a.jpg\",\"predictions\":[]}\n{\"path\":\"b.jpg\",\"error\":\"bad\"}\n{\"path\":\"c.j",
        )
        .unwrap();
        let r = resume(&out).unwrap();
        assert_eq!(r.lines, 2);
        assert_eq!(r.repaired_bytes, 12);
        assert!(r.done.contains("a.jpg") && r.done.contains("b.jpg") && r.done.len() == 2);
        let mut f = r.file;
        f.write_all(b"{\"path\":\"c.jpg\"}\n").unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with("{\"path\":\"c.jpg\"}\n"), "{text}");
        // A missing file starts empty.
        let fresh = resume(&dir.path().join("new.jsonl")).unwrap();
        assert_eq!((fresh.lines, fresh.repaired_bytes), (0, 0));
    }
}

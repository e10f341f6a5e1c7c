//! Turning command-line inputs (files, directories, glob patterns) into a list of files, and
//! running them through a model in batches while the next batch decodes.

use crate::model::Model;
use ndarray::{Array3, Array4, Axis};
use rayon::prelude::*;
use resnet_core::backend::NoObserver;
use resnet_core::decode::DecodeOptions;
use resnet_core::input::load_input;
use std::path::{Path, PathBuf};

/// One input to classify: a file, or a problem found while expanding the arguments (reported
/// in its place, in order, and counted as a failure).
#[derive(Clone, Debug)]
pub enum Input {
    File(PathBuf),
    Problem(PathBuf, String),
}

impl Input {
    pub fn path(&self) -> &Path {
        match self {
            Input::File(p) | Input::Problem(p, _) => p,
        }
    }
}

/// Expands arguments in order: a file stays itself, a directory becomes its images (recursive,
/// sorted), a pattern with `*`, `?` or `[` becomes its matches (sorted). A missing file, an
/// unreadable directory or a pattern without matches becomes a [`Input::Problem`].
pub fn expand(args: &[PathBuf]) -> Vec<Input> {
    let mut out = Vec::new();
    for arg in args {
        if arg.is_dir() {
            walk_dir(arg, &mut out);
        } else if arg.exists() {
            out.push(Input::File(arg.clone()));
        } else if arg.to_string_lossy().contains(['*', '?', '[']) {
            expand_glob(arg, &mut out);
        } else {
            out.push(Input::Problem(
                arg.clone(),
                "no such file or directory".into(),
            ));
        }
    }
    out
}

/// Files taken from directories: images (the decoder's list) and preprocessed `.npy` tensors.
/// Any file given by name is tried whatever its name.
fn is_input_file(path: &Path) -> bool {
    resnet_core::decode::has_image_extension(path)
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

fn walk_dir(dir: &Path, out: &mut Vec<Input>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            out.push(Input::Problem(
                dir.to_path_buf(),
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => paths.push(e.path()),
            Err(e) => out.push(Input::Problem(
                dir.to_path_buf(),
                format!("cannot read directory: {e}"),
            )),
        }
    }
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk_dir(&p, out);
        } else if is_input_file(&p) {
            out.push(Input::File(p));
        }
    }
}

fn expand_glob(pattern: &Path, out: &mut Vec<Input>) {
    let text = pattern.to_string_lossy();
    let matches = match glob::glob(&text) {
        Ok(m) => m,
        Err(e) => {
            out.push(Input::Problem(
                pattern.to_path_buf(),
                format!("bad pattern: {e}"),
            ));
            return;
        }
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for m in matches {
        match m {
            Ok(p) if p.is_file() => files.push(p),
            Ok(_) => {}
            Err(e) => out.push(Input::Problem(
                e.path().to_path_buf(),
                e.error().to_string(),
            )),
        }
    }
    if files.is_empty() {
        out.push(Input::Problem(
            pattern.to_path_buf(),
            "no file matches this pattern".into(),
        ));
    }
    files.sort();
    out.extend(files.into_iter().map(Input::File));
}

/// The outcome for one input: its logits, or what went wrong (a message naming the input).
pub struct Outcome {
    pub path: PathBuf,
    pub result: Result<Vec<f32>, String>,
}

/// Runs `inputs` through `model` in batches of `batch_size`, in input order, calling `emit` once
/// per input as its batch finishes. A decoding thread prepares the next batch while the current
/// one runs; at most two batches are in memory, so any number of inputs runs in bounded memory.
/// `emit` returning an error (e.g. a closed pipe) stops the run.
pub fn run_batches(
    model: &Model,
    inputs: &[Input],
    batch_size: usize,
    opts: &DecodeOptions,
    mut emit: impl FnMut(Outcome) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    type Decoded = Vec<(PathBuf, Result<Array3<f32>, String>)>;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Decoded>(1);
        scope.spawn(move || {
            for chunk in inputs.chunks(batch_size) {
                let decoded: Decoded = chunk
                    .par_iter()
                    .map(|input| {
                        let loaded = match input {
                            Input::File(p) => load_input(p, opts).map_err(|e| e.to_string()),
                            Input::Problem(p, why) => Err(format!("{}: {why}", p.display())),
                        };
                        (input.path().to_path_buf(), loaded)
                    })
                    .collect();
                if tx.send(decoded).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        for decoded in rx {
            let good: Vec<_> = decoded
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .map(|a| a.view().insert_axis(Axis(0)))
                .collect();
            let logits = if good.is_empty() {
                None
            } else {
                let batch: Array4<f32> =
                    ndarray::concatenate(Axis(0), &good).expect("inputs are all 3x224x224");
                let started = std::time::Instant::now();
                let logits = model
                    .backend
                    .forward(batch.view(), &mut NoObserver)
                    .map_err(|e| e.to_string());
                log::trace!(
                    "batch of {} images: inference {:.2} ms",
                    good.len(),
                    started.elapsed().as_secs_f64() * 1e3
                );
                Some(logits)
            };
            let mut row = 0;
            for (path, loaded) in decoded {
                let result = match (loaded, &logits) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(Ok(l))) => {
                        row += 1;
                        Ok(l.row(row - 1).to_vec())
                    }
                    (Ok(_), Some(Err(e))) => Err(format!("{}: {e}", path.display())),
                    (Ok(_), None) => unreachable!("a good input makes a batch"),
                };
                emit(Outcome { path, result })?;
            }
        }
        Ok(())
    })
}

/// A progress bar on stderr (count, images/s, ETA) when stderr is a terminal, there is more
/// than one input and `--quiet` is off; hidden otherwise.
/// The progress bar of every command that works through a list (`unit`: what is counted):
/// on stderr, only when it is a terminal, the list has more than one item and not `--quiet`.
/// (Downloads, counted in bytes, have their own in `weights_store`.)
pub fn progress_bar(len: usize, quiet: bool, unit: &'static str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || len < 2 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    indicatif::ProgressBar::new(len as u64)
        .with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg}  {per_sec}  ETA {eta}",
            )
            .expect("valid template"),
        )
        .with_message(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_directories_recursively_in_sorted_order_and_keeps_problems_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("b/sub")).unwrap();
        for f in ["b/sub/z.PNG", "b/a.jpg", "b/notes.txt", "c.webp"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let inputs = expand(&[
            d.join("b"),
            d.join("missing.jpg"),
            d.join("*.webp"),
            d.join("*.none"),
        ]);
        let shown: Vec<String> = inputs
            .iter()
            .map(|i| match i {
                Input::File(p) => p.strip_prefix(d).unwrap().display().to_string(),
                Input::Problem(p, why) => {
                    format!("{} ! {why}", p.strip_prefix(d).unwrap().display())
                }
            })
            .collect();
        assert_eq!(
            shown,
            [
                "b/a.jpg",
                "b/sub/z.PNG",
                "missing.jpg ! no such file or directory",
                "c.webp",
                "*.none ! no file matches this pattern",
            ]
        );
    }

    #[test]
    fn an_unreadable_directory_is_a_problem_not_a_crash() {
        // Running as root defeats permission bits, so read a file as if it were a directory.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain.jpg");
        std::fs::write(&file, b"x").unwrap();
        let mut out = Vec::new();
        walk_dir(&file, &mut out);
        assert!(
            matches!(&out[..], [Input::Problem(p, why)] if p == &file && why.starts_with("cannot read directory")),
            "{out:?}"
        );
    }
}

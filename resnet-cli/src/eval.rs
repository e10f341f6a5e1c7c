//! `resnet eval`: top-1 / top-5 accuracy over a labelled image set.

use crate::args::{EvalArgs, Format};
use crate::inputs::{run_batches, Input};
use crate::model::load_model;
use anyhow::{bail, Context};
use resnet_core::postprocess::top_k_indices;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// ImageNet-1k's WordNet ids in the standard sorted order: line i is class index i (the order
/// torchvision's weights were trained with).
const WNIDS: &str = include_str!("../../weights/imagenet_wnids.txt");

fn wnid_index() -> BTreeMap<&'static str, usize> {
    WNIDS
        .lines()
        .enumerate()
        .map(|(i, w)| (w.trim(), i))
        .collect()
}

/// `(file, true class)` pairs in sorted path order.
fn labelled_files(dir: &Path, labels_file: Option<&Path>) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let mut out = Vec::new();
    if let Some(file) = labels_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read labels file {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (name, index) = line.rsplit_once(',').with_context(|| {
                format!(
                    "{}:{}: expected `filename,index`, got '{line}'",
                    file.display(),
                    n + 1
                )
            })?;
            let index: usize = match index.trim().parse() {
                Ok(i) if i < 1000 => i,
                _ if n == 0 => continue, // a header line
                _ => bail!(
                    "{}:{}: class index must be an integer in 0..1000, got '{}'",
                    file.display(),
                    n + 1,
                    index.trim()
                ),
            };
            out.push((dir.join(name.trim()), index));
        }
    } else {
        let wnids = wnid_index();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read directory {}", dir.display()))?;
        let mut classes = Vec::new();
        for entry in entries {
            let entry =
                entry.with_context(|| format!("cannot read directory {}", dir.display()))?;
            if entry.path().is_dir() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let index = *wnids.get(name.as_str()).with_context(|| {
                    format!(
                        "{}: folder '{name}' is not an ImageNet-1k WordNet id (expected DIR/<wnid>/*.JPEG, e.g. n01440764/)",
                        dir.display()
                    )
                })?;
                classes.push((entry.path(), index));
            }
        }
        if classes.is_empty() {
            bail!(
                "{}: no <wnid>/ class folders; use the ImageNet layout DIR/n01440764/*.JPEG or give --labels-file FILE with `filename,index` lines",
                dir.display()
            );
        }
        for (folder, index) in classes {
            let files = crate::inputs::expand(std::slice::from_ref(&folder));
            for f in files {
                match f {
                    Input::File(p) => out.push((p, index)),
                    Input::Problem(p, why) => bail!("{}: {why}", p.display()),
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Serialize)]
struct MissedClass {
    index: usize,
    label: String,
    images: usize,
    missed: usize,
    /// The class it was most often taken for.
    most_predicted: Option<(usize, String)>,
}

#[derive(Serialize)]
struct Report {
    images: usize,
    failed: usize,
    top1: f64,
    top5: f64,
    images_per_second: f64,
    most_missed: Vec<MissedClass>,
}

pub fn run(args: EvalArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let opts = args.decode.options()?;
    let mut set = labelled_files(&args.dir, args.labels_file.as_deref())?;
    if let Some(limit) = args.limit {
        set.truncate(limit);
    }
    if set.is_empty() {
        bail!("{}: no images to evaluate", args.dir.display());
    }
    let model = load_model(&args.model)?;
    let inputs: Vec<Input> = set.iter().map(|(p, _)| Input::File(p.clone())).collect();
    let bar = crate::inputs::progress_bar(inputs.len(), quiet, "images");
    let (mut top1, mut top5, mut failed, mut seen) = (0usize, 0usize, 0usize, 0usize);
    // Per true class: images, misses, and what the misses were predicted as.
    let mut per_class: BTreeMap<usize, (usize, usize, BTreeMap<usize, usize>)> = BTreeMap::new();
    let started = Instant::now();
    let mut i = 0;
    run_batches(
        &model,
        &inputs,
        args.batch_size as usize,
        &opts,
        |outcome| {
            let truth = set[i].1;
            i += 1;
            bar.inc(1);
            match outcome.result {
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("{e}"));
                }
                Ok(logits) => {
                    seen += 1;
                    let best = top_k_indices(&logits, 5);
                    let entry = per_class.entry(truth).or_default();
                    entry.0 += 1;
                    if best[0] == truth {
                        top1 += 1;
                    } else {
                        entry.1 += 1;
                        *entry.2.entry(best[0]).or_default() += 1;
                    }
                    top5 += best.contains(&truth) as usize;
                }
            }
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let mut missed: Vec<MissedClass> = per_class
        .iter()
        .filter(|(_, c)| c.1 > 0)
        .map(|(&index, (images, missed, preds))| MissedClass {
            index,
            label: model.labels.name(index).to_string(),
            images: *images,
            missed: *missed,
            most_predicted: preds
                .iter()
                .max_by_key(|(p, n)| (**n, std::cmp::Reverse(**p)))
                .map(|(&p, _)| (p, model.labels.name(p).to_string())),
        })
        .collect();
    missed.sort_by_key(|m| (std::cmp::Reverse(m.missed), m.index));
    missed.truncate(10);
    let pct = |n: usize| {
        if seen == 0 {
            0.0
        } else {
            100.0 * n as f64 / seen as f64
        }
    };
    let report = Report {
        images: seen,
        failed,
        top1: pct(top1),
        top5: pct(top5),
        images_per_second: seen as f64 / secs.max(1e-9),
        most_missed: missed,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            println!(
                "top-1 {:.3}% ({top1}/{seen})  top-5 {:.3}% ({top5}/{seen})  {:.1} images/s{}",
                report.top1,
                report.top5,
                report.images_per_second,
                if failed > 0 {
                    format!("  ({failed} unreadable, not counted)")
                } else {
                    String::new()
                }
            );
            if !report.most_missed.is_empty() {
                println!("most-missed classes:");
                for m in &report.most_missed {
                    let taken = m
                        .most_predicted
                        .as_ref()
                        .map(|(i, l)| format!(", most often taken for {i} {l}"))
                        .unwrap_or_default();
                    println!(
                        "  {:>4} {:<24} missed {}/{}{taken}",
                        m.index, m.label, m.missed, m.images
                    );
                }
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

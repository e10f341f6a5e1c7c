//! `resnet eval` as a real process, on image sets with known answers.

mod common;

use common::{image, repo, resnet_with, stderr, synth};
use serde_json::Value;
use std::path::PathBuf;

/// The network's own top-5 for some photos, to build evaluation sets with known answers.
fn top5(images: &[&str]) -> Vec<Vec<u64>> {
    let paths: Vec<PathBuf> = images.iter().map(|i| image(i)).collect();
    let weights = synth().to_path_buf();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"classify", &"--weights", &weights, &"--format", &"json"];
    for p in &paths {
        args.push(p);
    }
    let out = resnet_with(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["index"].as_u64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn eval_counts_top1_and_top5_on_sets_with_known_answers() {
    let names = [
        "astronaut_rgb.png",
        "cat_24bit.bmp",
        "fig_lossy.webp",
        "flower.gif",
    ];
    let best = top5(&names);
    let outside = |t: &Vec<u64>| (0..1000).find(|i| !t.contains(i)).unwrap();
    // Labels: right, right, in the top 5 but not first, outside the top 5.
    let truth = [best[0][0], best[1][0], best[2][2], outside(&best[3])];
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("filename,index\n");
    for (n, t) in names.iter().zip(truth) {
        std::fs::copy(image(n), dir.path().join(n)).unwrap();
        csv.push_str(&format!("{n},{t}\n"));
    }
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, csv).unwrap();
    let out = resnet_with(&[
        &"eval",
        &"--weights",
        &synth(),
        &dir.path(),
        &"--labels-file",
        &labels,
        &"--format",
        &"json",
        &"--batch-size",
        &"3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["images"], 4);
    assert_eq!(r["top1"].as_f64().unwrap(), 50.0);
    assert_eq!(r["top5"].as_f64().unwrap(), 75.0);
    let missed = r["most_missed"].as_array().unwrap();
    assert_eq!(missed.len(), 2);

    // --limit takes the first N in sorted order: astronaut (right), cat (right).
    let out = resnet_with(&[
        &"eval",
        &"--weights",
        &synth(),
        &dir.path(),
        &"--labels-file",
        &labels,
        &"--limit",
        &"2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("top-1 100.000% (2/2)  top-5 100.000% (2/2)"),
        "{text}"
    );

    // ImageNet layout: DIR/<wnid>/ with wnids in the standard sorted order (n01440764 = 0).
    let wnids: Vec<String> = std::fs::read_to_string(repo().join("weights/imagenet_wnids.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let set = tempfile::tempdir().unwrap();
    for (n, class) in [(names[0], best[0][0]), (names[3], outside(&best[3]))] {
        let folder = set.path().join(&wnids[class as usize]);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(image(n), folder.join(n)).unwrap();
    }
    let out = resnet_with(&[
        &"eval",
        &"--weights",
        &synth(),
        &set.path(),
        &"--format",
        &"json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["images"].as_u64(), r["top1"].as_f64(), r["top5"].as_f64()),
        (Some(2), Some(50.0), Some(50.0))
    );

    // A folder that is not a wnid, and a flat folder without a labels file: clear errors.
    std::fs::create_dir_all(set.path().join("cats")).unwrap();
    let out = resnet_with(&[&"eval", &"--weights", &synth(), &set.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("folder 'cats' is not an ImageNet-1k WordNet id"),
        "{}",
        stderr(&out)
    );
    let out = resnet_with(&[&"eval", &"--weights", &synth(), &dir.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--labels-file"), "{}", stderr(&out));
}

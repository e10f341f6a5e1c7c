//! What the binary prints on stderr at each verbosity, and shell completions.

mod common;

use common::{image, resnet, resnet_with, stderr, synth};

#[test]
fn completions_for_every_shell_and_logging_levels() {
    for shell in ["bash", "zsh", "fish"] {
        let out = resnet_with(&[&"completions", &shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("classify") && script.contains("trace"),
            "{shell}"
        );
    }
    let out = resnet_with(&[&"completions", &"tcsh"]);
    assert_eq!(out.status.code(), Some(2));

    // Default: notes and warnings; RUST_LOG=debug adds debug lines; NO_COLOR: no escapes.
    let mut cmd = resnet();
    cmd.env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .args(["classify", "--weights"])
        .arg(synth())
        .arg(image("flower.gif"));
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("warning: ") && err.contains("synthetic weights"),
        "{err}"
    );
    assert!(err.contains("debug: 1 inputs"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
}

/// `classify` of one photo with synthetic weights at a verbosity: (exit code, stderr lines).
fn classify_stderr(flags: &[&str], backend: &str) -> (Option<i32>, Vec<String>) {
    let out = resnet()
        .args(flags)
        .args(["classify", "--backend", backend, "--weights"])
        .arg(synth())
        .arg(image("flower.gif"))
        .output()
        .unwrap();
    let lines = stderr(&out).lines().map(str::to_string).collect();
    (out.status.code(), lines)
}

fn count(lines: &[String], pred: impl Fn(&str) -> bool) -> usize {
    lines.iter().filter(|l| pred(l)).count()
}

/// What `-q`, the default, `-v` and `-vv` each put on stderr, as `--help` describes them.
#[test]
fn quiet_default_verbose_and_very_verbose_print_what_help_says() {
    let synthetic = |l: &str| l.starts_with("warning: ") && l.contains("synthetic weights");
    let debug = |l: &str| l.starts_with("debug: ");

    // Default: the synthetic-weights warning, once; no debug lines.
    let (code, default) = classify_stderr(&[], "native");
    assert_eq!(code, Some(0), "{default:?}");
    assert_eq!(count(&default, synthetic), 1, "{default:?}");
    assert_eq!(count(&default, debug), 0, "{default:?}");

    // -q: errors only, so nothing at all on a run that succeeds (the warning too is gone).
    let (code, quiet) = classify_stderr(&["-q"], "native");
    assert_eq!(code, Some(0), "{quiet:?}");
    assert!(quiet.is_empty(), "-q printed {quiet:?}");

    // -v: the warning still, plus the kernels the backend chose (once: the backend is built
    // once), the backend's description, and how the inputs are batched.
    let (code, verbose) = classify_stderr(&["-v"], "native");
    assert_eq!(code, Some(0), "{verbose:?}");
    assert_eq!(count(&verbose, synthetic), 1, "{verbose:?}");
    let kernels = |l: &str| l.starts_with("debug: native backend built: f32 kernel ");
    assert_eq!(count(&verbose, kernels), 1, "{verbose:?}");
    assert_eq!(
        count(&verbose, |l| l.starts_with("debug: backend native: ")),
        1,
        "{verbose:?}"
    );
    assert_eq!(
        count(&verbose, |l| l.starts_with("debug: 1 inputs, batches of ")),
        1,
        "{verbose:?}"
    );

    // -vv: everything -v shows, plus trace lines: each batch's inference time (one batch
    // here), which -v does not show.
    let batch_time = |l: &str| l.starts_with("trace: batch of 1 images: inference ");
    assert_eq!(count(&verbose, batch_time), 0, "{verbose:?}");
    let (code, very) = classify_stderr(&["-vv"], "native");
    assert_eq!(code, Some(0), "{very:?}");
    for line in verbose.iter().filter(|l| debug(l)) {
        assert!(very.contains(line), "-vv lacks {line:?}: {very:?}");
    }
    assert_eq!(count(&very, batch_time), 1, "{very:?}");

    // -q and -v contradict each other: a usage error.
    let (code, both) = classify_stderr(&["-q", "-v"], "native");
    assert_eq!(code, Some(2), "{both:?}");
}

/// INT8 from f32 weights calibrates first, and says so once (a note, shown by default, hidden
/// by `-q`), naming the built-in images it calibrates on.
#[test]
fn int8_from_f32_weights_says_once_that_it_calibrates_on_the_built_in_photos() {
    let calibrating = |l: &str| {
        l.starts_with("note: ") && l.contains("calibrated") && l.contains("cat_baseline.jpg")
    };
    let (code, lines) = classify_stderr(&[], "int8");
    assert_eq!(code, Some(0), "{lines:?}");
    assert_eq!(count(&lines, calibrating), 1, "{lines:?}");
    let (code, quiet) = classify_stderr(&["-q"], "int8");
    assert_eq!(code, Some(0), "{quiet:?}");
    assert!(quiet.is_empty(), "-q printed {quiet:?}");
}

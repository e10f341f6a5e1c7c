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

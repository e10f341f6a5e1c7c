//! `resnet inspect` as a real process.

mod common;

use common::resnet_with;

#[test]
fn inspect_prints_totals() {
    let out = resnet_with(&[&"inspect"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("11689512 parameters") && text.contains("1.814 G"),
        "{text}"
    );
    assert!(text.contains("layer2.0.downsample.0"));
}

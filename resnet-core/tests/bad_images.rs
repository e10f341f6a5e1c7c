//! Every malformed file of testdata/images/bad gives its own clear error, and none panics.

mod common;

use resnet_core::decode::{decode_image_bytes, decode_image_file, DecodeOptions};
use resnet_core::{Error, ImageProblem};

fn problem(name: &str) -> (String, ImageProblem) {
    let path = common::image(&format!("bad/{name}"));
    match decode_image_file(&path, &DecodeOptions::default()) {
        Err(e @ Error::Image { .. }) => {
            let msg = e.to_string();
            let Error::Image { problem, .. } = e else {
                unreachable!()
            };
            assert!(msg.contains(name), "message does not name the file: {msg}");
            (msg, problem)
        }
        other => panic!("{name}: expected an image error, got {other:?}"),
    }
}

#[test]
fn each_bad_file_has_a_specific_error() {
    assert_eq!(problem("empty.jpg").1, ImageProblem::Empty);
    assert_eq!(problem("not_an_image.jpg").1, ImageProblem::UnknownFormat);
    assert!(matches!(
        problem("truncated.jpg").1,
        ImageProblem::Truncated { format: "jpeg", .. }
    ));
    assert!(matches!(
        problem("bomb_60000x60000.png").1,
        ImageProblem::TooManyPixels {
            width: 60000,
            height: 60000,
            ..
        }
    ));
    assert!(matches!(
        problem("zero_size.gif").1,
        ImageProblem::ZeroSized { .. } | ImageProblem::Corrupt { .. }
    ));
    let (msg, p) = problem("bad_crc.png");
    assert!(
        matches!(p, ImageProblem::Corrupt { format: "png", .. }),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("crc"), "{msg}");
}

#[test]
fn every_prefix_of_a_good_image_fails_cleanly_or_decodes() {
    // Truncation anywhere must give an error (or, for formats without an end marker, a decode),
    // never a panic or a huge allocation.
    for name in [
        "cat_baseline.jpg",
        "astronaut_rgb.png",
        "flower.gif",
        "fig_lossy.webp",
        "china_lzw.tif",
        "cat_24bit.bmp",
    ] {
        let bytes = std::fs::read(common::image(name)).unwrap();
        for cut in (0..bytes.len()).step_by(bytes.len() / 37 + 1) {
            let _ = decode_image_bytes(&bytes[..cut], name, &DecodeOptions::default());
        }
        if name.ends_with(".jpg") {
            assert!(
                decode_image_bytes(&bytes[..bytes.len() - 2], name, &DecodeOptions::default())
                    .is_err()
            );
        }
    }
}

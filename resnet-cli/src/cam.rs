//! `resnet cam`: the class activation map of one image as a PNG (the function `/v1/cam` uses).

use crate::args::CamArgs;
use crate::model::{load_model, weights_identity};
use anyhow::{bail, Context};
use resnet_core::cam::{class_activation_map, overlay_for_view};
use resnet_core::decode::decode_image_file;
use resnet_core::postprocess::softmax;
use resnet_core::preprocess::{resize_and_crop, to_normalized_chw};
use std::process::ExitCode;

pub fn run(args: CamArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.alpha) {
        bail!("--alpha must be between 0 and 1, got {}", args.alpha);
    }
    let opts = args.decode.options()?;
    let model = load_model(&args.model)?;
    let identity = weights_identity(&model.weights_path)?;
    let Some(fc_weight) = &identity.fc_weight else {
        bail!("class activation maps need f32 weights (an INT8 model file has no f32 fc.weight)");
    };
    let image = match decode_image_file(&args.input, &opts) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let crop = resize_and_crop(&image.rgb);
    let input = to_normalized_chw(&crop);
    let map = class_activation_map(
        &*model.backend,
        fc_weight,
        input.view(),
        args.class.map(usize::from),
    )?;
    let overlay = overlay_for_view(args.view, &image.rgb, &crop, &map, args.alpha);
    overlay
        .save_with_format(&args.out, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let p = softmax(&map.logits)[map.class];
    println!(
        "{}: class {} {} ({:.2}%), map {}x{} -> {}",
        args.input.display(),
        map.class,
        model.labels.name(map.class),
        100.0 * p,
        map.height,
        map.width,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

//! `resnet trace`: one image through the network, layer by layer — what a student reads next
//! to the layer table of `resnet inspect`. `--html` writes the explorer page of `resnet serve`
//! with this trace in it, as one file that opens without a server.

use crate::args::{Format, TraceArgs};
use crate::model::{load_model, weights_identity_and_f32, Model};
use anyhow::{bail, Context};
use ndarray::{Array3, Axis};
use resnet_core::arch::INPUT_SIZE;
use resnet_core::decode::decode_image_file;
use resnet_core::input::{is_npy, load_input, write_npy};
use resnet_core::postprocess::{softmax, top_k, top_k_indices};
use resnet_core::preprocess::{resize_and_crop, to_normalized_chw};
use resnet_core::trace::branches::{block_points, BlockWeights};
use resnet_core::trace::{record, trace_rows, Trace};
use resnet_server::api::ImageInfo;
use resnet_server::explore::{
    block_reports, layer_reports, png_data_url, static_page, BlockReport, CamImage, TraceResponse,
    TraceTiming,
};
use resnet_server::WeightsIdentity;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Classes whose activation maps the `--html` file carries.
const HTML_CAM_CLASSES: usize = 5;

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let opts = args.decode.options()?;
    if args.html.is_some() && is_npy(&args.input) {
        bail!(
            "--html needs an image (it shows the image and its crop), not the tensor {}",
            args.input.display()
        );
    }
    let model = load_model(&args.model)?;
    let started = Instant::now();
    let t = Instant::now();
    let (input, decoded) = if args.html.is_some() {
        let image = decode_image_file(&args.input, &opts)?;
        let decode = t.elapsed();
        let t = Instant::now();
        let crop = resize_and_crop(&image.rgb);
        let input = to_normalized_chw(&crop);
        (input, Some((image, crop, decode, t.elapsed())))
    } else {
        (load_input(&args.input, &opts)?, None)
    };
    let batch = input.view().insert_axis(Axis(0));
    let trace = record(model.backend.as_ref(), batch)?;
    let other = match &args.compare {
        Some(kind) => {
            let mut other_args = args.model.clone();
            other_args.backend = *kind;
            let other = load_model(&other_args)?;
            Some(record(other.backend.as_ref(), batch)?)
        }
        None => None,
    };
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (i, p) in trace.points.iter().enumerate() {
            let path = dir.join(format!("{:02}_{}.npy", i + 1, p.point));
            write_npy(&path, &p.output.view())?;
        }
        log::info!(
            "wrote {} layer outputs to {}",
            trace.points.len(),
            dir.display()
        );
    }
    let rows = trace_rows(&trace.points, other.as_ref().map(|o| &o.points[..]));
    // The weights file again, for the activation maps' fc.weight and the blocks' folded weights.
    let wants_blocks = args.branches || args.html.is_some();
    let (identity, f32_weights) = if wants_blocks {
        let (identity, weights) = weights_identity_and_f32(&model.weights_path)?;
        (Some(identity), weights)
    } else {
        (None, None)
    };
    let t = Instant::now();
    let recomputed = match (&f32_weights, wants_blocks) {
        (Some(w), true) => BlockWeights::new(w).of_trace(&trace, &block_points())?,
        (None, true) => {
            log::warn!(
                "{}: an INT8 model file has no f32 weights: the BasicBlocks are not recomputed stage by stage",
                model.weights_path.display()
            );
            Vec::new()
        }
        _ => Vec::new(),
    };
    let branches_time = t.elapsed();
    drop(f32_weights);
    if let (Some(out), Some((image, crop, decode, preprocess)), Some(identity)) =
        (&args.html, decoded, &identity)
    {
        let blocks =
            block_reports(&trace, &recomputed, args.maps as usize).map_err(anyhow::Error::msg)?;
        let report = html_report(
            &args,
            &model,
            identity,
            &trace,
            other.as_ref(),
            &input,
            image,
            crop,
            (decode, preprocess),
            (blocks, branches_time),
            started,
        )?;
        let page = static_page(&report).map_err(anyhow::Error::msg)?;
        std::fs::write(out, page).with_context(|| format!("writing {}", out.display()))?;
        log::info!("wrote the explorer page to {}", out.display());
    }
    let blocks = if args.branches {
        block_reports(&trace, &recomputed, 0).map_err(anyhow::Error::msg)?
    } else {
        Vec::new()
    };
    match args.format {
        Format::Json if args.branches => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"layers": rows, "blocks": blocks}))?
        ),
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Text => {
            println!(
                "backend {} on {}{}",
                model.backend.name(),
                args.input.display(),
                other
                    .as_ref()
                    .map(|o| format!(", compared with {}", o.backend))
                    .unwrap_or_default()
            );
            print!(
                "{:<10} {:<16} {:>8} {:>10} {:>10} {:>10} {:>10} {:>7}",
                "layer", "shape", "ms", "min", "max", "mean", "std", "zeros"
            );
            if other.is_some() {
                print!(" {:>12} {:>9}", "max|err|", "SQNR dB");
            }
            println!();
            for r in &rows {
                let shape: Vec<String> = r.shape.iter().map(|d| d.to_string()).collect();
                print!(
                    "{:<10} {:<16} {:>8.3} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>6.1}%",
                    r.layer,
                    shape.join("x"),
                    r.ms,
                    r.stats.min,
                    r.stats.max,
                    r.stats.mean,
                    r.stats.std,
                    100.0 * r.stats.zeros
                );
                if let Some(c) = &r.versus {
                    print!(" {:>12.3e} {:>9.1}", c.max_abs_error, c.sqnr_db);
                }
                println!();
            }
            let total: f64 = rows.iter().map(|r| r.ms).sum();
            println!("total {total:.2} ms");
            if args.branches {
                print_blocks(&blocks, branches_time);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The recomputed BasicBlocks, one table row per stage.
fn print_blocks(blocks: &[BlockReport], took: Duration) {
    println!(
        "\nBasicBlocks recomputed stage by stage from each block's input (folded f32 weights, \
         textbook loops, {:.0} ms):",
        took.as_secs_f64() * 1e3
    );
    for b in blocks {
        println!(
            "{}: ReLU switched off {:.1}% of the sum; recomputed output vs the backend's: SQNR {:.1} dB, max|err| {:.3e}",
            b.layer,
            100.0 * b.relu_off,
            b.versus_backend.sqnr_db,
            b.versus_backend.max_abs_error
        );
        for s in &b.stages {
            let shape: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
            println!(
                "  {:<10} {:<16} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>6.1}%  {}",
                s.stage.name(),
                shape.join("x"),
                s.stats.min,
                s.stats.max,
                s.stats.mean,
                s.stats.std,
                100.0 * s.stats.zeros,
                s.op
            );
        }
    }
}

/// The body `/v1/trace` would answer for this image, plus the activation maps of the top
/// classes (a static file cannot ask for others).
#[allow(clippy::too_many_arguments)]
fn html_report(
    args: &TraceArgs,
    model: &Model,
    identity: &WeightsIdentity,
    trace: &Trace,
    other: Option<&Trace>,
    input: &Array3<f32>,
    image: resnet_core::decode::DecodedImage,
    crop: image::RgbImage,
    (decode, preprocess): (Duration, Duration),
    (blocks, branches): (Vec<BlockReport>, Duration),
    started: Instant,
) -> anyhow::Result<TraceResponse> {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let t = Instant::now();
    let (_, h, w) = input.dim();
    let layers =
        layer_reports(trace, other, args.maps as usize, (h, w)).map_err(anyhow::Error::msg)?;
    let logits = trace.logits.row(0).to_vec();
    let mut cams = Vec::new();
    if let (Some(fc_weight), Some(features)) = (
        &identity.fc_weight,
        trace.point(resnet_core::cam::FEATURE_LAYER),
    ) {
        let features = features
            .output
            .view()
            .into_dimensionality::<ndarray::Ix4>()?
            .index_axis_move(Axis(0), 0);
        let probs = softmax(&logits);
        for class in top_k_indices(&logits, HTML_CAM_CLASSES) {
            let map = resnet_core::cam::map_from_features(
                trace.backend,
                features,
                fc_weight,
                Some(class),
                logits.clone(),
            )?;
            let overlay = resnet_core::cam::heatmap_overlay_on_original(&image.rgb, &map, 0.45);
            cams.push(CamImage {
                index: class,
                label: model.labels.name(class).to_string(),
                probability: probs[class],
                png: png_data_url(&overlay).map_err(anyhow::Error::msg)?,
            });
        }
    }
    let crop_url = png_data_url(&crop).map_err(anyhow::Error::msg)?;
    let report = ms(t.elapsed());
    debug_assert_eq!((h, w), (INPUT_SIZE, INPUT_SIZE));
    Ok(TraceResponse {
        model: "resnet18".into(),
        backend: trace.backend.into(),
        compare: other.map(|o| o.backend.to_string()),
        synthetic_weights: identity.synthetic,
        image: ImageInfo {
            width: image.rgb.width(),
            height: image.rgb.height(),
            format: image.format,
        },
        crop: crop_url,
        original: original_data_url(&args.input, image.format),
        predictions: top_k(&logits, 5, &model.labels),
        timing_ms: TraceTiming {
            decode: ms(decode),
            preprocess: ms(preprocess),
            queue: 0.0,
            trace: ms(trace.elapsed),
            compare: other.map(|o| ms(o.elapsed)),
            branches: (!blocks.is_empty()).then(|| ms(branches)),
            report,
            total: ms(started.elapsed()),
        },
        layers,
        blocks,
        cams,
    })
}

/// The image file as a `data:` URL, when it is small enough to embed (4 MiB).
fn original_data_url(path: &std::path::Path, format: &str) -> Option<String> {
    let bytes = std::fs::read(path).ok().filter(|b| b.len() <= 4 << 20)?;
    Some(resnet_server::explore::data_url(
        &format!("image/{format}"),
        &bytes,
    ))
}

//! Where start-up time goes: read the weights file, parse and validate it, build each backend
//! (fold + pack), run the first image. Each stage timed separately, medians of several runs in
//! one process (the file stays in the page cache after the first).
//!
//! ```sh
//! resnet weights synth --out /tmp/w.safetensors
//! resnet quantize --weights /tmp/w.safetensors --out /tmp/w-int8.safetensors   # optional
//! cargo run --release -p resnet-benches --example startup -- /tmp/w.safetensors [/tmp/w-int8.safetensors]
//! ```
//!
//! With an INT8 model file (what `resnet quantize` writes) it also times reading and parsing
//! it and building the `int8` backend from it (building `int8` from f32 weights would
//! calibrate first, which is not start-up work).

use resnet_core::backend::{Backend, BackendKind, BackendOptions, Int8Backend, NoObserver};
use resnet_core::cpu::Isa;
use resnet_core::quantize::QuantizedModel;
use resnet_core::weights::Weights;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: startup WEIGHTS_FILE");
    let isa = Isa::from_env_or_best().expect("ISA");
    let input = ndarray::Array4::<f32>::zeros((1, 3, 224, 224));
    let int8_path = std::env::args().nth(2);
    let runs = 7;
    let (mut int8_parse, mut int8_build, mut int8_first) = (Vec::new(), Vec::new(), Vec::new());
    let mut read = Vec::new();
    let mut parse = Vec::new();
    let mut build: Vec<(BackendKind, Vec<f64>, Vec<f64>)> =
        [BackendKind::Gemm, BackendKind::Native, BackendKind::Bf16]
            .into_iter()
            .map(|k| (k, Vec::new(), Vec::new()))
            .collect();
    for _ in 0..runs {
        let t = Instant::now();
        let bytes = std::fs::read(&path).expect("read weights");
        read.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let weights = Weights::from_bytes(&bytes, &path).expect("valid weights");
        drop(bytes);
        parse.push(t.elapsed().as_secs_f64() * 1e3);
        for (kind, b, first) in &mut build {
            // What `resnet classify` does: hand the weights over (the copy is not timed).
            let owned = weights.clone();
            let t = Instant::now();
            let backend = kind
                .create_owned(
                    owned,
                    &BackendOptions {
                        isa,
                        ..Default::default()
                    },
                )
                .expect("backend");
            b.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            backend
                .forward(input.view(), &mut NoObserver)
                .expect("forward");
            first.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    if let Some(path) = &int8_path {
        for _ in 0..runs {
            let t = Instant::now();
            let bytes = std::fs::read(path).expect("read INT8 model");
            let model = QuantizedModel::from_safetensors_bytes(&bytes, path).expect("INT8 model");
            int8_parse.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let backend = Int8Backend::new(&model, isa);
            int8_build.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            backend
                .forward(input.view(), &mut NoObserver)
                .expect("forward");
            int8_first.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "median of {runs} runs, {} threads, ms:",
        rayon::current_num_threads()
    );
    println!("  read file        {:7.1}", median(read));
    println!("  parse + validate {:7.1}", median(parse));
    for (kind, b, first) in build {
        println!(
            "  {:<9} build {:7.1}   first forward {:7.1}",
            kind.name(),
            median(b),
            median(first)
        );
    }
    if int8_path.is_some() {
        println!("  int8 file read + parse {:7.1}", median(int8_parse));
        println!(
            "  int8      build {:7.1}   first forward {:7.1}",
            median(int8_build),
            median(int8_first)
        );
    }
}

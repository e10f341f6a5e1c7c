//! End-to-end forward passes of each backend on synthetic weights, batch 1.
use criterion::{criterion_group, criterion_main, Criterion};
use resnet_core::backend::{BackendKind, BackendOptions, NoObserver};
use resnet_core::weights::synthetic_weights;

fn end_to_end(c: &mut Criterion) {
    let weights = synthetic_weights(0);
    let input = ndarray::Array4::<f32>::from_elem((1, 3, 224, 224), 0.5);
    let mut group = c.benchmark_group("resnet18_batch1");
    group.sample_size(10);
    for kind in BackendKind::ALL {
        let backend = kind
            .create(&weights, &BackendOptions::default())
            .expect("backend builds");
        group.bench_function(kind.name(), |b| {
            b.iter(|| backend.forward(input.view(), &mut NoObserver).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);

//! A forward pass reuses its workspaces: once warmed up, a batch-1 pass of `native` and `int8`
//! allocates almost nothing. Its own test binary, because the allocator counts process-wide
//! and other tests running at the same time would be counted too.

use ndarray::Array4;
use resnet_core::backend::{BackendKind, BackendOptions, NoObserver};
use resnet_core::weights::synthetic_weights;
use resnet_kernels::alloc_counter::{AllocCount, CountingAllocator};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn a_warm_forward_pass_allocates_only_its_output() {
    let weights = synthetic_weights(0);
    let x = Array4::from_shape_fn((1, 3, 224, 224), |(_, c, h, w)| {
        ((c * 7 + h * 3 + w) % 17) as f32 / 8.0 - 1.0
    });
    for kind in [BackendKind::Native, BackendKind::Int8] {
        let backend = kind.create(&weights, &BackendOptions::default()).unwrap();
        let before = AllocCount::now();
        let first = backend.forward(x.view(), &mut NoObserver).unwrap();
        let cold = AllocCount::now().since(before);
        let before = AllocCount::now();
        let second = backend.forward(x.view(), &mut NoObserver).unwrap();
        let warm = AllocCount::now().since(before);
        assert_eq!(first, second, "{kind}: a second pass gives other logits");
        println!("{kind}: first pass {cold:?}, second pass {warm:?}");
        // The first pass sizes its buffers (megabytes of activations); the second may allocate
        // only the 4 KB of logits and the thread pool's bookkeeping. 256 KiB is 60x the logits
        // and a small fraction of any single activation buffer (stem: 3.2 MB in f32).
        assert!(
            cold.bytes > 1 << 20,
            "{kind}: the cold pass allocated only {cold:?}"
        );
        assert!(
            warm.bytes < 256 << 10,
            "{kind}: a warm pass allocated {warm:?}: workspaces are not reused"
        );
    }
}

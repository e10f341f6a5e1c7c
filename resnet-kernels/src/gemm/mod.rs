//! Packed single-precision GEMM in the Goto/BLIS shape, with a fused epilogue.
//!
//! `C[M, N] = epilogue(A[M, K] · B[K, N])` where, in a convolution in NHWC layout,
//! M = images x output pixels, K = kernel window x input channels, N = output channels.
//! `B` (the weights) is packed once, when a model is prepared ([`PackedB`]); `A` (the
//! activations, or their implicit im2col) is packed per call, block by block, by the loop nest.
//!
//! ```text
//! loop 5  (nc)  columns of C in chunks of NC       -> parallel work items (with loop 3)
//! loop 4  (pc)  K in blocks of KC                  -> B block KC x NC, packed once per model
//! loop 3  (ic)  rows of C in blocks of MC          -> A block MC x KC packed into an L2-sized buffer
//! loop 2  (jr)  columns in micro-panels of NR      -> B micro-panel KC x NR stays in L1
//! loop 1  (ir)  rows in micro-panels of MR         -> one micro-kernel call: an MR x NR tile of C
//! ```
//!
//! The micro-kernel keeps its MR x NR tile of C in registers for the whole KC loop, then applies
//! the [`Epilogue`] (bias per column, residual add, ReLU) on the last K block, before the store.

mod loops;
pub(crate) mod pack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod simd;

pub use crate::tiling::Blocking;
pub use pack::{im2col_nhwc, ConvGeometry};

use crate::aligned::AlignedVec;
use crate::cpu::Isa;
use crate::registry::{self, Family, Kernel, KernelInfo};
use pack::pack_b;

/// Where the rows of A (`f32`) come from: a matrix, or the implicit im2col of an NHWC input
/// (`pad` is then 0.0).
pub type ASource<'a> = crate::tiling::ASource<'a, f32>;

/// What happens to each element of `A·B` before it is stored, in this order:
/// `+ bias[column]`, `+ residual[row, column]`, `max(0, ·)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// One value per column of C (the folded BatchNorm shift of each output channel).
    pub bias: Option<&'a [f32]>,
    /// A matrix shaped like C, with its own row stride (the skip connection).
    pub residual: Option<(&'a [f32], usize)>,
    /// Clamp negatives to zero.
    pub relu: bool,
}

/// Cache-blocking constants, each named by the loop it cuts (see the module diagram): the
/// defaults of [`Blocking`] when no plan says otherwise.
pub mod blocking {
    /// Loop 4: K is cut into blocks of at most this many, so that a B micro-panel
    /// (KC x NR floats: 256 x 32 x 4 B = 32 KiB) stays in a 48 KiB L1 beside a slice of A.
    pub const KC: usize = 256;
    /// Loop 3: rows of A packed at once (MC x KC x 4 B = 144 x 256 x 4 = 144 KiB, in L2).
    /// A multiple of every kernel's MR (12, 6 and 4).
    pub const MC: usize = 144;
    /// Loop 5: columns of C per work item; 256 lets 2 threads share a 512-channel layer at batch 1.
    pub const NC: usize = 256;

    /// The three as a [`super::Blocking`].
    pub const DEFAULT: super::Blocking = super::Blocking {
        kc: KC,
        mc: MC,
        nc: NC,
    };
}

/// The entry points of an f32 kernel line.
#[derive(Debug)]
pub struct F32Entry {
    /// The loop nest around this kernel.
    gemm: fn(&ASource<'_>, &PackedB, &mut [f32], usize, &Epilogue<'_>),
    /// 12 independent FMA chains of this kernel's vector width for `iters` rounds; returns the
    /// FLOPs done. Unsafe: the CPU must run the kernel ([`KernelInfo::is_runnable`]).
    peak: unsafe fn(usize) -> f64,
    /// Winograd's input transform `V = Bᵀ d B`, compiled for the kernel's features.
    winograd_input: crate::winograd::InputTransform,
    /// Winograd's output transform `Y = Aᵀ M A`, compiled for the kernel's features.
    winograd_output: crate::winograd::OutputTransform,
}

/// An f32 kernel line.
pub type F32Kernel = Kernel<F32Entry>;

/// The line of micro-kernel `K`.
const fn line<K: MicroKernel>(
    isa: Isa,
    features: &'static str,
    runnable: fn() -> bool,
    peak: unsafe fn(usize) -> f64,
    winograd: (
        crate::winograd::InputTransform,
        crate::winograd::OutputTransform,
    ),
) -> F32Kernel {
    Kernel {
        info: KernelInfo {
            name: K::NAME,
            family: Family::F32,
            isa,
            mr: K::MR,
            nr: K::NR,
            packing: "K blocks of NR-wide micro-panels, k-major, zero-padded to NR columns",
            features,
            runnable,
        },
        entry: F32Entry {
            gemm: loops::gemm::<K>,
            peak,
            winograd_input: winograd.0,
            winograd_output: winograd.1,
        },
    }
}

/// The f32 kernels, portable first (see [`crate::registry`]). One line per kernel.
pub static KERNELS: [F32Kernel; F32_KERNEL_COUNT] = [
    line::<scalar::ScalarKernel>(
        Isa::Portable,
        "",
        || true,
        crate::peak::fma_portable,
        crate::winograd::PORTABLE_TRANSFORMS,
    ),
    #[cfg(target_arch = "x86_64")]
    line::<simd::Avx2FmaKernel>(
        Isa::Avx2,
        "avx2,fma",
        || Isa::Avx2.is_supported(),
        crate::peak::x86::fma_avx2,
        crate::winograd::AVX2_TRANSFORMS,
    ),
    #[cfg(target_arch = "x86_64")]
    line::<simd::Avx512Kernel>(
        Isa::Avx512,
        "avx512f",
        || Isa::Avx512.is_supported(),
        crate::peak::x86::fma_avx512,
        crate::winograd::AVX512_TRANSFORMS,
    ),
];

#[cfg(target_arch = "x86_64")]
const F32_KERNEL_COUNT: usize = 3;
#[cfg(not(target_arch = "x86_64"))]
const F32_KERNEL_COUNT: usize = 1;

/// The f32 kernel that runs for `isa` on this CPU.
pub fn kernel_for(isa: Isa) -> &'static F32Kernel {
    registry::select(&KERNELS, isa)
}

/// The register-tile shape and name of the kernel chosen for an ISA.
pub fn kernel_name(isa: Isa) -> &'static str {
    kernel_for(isa).info.name
}

impl F32Kernel {
    /// Runs the kernel's throughput probe for `iters` rounds; returns the FLOPs done, or
    /// `None` when this CPU cannot run the kernel.
    pub fn run_peak_probe(&self, iters: usize) -> Option<f64> {
        // SAFETY: the probe needs the kernel's features, which `is_runnable` just confirmed.
        self.info
            .is_runnable()
            .then(|| unsafe { (self.entry.peak)(iters) })
    }

    pub(crate) fn winograd_transforms(
        &self,
    ) -> (
        crate::winograd::InputTransform,
        crate::winograd::OutputTransform,
    ) {
        (self.entry.winograd_input, self.entry.winograd_output)
    }
}

/// The B operand (`K x N`, the weights) packed for one kernel: K cut into blocks of at most
/// `blocking.kc`, each block cut into micro-panels of NR columns stored k-major and zero-padded
/// to NR columns. Keeps the kernel line and the blocking it was packed for.
#[derive(Clone, Debug)]
pub struct PackedB {
    kernel: &'static F32Kernel,
    blocking: Blocking,
    k: usize,
    n: usize,
    /// `(k0, kc, offset)` of each K block in `data`.
    blocks: Vec<(usize, usize, usize)>,
    pub(crate) data: AlignedVec<f32>,
}

impl PackedB {
    /// Packs `b`, a row-major `K x N` matrix, for the kernel `isa` selects, default blocking.
    ///
    /// # Panics
    /// If `b.len() != k * n`, or if `isa` is not supported by this CPU.
    pub fn new(b: &[f32], k: usize, n: usize, isa: Isa) -> PackedB {
        assert!(isa.is_supported(), "ISA {isa} is not supported by this CPU");
        PackedB::with_kernel(b, k, n, kernel_for(isa), blocking::DEFAULT)
    }

    /// Packs `b` for a given kernel line and blocking (a plan's choice).
    ///
    /// # Panics
    /// If `b.len() != k * n`, if this CPU cannot run `kernel`, or if a blocking size is 0.
    pub fn with_kernel(
        b: &[f32],
        k: usize,
        n: usize,
        kernel: &'static F32Kernel,
        blocking: Blocking,
    ) -> PackedB {
        assert_eq!(b.len(), k * n, "B must be K x N");
        assert!(
            kernel.info.is_runnable(),
            "kernel {} cannot run on this CPU",
            kernel.info.name
        );
        assert!(
            blocking.kc > 0 && blocking.mc > 0 && blocking.nc > 0,
            "blocking sizes must be positive: {blocking:?}"
        );
        let (blocks, data) = pack_b(b, k, n, kernel.info.nr, blocking.kc);
        PackedB {
            kernel,
            blocking,
            k,
            n,
            blocks,
            data,
        }
    }

    /// Rows of B (the GEMM's K).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of B (the GEMM's N).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The ISA level of the kernel this packing is for.
    pub fn isa(&self) -> Isa {
        self.kernel.info.isa
    }

    /// The kernel line this packing is for.
    pub fn kernel(&self) -> &'static F32Kernel {
        self.kernel
    }

    /// The blocking this packing is for.
    pub fn blocking(&self) -> Blocking {
        self.blocking
    }

    /// Bytes held by the packed data.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }
}

/// `C[M, N] = epilogue(A · B)` with `A` from `a` (a matrix or an implicit im2col), `B` packed,
/// `C` row-major with row stride `ldc`. Runs on the current rayon pool.
///
/// # Panics
/// If the shapes or slice lengths do not fit (a bug in the caller, never bad user input).
pub fn sgemm_packed(a: &ASource<'_>, b: &PackedB, c: &mut [f32], ldc: usize, epi: &Epilogue<'_>) {
    (b.kernel.entry.gemm)(a, b, c, ldc, epi)
}

/// The plain triple loop every packed path is tested against (f64 accumulation):
/// `C = epilogue(A · B)` with `A` `M x K` (stride `lda`), `B` `K x N` row-major.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_naive(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue<'_>,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a[i * lda + p] as f64 * b[p * n + j] as f64;
            }
            let mut v = acc as f32;
            if let Some(bias) = epi.bias {
                v += bias[j];
            }
            if let Some((r, ldr)) = epi.residual {
                v += r[i * ldr + j];
            }
            if epi.relu {
                v = v.max(0.0);
            }
            c[i * ldc + j] = v;
        }
    }
}

/// A micro-kernel: computes an `rows x NR` tile (`rows <= MR`) of C from packed panels.
pub(crate) trait MicroKernel: Sync {
    /// Rows of the register tile (pixels).
    const MR: usize;
    /// Columns of the register tile (output channels), a multiple of the vector width.
    const NR: usize;
    /// `<isa>_f32_<MR>x<NR>`.
    const NAME: &'static str;

    /// `C[0..rows, 0..NR] (= or +=) A_panel · B_panel`, then the epilogue if given.
    ///
    /// # Safety
    /// - the CPU supports the kernel's ISA;
    /// - `a` holds `rows` rows of `kc` floats, row stride `lda` (a packed panel, `lda = kc`,
    ///   or the rows of a row-major A read where they are); `b` holds `kc * NR` floats
    ///   (k-major);
    /// - `c` addresses `rows` rows of `NR` writable floats with row stride `ldc`;
    /// - the epilogue's `bias` holds NR floats and `residual`, if not null, `rows` rows of NR
    ///   floats with stride `ldr`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        rows: usize,
        kc: usize,
        a: (*const f32, usize),
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        epi: Option<&TileEpilogue>,
    );
}

/// The epilogue of one tile, as pointers at the tile's first row and column.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileEpilogue {
    /// NR biases (null when there is no bias).
    pub bias: *const f32,
    /// The residual tile's first element (null when there is none).
    pub residual: *const f32,
    /// Row stride of the residual.
    pub ldr: usize,
    /// Clamp at zero.
    pub relu: bool,
}

#[cfg(test)]
mod tests;

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
mod pack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod simd;

pub use loops::ASource;
pub use pack::{im2col_nhwc, ConvGeometry};

use crate::cpu::Isa;
use pack::pack_b;

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

/// Cache-blocking constants, each named by the loop it cuts (see the module diagram).
pub mod blocking {
    /// Loop 4: K is cut into blocks of at most this many, so that a B micro-panel
    /// (KC x NR floats: 256 x 32 x 4 B = 32 KiB) stays in a 48 KiB L1 beside a slice of A.
    pub const KC: usize = 256;
    /// Loop 3: rows of A packed at once (MC x KC x 4 B = 144 x 256 x 4 = 144 KiB, in L2).
    /// A multiple of every kernel's MR (12, 6 and 4).
    pub const MC: usize = 144;
    /// Loop 5: columns of C per work item; 256 lets 2 threads share a 512-channel layer at batch 1.
    pub const NC: usize = 256;
}

/// The register-tile shape and name of the kernel chosen for an ISA.
pub fn kernel_name(isa: Isa) -> &'static str {
    match isa.f32_level() {
        Isa::Portable => scalar::ScalarKernel::NAME,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => simd::Avx2FmaKernel::NAME,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => simd::Avx512Kernel::NAME,
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni | Isa::Vnni | Isa::Avx512Bf16 | Isa::Amx => {
            unreachable!("f32_level maps the VNNI levels away")
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::ScalarKernel::NAME,
    }
}

fn nr_for(isa: Isa) -> usize {
    match isa.f32_level() {
        Isa::Portable => scalar::ScalarKernel::NR,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => simd::Avx2FmaKernel::NR,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => simd::Avx512Kernel::NR,
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni | Isa::Vnni | Isa::Avx512Bf16 | Isa::Amx => {
            unreachable!("f32_level maps the VNNI levels away")
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::ScalarKernel::NR,
    }
}

/// The B operand (`K x N`, the weights) packed for one ISA's micro-kernel: K cut into blocks of
/// at most [`blocking::KC`], each block cut into micro-panels of NR columns stored k-major and
/// zero-padded to NR columns.
#[derive(Clone, Debug)]
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    nr: usize,
    /// `(k0, kc, offset)` of each K block in `data`.
    blocks: Vec<(usize, usize, usize)>,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs `b`, a row-major `K x N` matrix, for `isa`'s micro-kernel.
    ///
    /// # Panics
    /// If `b.len() != k * n`, or if `isa` is not supported by this CPU.
    pub fn new(b: &[f32], k: usize, n: usize, isa: Isa) -> PackedB {
        assert_eq!(b.len(), k * n, "B must be K x N");
        assert!(isa.is_supported(), "ISA {isa} is not supported by this CPU");
        let nr = nr_for(isa);
        let (blocks, data) = pack_b(b, k, n, nr, blocking::KC);
        PackedB {
            isa,
            k,
            n,
            nr,
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

    /// The ISA whose kernel this packing is for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

/// `C[M, N] = epilogue(A · B)` with `A` from `a` (a matrix or an implicit im2col), `B` packed,
/// `C` row-major with row stride `ldc`. Runs on the current rayon pool.
///
/// # Panics
/// If the shapes or slice lengths do not fit (a bug in the caller, never bad user input).
pub fn sgemm_packed(a: &ASource<'_>, b: &PackedB, c: &mut [f32], ldc: usize, epi: &Epilogue<'_>) {
    match b.isa.f32_level() {
        Isa::Portable => loops::gemm::<scalar::ScalarKernel>(a, b, c, ldc, epi),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => loops::gemm::<simd::Avx2FmaKernel>(a, b, c, ldc, epi),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => loops::gemm::<simd::Avx512Kernel>(a, b, c, ldc, epi),
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni | Isa::Vnni | Isa::Avx512Bf16 | Isa::Amx => {
            unreachable!("f32_level maps the VNNI levels away")
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => loops::gemm::<scalar::ScalarKernel>(a, b, c, ldc, epi),
    }
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
    /// - `a` holds MR rows of `kc` floats (row-major, stride kc), `b` holds `kc * NR` floats (k-major);
    /// - `c` addresses `rows` rows of `NR` writable floats with row stride `ldc`;
    /// - the epilogue's `bias` holds NR floats and `residual`, if not null, `rows` rows of NR
    ///   floats with stride `ldr`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        rows: usize,
        kc: usize,
        a: *const f32,
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

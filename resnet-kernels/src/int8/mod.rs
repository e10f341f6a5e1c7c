//! INT8 GEMM: `u8 x s8 -> i32` with a fused requantising epilogue, in the Goto/BLIS shape of
//! [`crate::gemm`] (same loop nest, same runtime dispatch on [`Isa`], same implicit im2col).
//!
//! # Design note
//!
//! ## Number formats
//!
//! - **Weights** (B, `K x N`): `i8`, symmetric (zero point 0), one scale per output channel
//!   (column), quantised after BatchNorm folding, in `[-127, 127]`.
//! - **Activations** (A, `M x K`): `u8` with a per-tensor scale and zero point. In ResNet-18
//!   every convolution but the stem reads the output of a ReLU, so its zero point is 0 and the
//!   whole `[0, 255]` range holds information (an `s8` symmetric format would waste its negative
//!   half there). The stem's input (the normalised image) and the downsample outputs (no ReLU)
//!   are signed: they get a non-zero zero point, and that is where the column-sum correction
//!   below is needed.
//! - **Accumulators**: `i32`, exact (`K <= 4608` products of at most `255 x 128` each stay far
//!   below `2^31`).
//!
//! ## The `u8 x s8` trick and its column-sum correction
//!
//! `vpdpbusd` multiplies 4 unsigned bytes of A by 4 signed bytes of B and adds the 4 products to
//! an `i32` lane. So A must be unsigned: a real activation `x = s_x (q - z)` is stored as
//! `q in [0, 255]` with zero point `z`, and
//!
//! ```text
//! sum_k (q_ik - z) w_kj  =  sum_k q_ik w_kj  -  z * colsum_j,     colsum_j = sum_k w_kj
//! ```
//!
//! The kernel computes only the first term; the second is a per-column constant, folded once,
//! when the model is prepared, into the `i32` bias of the epilogue ([`PackedB8::column_sums`]).
//! (A symmetric `s8` activation scheme uses the same trick with `z = 128`: add 128 to make it
//! unsigned, subtract `128 * colsum`.) The im2col padding is the zero point `z`, the code of
//! the real value 0, so the correction is exact on the image border too.
//!
//! ## Kernels
//!
//! | ISA (`RESNET_ISA`) | kernel | tile MR x NR | instruction per 4 k | B packing | A packing |
//! |---|---|---|---|---|---|
//! | `amx` (AMX-INT8) | `amx_int8_i32_32x32` | 32 x 32 (2 x 2 tiles of 16 x 16 `i32`) | `tdpbusd` per 64 k | the `vnni` panels: a B tile row is one 64-byte half of a 128-byte group row | tiles of 16 rows x 64 bytes of the packed rows (K blocks padded to 64) |
//! | `vnni` (AVX-512 VNNI) | `avx512vnni_i32_12x32` | 12 x 32 (24 zmm accumulators) | `vpdpbusd zmm` | k-groups of 4 x 32 columns x 4 bytes | rows of `kc` bytes, broadcast 4 at a time |
//! | `avx512` (AVX-512 BW) | `avx512bw_i32_12x32` | 12 x 32 | 2 x (`vpmaddubsw` + `vpmaddwd`) + 2 `vpaddd` | same, each group twice: high and low weight parts | same |
//! | `avxvnni` (AVX-VNNI) | `avxvnni_i32_6x16` | 6 x 16 (12 ymm) | `vpdpbusd ymm` (VEX) | k-groups of 4 x 16 columns x 4 bytes | same |
//! | `avx2` | `avx2_i32_6x16` | 6 x 16 | 2 x (`vpmaddubsw` + `vpmaddwd`) + 2 `vpaddd` | as `avx512`, 16 columns | same |
//! | `portable` | `portable_i32_4x16` | 4 x 16 | scalar `i32` multiply-add: the twin | k-groups of 4 x 16 columns x 4 bytes | same |
//!
//! Each B micro-panel stores, for each group of 4 consecutive k, NR columns of 4 bytes, so one
//! vector load gives every lane its 4 weights; the 4 activation bytes of a row are broadcast as
//! one `i32`. K is zero-padded to a multiple of 4 (B's padding is 0, so A's is irrelevant).
//!
//! `vpmaddubsw` adds two `u8 x s8` products into an `i16` **with saturation**: `255 * 127 * 2`
//! does not fit. Without VNNI, each weight is therefore split when B is packed into
//! `w = 2h + l` with `h = w >> 1` in `[-64, 63]` and `l = w & 1` in `{0, 1}`; then
//! `vpmaddubsw(a, h)` (at most `2 * 255 * 64 = 32640`) and `vpmaddubsw(a, l)` never saturate, and
//! `vpmaddwd` by 2 and by 1 widens them to the exact `i32` sum `a·w`. Twice the instructions of
//! a plain `vpmaddubsw` kernel (which would need 7-bit weights: measured on ResNet-18 to cost
//! centred-logit error 0.046 -> 0.086 and top-1 agreement 92% -> 77%), but every kernel's `i32`
//! accumulators equal the scalar twin's exactly, for every `i8` weight.
//!
//! ## Where rounding and saturation happen
//!
//! Only in the epilogue, once per output element, after the exact `i32` sum:
//!
//! ```text
//! v = acc + bias_j                      i32, wrapping (cannot wrap for ResNet-18 ranges)
//! f = f32(v) * scale_j                  f32 multiply (round to nearest), scale_j = s_x s_w,j / s_y
//! f = f + f32(r - z_r) * res_scale      optional residual, separate mul and add (no FMA), res_scale = s_r / s_y
//! f = clamp(f, lo - z_y, 255 - z_y)     lo = z_y with ReLU, else 0: ReLU and u8 saturation in one
//! q = round_half_even(f) + z_y          cvtps2dq under the default MXCSR mode; `f32::round_ties_even` in the twin
//! ```
//!
//! Clamping before rounding equals clamping after (the bounds are integers), and keeps every
//! value inside `i32` range, so the SIMD conversion never meets its out-of-range case. The same
//! operations in the same order in every kernel make the `u8` outputs bit-exact across ISAs.
//! The bias is quantised with scale `s_x s_w,j` (round half even) when the model is prepared.
//!
//! ## Loops
//!
//! As in [`crate::gemm`]: loop 5 (NC columns) x loop 3 (MC rows) are the parallel work items;
//! loop 4 cuts K into blocks of the line's KC ([`blocking::KC`], a multiple of 4; the AMX line's
//! [`blocking::AMX`], a multiple of 64); loops 2 and 1 walk NR-wide B
//! micro-panels and MR-row A micro-panels. When K has several blocks, the `i32` partial sums of a
//! work item live in a per-thread scratch buffer and the epilogue runs on the last block.
//!
//! ## The other operations, on 8-bit data
//!
//! - The network input is quantised once (`f32` NCHW -> `u8` NHWC, [`quantize_nchw_to_nhwc_u8`]);
//!   from there no layer returns to f32 until the average pool.
//! - im2col reads `u8` and pads with the zero point, implicitly while packing A
//!   ([`ASource8::Conv`]), never materialised.
//! - Max-pool runs on the codes and is exact (quantisation is monotonic); the global average
//!   pool sums codes exactly in `u32` and dequantises once per channel.
//!
//! ## What runs where
//!
//! [`KERNELS`] is the family's table in the kernel registry ([`crate::registry`]): the kernel is
//! chosen once, when B is packed, as the last runnable line at or below the requested [`Isa`].
//! `vnni` needs AVX-512 F/BW/VNNI, `avxvnni` AVX2 + AVX-VNNI; `avx512` on a CPU without
//! AVX-512BW (Knights Landing) thus falls back to the AVX2 kernel. [`measure_peak_gops`] runs the
//! line's throughput probe like `crate::peak` does for FMAs. AMX-INT8 (`amx_int8_i32_32x32`,
//! [`crate::amx`]) is the `amx` line: 32 x 32 blocks of 2 x 2 tiles reading these same 32-column
//! panels; it runs only where `cpu::AmxState` is `Granted`. [`AMX_MODEL_KERNEL`] is the same
//! kernel on the software model of the tile instructions, outside the table (tests only).

pub(crate) mod direct;
pub(crate) mod loops;
mod ops;
mod pack;
pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;

pub use ops::{
    avg_pool_u8_nhwc, quantize_nchw_to_nhwc_u8, quantize_u8, requantize_scalar, round_half_even_i32,
};
pub use pack::im2col_nhwc_u8;

use crate::aligned::AlignedVec;
pub use crate::amx::{Frame, InPlaceLayout};
use crate::cpu::{CpuFeatures, Isa};
use crate::gemm::ConvGeometry;
use crate::registry::{self, Family, Kernel, KernelInfo};
pub use crate::tiling::Blocking;

/// Where the rows of A (`u8`) come from: a matrix, or the implicit im2col of an NHWC `u8` input
/// padded with the input's zero point (the code of 0.0).
pub type ASource8<'a> = crate::tiling::ASource<'a, u8>;

/// Cache-blocking constants, each named by the loop it cuts.
pub mod blocking {
    /// Loop 4: K is cut into blocks of at most this many bytes (a multiple of 4): a B
    /// micro-panel is then at most 768 x 32 = 24 KiB and stays in a 32 KiB L1 beside A's rows.
    /// ResNet-18's K of 576 fits one block; 1152, 2304 and 4608 take 2, 3 and 6.
    pub const KC: usize = 768;
    /// Loop 3: rows of A packed at once (144 x 768 B = 108 KiB, in L2). A multiple of every
    /// kernel's MR (12, 6 and 4).
    pub const MC: usize = 144;
    /// Loop 5: columns of C per work item (two items share a 512-channel layer at batch 1).
    pub const NC: usize = 256;

    /// The three as a [`super::Blocking`].
    pub const DEFAULT: super::Blocking = super::Blocking {
        kc: KC,
        mc: MC,
        nc: NC,
    };

    /// The AMX-INT8 kernel's blocking: its A and B tiles stream from L2 anyway (a step's 4 tile
    /// loads are 4 KiB), so a longer K block only saves work: on the im2col path the C block's
    /// store, the epilogue pass and the `i32` scratch round trip of each extra block; in place,
    /// a load and a store of the C tiles (measured on a Sapphire Rapids: docs/bf16-amx.md;
    /// 512 and 1024 bytes were no faster in place). MC a multiple of its 32 rows.
    pub const AMX: super::Blocking = super::Blocking {
        kc: 2304,
        mc: 128,
        nc: NC,
    };
}

/// The entry points of an INT8 kernel line.
#[derive(Debug)]
pub struct Int8Entry {
    /// The loop nest around this kernel.
    gemm: fn(&ASource8<'_>, &PackedB8, Output8<'_>),
    /// Copies of each 4-k group of B in a panel: 1, or 2 for the split weights `(h, l)`.
    b_parts: usize,
    /// The kernel's `K_ALIGN`: K blocks are padded to a multiple of it.
    k_align: usize,
    /// The kernel's `BLOCKING`, what [`Int8Kernel::default_blocking`] gives.
    blocking: Blocking,
    /// 12 independent chains of the kernel's 4-byte dot product for `iters` rounds; returns the
    /// multiply-accumulates done. Unsafe: the CPU must run the kernel.
    peak: unsafe fn(usize) -> f64,
    /// The kernel's `CONV_DIRECT`.
    conv_direct: Option<ConvDirect>,
}

/// An INT8 kernel line.
pub type Int8Kernel = Kernel<Int8Entry>;

/// A line's in-place convolution (see [`direct`]): `input` NHWC codes, `pad` their zero point,
/// C `u8` with row stride `ldc` (or in a [`Frame`]), requantised by `requant`. Called only by
/// [`conv_u8s8_in_place`], which checks that it applies and the sizes.
pub(crate) type ConvDirect = fn(
    &[u8],
    &ConvGeometry,
    u8,
    &PackedB8,
    (&mut [u8], usize, Option<Frame>),
    &Requant<'_>,
    InPlaceLayout,
);

const ONE_PART: &str = "K blocks of NR-wide micro-panels of 4-k groups (NR columns x 4 bytes)";
const TWO_PARTS: &str =
    "K blocks of NR-wide micro-panels of 4-k groups, each group twice: w >> 1, then w & 1";

/// The line of micro-kernel `K`.
const fn line<K: MicroKernel8>(
    isa: Isa,
    features: &'static str,
    runnable: fn() -> bool,
    peak: unsafe fn(usize) -> f64,
) -> Int8Kernel {
    Kernel {
        info: KernelInfo {
            name: K::NAME,
            family: Family::Int8,
            isa,
            mr: K::MR,
            nr: K::NR,
            packing: if K::B_PARTS == 2 { TWO_PARTS } else { ONE_PART },
            features,
            runnable,
        },
        entry: Int8Entry {
            gemm: loops::gemm::<K>,
            b_parts: K::B_PARTS,
            k_align: K::K_ALIGN,
            blocking: K::BLOCKING,
            peak,
            conv_direct: K::CONV_DIRECT,
        },
    }
}

/// The INT8 kernels, portable first (see [`crate::registry`]). One line per kernel.
pub static KERNELS: [Int8Kernel; INT8_KERNEL_COUNT] = [
    line::<scalar::ScalarKernel8>(Isa::Portable, "", || true, scalar::peak_portable),
    #[cfg(target_arch = "x86_64")]
    line::<simd::Avx2Kernel8>(
        Isa::Avx2,
        "avx2",
        || Isa::Avx2.is_supported(),
        simd::peak_avx2,
    ),
    #[cfg(target_arch = "x86_64")]
    line::<simd::AvxVnniKernel8>(
        Isa::AvxVnni,
        "avx2,avxvnni",
        || Isa::AvxVnni.is_supported(),
        simd::peak_avxvnni,
    ),
    #[cfg(target_arch = "x86_64")]
    line::<simd::Avx512BwKernel8>(
        Isa::Avx512,
        "avx512f,avx512bw",
        || Isa::Avx512.is_supported() && CpuFeatures::get().avx512bw,
        simd::peak_bw512,
    ),
    #[cfg(target_arch = "x86_64")]
    line::<simd::Avx512VnniKernel8>(
        Isa::Vnni,
        "avx512f,avx512bw,avx512vnni",
        || Isa::Vnni.is_supported(),
        simd::peak_vnni512,
    ),
    // Runnable only with the tile state granted (`AmxState::Granted`, part of `Isa::Amx`).
    #[cfg(target_arch = "x86_64")]
    line::<crate::amx::AmxKernel8<crate::amx::AmxHardware>>(
        Isa::Amx,
        "amx-tile,amx-int8,avx512f,avx512bw",
        || Isa::Amx.is_supported(),
        crate::amx::peak_int8_hardware,
    ),
];

/// The AMX-INT8 kernel of [`KERNELS`] running on the software model of the tile instructions
/// ([`crate::amx::AmxModel`]) instead of the CPU: for tests on machines without AMX (and to
/// compare the real kernel with, bit for bit, on machines with it). It is not a line of
/// [`KERNELS`], so no ISA, plan or selection can ever choose it; only code that names it runs
/// it (`PackedB8::with_kernel`).
pub static AMX_MODEL_KERNEL: Int8Kernel = line::<crate::amx::AmxKernel8<crate::amx::AmxModel>>(
    Isa::Amx,
    "",
    || true,
    crate::amx::peak_int8_model,
);

#[cfg(target_arch = "x86_64")]
const INT8_KERNEL_COUNT: usize = 6;
#[cfg(not(target_arch = "x86_64"))]
const INT8_KERNEL_COUNT: usize = 1;

/// The INT8 kernel that runs for `isa` on this CPU.
pub fn kernel_for(isa: Isa) -> &'static Int8Kernel {
    registry::select(&KERNELS, isa)
}

/// The INT8 kernel chosen for an ISA, as `<isa>_<acc>_<MR>x<NR>`.
pub fn kernel_name(isa: Isa) -> &'static str {
    kernel_for(isa).info.name
}

impl Int8Kernel {
    /// Whether this line can read a convolution's input in place ([`conv_u8s8_in_place`]): the
    /// AMX lines, whose tiles load strided rows straight from the activation.
    pub fn reads_in_place(&self) -> bool {
        self.entry.conv_direct.is_some()
    }

    /// The blocking this line packs with when no plan chooses one ([`blocking::DEFAULT`], or
    /// [`blocking::AMX`]).
    pub fn default_blocking(&self) -> Blocking {
        self.entry.blocking
    }

    /// Runs the kernel's throughput probe for `iters` rounds; returns the multiply-accumulates
    /// done, or `None` when this CPU cannot run the kernel.
    pub fn run_peak_probe(&self, iters: usize) -> Option<f64> {
        // SAFETY: the probe needs the kernel's features, which `is_runnable` just confirmed.
        self.info
            .is_runnable()
            .then(|| unsafe { (self.entry.peak)(iters) })
    }
}

/// The B operand (`K x N` signed bytes, the weights) packed for one ISA's INT8 micro-kernel:
/// K cut into blocks of at most the line's KC ([`Int8Kernel::default_blocking`] or a plan's),
/// each block cut into NR-wide micro-panels of
/// 4-k groups, zero-padded to a multiple of the kernel's K alignment (4, or 64 for AMX) in K and
/// of NR in N.
#[derive(Clone, Debug)]
pub struct PackedB8 {
    kernel: &'static Int8Kernel,
    blocking: Blocking,
    k: usize,
    n: usize,
    /// `(k0, kc, offset)` of each K block; `kc` is a multiple of the K alignment except
    /// possibly the last.
    blocks: Vec<(usize, usize, usize)>,
    pub(crate) data: AlignedVec<i8>,
    column_sums: Vec<i32>,
}

impl PackedB8 {
    /// Packs `b`, a row-major `K x N` matrix of signed bytes, for `isa`'s INT8 micro-kernel.
    ///
    /// # Panics
    /// If `b.len() != k * n`, or if `isa` is not supported by this CPU.
    pub fn new(b: &[i8], k: usize, n: usize, isa: Isa) -> PackedB8 {
        assert!(isa.is_supported(), "ISA {isa} is not supported by this CPU");
        let kernel = kernel_for(isa);
        PackedB8::with_kernel(b, k, n, kernel, kernel.default_blocking())
    }

    /// Packs `b` for a given kernel line and blocking (a plan's choice; `blocking.kc` is rounded
    /// down to a multiple of the kernel's K alignment, 4 or 64 for AMX, and is at least one).
    ///
    /// # Panics
    /// If `b.len() != k * n`, if this CPU cannot run `kernel`, or if a blocking size is too small.
    pub fn with_kernel(
        b: &[i8],
        k: usize,
        n: usize,
        kernel: &'static Int8Kernel,
        blocking: Blocking,
    ) -> PackedB8 {
        assert_eq!(b.len(), k * n, "B must be K x N");
        assert!(
            kernel.info.is_runnable(),
            "kernel {} cannot run on this CPU",
            kernel.info.name
        );
        let align = kernel.entry.k_align;
        let blocking = Blocking {
            kc: (blocking.kc / align * align).max(align),
            ..blocking
        };
        assert!(
            blocking.mc > 0 && blocking.nc > 0,
            "blocking sizes too small: {blocking:?}"
        );
        let split = kernel.entry.b_parts == 2;
        let (blocks, data) = pack::pack_b8(b, k, n, kernel.info.nr, blocking.kc, split, align);
        let mut column_sums = vec![0i32; n];
        for row in b.chunks_exact(n.max(1)).take(k) {
            for (s, &w) in column_sums.iter_mut().zip(row) {
                *s += w as i32;
            }
        }
        PackedB8 {
            kernel,
            blocking,
            k,
            n,
            blocks,
            data,
            column_sums,
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
    pub fn kernel(&self) -> &'static Int8Kernel {
        self.kernel
    }

    /// The blocking this packing is for.
    pub fn blocking(&self) -> Blocking {
        self.blocking
    }

    /// `sum_k B[k, j]` per column: times A's zero point, the correction to subtract from the
    /// accumulators (fold `-z_a * colsum_j` into [`Requant::bias`]).
    pub fn column_sums(&self) -> &[i32] {
        &self.column_sums
    }
}

/// A `u8` matrix used as a residual in the epilogue: real value `res_scale_to_out * (r - zero_point)`
/// in units of the output scale.
#[derive(Clone, Copy, Debug)]
pub struct Residual8<'a> {
    /// Shaped like C, row stride `ld`.
    pub data: &'a [u8],
    /// Row stride.
    pub ld: usize,
    /// The residual tensor's zero point.
    pub zero_point: i32,
    /// Its scale divided by the output's scale.
    pub scale: f32,
    /// Where its rows are when it is stored in a [`Frame`] (row `r` at [`Frame::row`]`(r)`,
    /// `ld == frame.ch`; read by the in-place path only); `None`: row `r` at `r x ld`.
    pub frame: Option<Frame>,
}

/// The requantising epilogue (see the module's design note for the exact order):
/// `q = clamp(round_half_even(f32(acc + bias_j) * scale_j [+ f32(r - z_r) * res_scale]) + z_y)`.
#[derive(Clone, Copy, Debug)]
pub struct Requant<'a> {
    /// One `i32` per column: the bias in accumulator units, minus `z_a * colsum_j`.
    pub bias: &'a [i32],
    /// One multiplier per column: `s_a * s_w,j / s_y`.
    pub scale: &'a [f32],
    /// Optional residual added before the clamp.
    pub residual: Option<Residual8<'a>>,
    /// The output's zero point.
    pub zero_point: u8,
    /// Clamp at the code of 0 (`zero_point`) instead of 0.
    pub relu: bool,
}

impl Requant<'_> {
    /// Panics unless a `u8` C of `m x n` with row stride `ldc` fits `c`, and the bias, scale and
    /// residual cover it (a bug in the caller).
    pub(crate) fn check_output(&self, c: &[u8], ldc: usize, m: usize, n: usize) {
        assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too small");
        assert!(
            self.bias.len() >= n && self.scale.len() >= n,
            "bias/scale too short"
        );
        match self.residual {
            Some(r @ Residual8 { frame: None, .. }) => assert!(
                r.ld >= n && r.data.len() >= (m - 1) * r.ld + n,
                "residual too small"
            ),
            Some(r @ Residual8 { frame: Some(f), .. }) => assert!(
                r.ld == f.ch && f.ch >= n && f.batch * f.h * f.w == m && r.data.len() >= f.len(),
                "the residual's frame does not hold C"
            ),
            None => {}
        }
    }
}

/// Where the results go.
#[derive(Debug)]
pub enum Output8<'a> {
    /// The raw `i32` accumulators `A · B`, row stride `ldc`.
    I32 {
        /// The matrix.
        c: &'a mut [i32],
        /// Row stride.
        ldc: usize,
    },
    /// Requantised `u8`, row stride `ldc`.
    U8 {
        /// The matrix.
        c: &'a mut [u8],
        /// Row stride.
        ldc: usize,
        /// The epilogue.
        requant: Requant<'a>,
    },
}

/// `C = A · B` (`i32`) or `C = requant(A · B)` (`u8`), with `A` from `a` (a matrix or an
/// implicit im2col) and `B` packed. Runs on the current rayon pool.
///
/// # Panics
/// If the shapes or slice lengths do not fit (a bug in the caller, never bad user input).
pub fn gemm_u8s8(a: &ASource8<'_>, b: &PackedB8, out: Output8<'_>) {
    // The packed path's tiles run across output rows: it cannot read a framed residual.
    if let Output8::U8 { requant, .. } = &out {
        assert!(
            requant.residual.is_none_or(|r| r.frame.is_none()),
            "a framed residual is read by the in-place path only"
        );
    }
    (b.kernel.entry.gemm)(a, b, out)
}

/// The layout [`conv_u8s8_in_place`] would read this convolution's input in, if its shape
/// suits one: [`InPlaceLayout::Padded`] (any stride, channels in whole 64-byte tile rows), else
/// [`InPlaceLayout::WindowRows`] (one kernel row's window in one tile row: the stem). The
/// kernel line and the packing must suit too: [`in_place_applies`].
pub fn in_place_layout(geometry: &ConvGeometry) -> Option<InPlaceLayout> {
    crate::amx::direct::layout_for::<u8>(geometry)
}

/// Whether [`conv_u8s8_in_place`] can compute this convolution with `b` in `layout`: its kernel
/// line reads A in place ([`Int8Kernel::reads_in_place`]), the shape suits, and B's K blocks
/// are whole tile steps (for [`InPlaceLayout::WindowRows`]: B from [`pack_window_rows`]).
pub fn in_place_applies(geometry: &ConvGeometry, b: &PackedB8, layout: InPlaceLayout) -> bool {
    b.kernel.reads_in_place()
        && match layout {
            InPlaceLayout::Padded => direct::applies(geometry, b),
            InPlaceLayout::Framed => geometry.stride == 1 && direct::applies(geometry, b),
            InPlaceLayout::WindowRows => {
                crate::amx::direct::window_rows_apply::<u8>(geometry.kernel, geometry.in_c)
                    && b.k == crate::amx::direct::window_rows_k::<u8>(geometry.kernel)
                    && b.blocks.iter().all(|&(_, kc, _)| kc.is_multiple_of(64))
            }
            // Nothing prepares an INT8 input so (the stem's is quantised first).
            InPlaceLayout::StridedRows => false,
        }
}

/// Packs `b` (`K x N` signed bytes, K in (kh, kw, c) order, a `kernel x kernel` convolution
/// of `in_c` channels) for [`conv_u8s8_in_place`] with [`InPlaceLayout::WindowRows`]: each
/// kernel row's bytes then zeros up to one 64-byte tile row (the column sums are unchanged).
///
/// # Panics
/// If the window does not fit a tile row, as [`PackedB8::with_kernel`] otherwise.
pub fn pack_window_rows(
    b: &[i8],
    kernel_size: usize,
    in_c: usize,
    n: usize,
    kernel: &'static Int8Kernel,
    blocking: Blocking,
) -> PackedB8 {
    assert!(crate::amx::direct::window_rows_apply::<u8>(
        kernel_size,
        in_c
    ));
    let rows = crate::amx::direct::window_rows_weights(b, kernel_size, in_c, n);
    let k = crate::amx::direct::window_rows_k::<u8>(kernel_size);
    PackedB8::with_kernel(&rows, k, n, kernel, blocking)
}

/// The convolution of `input` (NHWC codes, `pad` their zero point) by `b`, requantised into C
/// (row stride `ldc`, or, with a frame, row `r` at [`Frame::row`]`(r)` and the frame filled
/// with the output's zero point), with A read in place from a copy of the input in `layout`
/// instead of packed as an im2col ([`direct`]). Bit-identical to [`gemm_u8s8`] on [`ASource8::Conv`] (integer sums; for
/// [`InPlaceLayout::WindowRows`] with B packed as usual).
///
/// # Panics
/// If [`in_place_applies`] does not hold, or on the size mismatches [`gemm_u8s8`] refuses.
#[allow(clippy::too_many_arguments)]
pub fn conv_u8s8_in_place(
    input: &[u8],
    geometry: &ConvGeometry,
    pad: u8,
    b: &PackedB8,
    (c, ldc, out_frame): (&mut [u8], usize, Option<Frame>),
    requant: &Requant<'_>,
    layout: InPlaceLayout,
) {
    assert!(
        in_place_applies(geometry, b, layout),
        "{} cannot read this convolution in place ({layout:?}): {geometry:?}",
        b.kernel.info.name
    );
    let (m, n) = (geometry.m(), b.n);
    if m == 0 || n == 0 {
        return;
    }
    crate::amx::direct::check_input_len::<u8>(geometry, layout, input.len());
    requant.check_output(c, ldc, m, n);
    if let Some(f) = out_frame {
        assert!(
            f.ch == n && ldc == n && f.batch * f.h * f.w == m,
            "the frame does not hold C"
        );
        // Checks the length too; the frame holds the output's code of 0.0, what the next
        // layer pads with. The epilogue writes every image pixel.
        f.clear(c, requant.zero_point);
    }
    let direct = b.kernel.entry.conv_direct.expect("checked above");
    direct(
        input,
        geometry,
        pad,
        b,
        (c, ldc, out_frame),
        requant,
        layout,
    )
}

/// The plain triple loop every packed path is tested against: `C[i, j] = sum_k A[i, k] B[k, j]`
/// in `i32`, `A` `M x K` with stride `lda`, `B` `K x N` row-major, `C` row stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8s8_naive(
    m: usize,
    n: usize,
    k: usize,
    a: &[u8],
    lda: usize,
    b: &[i8],
    c: &mut [i32],
    ldc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            c[i * ldc + j] = (0..k)
                .map(|p| a[i * lda + p] as i32 * b[p * n + j] as i32)
                .sum();
        }
    }
}

/// A micro-kernel: an `rows x NR` tile (`rows <= MR`) of `A_panel · B_panel` in `i32`.
pub(crate) trait MicroKernel8: Sync {
    /// Rows of the register tile (pixels).
    const MR: usize;
    /// Columns of the register tile (output channels).
    const NR: usize;
    /// `<isa>_i32_<MR>x<NR>`.
    const NAME: &'static str;
    /// Copies of each 4-k group of B in a panel: 1, or 2 for the split weights `(h, l)`.
    const B_PARTS: usize;
    /// K blocks are zero-padded to a multiple of this (bytes, a multiple of 4) when B is packed,
    /// and A's packed rows are as wide: 4 for the vector kernels (one `vpdpbusd` group), 64 for
    /// AMX (one tile row), which thus never meets a K remainder.
    const K_ALIGN: usize = 4;
    /// The line's blocking when no plan chooses one.
    const BLOCKING: Blocking = blocking::DEFAULT;
    /// A convolution path that reads A in place instead of packing an im2col (the AMX lines:
    /// [`direct`]); `None` for the kernels that need packed A panels.
    const CONV_DIRECT: Option<ConvDirect> = None;
    /// Whether the packed loops fetch the item's next K block of B into L2 as the current one
    /// runs ([`crate::tiling::NextBlockFetch`]): the AMX line, where it was measured.
    const FETCHES_NEXT_B_BLOCK: bool = false;

    /// `acc = A_panel · B_panel (+ acc_mem if accumulate)`, then either stored as `i32` to
    /// `acc_mem` (`out` is `None`) or requantised and stored as `u8` by `out`.
    ///
    /// # Safety
    /// - the CPU supports the kernel's ISA;
    /// - `a` holds MR rows of `kc4` bytes (row stride `kc4`, a multiple of `K_ALIGN`), `b`
    ///   holds `kc4 * NR * B_PARTS` bytes in 4-k groups;
    /// - `acc` addresses `rows` rows of NR `i32` with stride `ld_acc` (readable if `accumulate`,
    ///   writable if `out` is `None`; unused otherwise and may then be null);
    /// - `out`'s pointers address `rows` rows of NR elements (NR biases and scales).
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        rows: usize,
        kc4: usize,
        a: *const u8,
        b: *const i8,
        acc: *mut i32,
        ld_acc: usize,
        accumulate: bool,
        out: Option<&TileRequant>,
    );
}

/// The epilogue of one tile, as pointers at the tile's first row and column.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileRequant {
    pub bias: *const i32,
    pub scale: *const f32,
    /// The residual tile's first element (null when there is none).
    pub residual: *const u8,
    pub ldr: usize,
    pub res_zero_point: i32,
    pub res_scale: f32,
    pub zero_point: i32,
    /// `lo - z_y` and `255 - z_y`, the clamp bounds before rounding.
    pub lo: f32,
    pub hi: f32,
    pub c: *mut u8,
    pub ldc: usize,
}

#[cfg(test)]
mod tests;

/// The machine's measured INT8 peak in GOP/s (2 ops per multiply-accumulate) for the kernel
/// `isa` selects (its line's probe: `vpdpbusd`, or `vpmaddubsw` + `vpmaddwd` + `vpaddd`): 12
/// independent chains on every thread of the current rayon pool at once, best of 3 per thread,
/// summed.
pub fn measure_peak_gops(isa: Isa) -> f64 {
    let kernel = kernel_for(isa);
    crate::peak::pool_rate_g2(|iters| kernel.run_peak_probe(iters), 2_000_000)
}

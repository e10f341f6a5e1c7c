//! bf16 GEMM: `bf16 x bf16 -> f32` with a fused epilogue (bias, residual, ReLU) that writes
//! bf16 (or f32), in the Goto/BLIS shape of [`crate::gemm`] and [`crate::int8`] (same loop
//! nest, same implicit im2col, same runtime dispatch on [`Isa`]).
//!
//! # Number format and arithmetic
//!
//! bfloat16 is the top half of an IEEE single: 1 sign bit, 8 exponent bits, 7 mantissa bits.
//! Widening to f32 is exact (a 16-bit shift); narrowing rounds, here always as the
//! `vcvtneps2bf16` instruction does ([`Bf16::from_f32`], the scalar twin of it):
//! round to nearest, ties to even; NaN stays a (quiet) NaN; f32 denormals become a signed zero.
//!
//! The product of two bf16 values has at most 16 significant bits, so it is exact in f32; only
//! the sums round. `vdpbf16ps` (AVX512-BF16) and `tdpbf16ps` (AMX-BF16) multiply pairs of
//! consecutive k and add both products to an f32 lane. The scalar twin ([`scalar`]) defines the
//! order as the Intel SDM's pseudo-code writes it: per k-pair, `acc += a[2g+1] b[2g+1]`, then
//! `acc += a[2g] b[2g]`, in f32 with bf16 denormal inputs read as zero. Hardware may keep more
//! precision between the two adds, so kernels are compared with the twin within the f32
//! summation bound, not bit for bit.
//!
//! # Epilogue (one place, the same order in every kernel)
//!
//! ```text
//! v = sum (+ the partial sums of earlier K blocks)       f32
//! v = v + bias[j]                                         f32 add
//! v = v + f32(residual[i, j])                            residual is bf16 (exact widening)
//! v = v > 0 ? v : +0                                      ReLU (maxps semantics: NaN -> 0)
//! out = bf16_rne(v)  or  out = v                          bf16 or f32 output
//! ```
//!
//! # Kernels
//!
//! | ISA (`RESNET_ISA`) | kernel | tile MR x NR | instruction per 2 k | B packing | A packing |
//! |---|---|---|---|---|---|
//! | `avx512bf16` | `avx512bf16_f32_12x32` | 12 x 32 (24 zmm accumulators) | `vdpbf16ps zmm` | k-pairs: per pair, 32 columns x 2 bf16 (128 B) | rows of `kc` bf16, broadcast 2 at a time |
//! | `amx` (AMX-BF16) | `amx_bf16_f32_32x32` | 32 x 32 (2 x 2 tiles of 16 x 16 f32) | `tdpbf16ps` per 32 k | the same 32-column panels: a B tile row is one 64-byte half of a 128-byte pair row | tiles of 16 rows x 32 bf16 of the packed rows |
//! | below `avx512bf16` | `portable_bf16_4x16` | 4 x 16 | scalar f32 multiply-add: the twin | k-pairs: per pair, 16 columns x 2 bf16 | same |
//!
//! The AMX-BF16 kernel ([`crate::amx`]) reads the same 32-column k-pair panels (a 64-byte half
//! of each 128-byte row is one B tile row), so one packing serves both.

pub(crate) mod direct;
mod loops;
mod pack;
pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;

pub use crate::amx::{Frame, InPlaceLayout};
pub use loops::ASourceBf16;
pub use pack::im2col_nhwc_bf16;

use crate::aligned::AlignedVec;
use crate::cpu::Isa;
use crate::gemm::ConvGeometry;
use crate::registry::{self, Family, Kernel, KernelInfo};
use crate::tiling::Blocking;

/// A bfloat16 value, as its bit pattern (the top 16 bits of an IEEE single).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Zero.
    pub const ZERO: Bf16 = Bf16(0);
    /// Negative infinity.
    pub const NEG_INFINITY: Bf16 = Bf16(0xFF80);

    /// Rounds `x` as `vcvtneps2bf16` does: to nearest, ties to even; NaN to a quiet NaN with
    /// the same sign and top payload bits; an f32 denormal to a zero of its sign.
    #[inline(always)]
    pub fn from_f32(x: f32) -> Bf16 {
        let b = x.to_bits();
        if x.is_nan() {
            return Bf16((b >> 16) as u16 | 0x0040);
        }
        if b & 0x7F80_0000 == 0 {
            return Bf16((b >> 16) as u16 & 0x8000);
        }
        let lsb = (b >> 16) & 1;
        Bf16((b.wrapping_add(0x7FFF + lsb) >> 16) as u16)
    }

    /// The exact f32 value.
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }

    /// The value as the dot-product instructions read it: a denormal is zero.
    #[inline(always)]
    pub(crate) fn to_f32_daz(self) -> f32 {
        if self.0 & 0x7F80 == 0 {
            0.0
        } else {
            self.to_f32()
        }
    }

    /// The bits with a negative value's magnitude flipped: as signed 16-bit integers these
    /// keys are in the values' numeric order (`-0.0` just below `+0.0`). Its own inverse.
    #[inline(always)]
    fn signed_order_key(self) -> Bf16 {
        let magnitude_mask = (((self.0 as i16) >> 15) as u16) & 0x7FFF;
        Bf16(self.0 ^ magnitude_mask)
    }
}

impl crate::pool::PoolValue for Bf16 {
    /// The key of negative infinity.
    const LOWEST_KEY: Bf16 = Bf16(0xFF80 ^ 0x7FFF);
    #[inline(always)]
    fn to_key(self) -> Bf16 {
        self.signed_order_key()
    }
    #[inline(always)]
    fn value_of_key(self) -> Bf16 {
        self.signed_order_key()
    }
    #[inline(always)]
    fn max_key(self, other: Bf16) -> Bf16 {
        Bf16((self.0 as i16).max(other.0 as i16) as u16)
    }
    const WIDE: crate::pool::WideKeys = crate::pool::WideKeys::SignedOrder16 {
        lowest: Self::LOWEST_KEY.0,
    };
}

/// Rounds every value of `src` into `dst` with [`Bf16::from_f32`] (`vcvtneps2bf16` 16 at a
/// time where the CPU has AVX512-BF16; bit-identical either way).
///
/// # Panics
/// If the lengths differ.
pub fn f32_to_bf16(src: &[f32], dst: &mut [Bf16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_bf16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512Bf16.is_supported() {
        // SAFETY: AVX512-BF16 is supported (checked above); the lengths are equal (asserted).
        unsafe { simd::f32_to_bf16_avx512bf16(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = Bf16::from_f32(s);
    }
}

/// The network input, NCHW `f32`, to NHWC bf16 (each value as [`f32_to_bf16`] rounds it):
/// [`crate::layout::nchw_to_nhwc_with`] with that conversion. For three channels on a CPU with
/// AVX512-BF16, each run of 32 pixels is converted and interleaved in registers (three
/// `vcvtne2ps2bf16`, then permutes): the per-channel scatter of the generic path took 42 us of
/// a 2.3 ms pass at batch 1 on the Xeon model 167 (463 us at batch 8).
///
/// # Panics
/// If the lengths differ from `batch * c * hw`.
pub fn nchw_to_nhwc_bf16(input: &[f32], batch: usize, c: usize, hw: usize, out: &mut [Bf16]) {
    #[cfg(target_arch = "x86_64")]
    if c == 3 && Isa::Avx512Bf16.is_supported() {
        crate::layout::nchw_to_nhwc_segments(input, batch, c, hw, out, |image, p0, seg| {
            nhwc_segment_bf16(image, hw, p0, seg)
        });
        return;
    }
    crate::layout::nchw_to_nhwc_with(input, batch, c, hw, out, f32_to_bf16);
}

/// Pixels `p0..` of one NCHW image (`image`: its `c` planes of `hw` pixels) into `seg` (NHWC,
/// `seg.len() / c` pixels), rounded as [`f32_to_bf16`] rounds: three channels interleaved in
/// registers where the CPU has AVX512-BF16, the rest converted per channel and scattered.
fn nhwc_segment_bf16(image: &[f32], hw: usize, p0: usize, seg: &mut [Bf16]) {
    let c = image.len() / hw;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if c == 3 && Isa::Avx512Bf16.is_supported() {
        let planes = [0, 1, 2].map(|ch| &image[ch * hw + p0..][..seg.len() / 3]);
        // SAFETY: AVX512-BF16 is supported (checked above); each plane holds the segment's
        // pixels, and `seg` three values per pixel.
        done = unsafe { simd::interleave3_f32_to_bf16(planes, seg) };
    }
    if c * done < seg.len() {
        let rest = &mut seg[c * done..];
        crate::layout::convert_and_scatter(image, hw, p0 + done, rest, &f32_to_bf16);
    }
}

/// The stem's input for [`conv_bf16_in_place`] with [`InPlaceLayout::StridedRows`], made in
/// `out` straight from the NCHW f32 batch `input` (`geometry`'s images, rounded to bf16 as
/// [`nchw_to_nhwc_bf16`] rounds): the padded copy, rows split by their parity, that
/// [`InPlaceLayout::WindowRows`] otherwise makes from the NHWC bf16 input. One pass instead of
/// two: the conversion wrote the NHWC input, which the copy then read again (at batch 8 on
/// the Xeon model 167, 240 us for the conversion and 4 x 44 us for the copies).
///
/// Returns whether every value rounded to a finite bf16. Where one did not (an infinity or a
/// NaN, or an f32 above bf16's largest), `out` must not be used: the window-rows path makes its
/// windows from the NHWC input instead (a NaN beside a window would turn its zero products
/// into NaN).
///
/// # Panics
/// If `input` is not `geometry`'s batch of NCHW images.
pub fn window_rows_input_bf16(
    input: &[f32],
    geometry: &ConvGeometry,
    out: &mut AlignedVec<Bf16>,
) -> bool {
    let (c, h, w) = (geometry.in_c, geometry.in_h, geometry.in_w);
    assert_eq!(
        input.len(),
        geometry.batch * c * h * w,
        "input is not [N, C, H, W]"
    );
    crate::amx::direct::strided_rows_input(geometry, Bf16::ZERO, out, |image, y, row| {
        nhwc_segment_bf16(&input[image * c * h * w..][..c * h * w], h * w, y * w, row);
        finite_bf16(row)
    })
}

/// Whether every value is finite (all-ones exponents are the infinities and NaNs: the largest
/// magnitude below them is finite). A max reduction vectorises (an early-exit scan does not).
pub(crate) fn finite_bf16(values: &[Bf16]) -> bool {
    values.iter().map(|v| v.0 & 0x7FFF).max().unwrap_or(0) < 0x7F80
}

/// Widens every value of `src` into `dst` (exact).
///
/// # Panics
/// If the lengths differ.
pub fn bf16_to_f32(src: &[Bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Global average pool of an NHWC bf16 tensor to f32 `[N, C]`: sums in f32, then one multiply.
pub fn avg_pool_bf16_nhwc(input: &[Bf16], batch: usize, hw: usize, c: usize, out: &mut [f32]) {
    assert_eq!(input.len(), batch * hw * c);
    assert_eq!(out.len(), batch * c);
    for n in 0..batch {
        let dst = &mut out[n * c..][..c];
        dst.fill(0.0);
        for p in 0..hw {
            for (d, &s) in dst.iter_mut().zip(&input[(n * hw + p) * c..][..c]) {
                *d += s.to_f32();
            }
        }
        let inv = 1.0 / hw as f32;
        dst.iter_mut().for_each(|d| *d *= inv);
    }
}

/// Cache-blocking constants, each named by the loop it cuts.
pub mod blocking {
    /// Loop 4: K is cut into blocks of at most this many (a multiple of 32, the AMX-BF16 tile
    /// depth): a 32-column B micro-panel is then at most 384 x 32 x 2 B = 24 KiB, in L1 beside
    /// A's rows. ResNet-18's K of 576 takes 2 blocks, 1152 3, 2304 6, 4608 12.
    pub const KC: usize = 384;
    /// Loop 4 for the AMX-BF16 kernel, whose A and B tiles stream from L2 anyway (a step's 4
    /// tile loads are 4 KiB): each extra K block costs a load and a store of the C tiles (the
    /// sums continue in them). Measured on a Sapphire Rapids (docs/bf16-amx.md): fastest against
    /// 384 and 2304 when extra blocks also cost an epilogue pass, and 256 or 512 (which keep a
    /// B panel in L1) were no faster once they did not.
    pub const AMX_KC: usize = 1152;
    /// Loop 3: rows of A packed at once (96 x 384 x 2 B = 72 KiB, in L2). A multiple of every
    /// kernel's MR (12, 4 and the AMX kernels' 32).
    pub const MC: usize = 96;
    /// Loop 5: columns of C per work item (two items share a 512-channel layer at batch 1).
    pub const NC: usize = 256;
}

/// The entry points of a bf16 kernel line.
#[derive(Debug)]
pub struct Bf16Entry {
    /// The loop nest around this kernel.
    gemm: fn(&ASourceBf16<'_>, &PackedBBf16, OutputBf16<'_>, &EpilogueBf16<'_>),
    /// The kernel's blocking when no plan chooses one (loop 4's K block from its `KC`, loops 3
    /// and 5 from [`blocking::MC`] and [`blocking::NC`]).
    blocking: Blocking,
    /// Independent chains of the kernel's bf16 dot product for `iters` rounds; returns the
    /// multiply-adds done. Unsafe: the CPU must run the kernel.
    peak: unsafe fn(usize) -> f64,
    /// The kernel's `CONV_DIRECT`.
    conv_direct: Option<ConvDirectBf16>,
}

/// A line's in-place convolution (see [`direct`]): `input` NHWC bf16, C and its epilogue as for
/// [`gemm_bf16`]. Called only by [`conv_bf16_in_place`], which checks that it applies and the
/// sizes.
pub(crate) type ConvDirectBf16 =
    fn(&[Bf16], &ConvGeometry, &PackedBBf16, OutputBf16<'_>, &EpilogueBf16<'_>, InPlaceLayout);

/// A bf16 kernel line.
pub type Bf16Kernel = Kernel<Bf16Entry>;

const PAIRS: &str =
    "K blocks (padded to 32) of NR-wide micro-panels of k-pairs (NR columns x 2 bf16, VNNI-2)";

/// The line of micro-kernel `K`.
const fn line<K: MicroKernelBf16>(
    isa: Isa,
    features: &'static str,
    runnable: fn() -> bool,
    peak: unsafe fn(usize) -> f64,
) -> Bf16Kernel {
    Kernel {
        info: KernelInfo {
            name: K::NAME,
            family: Family::Bf16,
            isa,
            mr: K::MR,
            nr: K::NR,
            packing: PAIRS,
            features,
            runnable,
        },
        entry: Bf16Entry {
            gemm: loops::gemm::<K>,
            blocking: Blocking {
                kc: K::KC,
                mc: blocking::MC,
                nc: blocking::NC,
            },
            peak,
            conv_direct: K::CONV_DIRECT,
        },
    }
}

/// The bf16 kernels, portable first (see [`crate::registry`]). One line per kernel.
pub static KERNELS: [Bf16Kernel; BF16_KERNEL_COUNT] = [
    line::<scalar::ScalarKernelBf16>(Isa::Portable, "", || true, scalar::peak_portable),
    #[cfg(target_arch = "x86_64")]
    line::<simd::Avx512Bf16Kernel>(
        Isa::Avx512Bf16,
        "avx512f,avx512bw,avx512bf16",
        || Isa::Avx512Bf16.is_supported(),
        simd::peak_avx512bf16,
    ),
    // Runnable only with the tile state granted (`AmxState::Granted`, part of `Isa::Amx`).
    #[cfg(target_arch = "x86_64")]
    line::<crate::amx::AmxKernelBf16<crate::amx::AmxHardware>>(
        Isa::Amx,
        "amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16",
        || Isa::Amx.is_supported(),
        crate::amx::peak_bf16_hardware,
    ),
];

/// The AMX-BF16 kernel of [`KERNELS`] running on the software model of the tile instructions
/// ([`crate::amx::AmxModel`]): for tests where the CPU has no AMX. Not a line of [`KERNELS`],
/// so no ISA or selection can choose it; only code that names it runs it.
pub static AMX_MODEL_KERNEL: Bf16Kernel = line::<crate::amx::AmxKernelBf16<crate::amx::AmxModel>>(
    Isa::Amx,
    "",
    || true,
    crate::amx::peak_bf16_model,
);

#[cfg(target_arch = "x86_64")]
const BF16_KERNEL_COUNT: usize = 3;
#[cfg(not(target_arch = "x86_64"))]
const BF16_KERNEL_COUNT: usize = 1;

/// The bf16 kernel that runs for `isa` on this CPU.
pub fn kernel_for(isa: Isa) -> &'static Bf16Kernel {
    registry::select(&KERNELS, isa)
}

/// The bf16 kernel chosen for an ISA, as `<isa>_<acc>_<MR>x<NR>`.
pub fn kernel_name(isa: Isa) -> &'static str {
    kernel_for(isa).info.name
}

impl Bf16Kernel {
    /// Whether this line can read a convolution's input in place ([`conv_bf16_in_place`]): the
    /// AMX lines.
    pub fn reads_in_place(&self) -> bool {
        self.entry.conv_direct.is_some()
    }

    /// The blocking this line packs with when no plan chooses one.
    pub fn default_blocking(&self) -> Blocking {
        self.entry.blocking
    }

    /// Runs the kernel's throughput probe for `iters` rounds; returns the multiply-adds done,
    /// or `None` when this CPU cannot run the kernel.
    pub fn run_peak_probe(&self, iters: usize) -> Option<f64> {
        // SAFETY: the probe needs the kernel's features, which `is_runnable` just confirmed.
        self.info
            .is_runnable()
            .then(|| unsafe { (self.entry.peak)(iters) })
    }
}

/// The bf16 peak in GFLOP/s (2 per multiply-add) of the kernel `isa` selects (its line's probe:
/// `tdpbf16ps`, `vdpbf16ps` or the scalar twin), on every thread of the current rayon pool at
/// once, best of 3 per thread, summed. What `bench` reports the bf16 backend's "% peak" of.
pub fn measure_peak_gflops(isa: Isa) -> f64 {
    let kernel = kernel_for(isa);
    crate::peak::pool_rate_g2(|iters| kernel.run_peak_probe(iters), 200_000)
}

/// The B operand (`K x N` bf16, the weights) packed for one ISA's bf16 micro-kernel: K cut into
/// blocks of at most the kernel's KC ([`blocking::KC`], or [`blocking::AMX_KC`]), each block cut into NR-wide micro-panels of k-pairs,
/// zero-padded to an even K and a multiple of NR columns.
#[derive(Clone, Debug)]
pub struct PackedBBf16 {
    kernel: &'static Bf16Kernel,
    k: usize,
    n: usize,
    /// `(k0, kc, offset)` of each K block; `kc` is a multiple of 32 except possibly the last.
    pub(crate) blocks: Vec<(usize, usize, usize)>,
    pub(crate) data: AlignedVec<Bf16>,
    /// The blocking the loops run with (`kc` shaped `blocks`).
    pub(crate) blocking: Blocking,
}

impl PackedBBf16 {
    /// Packs `b`, a row-major `K x N` bf16 matrix, for `isa`'s bf16 micro-kernel.
    ///
    /// # Panics
    /// If `b.len() != k * n`, or if `isa` is not supported by this CPU.
    pub fn new(b: &[Bf16], k: usize, n: usize, isa: Isa) -> PackedBBf16 {
        assert!(isa.is_supported(), "ISA {isa} is not supported by this CPU");
        let kernel = kernel_for(isa);
        PackedBBf16::with_kernel(b, k, n, kernel, kernel.default_blocking())
    }

    /// Packs `b` for a given kernel line and blocking (the line's
    /// [`Bf16Kernel::default_blocking`] or a plan's; `blocking.kc` is rounded down to a multiple
    /// of 32, the tile depth, and at least 32).
    ///
    /// # Panics
    /// If `b.len() != k * n`, if this CPU cannot run `kernel`, or if a blocking size is zero.
    pub fn with_kernel(
        b: &[Bf16],
        k: usize,
        n: usize,
        kernel: &'static Bf16Kernel,
        blocking: Blocking,
    ) -> PackedBBf16 {
        assert_eq!(b.len(), k * n, "B must be K x N");
        assert!(
            kernel.info.is_runnable(),
            "kernel {} cannot run on this CPU",
            kernel.info.name
        );
        assert!(
            blocking.mc > 0 && blocking.nc > 0,
            "blocking sizes too small: {blocking:?}"
        );
        let blocking = Blocking {
            kc: (blocking.kc / 32 * 32).max(32),
            ..blocking
        };
        let (blocks, data) = pack::pack_b_pairs(b, k, n, kernel.info.nr, blocking.kc);
        PackedBBf16 {
            kernel,
            k,
            n,
            blocks,
            data,
            blocking,
        }
    }

    /// The blocking this packing is for.
    pub fn blocking(&self) -> Blocking {
        self.blocking
    }

    /// Rows of B (the GEMM's K).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of B (the GEMM's N).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The kernel line this packing is for.
    pub fn kernel(&self) -> &'static Bf16Kernel {
        self.kernel
    }

    /// Columns of a micro-panel.
    pub(crate) fn nr(&self) -> usize {
        self.kernel.info.nr
    }

    /// Bytes of packed weights.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// What happens to each f32 sum before it is stored (see the module's epilogue order).
#[derive(Clone, Copy, Debug, Default)]
pub struct EpilogueBf16<'a> {
    /// One value per column of C (the folded BatchNorm shift of each output channel).
    pub bias: Option<&'a [f32]>,
    /// A bf16 matrix shaped like C, with its own row stride (the skip connection).
    pub residual: Option<(&'a [Bf16], usize)>,
    /// Where the residual's rows are when it is stored in a [`Frame`] (row `r` at
    /// [`Frame::row`]`(r)`, the stride `frame.ch`; read by the in-place path only); `None`: row
    /// `r` at `r x` its stride.
    pub residual_frame: Option<Frame>,
    /// Clamp negatives (and NaN) to +0.
    pub relu: bool,
}

/// Where the results go.
#[derive(Debug)]
pub enum OutputBf16<'a> {
    /// bf16, rounded to nearest even, row stride `ldc`.
    Bf16 {
        /// The matrix.
        c: &'a mut [Bf16],
        /// Row stride.
        ldc: usize,
    },
    /// f32, row stride `ldc`.
    F32 {
        /// The matrix.
        c: &'a mut [f32],
        /// Row stride.
        ldc: usize,
    },
    /// bf16 into a [`Frame`]: row `r` of C (output pixel `r`, row-major over the batch) is
    /// stored at framed pixel [`Frame::row`]`(r)`, `frame.ch` values per pixel; the frame and
    /// its slack are zeroed. Only the in-place path ([`conv_bf16_in_place`]) writes it, so
    /// that the next stride-1 layer reads it with [`InPlaceLayout::Framed`].
    Framed {
        /// The framed buffer ([`Frame::len`] values at least).
        c: &'a mut [Bf16],
        /// Its layout: the output's images, height, width and channels (N).
        frame: Frame,
    },
}

/// `C = epilogue(A · B)` with `A` from `a` (a bf16 matrix or an implicit im2col), `B` packed,
/// f32 accumulation. Runs on the current rayon pool.
///
/// # Panics
/// If the shapes or slice lengths do not fit (a bug in the caller, never bad user input).
pub fn gemm_bf16(a: &ASourceBf16<'_>, b: &PackedBBf16, out: OutputBf16<'_>, epi: &EpilogueBf16) {
    // The packed path's tiles run across output rows: it cannot skip the frame's pixels.
    assert!(
        !matches!(out, OutputBf16::Framed { .. }) && epi.residual_frame.is_none(),
        "a framed output or residual is read and written by the in-place path only"
    );
    (b.kernel.entry.gemm)(a, b, out, epi)
}

/// The layout [`conv_bf16_in_place`] would read this convolution's input in, if its shape
/// suits one: [`InPlaceLayout::Padded`] (any stride, channels in whole 64-byte tile rows of 32
/// bf16), else [`InPlaceLayout::WindowRows`] (one kernel row's window in one tile row).
pub fn in_place_layout(geometry: &ConvGeometry) -> Option<InPlaceLayout> {
    crate::amx::direct::layout_for::<Bf16>(geometry)
}

/// Whether [`conv_bf16_in_place`] can compute this convolution with `b` in `layout`: its kernel
/// line reads A in place ([`Bf16Kernel::reads_in_place`]), the shape suits, and B's K blocks
/// are whole tile steps (for [`InPlaceLayout::WindowRows`]: B from [`pack_window_rows`]).
pub fn in_place_applies(geometry: &ConvGeometry, b: &PackedBBf16, layout: InPlaceLayout) -> bool {
    b.kernel.reads_in_place()
        && match layout {
            InPlaceLayout::Padded => direct::applies(geometry, b),
            InPlaceLayout::Framed => geometry.stride == 1 && direct::applies(geometry, b),
            InPlaceLayout::WindowRows | InPlaceLayout::StridedRows => {
                crate::amx::direct::window_rows_apply::<Bf16>(geometry.kernel, geometry.in_c)
                    && b.k == crate::amx::direct::window_rows_k::<Bf16>(geometry.kernel)
            }
        }
}

/// Packs `b` (`K x N`, K in (kh, kw, c) order, a `kernel x kernel` convolution of `in_c`
/// channels) for [`conv_bf16_in_place`] with [`InPlaceLayout::WindowRows`]: each kernel row's
/// values then zeros up to one tile row.
///
/// # Panics
/// If the window does not fit a tile row, if `b.len()` is not `K x N`, or if this CPU cannot
/// run `kernel`.
pub fn pack_window_rows(
    b: &[Bf16],
    kernel_size: usize,
    in_c: usize,
    n: usize,
    kernel: &'static Bf16Kernel,
    blocking: Blocking,
) -> PackedBBf16 {
    assert!(crate::amx::direct::window_rows_apply::<Bf16>(
        kernel_size,
        in_c
    ));
    let rows = crate::amx::direct::window_rows_weights(b, kernel_size, in_c, n);
    let k = crate::amx::direct::window_rows_k::<Bf16>(kernel_size);
    PackedBBf16::with_kernel(&rows, k, n, kernel, blocking)
}

/// The convolution of `input` (NHWC bf16) by `b` through the epilogue into C, with A read in
/// place from a copy of the input in `layout` instead of packed as an im2col ([`direct`]).
/// Bit-identical to [`gemm_bf16`] on [`ASourceBf16::Conv`] (for
/// [`InPlaceLayout::WindowRows`], with the weights packed by [`gemm_bf16`]'s packing).
///
/// # Panics
/// If [`in_place_applies`] does not hold, or on the size mismatches [`gemm_bf16`] refuses.
pub fn conv_bf16_in_place(
    input: &[Bf16],
    geometry: &ConvGeometry,
    b: &PackedBBf16,
    out: OutputBf16<'_>,
    epi: &EpilogueBf16<'_>,
    layout: InPlaceLayout,
) {
    assert!(
        in_place_applies(geometry, b, layout),
        "{} cannot read this convolution in place ({layout:?}): {geometry:?}",
        b.kernel.info.name
    );
    if geometry.m() == 0 || b.n == 0 {
        return;
    }
    crate::amx::direct::check_input_len::<Bf16>(geometry, layout, input.len());
    let direct = b.kernel.entry.conv_direct.expect("checked above");
    direct(input, geometry, b, out, epi, layout)
}

/// The plain triple loop every packed path is tested against, in f64 (exact products, one
/// rounding to f32 at the end), then the epilogue in f32: `A` `M x K` with stride `lda`, `B`
/// `K x N` row-major, f32 output with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_naive(
    m: usize,
    n: usize,
    k: usize,
    a: &[Bf16],
    lda: usize,
    b: &[Bf16],
    c: &mut [f32],
    ldc: usize,
    epi: &EpilogueBf16,
) {
    for i in 0..m {
        for j in 0..n {
            let sum: f64 = (0..k)
                .map(|p| a[i * lda + p].to_f32_daz() as f64 * b[p * n + j].to_f32_daz() as f64)
                .sum();
            let residual = epi.residual.map(|(r, ldr)| r[i * ldr + j]);
            c[i * ldc + j] =
                scalar::epilogue_core(sum as f32, epi.bias.map(|b| b[j]), residual, epi.relu);
        }
    }
}

/// A micro-kernel: an `rows x NR` tile (`rows <= MR`) of `A_panel · B_panel` in f32.
pub(crate) trait MicroKernelBf16: Sync {
    /// Rows of the register tile (pixels).
    const MR: usize;
    /// Columns of the register tile (output channels).
    const NR: usize;
    /// `<isa>_f32_<MR>x<NR>`.
    const NAME: &'static str;
    /// Loop 4's K block (a multiple of 32), see [`blocking::KC`].
    const KC: usize = blocking::KC;
    /// The in-place convolution, for the lines whose tiles load strided rows straight from the
    /// activation (AMX).
    const CONV_DIRECT: Option<ConvDirectBf16> = None;
    /// Whether the packed loops fetch the item's next K block of B into L2 as the current one
    /// runs ([`crate::tiling::NextBlockFetch`]): the AMX line, where it was measured.
    const FETCHES_NEXT_B_BLOCK: bool = false;

    /// `acc = A_panel · B_panel (+ acc_mem if accumulate)`, then either stored as f32 to
    /// `acc_mem` (`out` is `None`) or put through the epilogue and stored by `out`.
    ///
    /// # Safety
    /// - the CPU supports the kernel's ISA;
    /// - `a` holds MR rows of `kc2` values (row stride `kc2`, even), `b` holds `kc2 * NR`
    ///   values in k-pairs;
    /// - `acc` addresses MR rows of NR f32 with stride `ld_acc` (readable if `accumulate`,
    ///   writable if `out` is `None`; unused otherwise and may then be null): the AMX kernel
    ///   loads and stores whole 16-row tiles, so the loops round their partial sums to MR rows;
    /// - `out`'s pointers address `rows` rows of NR elements (NR biases).
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        rows: usize,
        kc2: usize,
        a: *const Bf16,
        b: *const Bf16,
        acc: *mut f32,
        ld_acc: usize,
        accumulate: bool,
        out: Option<&TileOut>,
    );
}

/// The epilogue and destination of one tile, as pointers at the tile's first row and column.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TileOut {
    /// NR biases (null when there is none).
    pub bias: *const f32,
    /// The residual tile's first element (null when there is none).
    pub residual: *const Bf16,
    pub ldr: usize,
    pub relu: bool,
    /// Exactly one of the two outputs is not null.
    pub c_bf16: *mut Bf16,
    pub c_f32: *mut f32,
    pub ldc: usize,
}

#[cfg(test)]
pub(crate) mod tests;

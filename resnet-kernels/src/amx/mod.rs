//! AMX tile kernels (AMX-INT8 `tdpbusd`, AMX-BF16 `tdpbf16ps`), written once against a small
//! tile-operations interface ([`TileOps`]) with two implementations:
//!
//! - [`AmxHardware`]: the real instructions, by `core::arch::asm!` (the AMX intrinsics and
//!   target features are nightly-only, rust-lang/rust#126622). Rust's `asm!` has no register
//!   class for the tile registers, so they cannot be named as operands or clobbers: the
//!   compiler never uses them, and a tile's contents are only relied on inside one `asm!` block.
//!   So the micro-kernel ([`TileOps::block_2x2`]) is one block holding the whole K loop, never
//!   `nomem` (it reads A and B and writes C through pointers).
//! - [`AmxModel`]: a software model of each instruction as the Intel SDM defines it (tile
//!   shapes from the configuration, VNNI-4 `u8 x i8 -> i32` with wrapping accumulation, VNNI-2
//!   bf16 with f32 accumulation under DAZ/FTZ and round-to-nearest-even). On a machine without
//!   AMX the kernels run only this way; on an AMX machine the real kernels are compared with it
//!   bit for bit (`amx::tests`).
//!
//! # Blocking (as oneDNN's brgemm)
//!
//! One micro-kernel call computes a 32 x 32 block of C in 2 x 2 C tiles of 16 rows x 16 `i32`
//! (or f32) columns: tiles 0-3 hold C, tiles 4-5 the top and bottom 16 rows of A, tiles 6-7 the
//! left and right 16 columns of B. Per K step (64 bytes of A per row: 64 `u8` or 32 bf16) it
//! loads 2 A and 2 B tiles and issues 4 dot products. Every tile is 16 rows x 64 bytes
//! ([`KERNEL_CONFIG`]), for both families, so the configuration is loaded once per thread (the
//! first time a kernel runs on it) and never changes between int8 and bf16 layers.
//!
//! B comes straight from the packed panels of the VNNI kernels (32 columns): one k-group row of
//! a panel is 128 bytes (32 columns x 4 `i8`, or x 2 bf16), and its left and right 64-byte
//! halves are rows of the two B tiles (stride 128). A comes from the packed A rows (stride = the
//! padded K of the block). C is stored with `tilestored` into a 32 x 32 buffer on the stack (4
//! KiB, in L1), and the family's own epilogue runs from there, so the outputs go through the
//! same rounding code as every other kernel of the family.

mod bf16;
pub(crate) mod direct;
pub use direct::{Frame, InPlaceLayout};
#[cfg(target_arch = "x86_64")]
mod hardware;
mod int8;
mod model;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "x86_64")]
pub(crate) use hardware::release_this_thread_tiles;
#[cfg(target_arch = "x86_64")]
pub use hardware::{release_thread_tiles, thread_tiles_configured, AmxHardware};

/// Without x86-64 there are no tiles to release.
#[cfg(not(target_arch = "x86_64"))]
pub fn release_thread_tiles() {}
/// Without x86-64 there are no tiles to release.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn release_this_thread_tiles() {}
pub use model::AmxModel;

#[cfg(target_arch = "x86_64")]
pub(crate) use bf16::peak_hardware as peak_bf16_hardware;
pub(crate) use bf16::{epilogue as bf16_epilogue, peak_model as peak_bf16_model, AmxKernelBf16};
pub(crate) use int8::epilogue as int8_epilogue;
#[cfg(target_arch = "x86_64")]
pub(crate) use int8::peak_hardware as peak_int8_hardware;
pub(crate) use int8::{peak_model as peak_int8_model, AmxKernel8};

/// Tile registers of palette 1.
pub const TILES: usize = 8;
/// Rows of a tile, at most (palette 1).
pub const MAX_ROWS: usize = 16;
/// Bytes of a tile row, at most (palette 1).
pub const MAX_COLSB: usize = 64;

/// A tile register, `tmm0` .. `tmm7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tmm(u8);

impl Tmm {
    /// The register `tmm<index>`.
    ///
    /// # Panics
    /// If `index >= 8`.
    pub const fn new(index: u8) -> Tmm {
        assert!((index as usize) < TILES, "palette 1 has 8 tile registers");
        Tmm(index)
    }

    /// Its number, `0..8`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The 64-byte operand of `ldtilecfg`, in the SDM's layout: byte 0 the palette, byte 1
/// `start_row`, bytes 16..32 each tile's bytes per row (`u16`), bytes 48..56 each tile's rows.
/// Every other byte is reserved (zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct TileConfig {
    bytes: [u8; 64],
}

impl TileConfig {
    /// Palette 1 with `(rows, bytes per row)` for each of the 8 tiles; `(0, 0)` leaves a tile
    /// unused. Not validated here: `ldtilecfg` checks it (the model as the CPU does).
    pub const fn palette1(shapes: [(u8, u16); TILES]) -> TileConfig {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        let mut t = 0;
        while t < TILES {
            let (rows, colsb) = shapes[t];
            bytes[16 + 2 * t] = colsb as u8;
            bytes[16 + 2 * t + 1] = (colsb >> 8) as u8;
            bytes[48 + t] = rows;
            t += 1;
        }
        TileConfig { bytes }
    }

    /// A configuration from its 64 bytes (e.g. to test how `ldtilecfg` rejects bad ones).
    pub const fn from_bytes(bytes: [u8; 64]) -> TileConfig {
        TileConfig { bytes }
    }

    /// The 64 bytes.
    pub fn bytes(&self) -> &[u8; 64] {
        &self.bytes
    }

    /// The palette number.
    pub fn palette(&self) -> u8 {
        self.bytes[0]
    }

    /// Rows of tile `t`.
    pub fn rows(&self, t: Tmm) -> usize {
        self.bytes[48 + t.index()] as usize
    }

    /// Bytes per row of tile `t`.
    pub fn colsb(&self, t: Tmm) -> usize {
        u16::from_le_bytes([
            self.bytes[16 + 2 * t.index()],
            self.bytes[17 + 2 * t.index()],
        ]) as usize
    }
}

/// The configuration every kernel runs under: all 8 tiles 16 rows x 64 bytes.
pub const KERNEL_CONFIG: TileConfig = TileConfig::palette1([(16, 64); TILES]);

/// The tiles of the 2 x 2 blocking: C (top left, top right, bottom left, bottom right), A (top,
/// bottom rows), B (left, right columns).
const C_TILES: [Tmm; 4] = [Tmm(0), Tmm(1), Tmm(2), Tmm(3)];
const A_TILES: [Tmm; 2] = [Tmm(4), Tmm(5)];
const B_TILES: [Tmm; 2] = [Tmm(6), Tmm(7)];
/// Where each C tile starts in a 32 x 32 block: (rows down, bytes across).
const C_TILE_OFFSETS: [(usize, usize); 4] = [(0, 0), (0, 64), (16, 0), (16, 64)];

/// The byte offset of a C tile at `(rows, bytes)` in a block of row stride `ld`.
fn c_tile_offset((rows, bytes): (usize, usize), ld: usize) -> usize {
    rows * ld + bytes
}

/// Bytes per row of a B panel (32 columns x 4 `i8`, or x 2 bf16) and of the C block (32 x 4 B).
pub const PANEL_ROW_BYTES: usize = 128;
/// Bytes of A per row and K step (one A tile row).
pub const K_STEP_BYTES: usize = 64;

/// The dot-product instruction a micro-kernel issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dot {
    /// `tdpbusd`: `u8 x i8`, 4 per `i32`, wrapping `i32` sums.
    Busd,
    /// `tdpbf16ps`: bf16 pairs, f32 sums.
    Bf16ps,
}

/// One micro-kernel call: `C (32 x 32, 4-byte elements) = A (32 rows) · B (32 columns)` over
/// `steps` K steps.
#[derive(Clone, Copy, Debug)]
pub struct Block2x2 {
    /// A's first row; rows 16..32 start at `a + 16 * lda`. Each step reads 64 bytes per row.
    pub a: *const u8,
    /// A's row stride in bytes.
    pub lda: usize,
    /// B's first k-group row (128 bytes: left tile bytes 0..64, right tile 64..128); each step
    /// reads 16 rows, stride [`PANEL_ROW_BYTES`].
    pub b: *const u8,
    /// K steps (the kernels pad K to whole steps when B is packed).
    pub steps: usize,
    /// The 32 x 32 sums to start from (loaded into the C tiles, so that a K block continues
    /// the sums of the block before without a pass over them), or null to start from zero.
    pub c_in: *const u8,
    /// `c_in`'s row stride in bytes.
    pub ldc_in: usize,
    /// The 32 x 32 result (overwritten; may be `c_in`).
    pub c: *mut u8,
    /// `c`'s row stride in bytes ([`PANEL_ROW_BYTES`] for a [`CBlock`]).
    pub ldc: usize,
}

/// [`Block2x2`] with A read in place: step `s` reads A's 32 rows at `a + a_offsets[s]` (rows
/// 16..32 at `+ 16 * lda`), so A can come straight from a padded NHWC activation, each step one
/// (kh, kw, 64-channel) slice of the convolution window, instead of from a packed panel.
#[derive(Clone, Copy, Debug)]
pub struct Gather2x2 {
    /// A's first row at step offset 0.
    pub a: *const u8,
    /// A's row stride in bytes (one pixel of the activation).
    pub lda: usize,
    /// `steps` byte offsets from `a`, one per K step.
    pub a_offsets: *const usize,
    /// As [`Block2x2::b`].
    pub b: *const u8,
    /// K steps.
    pub steps: usize,
    /// As [`Block2x2::c_in`].
    pub c_in: *const u8,
    /// As [`Block2x2::ldc_in`].
    pub ldc_in: usize,
    /// As [`Block2x2::c`].
    pub c: *mut u8,
    /// As [`Block2x2::ldc`].
    pub ldc: usize,
    /// Bytes to fetch into L2 while the steps run (`prefetcht1`, `prefetch_lines` cache lines
    /// per step from here on): the B panel the caller reads next. A hint only: it reads no
    /// value and may point anywhere, even at unmapped memory (null: none).
    pub prefetch: *const u8,
    /// Cache lines prefetched per step (0: none).
    pub prefetch_lines: usize,
}

/// The AMX tile instructions of palette 1, and the 2 x 2 micro-kernel built from them.
///
/// The instructions are `unsafe`: on the hardware they read or write memory through raw
/// pointers, and run only where AMX is granted ([`crate::cpu::AmxState::Granted`]); the model
/// checks every operand as the CPU does (#GP / #UD become panics naming the rule).
pub trait TileOps {
    /// `ldtilecfg`: loads a configuration and zeroes every tile.
    ///
    /// # Safety
    /// On the hardware: AMX is granted to this process.
    unsafe fn ldtilecfg(&mut self, cfg: &TileConfig);
    /// `tilerelease`: back to the initial (unconfigured) state.
    ///
    /// # Safety
    /// As [`TileOps::ldtilecfg`].
    unsafe fn tilerelease(&mut self);
    /// `tilezero`.
    ///
    /// # Safety
    /// As [`TileOps::ldtilecfg`], and tiles are configured.
    unsafe fn tilezero(&mut self, dst: Tmm);
    /// `tileloadd dst, [base + stride]`: row `r` from `base + r * stride`, `colsb` bytes.
    ///
    /// # Safety
    /// Tiles are configured; `rows(dst)` rows of `colsb(dst)` bytes are readable there.
    unsafe fn tileloadd(&mut self, dst: Tmm, base: *const u8, stride: usize);
    /// `tilestored [base + stride], src`.
    ///
    /// # Safety
    /// Tiles are configured; `rows(src)` rows of `colsb(src)` bytes are writable there.
    unsafe fn tilestored(&mut self, src: Tmm, base: *mut u8, stride: usize);
    /// `tdpbusd c, a, b`.
    ///
    /// # Safety
    /// As [`TileOps::tilezero`]; the shapes fit (`a.colsb / 4 == b.rows`, ...).
    unsafe fn tdpbusd(&mut self, c: Tmm, a: Tmm, b: Tmm);
    /// `tdpbf16ps c, a, b`.
    ///
    /// # Safety
    /// As [`TileOps::tdpbusd`].
    unsafe fn tdpbf16ps(&mut self, c: Tmm, a: Tmm, b: Tmm);

    /// The micro-kernel under [`KERNEL_CONFIG`]: zero the 4 C tiles (or load them from
    /// `c_in`), then per K step load 2 A
    /// and 2 B tiles and issue 4 dot products (each load just before its first use), then
    /// store C. This default
    /// composes the instructions above (the model runs it); the hardware replaces it by one
    /// `asm!` block of the same instructions in the same order.
    ///
    /// # Safety
    /// [`KERNEL_CONFIG`] is loaded; `job`'s pointers address what [`Block2x2`] says.
    unsafe fn block_2x2(&mut self, dot: Dot, job: &Block2x2) {
        let a = |s: usize| job.a.wrapping_add(s * K_STEP_BYTES);
        // SAFETY: the caller's contract (forwarded: the same rows, panels and C block).
        unsafe {
            run_2x2(
                self,
                dot,
                a,
                job.lda,
                job.b,
                job.steps,
                [(job.c_in, job.ldc_in), (job.c, job.ldc)],
            )
        }
    }

    /// [`TileOps::block_2x2`] with A gathered per step ([`Gather2x2`]); the hardware replaces it
    /// by one `asm!` block of the same instructions in the same order, plus the job's
    /// prefetches (hints, which the model has no use for).
    ///
    /// # Safety
    /// [`KERNEL_CONFIG`] is loaded; `job`'s pointers address what [`Gather2x2`] says: for each
    /// step `s`, 32 rows of 64 bytes at `a + a_offsets[s]` with stride `lda`.
    unsafe fn gather_2x2(&mut self, dot: Dot, job: &Gather2x2) {
        // SAFETY: the caller guarantees `steps` readable offsets.
        let a = |s: usize| job.a.wrapping_add(unsafe { *job.a_offsets.add(s) });
        // SAFETY: the caller's contract (forwarded).
        unsafe {
            run_2x2(
                self,
                dot,
                a,
                job.lda,
                job.b,
                job.steps,
                [(job.c_in, job.ldc_in), (job.c, job.ldc)],
            )
        }
    }
}

/// The composed micro-kernel of [`TileOps::block_2x2`] and [`TileOps::gather_2x2`]: step `s`
/// reads A at `a_at(s)`.
///
/// # Safety
/// As [`TileOps::block_2x2`], for the rows `a_at` gives.
unsafe fn run_2x2<O: TileOps + ?Sized>(
    ops: &mut O,
    dot: Dot,
    a_at: impl Fn(usize) -> *const u8,
    lda: usize,
    b: *const u8,
    steps: usize,
    [(c_in, ldc_in), (c_out, ldc)]: [(*const u8, usize); 2],
) {
    // SAFETY: the caller's contract: every load and store below stays inside the rows, the
    // panels and the C buffers described.
    unsafe {
        for (t, offset) in C_TILES.into_iter().zip(C_TILE_OFFSETS) {
            if c_in.is_null() {
                ops.tilezero(t);
            } else {
                ops.tileloadd(t, c_in.add(c_tile_offset(offset, ldc_in)), ldc_in);
            }
        }
        let dot_product = |ops: &mut O, c, a, b| match dot {
            Dot::Busd => ops.tdpbusd(c, a, b),
            Dot::Bf16ps => ops.tdpbf16ps(c, a, b),
        };
        // Each load just before its first use (the hardware's order, where it lets the next
        // step's first loads overlap this step's last dot products).
        for s in 0..steps {
            let a_top = a_at(s);
            let a_bot = a_top.wrapping_add(16 * lda);
            let b = b.add(s * 16 * PANEL_ROW_BYTES);
            ops.tileloadd(A_TILES[0], a_top, lda);
            ops.tileloadd(B_TILES[0], b, PANEL_ROW_BYTES);
            dot_product(ops, C_TILES[0], A_TILES[0], B_TILES[0]);
            ops.tileloadd(B_TILES[1], b.add(64), PANEL_ROW_BYTES);
            dot_product(ops, C_TILES[1], A_TILES[0], B_TILES[1]);
            ops.tileloadd(A_TILES[1], a_bot, lda);
            dot_product(ops, C_TILES[2], A_TILES[1], B_TILES[0]);
            dot_product(ops, C_TILES[3], A_TILES[1], B_TILES[1]);
        }
        for (t, offset) in C_TILES.into_iter().zip(C_TILE_OFFSETS) {
            ops.tilestored(t, c_out.cast_mut().add(c_tile_offset(offset, ldc)), ldc);
        }
    }
}

/// A [`TileOps`] the kernels can run on: how a worker thread gets its tile state, already under
/// [`KERNEL_CONFIG`].
pub(crate) trait TileExec: TileOps + Sync + 'static {
    /// The name of the AMX-INT8 kernel line on this tile unit.
    const INT8_NAME: &'static str;
    /// The name of the AMX-BF16 kernel line on this tile unit.
    const BF16_NAME: &'static str;
    /// The real instructions: the CPU has AVX-512 F/BW/BF16 too (every AMX CPU has), so the
    /// kernels run the AVX-512 epilogues; the model runs the scalar ones (same results).
    const HARDWARE: bool;
    /// Runs `f` with this thread's tile state, loading [`KERNEL_CONFIG`] first if the thread has
    /// not got it loaded.
    ///
    /// # Safety
    /// On the hardware: AMX is granted to this process (the kernel line's `runnable` check).
    unsafe fn with_thread_tiles<R>(f: impl FnOnce(&mut Self) -> R) -> R;
}

/// A 32 x 32 block of 4-byte results, 64-byte aligned (one C block of a micro-kernel call).
#[repr(C, align(64))]
pub(crate) struct CBlock(pub [u8; 32 * PANEL_ROW_BYTES]);

//! The real AMX instructions, by `core::arch::asm!` (stable Rust has no AMX intrinsics or
//! target features: rust-lang/rust#126622; LLVM's assembler takes the mnemonics anyway).
//!
//! Tile registers have no `asm!` register class, so they are written into the templates (by
//! `const` operands for the single instructions) and never named as operands or clobbers: the
//! compiler does not use them, and no code relies on a tile's contents across two `asm!` blocks
//! except the configuration, which only [`AmxHardware`]'s own methods change (and track).
//! Every block reads or writes memory or the tile state, so none is `nomem` or `pure`.

use super::{Block2x2, Dot, Gather2x2, TileConfig, TileExec, TileOps, Tmm, KERNEL_CONFIG};
use std::arch::asm;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// Whether this thread's tiles are under [`KERNEL_CONFIG`] (set and cleared only by
    /// [`AmxHardware`]'s `ldtilecfg` and `tilerelease`, the only code that changes it).
    static KERNEL_CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// The tile unit of the CPU this thread runs on. Construct it with [`AmxHardware::new`], which
/// checks that AMX is usable (CPUID, XCR0 and the Linux permission: [`crate::cpu::AmxState`]).
#[derive(Debug)]
pub struct AmxHardware(());

impl AmxHardware {
    /// The tile unit, if this process may execute tile instructions.
    pub fn new() -> Option<AmxHardware> {
        crate::cpu::Isa::Amx
            .is_supported()
            .then_some(AmxHardware(()))
    }
}

/// `tilezero tmm{T}`.
unsafe fn tilezero_n<const T: u8>() {
    // SAFETY: the caller guarantees AMX is granted and the tiles configured; touches no memory.
    unsafe { asm!("tilezero tmm{t}", t = const T, options(nostack, preserves_flags)) }
}

/// `tileloadd tmm{T}, [base + stride*1]`.
unsafe fn tileloadd_n<const T: u8>(base: *const u8, stride: usize) {
    // SAFETY: the caller guarantees AMX is granted, the tiles configured and the rows readable.
    unsafe {
        asm!("tileloadd tmm{t}, [{base} + {stride}*1]", t = const T, base = in(reg) base,
            stride = in(reg) stride, options(nostack, preserves_flags, readonly))
    }
}

/// `tilestored [base + stride*1], tmm{T}`.
unsafe fn tilestored_n<const T: u8>(base: *mut u8, stride: usize) {
    // SAFETY: the caller guarantees AMX is granted, the tiles configured and the rows writable.
    unsafe {
        asm!("tilestored [{base} + {stride}*1], tmm{t}", t = const T, base = in(reg) base,
            stride = in(reg) stride, options(nostack, preserves_flags))
    }
}

/// `tdpbusd` (`BF16 == false`) or `tdpbf16ps` on `tmm{C}, tmm{A}, tmm{B}`. The assembler
/// rejects a register used twice, so those instantiations hold no instruction: they raise the
/// #UD the CPU would (as a panic).
unsafe fn dot_n<const BF16: bool, const C: u8, const A: u8, const B: u8>() {
    if const { C == A || C == B || A == B } {
        panic!("#UD: tdpbusd/tdpbf16ps need three distinct tile registers");
    }
    // SAFETY: the caller guarantees AMX is granted, the tiles configured and the shapes valid;
    // touches no memory.
    unsafe {
        if BF16 {
            asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
                options(nostack, preserves_flags));
        } else {
            asm!("tdpbusd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
                options(nostack, preserves_flags));
        }
    }
}

/// Calls `$f::<$pre.., N>($args)` for the tile number `$t` (the register is part of the encoding, so a
/// run-time number becomes a jump to one of eight instructions).
macro_rules! by_tile {
    ($t:expr, $f:ident [$($pre:tt),*] ($($arg:expr),*)) => {
        match $t {
            0 => $f::<$($pre,)* 0>($($arg),*),
            1 => $f::<$($pre,)* 1>($($arg),*),
            2 => $f::<$($pre,)* 2>($($arg),*),
            3 => $f::<$($pre,)* 3>($($arg),*),
            4 => $f::<$($pre,)* 4>($($arg),*),
            5 => $f::<$($pre,)* 5>($($arg),*),
            6 => $f::<$($pre,)* 6>($($arg),*),
            7 => $f::<$($pre,)* 7>($($arg),*),
            _ => unreachable!("Tmm holds 0..8"),
        }
    };
}

unsafe fn dot_b<const BF16: bool, const C: u8, const A: u8>(b: u8) {
    // SAFETY: forwarded from the caller.
    unsafe { by_tile!(b, dot_n[BF16, C, A]()) }
}

unsafe fn dot_a<const BF16: bool, const C: u8>(a: u8, b: u8) {
    // SAFETY: forwarded from the caller.
    unsafe { by_tile!(a, dot_b[BF16, C](b)) }
}

unsafe fn dot_c<const BF16: bool>(c: u8, a: u8, b: u8) {
    // SAFETY: forwarded from the caller.
    unsafe { by_tile!(c, dot_a[BF16](a, b)) }
}

/// The micro-kernels' first lines: the 4 C tiles start from zero, or from the 32 x 32 sums at
/// the job's `c_in` (row stride `ldc_in`). Uses the operands `job`, `t0`, `t1`, `off_c_in` and
/// `off_ldc_in`, and the local labels 4 and 5.
macro_rules! c_tiles_in {
    () => {
        concat!(
            "mov {t0}, qword ptr [{job} + {off_c_in}]\n",
            "test {t0}, {t0}\n",
            "jnz 4f\n",
            "tilezero tmm0\n",
            "tilezero tmm1\n",
            "tilezero tmm2\n",
            "tilezero tmm3\n",
            "jmp 5f\n",
            "4:\n",
            "mov {t1}, qword ptr [{job} + {off_ldc_in}]\n",
            "tileloadd tmm0, [{t0} + {t1}*1]\n",
            "tileloadd tmm1, [{t0} + {t1}*1 + 64]\n",
            "shl {t1}, 4\n",
            "add {t0}, {t1}\n",
            "shr {t1}, 4\n",
            "tileloadd tmm2, [{t0} + {t1}*1]\n",
            "tileloadd tmm3, [{t0} + {t1}*1 + 64]\n",
            "5:",
        )
    };
}

/// The micro-kernels' last lines: the 4 C tiles stored to the job's `c` (row stride `ldc`).
/// Uses the operands `job`, `t0`, `t1`, `off_c` and `off_ldc`.
macro_rules! c_tiles_out {
    () => {
        concat!(
            "mov {t0}, qword ptr [{job} + {off_c}]\n",
            "mov {t1}, qword ptr [{job} + {off_ldc}]\n",
            "tilestored [{t0} + {t1}*1], tmm0\n",
            "tilestored [{t0} + {t1}*1 + 64], tmm1\n",
            "shl {t1}, 4\n",
            "add {t0}, {t1}\n",
            "shr {t1}, 4\n",
            "tilestored [{t0} + {t1}*1], tmm2\n",
            "tilestored [{t0} + {t1}*1 + 64], tmm3",
        )
    };
}

/// The whole micro-kernel in one block (see [`TileOps::block_2x2`] for what it computes; the
/// instructions and their order are the same). Tiles: C 0-3, A 4-5, B 6-7.
macro_rules! block_asm {
    ($dot:literal, $job:expr) => {{
        let job: &Block2x2 = $job;
        asm!(
            c_tiles_in!(),
            "test {steps}, {steps}",
            "jz 3f",
            // Each load sits just before its first use, so that the next step's loads of
            // tmm4/tmm6 can start while this step's last dot products still run (a tile load
            // waits for the dot products that read the register before: tiles are not renamed).
            "2:",
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {s128}*1]",
            concat!($dot, " tmm0, tmm4, tmm6"),
            "tileloadd tmm7, [{b} + {s128}*1 + 64]",
            concat!($dot, " tmm1, tmm4, tmm7"),
            "tileloadd tmm5, [{a_bot} + {lda}*1]",
            concat!($dot, " tmm2, tmm5, tmm6"),
            concat!($dot, " tmm3, tmm5, tmm7"),
            "add {a}, 64",
            "add {a_bot}, 64",
            "add {b}, 2048",
            "dec {steps}",
            "jnz 2b",
            "3:",
            c_tiles_out!(),
            a = inout(reg) job.a => _,
            a_bot = inout(reg) job.a.wrapping_add(16 * job.lda) => _,
            lda = in(reg) job.lda,
            b = inout(reg) job.b => _,
            steps = inout(reg) job.steps => _,
            s128 = in(reg) 128usize,
            t0 = out(reg) _,
            t1 = out(reg) _,
            job = in(reg) std::ptr::from_ref(job),
            off_c_in = const std::mem::offset_of!(Block2x2, c_in),
            off_ldc_in = const std::mem::offset_of!(Block2x2, ldc_in),
            off_c = const std::mem::offset_of!(Block2x2, c),
            off_ldc = const std::mem::offset_of!(Block2x2, ldc),
            options(nostack),
        )
    }};
}

/// [`block_asm`] with A gathered: each step's A address is `a` plus the step's entry of the
/// offsets table (see [`TileOps::gather_2x2`]); the tile instructions and their order are the
/// same.
macro_rules! gather_asm {
    ($dot:literal, $job:expr) => {{
        let job: &Gather2x2 = $job;
        asm!(
            c_tiles_in!(),
            "test {steps}, {steps}",
            "jz 3f",
            "2:",
            "mov {a}, qword ptr [{offs}]",
            "add {a}, {base}",
            "lea {a_bot}, [{a} + {lda16}*1]",
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {s128}*1]",
            concat!($dot, " tmm0, tmm4, tmm6"),
            "tileloadd tmm7, [{b} + {s128}*1 + 64]",
            concat!($dot, " tmm1, tmm4, tmm7"),
            "tileloadd tmm5, [{a_bot} + {lda}*1]",
            concat!($dot, " tmm2, tmm5, tmm6"),
            concat!($dot, " tmm3, tmm5, tmm7"),
            // This step's share of the next panel, into L2 while the dot products run.
            "mov {t0}, qword ptr [{job} + {off_pf_lines}]",
            "test {t0}, {t0}",
            "jz 6f",
            "7:",
            "prefetcht1 byte ptr [{pf}]",
            "add {pf}, 64",
            "dec {t0}",
            "jnz 7b",
            "6:",
            "add {offs}, 8",
            "add {b}, 2048",
            "dec {steps}",
            "jnz 2b",
            "3:",
            c_tiles_out!(),
            a = out(reg) _,
            a_bot = out(reg) _,
            base = in(reg) job.a,
            lda = in(reg) job.lda,
            lda16 = in(reg) 16 * job.lda,
            offs = inout(reg) job.a_offsets => _,
            b = inout(reg) job.b => _,
            steps = inout(reg) job.steps => _,
            s128 = in(reg) 128usize,
            pf = inout(reg) job.prefetch => _,
            t0 = out(reg) _,
            t1 = out(reg) _,
            job = in(reg) std::ptr::from_ref(job),
            off_pf_lines = const std::mem::offset_of!(Gather2x2, prefetch_lines),
            off_c_in = const std::mem::offset_of!(Gather2x2, c_in),
            off_ldc_in = const std::mem::offset_of!(Gather2x2, ldc_in),
            off_c = const std::mem::offset_of!(Gather2x2, c),
            off_ldc = const std::mem::offset_of!(Gather2x2, ldc),
            options(nostack),
        )
    }};
}

impl TileOps for AmxHardware {
    unsafe fn ldtilecfg(&mut self, cfg: &TileConfig) {
        // SAFETY: AMX is granted (`AmxHardware::new` checked it); the operand is 64 readable
        // bytes. An invalid configuration raises #GP (SIGSEGV), the CPU's own check.
        unsafe {
            asm!("ldtilecfg [{cfg}]", cfg = in(reg) cfg.bytes().as_ptr(),
                options(nostack, preserves_flags, readonly))
        }
        set_configured(*cfg == KERNEL_CONFIG);
    }

    unsafe fn tilerelease(&mut self) {
        // SAFETY: AMX is granted (`AmxHardware::new` checked it); touches no memory.
        unsafe { asm!("tilerelease", options(nostack, preserves_flags)) }
        set_configured(false);
    }

    unsafe fn tilezero(&mut self, dst: Tmm) {
        // SAFETY: the caller's contract (tiles configured).
        unsafe { by_tile!(dst.0, tilezero_n[]()) }
    }

    unsafe fn tileloadd(&mut self, dst: Tmm, base: *const u8, stride: usize) {
        // SAFETY: the caller's contract (tiles configured, rows readable).
        unsafe { by_tile!(dst.0, tileloadd_n[](base, stride)) }
    }

    unsafe fn tilestored(&mut self, src: Tmm, base: *mut u8, stride: usize) {
        // SAFETY: the caller's contract (tiles configured, rows writable).
        unsafe { by_tile!(src.0, tilestored_n[](base, stride)) }
    }

    unsafe fn tdpbusd(&mut self, c: Tmm, a: Tmm, b: Tmm) {
        // SAFETY: the caller's contract (tiles configured, shapes valid).
        unsafe { dot_c::<false>(c.0, a.0, b.0) }
    }

    unsafe fn tdpbf16ps(&mut self, c: Tmm, a: Tmm, b: Tmm) {
        // SAFETY: the caller's contract (tiles configured, shapes valid).
        unsafe { dot_c::<true>(c.0, a.0, b.0) }
    }

    unsafe fn block_2x2(&mut self, dot: Dot, job: &Block2x2) {
        // SAFETY: the caller guarantees KERNEL_CONFIG is loaded and that `job` addresses 32 A
        // rows of `steps` x 64 bytes (stride lda), `steps` x 16 B rows of 128 bytes, 32 x 128
        // writable bytes at c and, unless null, 32 x 128 readable bytes at c_in.
        unsafe {
            match dot {
                Dot::Busd => block_asm!("tdpbusd", job),
                Dot::Bf16ps => block_asm!("tdpbf16ps", job),
            }
        }
    }

    unsafe fn gather_2x2(&mut self, dot: Dot, job: &Gather2x2) {
        // SAFETY: the caller guarantees KERNEL_CONFIG is loaded and that `job` addresses, per
        // step, 32 A rows of 64 bytes (stride lda) at a + a_offsets[s], 16 B rows of 128 bytes,
        // 32 x 128 writable bytes at c and, unless null, 32 x 128 readable bytes at c_in. The
        // prefetches touch no value and cannot fault, wherever they point.
        unsafe {
            match dot {
                Dot::Busd => gather_asm!("tdpbusd", job),
                Dot::Bf16ps => gather_asm!("tdpbf16ps", job),
            }
        }
    }
}

impl TileExec for AmxHardware {
    const INT8_NAME: &'static str = "amx_int8_i32_32x32";
    const BF16_NAME: &'static str = "amx_bf16_f32_32x32";
    const HARDWARE: bool = true;
    unsafe fn with_thread_tiles<R>(f: impl FnOnce(&mut Self) -> R) -> R {
        let mut tiles = AmxHardware(());
        if !KERNEL_CONFIGURED.with(Cell::get) {
            // SAFETY: the caller guarantees AMX is granted to this process.
            unsafe { tiles.ldtilecfg(&KERNEL_CONFIG) };
        }
        f(&mut tiles)
    }
}

/// Rayon worker threads whose tiles hold the kernels' configuration: [`release_thread_tiles`]
/// wakes the pool only when there is one (AMX kernels usually run on the caller and the
/// [`crate::team`]'s helpers; a broadcast to sleeping workers, while a helper spins on the other
/// core, cost about a millisecond per forward pass on a 2-core machine).
static RAYON_WORKERS_CONFIGURED: AtomicUsize = AtomicUsize::new(0);

/// Records this thread's tile state, counting rayon workers in [`RAYON_WORKERS_CONFIGURED`].
fn set_configured(configured: bool) {
    let was = KERNEL_CONFIGURED.with(|k| k.replace(configured));
    if was != configured && rayon::current_thread_index().is_some() {
        if configured {
            RAYON_WORKERS_CONFIGURED.fetch_add(1, Ordering::AcqRel);
        } else {
            RAYON_WORKERS_CONFIGURED.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Whether this thread's tiles hold the kernels' configuration (an AMX kernel ran here since
/// the last [`release_thread_tiles`]).
pub fn thread_tiles_configured() -> bool {
    KERNEL_CONFIGURED.with(Cell::get)
}

/// `tilerelease` on every thread of the current rayon pool, and on the calling thread, where an
/// AMX kernel left the tiles configured; a no-op elsewhere. The `int8` and `bf16` backends call
/// it at the end of each forward pass that ran an AMX kernel, so the tile configuration lives
/// for one pass (it is loaded again, once per thread, by the next pass's first kernel): a thread
/// with tile data in use makes the kernel save and restore 8 KiB more state on every context
/// switch, and keeps the core in its AMX power state. The [`crate::team`]'s helpers release
/// their own tiles when they park, [`crate::team::SPIN`] after their last region.
pub fn release_thread_tiles() {
    release_this_thread_tiles();
    if RAYON_WORKERS_CONFIGURED.load(Ordering::Acquire) > 0 {
        rayon::broadcast(|_| release_this_thread_tiles());
    }
}

/// `tilerelease` on the calling thread if an AMX kernel left its tiles configured.
pub(crate) fn release_this_thread_tiles() {
    if KERNEL_CONFIGURED.with(Cell::get) {
        // SAFETY: the flag is set only by `ldtilecfg` of an `AmxHardware`, which exists only
        // where AMX is granted to this process, so `tilerelease` is a valid instruction here.
        unsafe { AmxHardware(()).tilerelease() }
    }
}

/// `iters` rounds of 4 independent `tdpbusd` (or `tdpbf16ps`) on 16 x 64-byte tiles, for the
/// peak probe. Returns the multiply-accumulates done.
///
/// # Safety
/// AMX is granted to this process.
pub(crate) unsafe fn peak(dot: Dot, iters: usize) -> f64 {
    // SAFETY: the caller guarantees AMX; the tiles are configured by with_thread_tiles.
    unsafe {
        AmxHardware::with_thread_tiles(|_| {
            macro_rules! probe {
                ($dot:literal) => {
                    asm!(
                        "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
                        "2:",
                        concat!($dot, " tmm0, tmm4, tmm6"),
                        concat!($dot, " tmm1, tmm4, tmm7"),
                        concat!($dot, " tmm2, tmm5, tmm6"),
                        concat!($dot, " tmm3, tmm5, tmm7"),
                        "dec {n}",
                        "jnz 2b",
                        n = inout(reg) iters.max(1) => _,
                        options(nostack),
                    )
                };
            }
            match dot {
                Dot::Busd => probe!("tdpbusd"),
                Dot::Bf16ps => probe!("tdpbf16ps"),
            }
        })
    };
    // Per instruction: 16 rows x 16 columns x (64 bytes / 4 per group x 4 = 64 int8, or 32 bf16).
    let per = match dot {
        Dot::Busd => 16.0 * 16.0 * 64.0,
        Dot::Bf16ps => 16.0 * 16.0 * 32.0,
    };
    iters.max(1) as f64 * 4.0 * per
}

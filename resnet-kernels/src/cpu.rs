//! CPU features, detected once per process, and the instruction-set levels the kernels target.
//!
//! The binary is built for generic x86-64; the best kernel is chosen at run time. The environment
//! variable `RESNET_ISA=portable|avx2|avxvnni|avx512|vnni|avx512bf16|amx` forces a level (asking for an ISA the
//! CPU lacks is an error, never a crash).
//!
//! The two VNNI levels only change the INT8 kernels ([`crate::int8`]): for f32 work `avxvnni`
//! runs the AVX2 kernels and `vnni` the AVX-512 ones (see [`Isa::f32_level`]). `avx512bf16`
//! adds the bf16 kernels ([`crate::bf16`]) and `amx` the tile kernels ([`crate::amx`]); their
//! f32 and INT8 work is that of the levels below ([`Isa::int8_level`]) except where they have
//! a kernel of their own.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// An instruction-set level a kernel is written for, from the most portable to the fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, no SIMD intrinsics: the scalar twin every SIMD kernel is tested against.
    Portable,
    /// AVX2 with FMA (Haswell and later).
    Avx2,
    /// AVX2 plus AVX-VNNI (VEX `vpdpbusd` on 256-bit registers: Alder Lake, Zen 5, Sapphire
    /// Rapids). f32 kernels: those of [`Isa::Avx2`].
    AvxVnni,
    /// AVX-512 Foundation (Skylake-SP and later).
    Avx512,
    /// AVX-512 F/BW plus AVX-512 VNNI (`vpdpbusd` on 512-bit registers: Cascade Lake, Ice Lake,
    /// Zen 4). f32 kernels: those of [`Isa::Avx512`].
    Vnni,
    /// [`Isa::Vnni`] plus AVX512-BF16 (`vdpbf16ps`: Cooper Lake, Sapphire Rapids, Zen 4):
    /// the bf16 kernels. f32 and INT8 kernels: those of [`Isa::Vnni`].
    Avx512Bf16,
    /// [`Isa::Avx512Bf16`] plus AMX-TILE, AMX-INT8 and AMX-BF16 with the OS's tile state
    /// granted (Sapphire Rapids and later): the tile kernels for INT8 and bf16.
    Amx,
}

impl Isa {
    /// Every level, most portable first.
    pub const ALL: [Isa; 7] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512,
        Isa::Vnni,
        Isa::Avx512Bf16,
        Isa::Amx,
    ];

    /// The name used by `RESNET_ISA` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Vnni => "vnni",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Amx => "amx",
        }
    }

    /// The level whose f32 kernels this level runs: the VNNI levels add integer instructions
    /// only, so their f32 work is that of the level below.
    pub fn f32_level(self) -> Isa {
        match self {
            Isa::AvxVnni => Isa::Avx2,
            Isa::Vnni | Isa::Avx512Bf16 | Isa::Amx => Isa::Avx512,
            other => other,
        }
    }

    /// The level whose INT8 kernels this level runs: [`Isa::Avx512Bf16`] adds bf16
    /// instructions only; [`Isa::Amx`] has its own (`tdpbusd`).
    pub fn int8_level(self) -> Isa {
        match self {
            Isa::Avx512Bf16 => Isa::Vnni,
            other => other,
        }
    }

    /// Whether this CPU can run kernels of this level.
    pub fn is_supported(self) -> bool {
        let f = CpuFeatures::get();
        match self {
            Isa::Portable => true,
            Isa::Avx2 => f.avx2 && f.fma,
            Isa::AvxVnni => f.avx2 && f.fma && f.avxvnni,
            Isa::Avx512 => f.avx512f,
            Isa::Vnni => f.avx512f && f.avx512bw && f.avx512vnni,
            Isa::Avx512Bf16 => Isa::Vnni.is_supported() && f.avx512bf16,
            Isa::Amx => {
                Isa::Avx512Bf16.is_supported()
                    && f.amx_int8
                    && f.amx_bf16
                    && f.amx == AmxState::Granted
            }
        }
    }

    /// Why this CPU (or OS) cannot run kernels of this level, for `inspect`; `None` when it can.
    pub fn why_unsupported(self) -> Option<String> {
        if self.is_supported() {
            return None;
        }
        let f = CpuFeatures::get();
        Some(match self {
            Isa::Amx if f.amx != AmxState::Granted => f.amx.to_string(),
            Isa::Amx if !(f.amx_int8 && f.amx_bf16) => {
                "CPUID reports AMX-TILE without both AMX-INT8 and AMX-BF16".to_string()
            }
            Isa::Amx => return Isa::Avx512Bf16.why_unsupported(),
            other => format!("the CPU lacks the '{other}' level's features"),
        })
    }

    /// Every level this CPU supports, most portable first.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The best level this CPU supports, ignoring `RESNET_ISA`.
    pub fn best_supported() -> Isa {
        *Isa::supported().last().unwrap_or(&Isa::Portable)
    }

    /// The level to use: `RESNET_ISA` when set, else the best this CPU supports.
    pub fn from_env_or_best() -> Result<Isa, IsaError> {
        match std::env::var("RESNET_ISA") {
            Ok(s) if !s.is_empty() => {
                let isa: Isa = s.parse()?;
                if isa.is_supported() {
                    Ok(isa)
                } else {
                    Err(IsaError::Unsupported(isa))
                }
            }
            _ => Ok(Isa::best_supported()),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an ISA name could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsaError {
    /// The name is not one of [`Isa::ALL`]'s names.
    UnknownName(String),
    /// The CPU does not support that level.
    Unsupported(Isa),
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::UnknownName(s) => write!(
                f,
                "unknown ISA '{s}' (RESNET_ISA / --isa take one of: portable, avx2, avxvnni, avx512, vnni, avx512bf16, amx)"
            ),
            IsaError::Unsupported(isa) => write!(
                f,
                "this CPU does not support the '{isa}' kernels (supported: {})",
                Isa::supported()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl std::error::Error for IsaError {}

impl FromStr for Isa {
    type Err = IsaError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "generic" => Ok(Isa::Portable),
            "avx2" | "avx2fma" | "fma" => Ok(Isa::Avx2),
            "avxvnni" | "avx-vnni" => Ok(Isa::AvxVnni),
            "avx512" | "avx512f" => Ok(Isa::Avx512),
            "vnni" | "avx512vnni" | "avx512-vnni" => Ok(Isa::Vnni),
            "avx512bf16" | "avx512-bf16" | "bf16" => Ok(Isa::Avx512Bf16),
            // tools/test.sh's RESNET_EXPECT_ISA spells the two AMX flags of /proc/cpuinfo.
            "amx" | "amx-bf16" | "amx-int8" | "amxbf16" | "amxint8" => Ok(Isa::Amx),
            other => Err(IsaError::UnknownName(other.to_string())),
        }
    }
}

/// The CPU features the kernels care about, detected at run time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// SSE4.1.
    pub sse41: bool,
    /// AVX.
    pub avx: bool,
    /// AVX2.
    pub avx2: bool,
    /// Fused multiply-add (FMA3).
    pub fma: bool,
    /// AVX-512 Foundation.
    pub avx512f: bool,
    /// AVX-512 Byte and Word.
    pub avx512bw: bool,
    /// AVX-512 Vector Length extensions.
    pub avx512vl: bool,
    /// AVX-512 Vector Neural Network Instructions (`vpdpbusd`).
    pub avx512vnni: bool,
    /// AVX-VNNI (VEX-encoded `vpdpbusd` on 256-bit registers).
    pub avxvnni: bool,
    /// AVX512-BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`): CPUID leaf 7 sub-leaf 1 EAX bit 5.
    pub avx512bf16: bool,
    /// AMX tile registers (AMX-TILE): CPUID leaf 7 EDX bit 24.
    pub amx_tile: bool,
    /// AMX tiles with INT8 multiplication (`tdpbusd`): CPUID leaf 7 EDX bit 25.
    pub amx_int8: bool,
    /// AMX tiles with bf16 multiplication (`tdpbf16ps`): CPUID leaf 7 EDX bit 22.
    pub amx_bf16: bool,
    /// Whether this process may execute tile instructions (XCR0 and the Linux permission).
    pub amx: AmxState,
}

/// Whether the tile state is usable by this process. Without it, the first tile instruction
/// would raise SIGILL, so every AMX kernel requires [`AmxState::Granted`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AmxState {
    /// The CPU does not report AMX-TILE.
    #[default]
    Absent,
    /// The CPU has AMX but the OS has not enabled the tile state (XCR0 bits 17 and 18).
    NotEnabledByOs,
    /// Linux refused `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` (the errno).
    PermissionRefused(i32),
    /// Tile state enabled and, on Linux, granted to this process.
    Granted,
}

impl fmt::Display for AmxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmxState::Absent => f.write_str("no AMX (CPUID reports no AMX-TILE)"),
            AmxState::NotEnabledByOs => {
                f.write_str("no AMX: the OS does not enable the tile state (XCR0 bits 17/18)")
            }
            AmxState::PermissionRefused(errno) => write!(
                f,
                "no AMX: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) refused (errno {errno})"
            ),
            AmxState::Granted => f.write_str("AMX tiles granted"),
        }
    }
}

static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();

/// What CPUID leaf 7 says beyond `is_x86_feature_detected!` (the AMX names are not stable Rust
/// yet): `(avx512bf16, amx_tile, amx_int8, amx_bf16)`.
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn cpuid_leaf7() -> (bool, bool, bool, bool) {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is queried only when leaf 0 reports it.
    if unsafe { __cpuid(0) }.eax < 7 {
        return (false, false, false, false);
    }
    // SAFETY: leaf 7 exists (checked above); sub-leaf 1 is read only when sub-leaf 0's EAX (the
    // highest sub-leaf) reports it.
    let (l0, l1_eax) = unsafe {
        let l0 = __cpuid_count(7, 0);
        (
            l0,
            if l0.eax >= 1 {
                __cpuid_count(7, 1).eax
            } else {
                0
            },
        )
    };
    let bit = |r: u32, b: u32| r & (1 << b) != 0;
    (
        // The zmm state must be enabled too: is_x86_feature_detected checks XCR0 for it.
        bit(l1_eax, 5) && is_x86_feature_detected!("avx512f"),
        bit(l0.edx, 24),
        bit(l0.edx, 25),
        bit(l0.edx, 22),
    )
}

/// Whether the OS enables the tile state (XCR0 bits 17 XTILECFG and 18 XTILEDATA) and, on Linux,
/// grants it to this process: asked once, here, before any tile instruction can run.
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn amx_state(amx_tile: bool) -> AmxState {
    if !amx_tile {
        return AmxState::Absent;
    }
    // SAFETY: CPUID leaf 1 exists on every x86-64 CPU.
    let osxsave = unsafe { std::arch::x86_64::__cpuid(1) }.ecx & (1 << 27) != 0;
    if !osxsave {
        return AmxState::NotEnabledByOs;
    }
    let (xcr0_lo, _hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 is valid when CPUID.1:ECX.OSXSAVE is set (checked above); it
    // reads XCR0 into EDX:EAX and touches no memory.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") xcr0_lo, out("edx") _hi,
            options(nomem, nostack, preserves_flags));
    }
    if xcr0_lo & (0b11 << 17) != 0b11 << 17 {
        return AmxState::NotEnabledByOs;
    }
    request_tile_permission()
}

/// Linux (5.16+) enables the tile data state per process on request:
/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, then checks it with
/// `ARCH_GET_XCOMP_PERM`. The permission covers every thread of the process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> AmxState {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_GET_XCOMP_PERM: i64 = 0x1022;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let mut ret: i64;
    // SAFETY: the arch_prctl system call with ARCH_REQ_XCOMP_PERM takes a feature number by
    // value and writes no user memory; the kernel clobbers rcx and r11 (declared).
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM, in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    if ret != 0 {
        return AmxState::PermissionRefused(-ret as i32);
    }
    let mut permitted: u64 = 0;
    // SAFETY: ARCH_GET_XCOMP_PERM writes one u64 to the address in rsi: `permitted`, alive and
    // writable for the call; the kernel clobbers rcx and r11 (declared).
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_GET_XCOMP_PERM, in("rsi") &mut permitted as *mut u64,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    if ret != 0 {
        AmxState::PermissionRefused(-ret as i32)
    } else if permitted & (1 << XFEATURE_XTILEDATA) == 0 {
        AmxState::PermissionRefused(0)
    } else {
        AmxState::Granted
    }
}

/// Other operating systems enable the tile state for every process when XCR0 has it.
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> AmxState {
    AmxState::Granted
}

impl CpuFeatures {
    /// The features of this CPU, detected on first call and cached.
    pub fn get() -> CpuFeatures {
        *FEATURES.get_or_init(CpuFeatures::detect)
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> CpuFeatures {
        let (avx512bf16, amx_tile, amx_int8, amx_bf16) = cpuid_leaf7();
        CpuFeatures {
            sse41: is_x86_feature_detected!("sse4.1"),
            avx: is_x86_feature_detected!("avx"),
            avx2: is_x86_feature_detected!("avx2"),
            fma: is_x86_feature_detected!("fma"),
            avx512f: is_x86_feature_detected!("avx512f"),
            avx512bw: is_x86_feature_detected!("avx512bw"),
            avx512vl: is_x86_feature_detected!("avx512vl"),
            avx512vnni: is_x86_feature_detected!("avx512vnni"),
            avxvnni: is_x86_feature_detected!("avxvnni"),
            avx512bf16,
            amx_tile,
            amx_int8,
            amx_bf16,
            amx: amx_state(amx_tile),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> CpuFeatures {
        CpuFeatures::default()
    }

    /// The names of the detected features, for `resnet inspect`.
    pub fn names(&self) -> Vec<&'static str> {
        let all = [
            (self.sse41, "sse4.1"),
            (self.avx, "avx"),
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512vl, "avx512vl"),
            (self.avx512vnni, "avx512vnni"),
            (self.avxvnni, "avxvnni"),
            (self.avx512bf16, "avx512bf16"),
            (self.amx_tile, "amx-tile"),
            (self.amx_int8, "amx-int8"),
            (self.amx_bf16, "amx-bf16"),
        ];
        all.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
        }
        assert!(matches!(
            "sse9".parse::<Isa>(),
            Err(IsaError::UnknownName(_))
        ));
    }

    #[test]
    fn portable_is_always_supported() {
        assert!(Isa::Portable.is_supported());
        assert_eq!(Isa::supported()[0], Isa::Portable);
    }
}

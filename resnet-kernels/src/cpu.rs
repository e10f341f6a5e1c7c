//! CPU features, detected once per process, and the instruction-set levels the kernels target.
//!
//! The binary is built for generic x86-64; the best kernel is chosen at run time. The environment
//! variable `RESNET_ISA=portable|avx2|avxvnni|avx512|vnni` forces a level (asking for an ISA the
//! CPU lacks is an error, never a crash).
//!
//! The two VNNI levels only change the INT8 kernels ([`crate::int8`]): for f32 work `avxvnni`
//! runs the AVX2 kernels and `vnni` the AVX-512 ones (see [`Isa::f32_level`]).

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
}

impl Isa {
    /// Every level, most portable first.
    pub const ALL: [Isa; 5] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512,
        Isa::Vnni,
    ];

    /// The name used by `RESNET_ISA` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Vnni => "vnni",
        }
    }

    /// The level whose f32 kernels this level runs: the VNNI levels add integer instructions
    /// only, so their f32 work is that of the level below.
    pub fn f32_level(self) -> Isa {
        match self {
            Isa::AvxVnni => Isa::Avx2,
            Isa::Vnni => Isa::Avx512,
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
        }
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
    /// The name is not one of `portable`, `avx2`, `avxvnni`, `avx512`, `vnni`.
    UnknownName(String),
    /// The CPU does not support that level.
    Unsupported(Isa),
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::UnknownName(s) => write!(
                f,
                "unknown ISA '{s}' (RESNET_ISA / --isa take one of: portable, avx2, avxvnni, avx512, vnni)"
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
    /// AMX tiles with INT8 multiplication.
    pub amx_int8: bool,
}

static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();

/// AMX-INT8 from CPUID leaf 7, sub-leaf 0, EDX bit 25 (`is_x86_feature_detected!("amx-int8")`
/// is not stable Rust yet). The OS must also grant the tile state; the AMX kernel asks for it.
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn cpuid_amx_int8() -> bool {
    // SAFETY: CPUID is available on every x86-64 CPU, and leaf 7 exists on every CPU that
    // reports AVX2 (checked first); on older CPUs the leaf is not queried.
    is_x86_feature_detected!("avx2")
        && unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx & (1 << 25) != 0
}

impl CpuFeatures {
    /// The features of this CPU, detected on first call and cached.
    pub fn get() -> CpuFeatures {
        *FEATURES.get_or_init(CpuFeatures::detect)
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> CpuFeatures {
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
            amx_int8: cpuid_amx_int8(),
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
            (self.amx_int8, "amx-int8"),
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

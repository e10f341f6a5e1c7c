//! The kernel registry: the one place that says which micro-kernels exist, what each needs from
//! the CPU, and which one runs for an [`Isa`] level.
//!
//! Each kernel family (f32 GEMM in [`crate::gemm`], INT8 in [`crate::int8`], and any later
//! family such as bf16 or AMX tiles) owns one table, `KERNELS: &[Kernel<Entry>]`, ordered from
//! the most portable kernel (always runnable, the scalar twin the battery tests against) to the
//! fastest. A table line is a [`KernelInfo`] (name, tile shape, B packing, ISA level, CPU check)
//! plus the family's entry points (`Entry`: the GEMM loop nest monomorphised for that kernel, its
//! throughput probe, and whatever else the family needs, e.g. Winograd's transforms for f32).
//!
//! The kernel is chosen once, when the weights are packed ([`select`]), and the packed weights
//! keep the `&'static` line: every later call (`kernel_name`, the GEMM entry, Winograd's
//! transforms, the peak probe) reads from it, so there is no `match isa` anywhere else.
//!
//! Adding a kernel is one new file (the micro-kernel) and one line in its family's table.
//! Adding a family is one table and one line in [`all`].

use crate::cpu::Isa;
use std::fmt;

/// A kernel family: what the kernels compute, and so which entry points their lines carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Family {
    /// `f32 x f32 -> f32` GEMM with a fused bias/residual/ReLU epilogue.
    F32,
    /// `u8 x s8 -> i32` GEMM with a fused requantising epilogue.
    Int8,
    /// `bf16 x bf16 -> f32` GEMM with a fused bias/residual/ReLU epilogue writing bf16 or f32.
    Bf16,
}

impl Family {
    /// The name shown by `inspect` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Family::F32 => "f32",
            Family::Int8 => "int8",
            Family::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What every kernel line says about its kernel, whatever the family.
#[derive(Debug)]
pub struct KernelInfo {
    /// `<isa>_<accumulator>_<MR>x<NR>`, e.g. `avx512_f32_12x32`.
    pub name: &'static str,
    /// The family (and so the entry points) of the kernel.
    pub family: Family,
    /// The ISA level the kernel is written for: [`select`] picks, for a requested level, the last
    /// runnable kernel of the table at or below it.
    pub isa: Isa,
    /// Rows of the register tile (pixels).
    pub mr: usize,
    /// Columns of the register tile (output channels): the width B is packed to.
    pub nr: usize,
    /// The B (weights) packing layout, in words (for `inspect` and the docs).
    pub packing: &'static str,
    /// The CPU features the kernel is compiled for (`#[target_feature]` names).
    pub features: &'static str,
    /// Whether this CPU (and OS) can run the kernel. Evaluated on the cached CPUID results.
    pub runnable: fn() -> bool,
}

impl KernelInfo {
    /// Whether this machine can run the kernel.
    pub fn is_runnable(&self) -> bool {
        (self.runnable)()
    }
}

/// One line of a family's table: the description and the family's entry points.
#[derive(Debug)]
pub struct Kernel<E: 'static> {
    /// What the kernel is.
    pub info: KernelInfo,
    /// How to call it (family-specific; crate-private function pointers).
    pub entry: E,
}

/// The kernel of `table` that runs for the requested `isa`: the last runnable line whose level
/// is at or below `isa` (tables run from portable to fastest), else the first (portable) line.
///
/// The VNNI levels thus run the f32 kernels of the level below (the f32 table has no VNNI
/// line), and an AVX-512 CPU without BW runs the AVX2 INT8 kernel.
pub fn select<E>(table: &'static [Kernel<E>], isa: Isa) -> &'static Kernel<E> {
    table
        .iter()
        .rev()
        .find(|k| k.info.isa <= isa && k.info.is_runnable())
        .unwrap_or(&table[0])
}

/// The lines of `table` this machine can run, in table order: what the kernel battery exercises
/// (and what the `RESNET_EXPECT_ISA` guard checks).
pub fn runnable<E>(table: &'static [Kernel<E>]) -> Vec<&'static Kernel<E>> {
    table.iter().filter(|k| k.info.is_runnable()).collect()
}

/// The line of `table` named `name`, if any (plans name their kernels).
pub fn by_name<E>(table: &'static [Kernel<E>], name: &str) -> Option<&'static Kernel<E>> {
    table.iter().find(|k| k.info.name == name)
}

/// Every registered kernel of every family, families in order, each table portable first.
pub fn all() -> Vec<&'static KernelInfo> {
    let f32_kernels = crate::gemm::KERNELS.iter().map(|k| &k.info);
    let int8_kernels = crate::int8::KERNELS.iter().map(|k| &k.info);
    let bf16_kernels = crate::bf16::KERNELS.iter().map(|k| &k.info);
    f32_kernels
        .chain(int8_kernels)
        .chain(bf16_kernels)
        .collect()
}

/// The kernel each family runs for `isa` on this CPU: `(family, kernel name)`, for the log line
/// a backend writes when it is built.
pub fn chosen(isa: Isa) -> Vec<(Family, &'static str)> {
    vec![
        (Family::F32, crate::gemm::kernel_name(isa)),
        (Family::Int8, crate::int8::kernel_name(isa)),
        (Family::Bf16, crate::bf16::kernel_name(isa)),
    ]
}

/// Parses `RESNET_EXPECT_ISA` (a comma list of ISA names, e.g. `portable,avx2,avx512,vnni`).
///
/// This is the expectation the kernel battery's guard compares against, taken from outside the
/// code under test (`tools/test.sh` derives it from `/proc/cpuinfo` with grep). `None` when the
/// variable is unset; `Some(Err(name))` for a name this build has no ISA level for.
pub fn expected_isas_from_env() -> Option<Result<Vec<Isa>, String>> {
    let raw = std::env::var("RESNET_EXPECT_ISA").ok()?;
    Some(parse_isa_list(&raw))
}

/// Parses a comma list of ISA names; the error is the first unknown name.
pub fn parse_isa_list(raw: &str) -> Result<Vec<Isa>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<Isa>().map_err(|_| s.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_table<E>(table: &'static [Kernel<E>], family: Family) {
        assert!(!table.is_empty());
        assert_eq!(table[0].info.isa, Isa::Portable, "{family}: portable first");
        assert!(table[0].info.is_runnable());
        for pair in table.windows(2) {
            assert!(
                pair[0].info.isa <= pair[1].info.isa,
                "{family}: table not ordered by ISA level at {}",
                pair[1].info.name
            );
        }
        for k in table {
            assert_eq!(k.info.family, family, "{}", k.info.name);
            assert!(k.info.mr > 0 && k.info.nr > 0, "{}", k.info.name);
            assert_eq!(by_name(table, k.info.name).unwrap().info.name, k.info.name);
            // A runnable kernel is one its own level's selection can reach.
            if k.info.is_runnable() {
                assert!(k.info.isa.is_supported(), "{}", k.info.name);
            }
        }
    }

    #[test]
    fn tables_are_ordered_and_consistent() {
        check_table(&crate::gemm::KERNELS, Family::F32);
        check_table(&crate::int8::KERNELS, Family::Int8);
        check_table(&crate::bf16::KERNELS, Family::Bf16);
        let names: Vec<_> = all().iter().map(|k| k.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            names.len(),
            "duplicate kernel names: {names:?}"
        );
    }

    #[test]
    fn selection_never_exceeds_the_requested_level() {
        for isa in Isa::supported() {
            let f = select(&crate::gemm::KERNELS, isa);
            assert!(
                f.info.isa <= isa && f.info.is_runnable(),
                "{isa}: {}",
                f.info.name
            );
            let i = select(&crate::int8::KERNELS, isa);
            assert!(
                i.info.isa <= isa && i.info.is_runnable(),
                "{isa}: {}",
                i.info.name
            );
        }
        assert_eq!(
            select(&crate::gemm::KERNELS, Isa::Portable).info.name,
            "portable_f32_4x16"
        );
    }

    /// The guard that no ISA the machine has was skipped by the battery. The expectation comes
    /// from outside the code under test: `RESNET_EXPECT_ISA`, which `tools/test.sh` derives from
    /// `/proc/cpuinfo` with grep. Every ISA named there must have at least one kernel line the
    /// battery runs (`runnable`, the list the f32 and INT8 batteries iterate), so a detection
    /// bug that hides a kernel, or a family that lacks the ISA, fails here.
    #[test]
    fn every_expected_isa_is_exercised() {
        let expected = match expected_isas_from_env() {
            None => panic!(
                "RESNET_EXPECT_ISA is not set: run the tests through tools/test.sh (it derives \
                 the list from /proc/cpuinfo), or set RESNET_EXPECT_ISA=skip to skip this guard"
            ),
            Some(_) if std::env::var("RESNET_EXPECT_ISA").as_deref() == Ok("skip") => return,
            Some(Err(name)) => panic!(
                "RESNET_EXPECT_ISA names '{name}', for which this build has no ISA level and so \
                 no kernel: the battery cannot exercise it"
            ),
            Some(Ok(list)) => list,
        };
        let mut exercised: Vec<(Isa, &str)> = Vec::new();
        exercised.extend(
            runnable(&crate::gemm::KERNELS)
                .iter()
                .map(|k| (k.info.isa, k.info.name)),
        );
        exercised.extend(
            runnable(&crate::int8::KERNELS)
                .iter()
                .map(|k| (k.info.isa, k.info.name)),
        );
        exercised.extend(
            runnable(&crate::bf16::KERNELS)
                .iter()
                .map(|k| (k.info.isa, k.info.name)),
        );
        for isa in expected {
            assert!(
                exercised.iter().any(|&(level, _)| level == isa),
                "RESNET_EXPECT_ISA expects '{isa}' but no registered kernel of that level runs \
                 here (exercised: {exercised:?})"
            );
        }
    }

    #[test]
    fn isa_lists_parse() {
        assert_eq!(
            parse_isa_list("portable, avx2,,vnni").unwrap(),
            vec![Isa::Portable, Isa::Avx2, Isa::Vnni]
        );
        assert_eq!(parse_isa_list("avx2,sse9"), Err("sse9".to_string()));
    }
}

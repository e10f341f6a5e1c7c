//! `resnet inspect`: the network as a table, and what this machine will run it with.

use crate::args::InspectArgs;
use resnet_core::arch::{ResNet18Arch, INPUT_SIZE};
use resnet_core::backend::BackendKind;
use resnet_core::cpu::{CpuFeatures, Isa};
use resnet_core::registry;
use resnet_core::weights::Weights;
use std::io::Write;
use std::process::ExitCode;

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let arch = ResNet18Arch::new();
    let rows = arch.layer_table(INPUT_SIZE, INPUT_SIZE);
    let total_macs: usize = rows.iter().map(|r| r.macs).sum();
    let total_params: usize = rows.iter().map(|r| r.parameters).sum();
    let shape = |s: [usize; 3]| format!("{}x{}x{}", s[0], s[1], s[2]);
    writeln!(
        out,
        "{:<22} {:<34} {:>12} {:>12} {:>10} {:>14} {:>6}",
        "layer", "op", "input", "output", "params", "MACs", "share"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<22} {:<34} {:>12} {:>12} {:>10} {:>14} {:>5.1}%",
            r.name,
            r.op,
            shape(r.input),
            shape(r.output),
            r.parameters,
            r.macs,
            100.0 * r.macs as f64 / total_macs as f64
        )?;
    }
    writeln!(
        out,
        "total: {total_params} parameters ({:.2} M), {total_macs} MACs ({:.3} G) per {INPUT_SIZE}x{INPUT_SIZE} image",
        total_params as f64 / 1e6,
        total_macs as f64 / 1e9
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "cpu features: {}",
        CpuFeatures::get().names().join(" ")
    )?;
    writeln!(out, "amx tile state: {}", CpuFeatures::get().amx)?;
    let supported: Vec<_> = Isa::supported().iter().map(|i| i.name()).collect();
    writeln!(
        out,
        "kernel ISAs supported: {} (selected: {})",
        supported.join(", "),
        Isa::from_env_or_best()
            .map(|i| i.to_string())
            .unwrap_or_else(|e| e.to_string())
    )?;
    let isa = Isa::from_env_or_best().unwrap_or(Isa::Portable);
    write_kernel_registry(&mut out, isa)?;
    write_plans(&mut out)?;
    for kind in BackendKind::ALL {
        writeln!(out, "backend {:<10} {}", kind.name(), kind.describe(isa))?;
    }
    if let Some(path) = args.weights {
        let w = Weights::load(&path)?;
        writeln!(out)?;
        writeln!(
            out,
            "weights {}: valid ResNet-18, {} parameters{}",
            path.display(),
            w.parameter_count(),
            if w.is_synthetic() {
                ", synthetic (untrained)"
            } else {
                ""
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every registered kernel, whether this CPU runs it, and which one each family selects.
fn write_kernel_registry(out: &mut impl Write, isa: Isa) -> std::io::Result<()> {
    let chosen = registry::chosen(isa);
    writeln!(
        out,
        "registered kernels (family, name, ISA level, tile MR x NR, features, on this CPU):"
    )?;
    for k in registry::all() {
        let selected = chosen.contains(&(k.family, k.name));
        writeln!(
            out,
            "  {:<5} {:<22} {:<9} {:>2}x{:<3} {:<28} {}",
            k.family.name(),
            k.name,
            k.isa.name(),
            k.mr,
            k.nr,
            if k.features.is_empty() {
                "-"
            } else {
                k.features
            },
            match (k.is_runnable(), selected) {
                (true, true) => "runs, selected".to_string(),
                (true, false) => "runs".to_string(),
                (false, _) => format!(
                    "not runnable here: {}",
                    k.isa
                        .why_unsupported()
                        .unwrap_or_else(|| format!("the CPU lacks one of {}", k.features))
                ),
            }
        )?;
    }
    Ok(())
}

/// Which per-layer plan each backend with plans (`native`, `int8`, `bf16`) would run with
/// (`RESNET_PLAN`, else auto) and the cached plans.
fn write_plans(out: &mut impl Write) -> anyhow::Result<()> {
    let choice: resnet_core::plan::PlanChoice = std::env::var("RESNET_PLAN")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(anyhow::Error::msg))
        .transpose()?
        .unwrap_or_default();
    let threads = rayon::current_num_threads();
    let isa = resnet_core::cpu::Isa::from_env_or_best()?;
    for kind in resnet_core::backend::BackendKind::ALL
        .into_iter()
        .filter(|k| k.plan_backend().is_some())
    {
        match crate::tune::resolve_plan(&choice, kind, 1, isa) {
            Ok(Some(p)) => writeln!(
                out,
                "{kind} plan ({choice}, batch 1, {threads} threads): {} (tuned {})",
                p.path.display(),
                p.plan.created
            )?,
            Ok(None) => writeln!(
                out,
                "{kind} plan ({choice}, batch 1, {threads} threads): none, built-in heuristic (`resnet tune --backend {kind}` makes one)"
            )?,
            Err(e) => writeln!(out, "{kind} plan ({choice}): error: {e}")?,
        }
    }
    if let Ok(dir) = crate::tune::plans_dir() {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "json"))
        {
            match resnet_core::plan::Plan::load(f) {
                Ok(p) => writeln!(
                    out,
                    "  cached {}: {}, batch {}, {} threads, {}",
                    f.display(),
                    p.backend,
                    p.key.batch,
                    p.key.threads,
                    p.key.cpu
                )?,
                Err(e) => writeln!(out, "  cached {}: unusable: {e}", f.display())?,
            }
        }
    }
    Ok(())
}

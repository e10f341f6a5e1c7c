//! `resnet tune`: per-layer plans chosen by measurement, and the one place commands resolve
//! `--plan auto|off|FILE` (`RESNET_PLAN`) to a plan.

use anyhow::{bail, Context};
use clap::Args;
use resnet_core::backend::tune::{tune_bf16, tune_int8, tune_native, TuneEvent};
use resnet_core::backend::{BackendKind, WinogradPolicy};
use resnet_core::cpu::Isa;
use resnet_core::plan::{ActivePlan, LayerChoice, Plan, PlanBackend, PlanChoice};
use resnet_core::weights::{synthetic_weights, Weights};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Weights to tune on (default: $RESNET_WEIGHTS or the cache, else synthetic weights: the
    /// timings do not depend on the values).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// The backend to tune: `native`, `int8` or `bf16` (for `int8`, the weights may be a model
    /// made by `resnet quantize`; f32 weights are calibrated on the built-in photos first).
    #[arg(long, default_value = "native", value_name = "NAME")]
    pub backend: BackendKind,
    /// Batch sizes to tune for, comma-separated: one plan each.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Time budget in seconds for all batches together; layers left when it runs out keep the
    /// built-in heuristic's choice (and the plan says so).
    #[arg(long = "budget-s", default_value_t = 60.0, value_name = "SECONDS")]
    pub budget_s: f64,
    /// Kernel ISA (default: $RESNET_ISA, else the best this CPU supports).
    #[arg(long)]
    pub isa: Option<Isa>,
    /// Also write each plan here (one batch) or as FILE with `-b<batch>` before the extension.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Where plans are cached: `<cache>/plans` (`$RESNET_CACHE`, else the user cache directory).
pub fn plans_dir() -> anyhow::Result<PathBuf> {
    Ok(crate::weights_store::cache_dir()?.join("plans"))
}

/// The plan a command runs `backend` with at `batch` on the current thread pool (`None` for a
/// backend without plans): notes (a plan for another CPU or thread count) go to the log; an
/// unreadable or invalid plan file, or one for another backend, is an error.
pub fn resolve_plan(
    choice: &PlanChoice,
    backend: BackendKind,
    batch: usize,
    isa: Isa,
) -> anyhow::Result<Option<ActivePlan>> {
    let Some(backend) = backend.plan_backend() else {
        return Ok(None);
    };
    let dir = plans_dir().ok();
    let threads = rayon::current_num_threads();
    let plan = resnet_core::plan::resolve(
        choice,
        backend,
        dir.as_deref(),
        (threads, batch),
        isa,
        &mut |note| log::warn!("{note}"),
    )?;
    match (&plan, choice) {
        (Some(p), _) => log::debug!("plan {} in use", p.path.display()),
        (None, PlanChoice::Auto) => log::debug!(
            "no cached {backend} plan for this CPU, {threads} threads, batch {batch}: built-in heuristic (run `resnet tune --backend {backend}`)"
        ),
        (None, _) => {}
    }
    Ok(plan)
}

pub fn run(args: TuneArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let Some(backend) = args.backend.plan_backend() else {
        bail!(
            "--backend {}: per-layer plans exist for the native, int8 and bf16 backends",
            args.backend
        );
    };
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("--batch sizes must be at least 1");
    }
    if !(args.budget_s.is_finite() && args.budget_s > 0.0) {
        bail!("--budget-s must be a positive number of seconds");
    }
    let isa = match args.isa {
        Some(isa) if !isa.is_supported() => bail!("--isa {isa}: not supported by this CPU"),
        Some(isa) => isa,
        None => Isa::from_env_or_best()?,
    };
    let offline = crate::weights_store::FetchOptions::offline_only()?;
    let tuned_on = match crate::weights_store::resolve(args.weights.as_deref(), &offline) {
        Ok(p) => TunedOn::load(&p, backend, isa)?,
        Err(_) if args.weights.is_none() => {
            log::info!("no weights given or cached: tuning on synthetic weights (seed 0); timings do not depend on the values");
            TunedOn::from_weights(synthetic_weights(0), backend, isa)?
        }
        Err(e) => return Err(e),
    };
    let dir = plans_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();
    let budget = Duration::from_secs_f64(args.budget_s);
    let mut stdout = std::io::stdout().lock();
    for (i, &batch) in args.batch.iter().enumerate() {
        // Each batch gets an equal share of what is left of the budget.
        let left = budget.saturating_sub(started.elapsed());
        let share = left.div_f64((args.batch.len() - i) as f64);
        let bar = crate::inputs::progress_bar(2, quiet, "candidates");
        let mut on_event = |event: TuneEvent<'_>| {
            match event {
                TuneEvent::Total(n) => bar.set_length(n as u64),
                TuneEvent::Timed { layer, candidate } => {
                    bar.set_message(format!("batch {batch} {layer}"));
                    bar.inc(1);
                    log::debug!(
                        "{layer}: {} {} (error {:.1e})",
                        candidate.choice.label(),
                        candidate
                            .median_ms
                            .map_or("rejected".to_string(), |ms| format!("{ms:.3} ms")),
                        candidate.max_rel_error
                    );
                }
                TuneEvent::BudgetExhausted { layers_left } => log::warn!(
                    "batch {batch}: budget used up, {layers_left} layers keep the built-in heuristic's choice untimed"
                ),
            }
        };
        let mut plan = match &tuned_on {
            TunedOn::F32(weights) if backend == PlanBackend::Bf16 => {
                tune_bf16(weights, isa, batch, share, &mut on_event)
            }
            TunedOn::F32(weights) => tune_native(
                weights,
                isa,
                batch,
                WinogradPolicy::default(),
                share,
                &mut on_event,
            ),
            TunedOn::Int8(model) => tune_int8(model, isa, batch, share, &mut on_event),
        };
        bar.finish_and_clear();
        plan.created = now_rfc3339();
        // Validate what we are about to write, as a reader would.
        let json = plan.to_json();
        Plan::parse(json.as_bytes(), "the tuned plan").context("the tuner made an invalid plan")?;
        let path = dir.join(plan.key.file_name(backend.name()));
        write_atomically(&path, &json)?;
        if let Some(out) = &args.out {
            let out = if args.batch.len() == 1 {
                out.clone()
            } else {
                with_batch_suffix(out, batch)
            };
            write_atomically(&out, &json)?;
        }
        report(&mut stdout, &plan, &path, &|spec| {
            heuristic(spec, backend, isa, batch)
        })?;
    }
    writeln!(
        stdout,
        "tuned in {:.1} s (budget {:.0} s)",
        started.elapsed().as_secs_f64(),
        args.budget_s
    )?;
    Ok(ExitCode::SUCCESS)
}

/// What a backend's plan is tuned on: f32 weights (`native`, `bf16`, which rounds them
/// itself), or a quantised model.
enum TunedOn {
    F32(Weights),
    Int8(resnet_core::quantize::QuantizedModel),
}

impl TunedOn {
    /// `path` for `backend`: f32 weights for `native`; for `int8` an INT8 model file, or f32
    /// weights calibrated on the built-in photos (as `--backend int8` does).
    fn load(path: &std::path::Path, backend: PlanBackend, isa: Isa) -> anyhow::Result<TunedOn> {
        Ok(match backend {
            PlanBackend::Native | PlanBackend::Bf16 => {
                TunedOn::F32(crate::model::load_f32_weights(path)?)
            }
            PlanBackend::Int8 => TunedOn::Int8(crate::model::quantized_model(path, isa)?),
        })
    }

    fn from_weights(weights: Weights, backend: PlanBackend, isa: Isa) -> anyhow::Result<TunedOn> {
        Ok(match backend {
            PlanBackend::Native | PlanBackend::Bf16 => TunedOn::F32(weights),
            PlanBackend::Int8 => TunedOn::Int8(
                resnet_core::quantize::calibrate_on_built_in_images(&weights, isa)?,
            ),
        })
    }
}

/// The built-in heuristic's choice for a convolution at `batch` (what runs without a plan).
fn heuristic(conv: &str, backend: PlanBackend, isa: Isa, batch: usize) -> LayerChoice {
    use resnet_core::arch::{ResNet18Arch, INPUT_SIZE};
    let arch = ResNet18Arch::new();
    let inputs = arch.convs_with_inputs(INPUT_SIZE, INPUT_SIZE);
    let &(spec, [_, h, w]) = inputs
        .iter()
        .find(|(c, _)| c.conv == conv)
        .expect("a plan names the network's convolutions");
    match backend {
        PlanBackend::Native => {
            resnet_core::plan::default_choice(spec, isa, WinogradPolicy::default().applies(spec))
        }
        PlanBackend::Int8 => {
            resnet_core::plan::default_choice_int8(spec, isa, spec.output_hw(h, w).1)
        }
        PlanBackend::Bf16 => {
            resnet_core::plan::default_choice_bf16(isa, &spec.geometry(batch, h, w))
        }
    }
}

/// The plan as a table: each layer's choice, its time, and the heuristic's time beside it.
fn report(
    out: &mut impl Write,
    plan: &Plan,
    path: &std::path::Path,
    heuristic: &dyn Fn(&str) -> LayerChoice,
) -> std::io::Result<()> {
    writeln!(
        out,
        "plan for batch {}, {} threads on {} -> {}",
        plan.key.batch,
        plan.key.threads,
        plan.key.cpu,
        path.display()
    )?;
    writeln!(
        out,
        "  {:<22} {:<44} {:>9} {:>10} {:>5}",
        "layer", "choice", "ms", "default ms", "cands"
    )?;
    let (mut total, mut total_default) = (0.0, 0.0);
    for l in &plan.layers {
        let ms = l
            .candidates
            .iter()
            .find(|c| c.choice == l.choice)
            .and_then(|c| c.median_ms);
        let default = heuristic(&l.layer);
        let default_ms = l
            .candidates
            .iter()
            .find(|c| c.choice == default)
            .and_then(|c| c.median_ms);
        total += ms.unwrap_or(0.0);
        total_default += default_ms.unwrap_or(0.0);
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        writeln!(
            out,
            "  {:<22} {:<44} {:>9} {:>10} {:>5}",
            l.layer,
            l.choice.label(),
            fmt(ms),
            fmt(default_ms),
            l.candidates.len()
        )?;
    }
    writeln!(
        out,
        "  sum of the layers: {total:.2} ms with the plan, {total_default:.2} ms with the built-in heuristic"
    )
}

fn with_batch_suffix(path: &std::path::Path, batch: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-b{batch}.{}", ext.to_string_lossy()),
        None => format!("{stem}-b{batch}"),
    };
    path.with_file_name(name)
}

fn write_atomically(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// UTC now as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, no date crate needed for one stamp).
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

//! Per-layer plans: which strategy each convolution of the `native`, `int8` or `bf16` backend
//! runs with on this CPU, chosen by measurement (`resnet tune`) and stored as JSON in the cache.
//!
//! A plan is keyed by what makes a measurement valid elsewhere: the CPU model string, its
//! feature set, the thread count and the batch size ([`PlanKey`]). It names, for every
//! convolution of the layer table, one [`LayerChoice`] (direct packed GEMM or, for `native`,
//! Winograd F(4x4,3x3), or for `int8` and `bf16` on AMX the input read in place; the kernel by
//! its registry name in the backend's family, f32, INT8 or bf16;
//! and the blocking, whose `mc`/`nc` decide whether threads split a layer over pixels or over
//! output channels), and keeps every timed candidate, so the file is also a report.
//!
//! A plan file is untrusted input: [`Plan::parse`] checks it against the layer table (every
//! convolution exactly once, Winograd only where it applies, known kernels this CPU runs,
//! blocking sizes in range) and fails with an error naming the file and the problem.

use crate::arch::{ConvBn, ResNet18Arch};
use resnet_kernels::cpu::{CpuFeatures, Isa};
use resnet_kernels::gemm::{self, Blocking};
use resnet_kernels::{bf16, int8};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The plan file format; a file with another version is refused.
pub const FORMAT: u32 = 1;

/// Largest blocking size a plan may ask for (a bigger one is certainly a hand-edit).
pub const MAX_BLOCK: usize = 1 << 16;

/// The backends plans exist for: each has its own kernel family and its own cache files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PlanBackend {
    /// f32: direct packed GEMM or Winograd, an f32 kernel.
    Native,
    /// INT8: direct packed GEMM, an INT8 kernel. Every candidate is bit-exact (integer sums).
    Int8,
    /// bf16: direct packed GEMM or (AMX) the input read in place, a bf16 kernel.
    Bf16,
}

impl PlanBackend {
    /// The backend's name (`native`, `int8`), as in cache file names and `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            PlanBackend::Native => "native",
            PlanBackend::Int8 => "int8",
            PlanBackend::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for PlanBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How one convolution is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Implicit im2col + packed GEMM.
    Direct,
    /// Winograd F(4x4, 3x3) (3x3 stride-1 padding-1 layers only).
    Winograd,
    /// `int8` or `bf16` on an AMX line: the input read in place by the tile loads (a padded
    /// copy, no im2col; the stem's window rows); stride-1 layers whose channels fill whole
    /// 64-byte tile rows, and the stem.
    #[serde(rename = "in-place")]
    InPlace,
}

/// One convolution's strategy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(deny_unknown_fields)]
pub struct LayerChoice {
    /// Direct or Winograd.
    pub method: Method,
    /// The kernel's registry name in the backend's family (`avx512_f32_12x32`,
    /// `amx_int8_i32_32x32`).
    pub kernel: String,
    /// Loop 4: K block.
    pub kc: usize,
    /// Loop 3: rows (pixels) per work item.
    pub mc: usize,
    /// Loop 5: columns (output channels) per work item.
    pub nc: usize,
}

impl LayerChoice {
    /// `method` on `kernel` with blocking `b`.
    pub fn new(method: Method, kernel: &str, b: Blocking) -> LayerChoice {
        LayerChoice {
            method,
            kernel: kernel.to_string(),
            kc: b.kc,
            mc: b.mc,
            nc: b.nc,
        }
    }

    /// The blocking as the kernels take it.
    pub fn blocking(&self) -> Blocking {
        Blocking {
            kc: self.kc,
            mc: self.mc,
            nc: self.nc,
        }
    }

    /// Whether this is the built-in heuristic's blocking.
    pub fn has_default_blocking(&self) -> bool {
        self.blocking() == gemm::blocking::DEFAULT
    }

    /// The f32 registry line of the kernel (validated `native` plans only name runnable ones).
    pub fn kernel_line(&self) -> Option<&'static gemm::F32Kernel> {
        resnet_kernels::registry::by_name(&gemm::KERNELS, &self.kernel)
    }

    /// The INT8 registry line of the kernel (validated `int8` plans only name runnable ones).
    pub fn int8_kernel_line(&self) -> Option<&'static int8::Int8Kernel> {
        resnet_kernels::registry::by_name(&int8::KERNELS, &self.kernel)
    }

    /// The bf16 registry line of the kernel (validated `bf16` plans only name runnable ones).
    pub fn bf16_kernel_line(&self) -> Option<&'static bf16::Bf16Kernel> {
        resnet_kernels::registry::by_name(&bf16::KERNELS, &self.kernel)
    }

    /// `direct avx512_f32_12x32 kc256 mc144 nc256`.
    pub fn label(&self) -> String {
        let method = match self.method {
            Method::Direct => "direct",
            Method::Winograd => "winograd",
            Method::InPlace => "in-place",
        };
        format!(
            "{method} {} kc{} mc{} nc{}",
            self.kernel, self.kc, self.mc, self.nc
        )
    }
}

/// One timed candidate of a layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// What was timed.
    pub choice: LayerChoice,
    /// Median milliseconds of the layer alone (null when it was rejected before timing).
    pub median_ms: Option<f64>,
    /// Largest error against direct convolution, relative to the largest output magnitude.
    pub max_rel_error: f64,
    /// Within the backend's accuracy bound.
    pub accepted: bool,
}

/// One convolution's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPlan {
    /// The convolution's state-dict prefix (`layer2.0.conv1`).
    pub layer: String,
    /// The strategy the backend runs.
    pub choice: LayerChoice,
    /// Every candidate timed, fastest first.
    #[serde(default)]
    pub candidates: Vec<Candidate>,
}

/// What a plan's measurements are valid for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(deny_unknown_fields)]
pub struct PlanKey {
    /// `/proc/cpuinfo`'s model name (or `unknown`).
    pub cpu: String,
    /// The CPU features the kernels use, as `inspect` names them.
    pub features: Vec<String>,
    /// Worker threads.
    pub threads: usize,
    /// Images per forward pass.
    pub batch: usize,
}

impl PlanKey {
    /// The key of this machine for `threads` and `batch`.
    pub fn current(threads: usize, batch: usize) -> PlanKey {
        PlanKey {
            cpu: cpu_model_name(),
            features: CpuFeatures::get()
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
            threads,
            batch,
        }
    }

    /// The cache file name of this key: readable, and distinct per key.
    pub fn file_name(&self, backend: &str) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(
            serde_json::to_vec(self)
                .expect("a key serialises")
                .as_slice(),
        );
        let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("{backend}-t{}-b{}-{short}.json", self.threads, self.batch)
    }

    /// Why `self` (a plan's key) does not fit `current`, in words; `None` when it does.
    pub fn mismatch(&self, current: &PlanKey) -> Option<String> {
        if self.cpu != current.cpu {
            Some(format!(
                "it was tuned on another CPU ('{}', this one is '{}')",
                self.cpu, current.cpu
            ))
        } else if self.features != current.features {
            Some("it was tuned with another CPU feature set".into())
        } else if self.threads != current.threads {
            Some(format!(
                "it was tuned for {} threads (running with {})",
                self.threads, current.threads
            ))
        } else if self.batch != current.batch {
            Some(format!(
                "it was tuned for batch {} (running batch {})",
                self.batch, current.batch
            ))
        } else {
            None
        }
    }
}

/// A per-layer plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// [`FORMAT`].
    pub format: u32,
    /// The backend it is for.
    pub backend: PlanBackend,
    /// The ISA level it was tuned at.
    pub isa: String,
    /// What it is valid for.
    pub key: PlanKey,
    /// When it was made (UTC, RFC 3339), for the report.
    #[serde(default)]
    pub created: String,
    /// One entry per convolution, in execution order.
    pub layers: Vec<LayerPlan>,
}

/// Why a plan file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The file cannot be read.
    #[error("plan file {path}: cannot read: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not a plan: bad JSON, wrong fields or types.
    #[error("plan file {path}: not a valid plan: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// What the parser found.
        reason: String,
    },
    /// Well-formed, but does not fit the network or this build.
    #[error("plan file {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The problem, naming the layer.
        reason: String,
    },
}

impl Plan {
    /// Reads and validates a plan file.
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read(path).map_err(|source| PlanError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Plan::parse(&text, &path.display().to_string())
    }

    /// Parses and validates plan JSON; `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Plan, PlanError> {
        let plan: Plan = serde_json::from_slice(bytes).map_err(|e| PlanError::Syntax {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        plan.validate().map_err(|reason| PlanError::Invalid {
            path: origin.to_string(),
            reason,
        })?;
        Ok(plan)
    }

    /// Checks the plan against the layer table and this build's kernels.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} (this build reads format {FORMAT}: run `resnet tune` again)",
                self.format
            ));
        }
        if self.key.threads == 0 || self.key.batch == 0 {
            return Err("threads and batch must be at least 1".into());
        }
        let arch = ResNet18Arch::new();
        let convs: Vec<&ConvBn> = arch.convs().collect();
        if self.layers.len() != convs.len() {
            return Err(format!(
                "{} layers, the network has {} convolutions",
                self.layers.len(),
                convs.len()
            ));
        }
        for (entry, spec) in self.layers.iter().zip(&convs) {
            if entry.layer != spec.conv {
                return Err(format!(
                    "layer '{}' where the network's convolution '{}' comes",
                    entry.layer, spec.conv
                ));
            }
            check_choice(&entry.choice, spec, self.backend)
                .map_err(|e| format!("layer {}: {e}", spec.conv))?;
        }
        Ok(())
    }

    /// Which kernels the plan chose, and for how many convolutions each:
    /// `amx_bf16_f32_32x32 x18, avx512bf16_f32_12x32 x2`.
    pub fn kernel_counts(&self) -> String {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for l in &self.layers {
            *counts.entry(&l.choice.kernel).or_default() += 1;
        }
        let used: Vec<String> = counts.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        used.join(", ")
    }

    /// The first layer's kernel that needs an ISA level above `isa` (its name and level), if
    /// any: such a plan does not run at a lower `--isa` / `RESNET_ISA` than it was tuned at.
    pub fn kernel_above(&self, isa: Isa) -> Option<(&str, Isa)> {
        self.layers.iter().find_map(|l| {
            let level = match self.backend {
                PlanBackend::Native => l.choice.kernel_line().map(|k| k.info.isa),
                PlanBackend::Int8 => l.choice.int8_kernel_line().map(|k| k.info.isa),
                PlanBackend::Bf16 => l.choice.bf16_kernel_line().map(|k| k.info.isa),
            }?;
            (level > isa).then_some((l.choice.kernel.as_str(), level))
        })
    }

    /// The choice for the convolution `conv` (its state-dict prefix).
    pub fn choice(&self, conv: &str) -> Option<&LayerChoice> {
        self.layers
            .iter()
            .find(|l| l.layer == conv)
            .map(|l| &l.choice)
    }

    /// The plan as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan serialises")
    }
}

/// Whether `method` can run `spec` at all on `backend` (for [`Method::InPlace`]: the shape in
/// the backend's element size; the kernel line must read A in place too,
/// [`int8::Int8Kernel::reads_in_place`], [`bf16::Bf16Kernel::reads_in_place`]).
pub fn method_applies(method: Method, spec: &ConvBn, backend: PlanBackend) -> bool {
    // Whether a layout applies does not depend on the image size: any geometry will do.
    let g = spec.geometry(1, spec.kernel, spec.kernel);
    match method {
        Method::Direct => true,
        Method::Winograd => spec.kernel == 3 && spec.stride == 1 && spec.padding == 1,
        Method::InPlace => match backend {
            PlanBackend::Native => false,
            PlanBackend::Int8 => int8::in_place_layout(&g).is_some(),
            PlanBackend::Bf16 => bf16::in_place_layout(&g).is_some(),
        },
    }
}

/// The heuristic's in-place rule: the line can, the layer allows it (the stem's window rows,
/// or the padded layout at [`PADDED_IN_PLACE_STRIDE`]), and its output is at least
/// [`IN_PLACE_MIN_WIDTH`] wide.
pub fn in_place_by_default(kernel: &int8::Int8Kernel, spec: &ConvBn, width: usize) -> bool {
    let g = spec.geometry(1, spec.kernel, spec.kernel);
    kernel.reads_in_place()
        && match int8::in_place_layout(&g) {
            Some(int8::InPlaceLayout::WindowRows | int8::InPlaceLayout::StridedRows) => true,
            Some(int8::InPlaceLayout::Padded | int8::InPlaceLayout::Framed) => {
                spec.stride == PADDED_IN_PLACE_STRIDE
            }
            None => false,
        }
        && width >= IN_PLACE_MIN_WIDTH
}

/// The only stride at which the heuristics read a layer in place with the padded layout. The
/// strided layers (layer2-4's first convolution and their 1x1 downsamples) can be read in
/// place too, from their input's rows split by parity, but on the Xeon model 167 (sixth
/// session of 2026-12-07, `resnet tune`, cold, AMX lines,
/// `benches/results/2026-12-07-xeon-167/tune-strided-in-place.txt`) that lost at batch 8 on
/// all six in both families (bf16 layer2.0.conv1 0.536 -> 0.550 ms, layer4.0.conv1 0.559 ->
/// 0.659, the downsamples by 16-20%; int8 by 6-9%: a batch's split copy does not stay in L2,
/// while the im2col packs each block from the input in cache) and won at batch 1 on some
/// (bf16: layer2 and layer4's downsamples by 30-38%, layer4.0.conv1 by 15%). The tuner tries
/// both per layer and batch.
pub const PADDED_IN_PLACE_STRIDE: usize = 1;

fn check_choice(choice: &LayerChoice, spec: &ConvBn, backend: PlanBackend) -> Result<(), String> {
    if choice.method == Method::InPlace && backend == PlanBackend::Native {
        return Err("the native backend has no in-place method (int8 and bf16 on AMX only)".into());
    }
    if !method_applies(choice.method, spec, backend) {
        return Err(match choice.method {
            Method::InPlace => format!(
                "reading the input in place does not apply to a {}x{} convolution of {} input channels",
                spec.kernel, spec.kernel, spec.in_channels
            ),
            _ => format!(
                "Winograd F(4x4,3x3) does not apply to a {}x{} stride-{} convolution",
                spec.kernel, spec.kernel, spec.stride
            ),
        });
    }
    let runnable = match backend {
        PlanBackend::Native => choice.kernel_line().map(|l| l.info.is_runnable()),
        PlanBackend::Int8 | PlanBackend::Bf16 => {
            if choice.method == Method::Winograd {
                return Err(format!(
                    "the {backend} backend has no Winograd (only direct)"
                ));
            }
            // (runnable, reads in place) of the named line of the backend's family.
            let line = match backend {
                PlanBackend::Int8 => choice
                    .int8_kernel_line()
                    .map(|l| (l.info.is_runnable(), l.reads_in_place())),
                _ => choice
                    .bf16_kernel_line()
                    .map(|l| (l.info.is_runnable(), l.reads_in_place())),
            };
            if choice.method == Method::InPlace && line.is_some_and(|(_, in_place)| !in_place) {
                return Err(format!(
                    "kernel '{}' packs A: only the AMX lines read the input in place",
                    choice.kernel
                ));
            }
            line.map(|(runnable, _)| runnable)
        }
    };
    match runnable {
        None => {
            let family = match backend {
                PlanBackend::Native => "f32",
                PlanBackend::Int8 => "INT8",
                PlanBackend::Bf16 => "bf16",
            };
            return Err(format!("unknown {family} kernel '{}'", choice.kernel));
        }
        Some(false) => return Err(format!("kernel '{}' cannot run on this CPU", choice.kernel)),
        Some(true) => {}
    }
    for (name, v, min) in [
        ("kc", choice.kc, 1),
        ("mc", choice.mc, 1),
        ("nc", choice.nc, 1),
    ] {
        if v < min || v > MAX_BLOCK {
            return Err(format!("{name} = {v} is outside 1..={MAX_BLOCK}"));
        }
    }
    Ok(())
}

/// The heuristic's choice for a layer (what runs without a plan): direct, or Winograd where the
/// policy says, default blocking, the kernel `isa` selects.
pub fn default_choice(spec: &ConvBn, isa: Isa, winograd: bool) -> LayerChoice {
    let method = if winograd && method_applies(Method::Winograd, spec, PlanBackend::Native) {
        Method::Winograd
    } else {
        Method::Direct
    };
    LayerChoice::new(method, gemm::kernel_name(isa), gemm::blocking::DEFAULT)
}

/// The candidates `resnet tune` times for one convolution: the direct packed GEMM with a few
/// blockings (the default; a larger K block; few large work items split over pixels, each
/// thread taking all output channels; split over output channels, so each core streams only
/// its share of a weight-bound layer's filters; many small items), and Winograd where it
/// applies with the default and the channel split. `rows` is the direct GEMM's M (batch x output
/// pixels), `tiles` Winograd's (batch x 4x4 output tiles).
pub fn candidates(
    spec: &ConvBn,
    isa: Isa,
    rows: usize,
    tiles: usize,
    threads: usize,
) -> Vec<LayerChoice> {
    let kernel = gemm::kernel_for(isa);
    let tile = (kernel.info.mr, kernel.info.nr);
    let n = spec.out_channels;
    let d = gemm::blocking::DEFAULT;
    let [pixels, channels, small] = work_splits(d, rows, n, tile, threads);
    let mut out = Vec::new();
    for b in [d, Blocking { kc: 512, ..d }, pixels, channels, small] {
        push_choice(&mut out, Method::Direct, kernel.info.name, b);
    }
    if method_applies(Method::Winograd, spec, PlanBackend::Native) {
        let [_, channels, _] = work_splits(d, tiles, n, tile, threads);
        push_choice(&mut out, Method::Winograd, kernel.info.name, d);
        push_choice(&mut out, Method::Winograd, kernel.info.name, channels);
    }
    out
}

/// The work splits both tuners try around a line's blocking `d`, for M = `rows` and N = `n`
/// with `(MR, NR)` tiles on `threads` threads: few large items split over pixels (each thread
/// takes all output channels), split over output channels (each core streams only its share
/// of a weight-bound layer's filters), and many small items.
fn work_splits(
    d: Blocking,
    rows: usize,
    n: usize,
    (mr, nr): (usize, usize),
    threads: usize,
) -> [Blocking; 3] {
    let threads = threads.max(1);
    let round = |v: usize, to: usize| v.div_ceil(to) * to;
    [
        Blocking {
            mc: round(rows.div_ceil(threads), mr).min(MAX_BLOCK),
            nc: round(n, nr),
            ..d
        },
        Blocking {
            mc: round(rows, mr).min(MAX_BLOCK),
            nc: round(n.div_ceil(threads), nr),
            ..d
        },
        Blocking {
            mc: round(48, mr),
            nc: round(128, nr),
            ..d
        },
    ]
}

/// Appends a candidate unless an equal one is there.
fn push_choice(out: &mut Vec<LayerChoice>, method: Method, kernel: &str, b: Blocking) {
    let c = LayerChoice::new(method, kernel, b);
    if !out.contains(&c) {
        out.push(c);
    }
}

/// Output width from which the heuristic reads a layer's input in place (where the kernel
/// can), for the `int8` and `bf16` backends. On the Xeon model 167 (2026-12-07, `layer_profile`
/// fastest of 20 per block), with 64-byte-aligned buffers the in-place path wins down to 14
/// wide: `int8` batch 1 layer2 0.116/0.121 -> 0.105/0.104 ms, layer3 0.133/0.142 -> 0.117/0.123,
/// batch 8 whole network 9.42 -> 9.00 ms; `bf16` batch 1 layer1 0.29 -> 0.20, layer2
/// 0.19 -> 0.18, layer3 0.21 -> 0.20, batch 8 21.6 -> 19.2 ms. At 7 wide (layer4, the padding
/// is 2 of every 9 rows) it loses (`bf16` 0.33 -> 0.40). Before the alignment (misaligned
/// tile rows) it had won only on layer1, and this was 56.
pub const IN_PLACE_MIN_WIDTH: usize = 14;

/// The `bf16` backend's in-place rule, which sees the batch: from [`IN_PLACE_MIN_WIDTH`] wide,
/// and below it where the padded geometry's rows (the in-place path computes `out_h x
/// padded width` rows per image) fill no more 32-row tile blocks than the im2col's rows. That
/// takes layer4 (7 wide, 63 rows against 49) at batch 1, two blocks either way, and leaves it
/// to im2col at batch 8 (16 blocks against 13). Xeon model 167, fourth session of 2026-12-07
/// (`layer_profile`, 3 interleaved runs): at batch 1 in place layer4.0 0.31 against
/// 0.33-0.34 ms, layer4.1 0.36-0.39 against 0.40-0.42; at batch 8 it lost 3-8%.
pub fn bf16_in_place_preferred(g: &gemm::ConvGeometry) -> bool {
    // The AMX kernels' 2 x 2 tile block.
    let rows_per_block = 2 * resnet_kernels::amx::MAX_ROWS;
    // The in-place path's rows per output row: the padded width split by the stride.
    let padded_w = (g.in_w + 2 * g.pad).div_ceil(g.stride);
    let in_place_blocks = g.batch * (g.out_h() * padded_w).div_ceil(rows_per_block);
    g.out_w() >= IN_PLACE_MIN_WIDTH || in_place_blocks <= g.m().div_ceil(rows_per_block)
}

/// The heuristic's choice for a layer of the `int8` backend: the INT8 kernel `isa` selects,
/// with that line's default blocking, reading the input in place where the line can and the
/// layer is at least [`IN_PLACE_MIN_WIDTH`] wide (`width`: the layer's output width).
pub fn default_choice_int8(spec: &ConvBn, isa: Isa, width: usize) -> LayerChoice {
    let kernel = int8::kernel_for(isa);
    let method = if in_place_by_default(kernel, spec, width) {
        Method::InPlace
    } else {
        Method::Direct
    };
    LayerChoice::new(method, kernel.info.name, kernel.default_blocking())
}

/// The candidates `resnet tune --backend int8` times for one convolution of M = `rows`: for the
/// kernel `isa` selects and for the next runnable line below it (so that on an AMX CPU each layer
/// also tries the AVX-512 VNNI kernel), the line's default blocking, a split over pixels (each
/// thread all output channels), a split over output channels (each core streams its share of the
/// filters) and many small items; on an AMX line, where the layer allows it, the same four read
/// in place ([`Method::InPlace`]), and all of these with the K blocks of [`AMX_SMALL_KC`]. All
/// are bit-exact: integer sums do not depend on the order.
/// The heuristic's choice ([`default_choice_int8`], `width` the output width) comes first.
pub fn candidates_int8(
    spec: &ConvBn,
    isa: Isa,
    rows: usize,
    width: usize,
    threads: usize,
) -> Vec<LayerChoice> {
    let line = |k: &'static int8::Int8Kernel| LineToTry {
        name: k.info.name,
        tile: (k.info.mr, k.info.nr),
        blocking: k.default_blocking(),
        reads_in_place: k.reads_in_place(),
    };
    let lines = lines_to_try(isa, int8::kernel_for).map(|l| l.map(line));
    let first = default_choice_int8(spec, isa, width);
    lines_candidates(first, &lines, spec, rows, threads, PlanBackend::Int8)
}

/// A kernel line as the tuners try it.
struct LineToTry {
    name: &'static str,
    /// `(MR, NR)`.
    tile: (usize, usize),
    /// Its default blocking.
    blocking: Blocking,
    reads_in_place: bool,
}

/// The lines a tuner tries for `isa`: the one `kernel_for` selects, and the next runnable one
/// below it that is not the portable twin (on an AMX CPU, the AVX-512 kernel of the family).
fn lines_to_try<E: 'static>(
    isa: Isa,
    kernel_for: fn(Isa) -> &'static resnet_kernels::registry::Kernel<E>,
) -> [Option<&'static resnet_kernels::registry::Kernel<E>>; 2] {
    let first = kernel_for(isa);
    let second = Isa::ALL
        .iter()
        .rev()
        .copied()
        .filter(|i| *i < isa && i.is_supported())
        .map(kernel_for)
        .find(|k| k.info.name != first.info.name && k.info.isa != Isa::Portable);
    [Some(first), second]
}

/// The smaller K blocks the tuners also try on the AMX lines (multiples of both families' tile
/// depth, 32 bf16 and 64 `i8`). Xeon model 167 (2026-12-07, fifth session, `resnet tune
/// --backend bf16`): 15 of 20 layers chose one at batch 1, the tuned layer sum 2.29 -> 2.17 ms.
const AMX_SMALL_KC: [usize; 2] = [256, 512];

/// `first` (the heuristic's choice), then for each line its default blocking and the three
/// [`work_splits`] for M = `rows`, each with A packed and, where the line reads in place and
/// the layer allows it on `backend`, read in place; on the lines that read in place (AMX) each
/// of these again with the K blocks of [`AMX_SMALL_KC`].
fn lines_candidates(
    first: LayerChoice,
    lines: &[Option<LineToTry>],
    spec: &ConvBn,
    rows: usize,
    threads: usize,
    backend: PlanBackend,
) -> Vec<LayerChoice> {
    let mut out = vec![first];
    for line in lines.iter().flatten() {
        let d = line.blocking;
        let splits = work_splits(d, rows, spec.out_channels, line.tile, threads);
        let methods: &[Method] =
            if line.reads_in_place && method_applies(Method::InPlace, spec, backend) {
                &[Method::Direct, Method::InPlace]
            } else {
                &[Method::Direct]
            };
        for b in std::iter::once(d).chain(splits) {
            for &method in methods {
                push_choice(&mut out, method, line.name, b);
            }
        }
        // On the AMX lines a K block continues the last one's sums in the C tiles, so a small
        // one costs only a tile store and load, and keeps a B panel (kc x 32 x 2 B for bf16)
        // in L1 across the row tiles of an item.
        if line.reads_in_place {
            for kc in AMX_SMALL_KC {
                for b in std::iter::once(d).chain(splits) {
                    for &method in methods {
                        push_choice(&mut out, method, line.name, Blocking { kc, ..b });
                    }
                }
            }
        }
    }
    out
}

/// Whether the `bf16` backend's heuristic reads this convolution's input in place with
/// `kernel`: the stem's window rows wherever the line can, the other layers where the line can,
/// the shape suits and [`bf16_in_place_preferred`] says so for this geometry (its batch).
pub fn bf16_in_place_by_default(kernel: &bf16::Bf16Kernel, g: &gemm::ConvGeometry) -> bool {
    kernel.reads_in_place()
        && match bf16::in_place_layout(g) {
            Some(bf16::InPlaceLayout::WindowRows | bf16::InPlaceLayout::StridedRows) => true,
            Some(bf16::InPlaceLayout::Padded | bf16::InPlaceLayout::Framed) => {
                g.stride == PADDED_IN_PLACE_STRIDE && bf16_in_place_preferred(g)
            }
            None => false,
        }
}

/// The heuristic's choice for a layer of the `bf16` backend at geometry `g` (which carries the
/// batch): the bf16 kernel `isa` selects with its default blocking, in place where
/// [`bf16_in_place_by_default`] says.
pub fn default_choice_bf16(isa: Isa, g: &gemm::ConvGeometry) -> LayerChoice {
    let kernel = bf16::kernel_for(isa);
    let method = if bf16_in_place_by_default(kernel, g) {
        Method::InPlace
    } else {
        Method::Direct
    };
    LayerChoice::new(method, kernel.info.name, kernel.default_blocking())
}

/// The candidates `resnet tune --backend bf16` times for one convolution at geometry `g`: the
/// heuristic's choice first, then for the kernel `isa` selects and for the next runnable line
/// below it (on an AMX CPU, the AVX512-BF16 kernel) the line's default blocking and the three
/// work splits of [`candidates_int8`], each with A packed and, on an AMX line where the layer
/// allows it, read in place; on an AMX line all of these with the K blocks of [`AMX_SMALL_KC`]. On one AMX line every candidate of a layer gives the same bits
/// (the sums continue in the tiles across K blocks, in the same order), except the stem's: its
/// window rows pair the K values otherwise than its im2col; another line sums in another
/// order. Those may round an output to the neighbouring bf16.
pub fn candidates_bf16(
    spec: &ConvBn,
    isa: Isa,
    g: &gemm::ConvGeometry,
    threads: usize,
) -> Vec<LayerChoice> {
    let line = |k: &'static bf16::Bf16Kernel| LineToTry {
        name: k.info.name,
        tile: (k.info.mr, k.info.nr),
        blocking: k.default_blocking(),
        reads_in_place: k.reads_in_place(),
    };
    let lines = lines_to_try(isa, bf16::kernel_for).map(|l| l.map(line));
    let first = default_choice_bf16(isa, g);
    lines_candidates(first, &lines, spec, g.m(), threads, PlanBackend::Bf16)
}

/// Which plan a command runs with.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum PlanChoice {
    /// The built-in heuristic.
    Off,
    /// The cached plan for this CPU, thread count and batch if there is one, else the heuristic.
    #[default]
    Auto,
    /// This file (an error if it is unreadable or invalid; ignored with a note if it is for
    /// another CPU or thread count).
    File(PathBuf),
}

impl std::str::FromStr for PlanChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "" => return Err("empty plan choice (off, auto or a FILE)".into()),
            "off" => PlanChoice::Off,
            "auto" => PlanChoice::Auto,
            path => PlanChoice::File(PathBuf::from(path)),
        })
    }
}

impl std::fmt::Display for PlanChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanChoice::Off => f.write_str("off"),
            PlanChoice::Auto => f.write_str("auto"),
            PlanChoice::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A plan in use and where it came from (for `inspect`, `bench` and the logs).
#[derive(Clone, Debug)]
pub struct ActivePlan {
    /// The plan.
    pub plan: std::sync::Arc<Plan>,
    /// The file it was read from.
    pub path: PathBuf,
}

/// Resolves `choice` for this machine and the ISA level the backend is built for: `Ok(None)`
/// runs the heuristic. `notes` receives the reasons a plan was not used (another CPU, thread
/// count or batch; a kernel above `isa`, when a lower level was asked for).
pub fn resolve(
    choice: &PlanChoice,
    backend: PlanBackend,
    cache: Option<&Path>,
    (threads, batch): (usize, usize),
    isa: Isa,
    notes: &mut dyn FnMut(String),
) -> Result<Option<ActivePlan>, PlanError> {
    let current = PlanKey::current(threads, batch);
    let path = match choice {
        PlanChoice::Off => return Ok(None),
        PlanChoice::File(p) => p.clone(),
        PlanChoice::Auto => match cache {
            Some(dir) => {
                let p = dir.join(current.file_name(backend.name()));
                if !p.exists() {
                    return Ok(None);
                }
                p
            }
            None => return Ok(None),
        },
    };
    let plan = Plan::load(&path)?;
    if plan.backend != backend {
        return Err(PlanError::Invalid {
            path: path.display().to_string(),
            reason: format!("a plan for the {} backend, not for {backend}", plan.backend),
        });
    }
    if let Some(why) = plan.key.mismatch(&current) {
        notes(format!(
            "plan {} ignored: {why}; running the built-in heuristic",
            path.display()
        ));
        return Ok(None);
    }
    if let Some((kernel, level)) = plan.kernel_above(isa) {
        notes(format!(
            "plan {} ignored: it runs {kernel} ({level}), above the ISA level asked for ({isa}); running the built-in heuristic",
            path.display()
        ));
        return Ok(None);
    }
    Ok(Some(ActivePlan {
        plan: std::sync::Arc::new(plan),
        path,
    }))
}

/// `/proc/cpuinfo`'s first `model name`, else `unknown`.
pub fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand edit of a plan.
    type Edit = Box<dyn Fn(&mut Plan)>;

    fn heuristic_plan(threads: usize, batch: usize) -> Plan {
        let isa = Isa::best_supported();
        let arch = ResNet18Arch::new();
        Plan {
            format: FORMAT,
            backend: PlanBackend::Native,
            isa: isa.name().into(),
            key: PlanKey::current(threads, batch),
            created: String::new(),
            layers: arch
                .convs()
                .map(|c| LayerPlan {
                    layer: c.conv.clone(),
                    choice: default_choice(c, isa, true),
                    candidates: vec![],
                })
                .collect(),
        }
    }

    fn int8_heuristic_plan(threads: usize, batch: usize) -> Plan {
        let isa = Isa::best_supported();
        Plan {
            backend: PlanBackend::Int8,
            layers: ResNet18Arch::new()
                .convs()
                .map(|c| LayerPlan {
                    layer: c.conv.clone(),
                    // Width 0: every layer direct (no in-place layer in this plan).
                    choice: default_choice_int8(c, isa, 0),
                    candidates: vec![],
                })
                .collect(),
            ..heuristic_plan(threads, batch)
        }
    }

    #[test]
    fn bf16_reads_in_place_where_it_adds_no_tile_blocks() {
        let arch = ResNet18Arch::new();
        // (layer, input side, batch, in place?)
        for (layer, side, batch, want) in [
            ("layer4.1.conv1", 7, 1, true), // 63 padded rows against 49: 2 blocks each
            ("layer4.1.conv1", 7, 8, false), // 16 blocks against 13
            ("layer3.1.conv1", 14, 8, true), // 14 wide: in place at any batch
            ("layer1.0.conv1", 56, 1, true),
        ] {
            let spec = arch
                .convs()
                .find(|c| c.conv == layer)
                .unwrap_or_else(|| panic!("no {layer}"));
            let g = spec.geometry(batch, side, side);
            assert_eq!(bf16_in_place_preferred(&g), want, "{layer} batch {batch}");
        }
    }

    #[test]
    fn plan_round_trips_through_json() {
        let mut plan = heuristic_plan(2, 1);
        let choice = plan.layers[3].choice.clone();
        plan.layers[3].candidates.push(Candidate {
            choice,
            median_ms: Some(0.25),
            max_rel_error: 1.5e-6,
            accepted: true,
        });
        let back = Plan::parse(plan.to_json().as_bytes(), "mem").unwrap();
        assert_eq!(back, plan);
    }

    #[test]
    fn plan_for_another_cpu_or_threads_is_ignored_with_a_note() {
        let dir = std::env::temp_dir().join(format!("resnet-plan-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (edit, needle) in [
            (
                Box::new(|p: &mut Plan| p.key.cpu = "AMD EPYC 9999".into())
                    as Box<dyn Fn(&mut Plan)>,
                "another CPU",
            ),
            (Box::new(|p: &mut Plan| p.key.threads = 7), "7 threads"),
        ] {
            let mut plan = heuristic_plan(2, 1);
            edit(&mut plan);
            let path = dir.join("other.json");
            std::fs::write(&path, plan.to_json()).unwrap();
            let mut notes = Vec::new();
            let got = resolve(
                &PlanChoice::File(path.clone()),
                PlanBackend::Native,
                None,
                (2, 1),
                Isa::best_supported(),
                &mut |n| notes.push(n),
            )
            .unwrap();
            assert!(got.is_none());
            assert_eq!(notes.len(), 1);
            assert!(notes[0].contains(needle), "{notes:?}");
        }
        // The matching plan is used.
        let path = dir.join("same.json");
        std::fs::write(&path, heuristic_plan(2, 1).to_json()).unwrap();
        let got = resolve(
            &PlanChoice::File(path.clone()),
            PlanBackend::Native,
            None,
            (2, 1),
            Isa::best_supported(),
            &mut |n| panic!("{n}"),
        )
        .unwrap();
        assert!(got.is_some());
        // The same file asked for by the int8 backend: an error naming the file, not a note.
        let err = resolve(
            &PlanChoice::File(path.clone()),
            PlanBackend::Int8,
            None,
            (2, 1),
            Isa::best_supported(),
            &mut |n| panic!("{n}"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            err.contains("a plan for the native backend, not for int8"),
            "{err}"
        );
        // Asked for a lower ISA level than the plan's kernels need (`--isa portable` on a
        // plan tuned at the best level): ignored with a note naming the kernel, so the
        // backend really runs the level asked for. The heuristic plan's kernels are at the
        // best level; where that is the portable one, no plan can be above it.
        let best_kernel = heuristic_plan(2, 1).layers[0].choice.kernel.clone();
        let mut notes = Vec::new();
        let got = resolve(
            &PlanChoice::File(path.clone()),
            PlanBackend::Native,
            None,
            (2, 1),
            Isa::Portable,
            &mut |n| notes.push(n),
        )
        .unwrap();
        if Isa::best_supported() > Isa::Portable {
            assert!(got.is_none());
            assert!(
                notes.len() == 1 && notes[0].contains(&best_kernel) && notes[0].contains("above"),
                "{notes:?}"
            );
        } else {
            assert!(got.is_some() && notes.is_empty(), "{notes:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_or_hand_edited_plans_are_errors_naming_the_file() {
        let good = heuristic_plan(2, 1);
        let mut cases: Vec<(String, &str)> = vec![
            ("{".into(), "not a valid plan"),
            ("[]".into(), "not a valid plan"),
            (
                good.to_json().replace("\"kc\": 256", "\"kc\": -1"),
                "not a valid plan",
            ),
        ];
        let mut edits: Vec<(Edit, &str)> = vec![
            (
                Box::new(|p| {
                    p.layers.pop();
                }),
                "19 layers",
            ),
            (
                Box::new(|p| p.layers.swap(1, 2)),
                "where the network's convolution",
            ),
            (
                Box::new(|p| p.layers[0].choice.method = Method::Winograd),
                "does not apply",
            ),
            (
                Box::new(|p| p.layers[1].choice.kernel = "sse9_f32_1x1".into()),
                "unknown f32 kernel",
            ),
            (Box::new(|p| p.layers[1].choice.mc = 0), "mc = 0"),
            (Box::new(|p| p.layers[1].choice.nc = usize::MAX), "nc = "),
            (Box::new(|p| p.format = 99), "format 99"),
        ];
        for (edit, needle) in edits.drain(..) {
            let mut p = good.clone();
            edit(&mut p);
            cases.push((p.to_json(), needle));
        }
        for (text, needle) in cases {
            let err = Plan::parse(text.as_bytes(), "/tmp/x.plan.json")
                .unwrap_err()
                .to_string();
            assert!(err.contains("/tmp/x.plan.json"), "{err}");
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    /// The edits a plan of a family with an in-place AMX line refuses, each with what the error
    /// says: Winograd, a kernel of another family (`foreign`), a zero blocking size, and in
    /// place on a line that packs A (`packs_a`). `backend` and `family` name the backend and
    /// its kernel family as the messages do. (In place applies to every layer of ResNet-18:
    /// [`in_place_is_refused_where_the_channels_fit_no_layout`] checks the shape rule.)
    fn family_edits(
        backend: &str,
        family: &str,
        foreign: String,
        packs_a: &'static str,
    ) -> Vec<(Edit, String)> {
        vec![
            (
                Box::new(|p| p.layers[1].choice.method = Method::Winograd),
                format!("the {backend} backend has no Winograd"),
            ),
            (
                Box::new(move |p| p.layers[2].choice.kernel = foreign.clone()),
                format!("unknown {family} kernel"),
            ),
            (Box::new(|p| p.layers[3].choice.kc = 0), "kc = 0".into()),
            (
                Box::new(move |p| {
                    p.layers[1].choice.method = Method::InPlace;
                    p.layers[1].choice.kernel = packs_a.into();
                }),
                "only the AMX lines read the input in place".into(),
            ),
        ]
    }

    /// `plan` names its backend in its JSON and parses back to itself.
    fn assert_round_trips(plan: &Plan) {
        let json = plan.to_json();
        let backend = format!("\"backend\": \"{}\"", plan.backend);
        assert!(json.contains(&backend), "{json}");
        assert_eq!(&Plan::parse(json.as_bytes(), "mem").unwrap(), plan);
    }

    /// Each edit of `plan` is refused with an error naming the file and saying what is wrong.
    fn assert_refused(plan: &Plan, edits: Vec<(Edit, String)>) {
        for (edit, needle) in edits {
            let mut p = plan.clone();
            edit(&mut p);
            let err = Plan::parse(p.to_json().as_bytes(), "/tmp/i.json")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("/tmp/i.json") && err.contains(&needle),
                "{needle}: {err}"
            );
        }
    }

    #[test]
    fn an_int8_plan_round_trips_and_its_choices_are_checked_against_the_int8_family() {
        let plan = int8_heuristic_plan(2, 8);
        assert_round_trips(&plan);
        let f32_kernel = gemm::kernel_name(Isa::best_supported()).to_string();
        assert_refused(
            &plan,
            family_edits("int8", "INT8", f32_kernel, int8::KERNELS[0].info.name),
        );
        // In place in a native plan.
        let mut native = heuristic_plan(2, 8);
        native.layers[1].choice.method = Method::InPlace;
        let err = Plan::parse(native.to_json().as_bytes(), "/tmp/n.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no in-place method"), "{err}");
        let other = plan.to_json().replace("\"int8\"", "\"fp16\"");
        let err = Plan::parse(other.as_bytes(), "/tmp/b.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant"), "{err}");
    }

    /// The heuristic's bf16 plan at `batch` (every layer's [`default_choice_bf16`]).
    fn bf16_heuristic_plan(threads: usize, batch: usize) -> Plan {
        let isa = Isa::best_supported();
        Plan {
            backend: PlanBackend::Bf16,
            layers: ResNet18Arch::new()
                .convs_with_inputs(crate::arch::INPUT_SIZE, crate::arch::INPUT_SIZE)
                .into_iter()
                .map(|(spec, [_, h, w])| LayerPlan {
                    layer: spec.conv.clone(),
                    choice: default_choice_bf16(isa, &spec.geometry(batch, h, w)),
                    candidates: vec![],
                })
                .collect(),
            ..heuristic_plan(threads, batch)
        }
    }

    #[test]
    fn a_bf16_plan_round_trips_and_its_choices_are_checked_against_the_bf16_family() {
        let plan = bf16_heuristic_plan(2, 1);
        assert_round_trips(&plan);
        let int8_kernel = int8::kernel_name(Isa::best_supported()).to_string();
        assert_refused(
            &plan,
            family_edits("bf16", "bf16", int8_kernel, bf16::KERNELS[0].info.name),
        );
    }

    #[test]
    fn bf16_candidates_put_the_heuristic_first_and_try_in_place_only_where_it_applies() {
        let isa = Isa::best_supported();
        let arch = ResNet18Arch::new();
        let spec = arch.convs().find(|c| c.conv == "layer4.1.conv2").unwrap();
        let g = spec.geometry(8, 7, 7);
        let cands = candidates_bf16(spec, isa, &g, 2);
        assert_eq!(
            cands[0],
            default_choice_bf16(isa, &g),
            "the heuristic comes first"
        );
        // At batch 8 the heuristic packs layer4 (7 wide: more tile blocks in place).
        assert_eq!(cands[0].method, Method::Direct);
        let kernels: std::collections::BTreeSet<&str> =
            cands.iter().map(|c| c.kernel.as_str()).collect();
        let lines_here = bf16::KERNELS
            .iter()
            .filter(|k| k.info.is_runnable() && k.info.isa != Isa::Portable && k.info.isa <= isa)
            .count();
        assert_eq!(kernels.len(), lines_here.clamp(1, 2), "{kernels:?}");
        // The split over pixels at batch 8: each of 2 threads takes 196 of the 392 rows.
        assert!(
            cands.iter().any(|c| c.nc >= 512 && c.mc < 392),
            "{cands:#?}"
        );
        let in_place = |c: &[LayerChoice]| c.iter().any(|c| c.method == Method::InPlace);
        assert_eq!(in_place(&cands), bf16::kernel_for(isa).reads_in_place());
        // A stride-2 layer is tried in place too (its rows split by parity), but the
        // heuristic packs it, even at batch 1 where the 7-wide stride-1 layers are in place.
        let stride2 = arch.convs().find(|c| c.conv == "layer4.0.conv1").unwrap();
        let (at_1, at_8) = (stride2.geometry(1, 14, 14), stride2.geometry(8, 14, 14));
        assert_eq!(
            in_place(&candidates_bf16(stride2, isa, &at_8, 2)),
            bf16::kernel_for(isa).reads_in_place()
        );
        assert_eq!(default_choice_bf16(isa, &at_1).method, Method::Direct);
        let stride1 = arch.convs().find(|c| c.conv == "layer4.0.conv2").unwrap();
        assert_eq!(
            default_choice_bf16(isa, &stride1.geometry(1, 7, 7)).method == Method::InPlace,
            bf16::kernel_for(isa).reads_in_place()
        );
        // The stem reads its window rows in place where the line can, at any batch.
        let stem = arch.convs().next().unwrap();
        assert_eq!(
            default_choice_bf16(isa, &stem.geometry(8, 224, 224)).method == Method::InPlace,
            bf16::kernel_for(isa).reads_in_place()
        );
        for c in &cands {
            check_choice(c, spec, PlanBackend::Bf16).unwrap();
        }
    }

    #[test]
    fn int8_candidates_cover_two_kernels_where_the_cpu_has_two_and_the_two_splits() {
        let isa = Isa::best_supported();
        let arch = ResNet18Arch::new();
        let spec = arch.convs().find(|c| c.conv == "layer4.1.conv2").unwrap();
        let cands = candidates_int8(spec, isa, 49, 7, 2);
        assert_eq!(
            cands[0],
            default_choice_int8(spec, isa, 7),
            "the heuristic comes first"
        );
        let kernels: std::collections::BTreeSet<&str> =
            cands.iter().map(|c| c.kernel.as_str()).collect();
        // Below the selected line, a second non-portable line exists from AVX2 (AVX-VNNI or
        // AVX2 INT8 kernels) upwards.
        let lines_here = int8::KERNELS
            .iter()
            .filter(|k| k.info.is_runnable() && k.info.isa != Isa::Portable && k.info.isa <= isa)
            .count();
        assert_eq!(kernels.len(), lines_here.min(2), "{kernels:?}");
        // The split over output channels: each of 2 threads takes 256 of the 512.
        assert!(
            cands.iter().any(|c| c.nc == 256 && c.mc >= 49),
            "{cands:#?}"
        );
        // On an AMX line both layers are also tried in place (the stride-2 one from its rows
        // split by parity), but the heuristic packs the stride-2 ones even from 14 wide.
        let in_place = |c: &[LayerChoice]| c.iter().any(|c| c.method == Method::InPlace);
        let reads_in_place = int8::kernel_for(isa).reads_in_place();
        assert_eq!(in_place(&cands), reads_in_place);
        let stride2 = arch.convs().find(|c| c.conv == "layer4.0.conv1").unwrap();
        assert_eq!(
            in_place(&candidates_int8(stride2, isa, 49, 7, 2)),
            reads_in_place
        );
        let stride2_wide = arch.convs().find(|c| c.conv == "layer2.0.conv1").unwrap();
        assert_eq!(
            default_choice_int8(stride2_wide, isa, 28).method,
            Method::Direct
        );
        // The heuristic reads layer1 (56 wide) in place where the line can.
        let wide = arch.convs().find(|c| c.conv == "layer1.0.conv1").unwrap();
        assert_eq!(
            default_choice_int8(wide, isa, 56).method == Method::InPlace,
            int8::kernel_for(isa).reads_in_place()
        );
        for c in &cands {
            check_choice(c, spec, PlanBackend::Int8).unwrap();
        }
    }

    /// In place is refused by the shape rule where the channels fill no whole tile row and one
    /// kernel row's window does not fit one either (48 channels: 96 bf16 bytes, 48 INT8 bytes;
    /// 3 x 48 per kernel row), and allowed at stride 2 where they do (64 channels).
    #[test]
    fn in_place_is_refused_where_the_channels_fit_no_layout() {
        let spec = |in_channels, stride| ConvBn {
            conv: "x".into(),
            bn: "x.bn".into(),
            in_channels,
            out_channels: 64,
            kernel: 3,
            stride,
            padding: 1,
        };
        for backend in [PlanBackend::Int8, PlanBackend::Bf16] {
            assert!(!method_applies(Method::InPlace, &spec(48, 1), backend));
            assert!(method_applies(Method::InPlace, &spec(64, 2), backend));
            let choice = LayerChoice {
                method: Method::InPlace,
                ..default_choice_int8(&spec(48, 1), Isa::best_supported(), 56)
            };
            let err = check_choice(&choice, &spec(48, 1), backend).unwrap_err();
            assert!(
                err.contains("does not apply to a 3x3 convolution of 48 input channels"),
                "{err}"
            );
        }
    }
}

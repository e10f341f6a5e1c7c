//! Compute kernels for resnet18-rs. This crate knows nothing about ResNet, images or files:
//! it takes slices and shapes and returns numbers.
//!
//! It is the only crate of the workspace that may contain `unsafe`; every such block carries a
//! `// SAFETY:` line naming the invariant it relies on.
//!
//! - [`registry`]: the kernel registry, one table per kernel family: which micro-kernels exist,
//!   what each needs from the CPU, which one runs for an ISA level.
//! - [`tiling`]: what the f32 and INT8 loop nests share (A sources, blocking, work split).
//! - [`team`]: the persistent worker team the parallel regions of a forward pass run on.
//! - [`cpu`]: CPU feature detection (once per process) and the [`cpu::Isa`] levels, with the
//!   `RESNET_ISA` override.
//! - [`peak`]: the measured FMA peak, for "percent of peak" figures.
//! - [`pool`]: max-pool 3x3/2 and global average pool, NHWC and NCHW.
//! - [`library_gemm`]: `matrixmultiply` behind a safe interface, and NCHW im2col (the baseline).
//! - [`gemm`]: packed SGEMM with per-ISA micro-kernels and a fused epilogue; implicit im2col.
//! - [`winograd`]: F(4x4, 3x3) convolution for 3x3 stride-1 layers, on top of [`gemm`].
//! - [`amx`]: the AMX tile kernels (AMX-INT8, AMX-BF16) on a tile-operations interface, with
//!   the real instructions (`asm!`) and a software model of them.
//! - [`int8`]: `u8 x s8 -> i32` GEMM (AVX-512 VNNI, AVX-VNNI, AVX2, portable) with a fused
//!   requantising epilogue, and the INT8 design note.
#![deny(missing_docs)]

pub mod aligned;
pub mod alloc_counter;
pub mod amx;
pub mod bf16;
#[cfg(target_arch = "x86_64")]
mod broadcast_loop;
pub mod cpu;
pub mod gemm;
pub mod int8;
pub mod layout;
pub mod library_gemm;
pub mod memory;
pub mod peak;
pub mod pool;
pub mod registry;
pub mod team;
#[cfg(test)]
mod test_rng;
pub mod tiling;
pub mod winograd;

//! The Llama/Qwen2 decoder (SmolLM2 is Llama; Qwen2 adds q/k/v biases), with HF tensor names.
//!
//! Two execution modes share the same weights:
//! - inference (`differentiable = false`) uses candle's fused `rms_norm` and `rope` kernels and
//!   our vectorised `ops::softmax_last_dim`, which are fast but carry no gradient;
//! - training (`differentiable = true`) uses plain tensor ops everywhere, so gradients reach
//!   every weight (candle's fused ops would silently drop them).
//!
//! RoPE follows the HF convention (rotate_half on the two halves of each head). GGUF files from
//! llama.cpp store Q/K rows permuted for the interleaved convention; `crate::gguf` undoes that at
//! load. `rope_scaling` is not implemented: configs asking for a factor other than 1 are refused
//! by [`LlamaConfig::validate`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use super::amx::{Amx, Bf16Weight};
use super::config::LlamaConfig;
use super::lora::{frozen_matmul_t, lora_linear, FrozenBf16, LoraLayer};
use crate::backend::LlmError;

/// A dense layer `y = x Wᵀ + b` with the HF weight layout `(out, in)`, and optionally a LoRA
/// adapter adding `s · x Aᵀ Bᵀ` (see [`super::lora`]).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraLayer>,
    /// The weight packed in bf16 for AMX ([`Llama::pack_bf16`]): inference uses it when present,
    /// training when `bf16_backward` is there too. Whoever changes `weight` must clear both.
    pub bf16: Option<Arc<Bf16Weight>>,
    /// The transposed weight packed in bf16, for the input's gradient `dy · W` in training.
    pub bf16_backward: Option<Arc<Bf16Weight>>,
}

impl Linear {
    /// The differentiable product: the base weight is frozen (only the input gets a gradient
    /// through it), the adapter's `A` and `B` are trained.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_features = dims[dims.len() - 1];
        let rows = x.elem_count() / in_features.max(1);
        let flat = x.reshape((rows, in_features))?;
        if let Some(lora) = &self.lora {
            if let Some(y) = lora_linear(&flat, &self.weight, self.bf16_pair(), lora)? {
                return self.finish_without_adapter(y, dims);
            }
        }
        let y = frozen_matmul_t(&flat, &self.weight, self.bf16_pair())?;
        self.finish(&flat, y, dims)
    }

    /// The forward and backward bf16 packs, when training may use them.
    fn bf16_pair(&self) -> Option<FrozenBf16<'_>> {
        Some(FrozenBf16 {
            forward: self.bf16.as_ref()?,
            backward: self.bf16_backward.as_ref()?,
        })
    }

    /// Adds the adapter and the bias to the flat `(rows, out)` product and restores the input's
    /// leading dims.
    fn finish(&self, flat: &Tensor, y: Tensor, dims: Vec<usize>) -> candle_core::Result<Tensor> {
        let y = match &self.lora {
            Some(lora) => (y + lora.delta(flat)?)?,
            None => y,
        };
        self.finish_without_adapter(y, dims)
    }

    /// Adds the bias to the flat `(rows, out)` output (adapter included) and restores the
    /// input's leading dims.
    fn finish_without_adapter(
        &self,
        y: Tensor,
        mut dims: Vec<usize>,
    ) -> candle_core::Result<Tensor> {
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        let last = dims.len() - 1;
        dims[last] = self.weight.dim(0)?;
        y.reshape(dims)
    }

    /// [`Linear::forward`] without gradient tracking: the bf16 AMX product when the weight is
    /// packed, else [`few_rows_matmul_t`] for few rows and candle's gemm for many.
    pub fn forward_inference(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_features = dims[dims.len() - 1];
        let rows = x.elem_count() / in_features.max(1);
        let flat = x.reshape((rows, in_features))?;
        let y = match &self.bf16 {
            Some(packed) => packed.matmul_t_tensor(&flat)?,
            None => match few_rows_matmul_t(&flat, &self.weight)? {
                Some(y) => y,
                None => flat.matmul(&self.weight.t()?)?,
            },
        };
        self.finish(&flat, y, dims)
    }
}

/// Most rows for which [`few_rows_matmul_t`] beats candle's gemm.
const FEW_ROWS: usize = 16;

/// `x (rows, in) · weightᵀ` for a weight `(out, in)` when `rows <= FEW_ROWS`, on the CPU in f32:
/// each weight row is read once, as contiguous dot products with every row of `x`. candle's gemm
/// packs the whole transposed weight on every call, which dominated decode steps. Returns
/// `None` where this does not apply (other device or dtype, more rows, non-contiguous weight).
/// Carries no gradient.
pub fn few_rows_matmul_t(x: &Tensor, weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    use rayon::prelude::*;
    let (rows, inner) = x.dims2()?;
    let (out, weight_inner) = weight.dims2()?;
    if rows == 0
        || rows > FEW_ROWS
        || inner != weight_inner
        || inner == 0
        || !matches!(x.device(), Device::Cpu)
        || !matches!(weight.device(), Device::Cpu)
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
    {
        return Ok(None);
    }
    let inputs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (storage, layout) = weight.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Ok(None);
    };
    let weights = match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => &data[start..end],
        _ => return Ok(None),
    };
    let tile = tile_kernel();
    let block = out
        .div_ceil(rayon::current_num_threads().max(1) * 8)
        .max(16)
        .next_multiple_of(TILE_WEIGHT_ROWS);
    let mut transposed = vec![0f32; out * rows];
    transposed
        .par_chunks_mut(block * rows)
        .enumerate()
        .for_each(|(index, chunk)| {
            let first = index * block;
            let count = chunk.len() / rows;
            let block_weights = &weights[first * inner..(first + count) * inner];
            tile(block_weights, &inputs, inner, chunk);
        });
    drop(storage);
    let values = if rows == 1 {
        transposed
    } else {
        let mut values = vec![0f32; out * rows];
        for (o, outputs) in transposed.chunks(rows).enumerate() {
            for (r, &value) in outputs.iter().enumerate() {
                values[r * out + o] = value;
            }
        }
        values
    };
    Tensor::from_vec(values, (rows, out), x.device()).map(Some)
}

/// Weight rows handled together by the tile kernels.
const TILE_WEIGHT_ROWS: usize = 4;
/// Input rows handled together by the tile kernels.
const TILE_INPUT_ROWS: usize = 2;

/// Computes `outputs[o * rows + r] = weights[o] · inputs[r]` for every weight row `o` of
/// `weights` (rows of `inner` floats) and every input row `r` of `inputs`.
type TileKernel = fn(&[f32], &[f32], usize, &mut [f32]);

fn tile_kernel() -> TileKernel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return tiles_avx512;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return tiles_avx2;
    }
    tiles_portable
}

/// Walks `outputs` (`outputs[o * rows + r] = weights[o] · inputs[r]`) in tiles of up to `W`
/// weight rows by `R` input rows; `tile(tile_weights, tile_inputs, weight_rows, input_rows, sums)`
/// fills `sums[..weight_rows][..input_rows]` for one tile.
fn for_each_tile<const W: usize, const R: usize>(
    weights: &[f32],
    inputs: &[f32],
    inner: usize,
    outputs: &mut [f32],
    mut tile: impl FnMut(&[f32], &[f32], usize, usize, &mut [[f32; R]; W]),
) {
    let rows = inputs.len() / inner;
    let weight_rows = weights.len() / inner;
    assert!(outputs.len() >= weight_rows * rows);
    let mut o = 0;
    while o < weight_rows {
        let tile_o = W.min(weight_rows - o);
        let mut r = 0;
        while r < rows {
            let tile_r = R.min(rows - r);
            let mut sums = [[0f32; R]; W];
            tile(
                &weights[o * inner..(o + tile_o) * inner],
                &inputs[r * inner..(r + tile_r) * inner],
                tile_o,
                tile_r,
                &mut sums,
            );
            for (a, sum_row) in sums.iter().enumerate().take(tile_o) {
                for (b, &sum) in sum_row.iter().enumerate().take(tile_r) {
                    outputs[(o + a) * rows + r + b] = sum;
                }
            }
            r += tile_r;
        }
        o += tile_o;
    }
}

/// Weight rows and input rows of one AVX-512 tile: 16 accumulators of 16 floats, plus the 4
/// input vectors and one weight vector, fit the 32 vector registers; each load then feeds 32
/// multiply-adds, where the AVX2 tile's feed about 11 (decode at batch 8 was bound by loads).
const AVX512_TILE: usize = 4;

#[cfg(target_arch = "x86_64")]
fn tiles_avx512(weights: &[f32], inputs: &[f32], inner: usize, outputs: &mut [f32]) {
    for_each_tile::<AVX512_TILE, AVX512_TILE>(
        weights,
        inputs,
        inner,
        outputs,
        |tile_weights, tile_inputs, tile_o, tile_r, sums| {
            if tile_o == AVX512_TILE {
                tile_avx512_rows::<AVX512_TILE>(tile_weights, tile_inputs, inner, tile_r, sums);
                return;
            }
            for (a, sum_row) in sums.iter_mut().enumerate().take(tile_o) {
                let mut one = [[0f32; AVX512_TILE]; AVX512_TILE];
                let row = &tile_weights[a * inner..(a + 1) * inner];
                tile_avx512_rows::<1>(row, tile_inputs, inner, tile_r, &mut one);
                *sum_row = one[0];
            }
        },
    );
}

/// `WEIGHT_ROWS` weight rows against `input_rows` (1..=4) input rows.
#[cfg(target_arch = "x86_64")]
fn tile_avx512_rows<const WEIGHT_ROWS: usize>(
    weights: &[f32],
    inputs: &[f32],
    inner: usize,
    input_rows: usize,
    sums: &mut [[f32; AVX512_TILE]; AVX512_TILE],
) {
    // SAFETY: only reached through `tile_kernel`, which checked for AVX-512F; the slices hold
    // exactly WEIGHT_ROWS (resp. input_rows) rows of `inner` floats.
    unsafe {
        match input_rows {
            4 => tile_avx512::<WEIGHT_ROWS, 4>(weights, inputs, inner, sums),
            3 => tile_avx512::<WEIGHT_ROWS, 3>(weights, inputs, inner, sums),
            2 => tile_avx512::<WEIGHT_ROWS, 2>(weights, inputs, inner, sums),
            _ => tile_avx512::<WEIGHT_ROWS, 1>(weights, inputs, inner, sums),
        }
    }
}

/// One AVX-512 tile: each weight vector (16 floats) is loaded once and reused for every input
/// row; the results land in `sums[..WEIGHT_ROWS][..INPUT_ROWS]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const WEIGHT_ROWS: usize, const INPUT_ROWS: usize>(
    weights: &[f32],
    inputs: &[f32],
    inner: usize,
    sums: &mut [[f32; AVX512_TILE]; AVX512_TILE],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); INPUT_ROWS]; WEIGHT_ROWS];
    let mut k = 0;
    // SAFETY: every load reads 16 floats at `row * inner + k .. + 16` with `k + 16 <= inner`,
    // inside slices of exactly WEIGHT_ROWS (resp. INPUT_ROWS) rows of `inner` floats.
    unsafe {
        while k + 16 <= inner {
            let mut x = [_mm512_setzero_ps(); INPUT_ROWS];
            for (b, value) in x.iter_mut().enumerate() {
                *value = _mm512_loadu_ps(inputs.as_ptr().add(b * inner + k));
            }
            for (a, acc_row) in acc.iter_mut().enumerate() {
                let w = _mm512_loadu_ps(weights.as_ptr().add(a * inner + k));
                for (b, sum) in acc_row.iter_mut().enumerate() {
                    *sum = _mm512_fmadd_ps(w, x[b], *sum);
                }
            }
            k += 16;
        }
    }
    for (a, acc_row) in acc.iter().enumerate() {
        for (b, &sum) in acc_row.iter().enumerate() {
            let tail: f32 = weights[a * inner + k..(a + 1) * inner]
                .iter()
                .zip(&inputs[b * inner + k..(b + 1) * inner])
                .map(|(p, q)| p * q)
                .sum();
            sums[a][b] = _mm512_reduce_add_ps(sum) + tail;
        }
    }
}

fn tiles_portable(weights: &[f32], inputs: &[f32], inner: usize, outputs: &mut [f32]) {
    let rows = inputs.len() / inner;
    for (weight_row, outs) in weights.chunks_exact(inner).zip(outputs.chunks_mut(rows)) {
        for (input_row, out) in inputs.chunks_exact(inner).zip(outs.iter_mut()) {
            *out = weight_row.iter().zip(input_row).map(|(a, b)| a * b).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn tiles_avx2(weights: &[f32], inputs: &[f32], inner: usize, outputs: &mut [f32]) {
    for_each_tile::<TILE_WEIGHT_ROWS, TILE_INPUT_ROWS>(
        weights,
        inputs,
        inner,
        outputs,
        |tile_weights, tile_inputs, tile_o, tile_r, sums| {
            // SAFETY: only handed out by `tile_kernel` after it checked for AVX2 and FMA; the
            // slices hold exactly the tile's rows of `inner` floats.
            unsafe {
                match (tile_o, tile_r) {
                    (TILE_WEIGHT_ROWS, TILE_INPUT_ROWS) => tile_avx2::<
                        TILE_WEIGHT_ROWS,
                        TILE_INPUT_ROWS,
                    >(
                        tile_weights, tile_inputs, inner, sums
                    ),
                    (TILE_WEIGHT_ROWS, _) => {
                        for b in 0..tile_r {
                            tile_avx2::<TILE_WEIGHT_ROWS, 1>(
                                tile_weights,
                                &tile_inputs[b * inner..(b + 1) * inner],
                                inner,
                                sums,
                            );
                            for sum_row in sums.iter_mut() {
                                sum_row[b] = sum_row[0];
                            }
                        }
                    }
                    _ => {
                        let mut one = [[0f32; TILE_INPUT_ROWS]; TILE_WEIGHT_ROWS];
                        for a in 0..tile_o {
                            for b in 0..tile_r {
                                tile_avx2::<1, 1>(
                                    &tile_weights[a * inner..(a + 1) * inner],
                                    &tile_inputs[b * inner..(b + 1) * inner],
                                    inner,
                                    &mut one,
                                );
                                sums[a][b] = one[0][0];
                            }
                        }
                    }
                }
            }
        },
    );
}

/// One tile: `WEIGHT_ROWS` weight rows against `INPUT_ROWS` input rows (at most the
/// `TILE_*` sizes), each weight vector loaded once per 8 floats and reused for every input row
/// (register blocking); the results land in `sums[..WEIGHT_ROWS][..INPUT_ROWS]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const WEIGHT_ROWS: usize, const INPUT_ROWS: usize>(
    weights: &[f32],
    inputs: &[f32],
    inner: usize,
    sums: &mut [[f32; TILE_INPUT_ROWS]; TILE_WEIGHT_ROWS],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); INPUT_ROWS]; WEIGHT_ROWS];
    let mut k = 0;
    // SAFETY: every load reads 8 floats at `row * inner + k .. + 8` with `k + 8 <= inner`, inside
    // slices of exactly TILE_WEIGHT_ROWS (resp. TILE_INPUT_ROWS) rows of `inner` floats.
    unsafe {
        while k + 8 <= inner {
            let mut x = [_mm256_setzero_ps(); INPUT_ROWS];
            for (b, value) in x.iter_mut().enumerate() {
                *value = _mm256_loadu_ps(inputs.as_ptr().add(b * inner + k));
            }
            for (a, acc_row) in acc.iter_mut().enumerate() {
                let w = _mm256_loadu_ps(weights.as_ptr().add(a * inner + k));
                for (b, sum) in acc_row.iter_mut().enumerate() {
                    *sum = _mm256_fmadd_ps(w, x[b], *sum);
                }
            }
            k += 8;
        }
    }
    let mut lanes = [0f32; 8];
    for (a, acc_row) in acc.iter().enumerate() {
        for (b, &sum) in acc_row.iter().enumerate() {
            // SAFETY: `lanes` holds exactly 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
            let tail: f32 = weights[a * inner + k..(a + 1) * inner]
                .iter()
                .zip(&inputs[b * inner + k..(b + 1) * inner])
                .map(|(p, q)| p * q)
                .sum();
            sums[a][b] = lanes.iter().sum::<f32>() + tail;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: Tensor,
    pub post_attention_layernorm: Tensor,
}

/// Where the input tokens sit in their sequences.
#[derive(Debug, Clone, Copy)]
pub enum Positions<'a> {
    /// Every row's first input token has this position (rows share one timeline).
    Uniform(usize),
    /// Row `r`'s first input token has position `starts[r]`.
    PerRow(&'a [usize]),
}

/// Keys and values of earlier positions, one preallocated `(batch, kv_heads, capacity, head_dim)`
/// buffer per layer; positions `0..len` are filled. Rows may be left-padded (see
/// [`KvCache::left_padded`]); the caller masks the padding.
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    capacity: usize,
    batch: usize,
}

impl KvCache {
    pub fn new(model: &Llama, batch: usize, capacity: usize) -> candle_core::Result<Self> {
        let config = &model.config;
        let shape = (batch, config.num_kv_heads(), capacity, config.head_dim());
        let mut keys = Vec::with_capacity(config.num_hidden_layers);
        let mut values = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            keys.push(Tensor::zeros(shape, DType::F32, &model.device)?);
            values.push(Tensor::zeros(shape, DType::F32, &model.device)?);
        }
        Ok(KvCache {
            keys,
            values,
            len: 0,
            capacity,
            batch,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// A cache of `batch` rows that all start with the content of the one-row `prefix`.
    pub fn broadcast_prefix(
        prefix: &KvCache,
        batch: usize,
        capacity: usize,
    ) -> candle_core::Result<Self> {
        if prefix.batch != 1 {
            candle_core::bail!("broadcast_prefix needs a one-row prefix cache");
        }
        let capacity = capacity.max(prefix.len);
        let mut keys = Vec::with_capacity(prefix.keys.len());
        let mut values = Vec::with_capacity(prefix.keys.len());
        for (k, v) in prefix.keys.iter().zip(&prefix.values) {
            let (_, heads, _, head_dim) = k.dims4()?;
            let shape = (batch, heads, capacity, head_dim);
            let new_k = Tensor::zeros(shape, DType::F32, k.device())?;
            let new_v = Tensor::zeros(shape, DType::F32, k.device())?;
            let filled = (batch, heads, prefix.len, head_dim);
            new_k.slice_set(
                &k.narrow(2, 0, prefix.len)?
                    .broadcast_as(filled)?
                    .contiguous()?,
                2,
                0,
            )?;
            new_v.slice_set(
                &v.narrow(2, 0, prefix.len)?
                    .broadcast_as(filled)?
                    .contiguous()?,
                2,
                0,
            )?;
            keys.push(new_k);
            values.push(new_v);
        }
        Ok(KvCache {
            keys,
            values,
            len: prefix.len,
            capacity,
            batch,
        })
    }

    /// Stacks one-row caches of different lengths into one batch, each repeated `repeat` times,
    /// left-padded with zeros to the longest; returns the cache and each row's padding length.
    pub fn left_padded(
        parts: &[(&KvCache, usize)],
        capacity: usize,
    ) -> candle_core::Result<(Self, Vec<usize>)> {
        let Some((first, _)) = parts.first() else {
            candle_core::bail!("left_padded needs at least one cache");
        };
        let longest = parts.iter().map(|(c, _)| c.len).max().unwrap_or(0);
        let capacity = capacity.max(longest);
        let batch: usize = parts.iter().map(|(_, n)| *n).sum();
        let mut pads = Vec::with_capacity(batch);
        for (cache, repeat) in parts {
            if cache.batch != 1 {
                candle_core::bail!("left_padded needs one-row caches");
            }
            pads.extend(std::iter::repeat_n(longest - cache.len, *repeat));
        }
        let layers = first.keys.len();
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for layer in 0..layers {
            let stack = |pick: &dyn Fn(&KvCache) -> &Tensor| -> candle_core::Result<Tensor> {
                let mut rows = Vec::with_capacity(batch);
                for (cache, repeat) in parts {
                    let t = pick(cache);
                    let (_, heads, _, head_dim) = t.dims4()?;
                    let mut pieces = Vec::with_capacity(3);
                    let pad = longest - cache.len;
                    if pad > 0 {
                        pieces.push(Tensor::zeros(
                            (1, heads, pad, head_dim),
                            DType::F32,
                            t.device(),
                        )?);
                    }
                    pieces.push(t.narrow(2, 0, cache.len)?);
                    if capacity > longest {
                        pieces.push(Tensor::zeros(
                            (1, heads, capacity - longest, head_dim),
                            DType::F32,
                            t.device(),
                        )?);
                    }
                    let row = Tensor::cat(&pieces, 2)?;
                    for _ in 0..*repeat {
                        rows.push(row.clone());
                    }
                }
                Tensor::cat(&rows, 0)
            };
            keys.push(stack(&|c: &KvCache| &c.keys[layer])?);
            values.push(stack(&|c: &KvCache| &c.values[layer])?);
        }
        Ok((
            KvCache {
                keys,
                values,
                len: longest,
                capacity,
                batch,
            },
            pads,
        ))
    }

    /// A cache holding only the given rows, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> candle_core::Result<Self> {
        let Some(first) = self.keys.first() else {
            candle_core::bail!("empty cache");
        };
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let index = Tensor::new(index.as_slice(), first.device())?;
        let pick = |t: &Tensor| t.index_select(&index, 0);
        Ok(KvCache {
            keys: self
                .keys
                .iter()
                .map(pick)
                .collect::<candle_core::Result<_>>()?,
            values: self
                .values
                .iter()
                .map(pick)
                .collect::<candle_core::Result<_>>()?,
            len: self.len,
            capacity: self.capacity,
            batch: rows.len(),
        })
    }

    fn ensure_capacity(&mut self, needed: usize) -> candle_core::Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed.max(self.capacity * 2);
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let (batch, heads, _, head_dim) = t.dims4()?;
            let grown = Tensor::zeros((batch, heads, capacity, head_dim), DType::F32, t.device())?;
            if self.len > 0 {
                grown.slice_set(&t.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            *t = grown;
        }
        self.capacity = capacity;
        Ok(())
    }
}

/// The decoder with its weights in f32.
#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    /// `(vocab, hidden)`; the same tensor as `embed_tokens` when the embeddings are tied.
    pub lm_head: Tensor,
    /// `lm_head` packed in bf16 for AMX ([`Llama::pack_bf16`]).
    pub lm_head_bf16: Option<Arc<Bf16Weight>>,
    /// `lm_head` transposed and packed in bf16, for training.
    pub lm_head_bf16_backward: Option<Arc<Bf16Weight>>,
    /// Set by [`Llama::pack_bf16`]: inference attention (prefill, scoring, batched prefill;
    /// not single-token decode) runs its products in bf16 on AMX too ([`super::amx::attention`]).
    pub bf16_attention: Option<Amx>,
    pub tied_embeddings: bool,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

struct WeightStore<'a> {
    weights: HashMap<String, Tensor>,
    source: &'a str,
    device: &'a Device,
}

impl WeightStore<'_> {
    fn optional(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>, LlmError> {
        let Some(tensor) = self.weights.remove(name) else {
            return Ok(None);
        };
        if tensor.dims() != shape {
            return Err(LlmError::Load {
                path: self.source.to_string(),
                message: format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    tensor.dims()
                ),
            });
        }
        tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(self.device))
            .map(Some)
            .map_err(|e| LlmError::Load {
                path: self.source.to_string(),
                message: format!("tensor {name}: {e}"),
            })
    }

    fn required(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LlmError> {
        self.optional(name, shape)?.ok_or_else(|| LlmError::Load {
            path: self.source.to_string(),
            message: format!("tensor {name} is missing"),
        })
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize) -> Result<Linear, LlmError> {
        Ok(Linear {
            weight: self.required(&format!("{prefix}.weight"), &[out, inp])?,
            bias: self.optional(&format!("{prefix}.bias"), &[out])?,
            lora: None,
            bf16: None,
            bf16_backward: None,
        })
    }
}

impl Llama {
    /// Builds the model from tensors named as in HF checkpoints (`model.layers.0.self_attn.q_proj.weight`, …).
    /// `source` names the file(s) the tensors came from, for error messages. Any float dtype is
    /// converted to f32. Biases are used where present (Qwen2 has q/k/v biases).
    pub fn from_weights(
        config: LlamaConfig,
        weights: HashMap<String, Tensor>,
        device: &Device,
        source: &str,
    ) -> Result<Self, LlmError> {
        config.validate().map_err(|message| LlmError::Load {
            path: source.to_string(),
            message,
        })?;
        let hidden = config.hidden_size;
        let head_dim = config.head_dim();
        let q_out = config.num_attention_heads * head_dim;
        let kv_out = config.num_kv_heads() * head_dim;
        let inter = config.intermediate_size;
        let mut store = WeightStore {
            weights,
            source,
            device,
        };
        let embed_tokens =
            store.required("model.embed_tokens.weight", &[config.vocab_size, hidden])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let self_attn = Attention {
                q_proj: store.linear(&format!("{p}.self_attn.q_proj"), q_out, hidden)?,
                k_proj: store.linear(&format!("{p}.self_attn.k_proj"), kv_out, hidden)?,
                v_proj: store.linear(&format!("{p}.self_attn.v_proj"), kv_out, hidden)?,
                o_proj: store.linear(&format!("{p}.self_attn.o_proj"), hidden, q_out)?,
            };
            let mlp = Mlp {
                gate_proj: store.linear(&format!("{p}.mlp.gate_proj"), inter, hidden)?,
                up_proj: store.linear(&format!("{p}.mlp.up_proj"), inter, hidden)?,
                down_proj: store.linear(&format!("{p}.mlp.down_proj"), hidden, inter)?,
            };
            layers.push(DecoderLayer {
                self_attn,
                mlp,
                input_layernorm: store
                    .required(&format!("{p}.input_layernorm.weight"), &[hidden])?,
                post_attention_layernorm: store
                    .required(&format!("{p}.post_attention_layernorm.weight"), &[hidden])?,
            });
        }
        let norm = store.required("model.norm.weight", &[hidden])?;
        let untied = store.optional("lm_head.weight", &[config.vocab_size, hidden])?;
        let (lm_head, tied_embeddings) = match untied {
            Some(head) if !config.tie_word_embeddings => (head, false),
            _ => (embed_tokens.clone(), true),
        };
        let (cos, sin) = rope_tables(&config, device).map_err(|e| LlmError::Load {
            path: source.to_string(),
            message: format!("RoPE tables: {e}"),
        })?;
        Ok(Llama {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            lm_head_bf16: None,
            lm_head_bf16_backward: None,
            bf16_attention: None,
            tied_embeddings,
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// Loads an HF model directory: `config.json` and every `*.safetensors` file in it.
    pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<Self, LlmError> {
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let files = safetensors_files(dir)?;
        let mut weights = HashMap::new();
        for file in &files {
            let tensors =
                candle_core::safetensors::load(file, &Device::Cpu).map_err(|e| LlmError::Load {
                    path: file.display().to_string(),
                    message: e.to_string(),
                })?;
            weights.extend(tensors);
        }
        Self::from_weights(config, weights, device, &dir.display().to_string())
    }

    /// All weights under their HF names (the tied head is written once, as the embeddings).
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let linears = [
                ("self_attn.q_proj", &layer.self_attn.q_proj),
                ("self_attn.k_proj", &layer.self_attn.k_proj),
                ("self_attn.v_proj", &layer.self_attn.v_proj),
                ("self_attn.o_proj", &layer.self_attn.o_proj),
                ("mlp.gate_proj", &layer.mlp.gate_proj),
                ("mlp.up_proj", &layer.mlp.up_proj),
                ("mlp.down_proj", &layer.mlp.down_proj),
            ];
            for (name, linear) in linears {
                out.push((format!("{p}.{name}.weight"), linear.weight.clone()));
                if let Some(bias) = &linear.bias {
                    out.push((format!("{p}.{name}.bias"), bias.clone()));
                }
            }
            out.push((
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.clone(),
            ));
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if !self.tied_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        }
        out
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (each through a temporary file
    /// and a rename, so a reader never sees a half-written file).
    pub fn save_hf_dir(&self, dir: &Path) -> Result<(), LlmError> {
        let io_error = |path: &Path, e: &dyn std::fmt::Display| LlmError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        let mut config = self.config.clone();
        config.tie_word_embeddings = self.tied_embeddings;
        let config_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|e| io_error(&config_path, &e))?;
        let tmp = dir.join(".config.json.tmp");
        std::fs::write(&tmp, text).map_err(|e| io_error(&tmp, &e))?;
        std::fs::rename(&tmp, &config_path).map_err(|e| io_error(&config_path, &e))?;
        let weights: HashMap<String, Tensor> = self.named_weights().into_iter().collect();
        let model_path = dir.join("model.safetensors");
        let tmp = dir.join(".model.safetensors.tmp");
        candle_core::safetensors::save(&weights, &tmp).map_err(|e| io_error(&tmp, &e))?;
        std::fs::rename(&tmp, &model_path).map_err(|e| io_error(&model_path, &e))?;
        Ok(())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the decoder over `input_ids` `(batch, seq)` and returns the final-normed hidden
    /// states `(batch, seq, hidden)`.
    ///
    /// With a cache, the new keys/values are written at the cache's current length and the
    /// cache grows by `seq`. `mask` is additive (0 or −∞), broadcastable to
    /// `(batch, 1, 1, seq, past + seq)`; `None` means "no masking", which is only right for a
    /// single new token per row with no padding. Use [`causal_mask`] for `seq > 1`.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        positions: Positions<'_>,
        cache: Option<&mut KvCache>,
        mask: Option<&Tensor>,
        differentiable: bool,
    ) -> candle_core::Result<Tensor> {
        self.forward_hidden_masked(input_ids, positions, cache, mask, differentiable, false)
    }

    /// Final-normed hidden states `(batch, seq, hidden)` of `input_ids` from position 0 under a
    /// causal mask, without a cache: the training forward. With `differentiable`, on the CPU
    /// in f32 each attention is one op from the projections to the output projection's input
    /// ([`super::ops::causal_attention`]), elsewhere the composite graph with
    /// [`super::ops::causal_softmax`] (one saved tensor per layer instead of five).
    pub fn forward_hidden_causal(
        &self,
        input_ids: &Tensor,
        differentiable: bool,
    ) -> candle_core::Result<Tensor> {
        let (_, seq) = input_ids.dims2()?;
        if differentiable {
            return self.forward_hidden_masked(
                input_ids,
                Positions::Uniform(0),
                None,
                None,
                true,
                true,
            );
        }
        let mask = causal_mask(seq, 0, &self.device)?;
        self.forward_hidden(input_ids, Positions::Uniform(0), None, Some(&mask), false)
    }

    fn forward_hidden_masked(
        &self,
        input_ids: &Tensor,
        positions: Positions<'_>,
        mut cache: Option<&mut KvCache>,
        mask: Option<&Tensor>,
        differentiable: bool,
        fused_causal: bool,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let (cos, sin) = self.rope_for(positions, batch, seq)?;
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((batch, seq, self.config.hidden_size))?;
        if let Some(cache) = cache.as_deref_mut() {
            if cache.batch != batch {
                candle_core::bail!("cache has {} rows, input has {batch}", cache.batch);
            }
            cache.ensure_capacity(cache.len + seq)?;
        }
        let eps = self.config.rms_norm_eps as f32;
        for (index, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let h = rms_norm(&x, &layer.input_layernorm, eps, differentiable)?;
            let h = self.attention(
                index,
                &layer.self_attn,
                &h,
                &cos,
                &sin,
                cache.as_deref_mut(),
                mask,
                differentiable,
                fused_causal,
            )?;
            let x_mid = (residual + h)?;
            let h = rms_norm(&x_mid, &layer.post_attention_layernorm, eps, differentiable)?;
            let project = |linear: &Linear, x: &Tensor| {
                if differentiable {
                    linear.forward(x)
                } else {
                    linear.forward_inference(x)
                }
            };
            let gate = project(&layer.mlp.gate_proj, &h)?;
            let up = project(&layer.mlp.up_proj, &h)?;
            let activation = if differentiable {
                super::ops::silu_mul_with_grad(&gate, &up)?
            } else {
                super::ops::silu_mul(&gate, &up)?
            };
            let h = project(&layer.mlp.down_proj, &activation)?;
            x = (x_mid + h)?;
        }
        if let Some(cache) = cache {
            cache.len += seq;
        }
        rms_norm(&x, &self.norm, eps, differentiable)
    }

    /// Runs `input_ids` `(batch, seq)` as continuations of the one-row `prefix` cache (every row
    /// starts at position `prefix.len()`) and returns the final-normed hidden states
    /// `(batch, seq, hidden)`. Inference only (no gradient). The prefix keys/values are not
    /// copied per row: each layer scores all rows' queries against the shared prefix in one
    /// matmul per KV head (rows folded into the matrix rows), scores each row's own keys
    /// causally, and normalises both parts in one softmax. Right padding is harmless: a causal
    /// mask keeps later (padding) tokens invisible to earlier real ones.
    pub fn forward_hidden_after_prefix(
        &self,
        input_ids: &Tensor,
        prefix: &KvCache,
    ) -> candle_core::Result<Tensor> {
        if prefix.batch != 1 {
            candle_core::bail!("the shared prefix cache must have one row");
        }
        let (batch, seq) = input_ids.dims2()?;
        let (cos, sin) = self.rope_for(Positions::Uniform(prefix.len), batch, seq)?;
        let own_mask = if seq > 1 {
            Some(causal_mask(seq, 0, &self.device)?)
        } else {
            None
        };
        let mut x = self
            .embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((batch, seq, self.config.hidden_size))?;
        let eps = self.config.rms_norm_eps as f32;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_layernorm, eps, false)?;
            let h = self.attention_after_prefix(
                index,
                &layer.self_attn,
                &h,
                &cos,
                &sin,
                prefix,
                own_mask.as_ref(),
            )?;
            let x_mid = (x + h)?;
            let h = rms_norm(&x_mid, &layer.post_attention_layernorm, eps, false)?;
            let gate = layer.mlp.gate_proj.forward_inference(&h)?;
            let up = layer.mlp.up_proj.forward_inference(&h)?;
            let activation = super::ops::silu_mul(&gate, &up)?;
            let h = layer.mlp.down_proj.forward_inference(&activation)?;
            x = (x_mid + h)?;
        }
        rms_norm(&x, &self.norm, eps, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_after_prefix(
        &self,
        layer_index: usize,
        attn: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        prefix: &KvCache,
        own_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let kv_heads = self.config.num_kv_heads();
        let head_dim = self.config.head_dim();
        let groups = heads / kv_heads;
        let past = prefix.len;
        let rows = batch * groups * seq;
        let split_heads = |t: Tensor, count: usize| {
            t.reshape((batch, seq, count, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split_heads(attn.q_proj.forward_inference(x)?, heads)?;
        let k = split_heads(attn.k_proj.forward_inference(x)?, kv_heads)?;
        let v = split_heads(attn.v_proj.forward_inference(x)?, kv_heads)?;
        let q = rope(&q, cos, sin, false)?;
        let k = rope(&k, cos, sin, false)?;
        let q = (q * (1.0 / (head_dim as f64).sqrt()))?.reshape((
            batch,
            kv_heads,
            groups * seq,
            head_dim,
        ))?;
        if let (Some(amx), true) = (
            self.bf16_attention,
            x.device().is_cpu() && x.dtype() == DType::F32,
        ) {
            return self.attention_amx(
                amx,
                attn,
                &q,
                seq,
                (&prefix.keys[layer_index], &prefix.values[layer_index], past),
                Some((&k, &v)),
                None,
            );
        }
        let prefix_k = prefix.keys[layer_index].narrow(2, 0, past)?.squeeze(0)?;
        let prefix_v = prefix.values[layer_index].narrow(2, 0, past)?.squeeze(0)?;
        let q_rows = q
            .transpose(0, 1)?
            .contiguous()?
            .reshape((kv_heads, rows, head_dim))?;
        let own = q.matmul(&k.t()?)?;
        let shared = q_rows.matmul(&prefix_k.t()?)?;
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            // One softmax over both score blocks, masked causally, without concatenating them.
            let shape = super::ops::PrefixAttentionShape {
                batch,
                kv_heads,
                groups,
                seq,
                past,
            };
            let (shared_probs, own_probs) =
                super::ops::prefix_attention_softmax(&shared, &own, shape)?;
            let out_shared = shared_probs.matmul(&prefix_v)?;
            let out_own = own_probs.matmul(&v)?;
            let out_shared = out_shared
                .reshape((kv_heads, batch, groups * seq, head_dim))?
                .transpose(0, 1)?;
            let out = (out_shared + out_own)?
                .reshape((batch, heads, seq, head_dim))?
                .transpose(1, 2)?
                .reshape((batch, seq, heads * head_dim))?;
            return attn.o_proj.forward_inference(&out);
        }
        let own = match own_mask {
            Some(mask) => own
                .reshape((batch, kv_heads, groups, seq, seq))?
                .broadcast_add(mask)?
                .reshape((batch, kv_heads, groups * seq, seq))?,
            None => own,
        };
        // (kv_heads, rows, ·) with rows ordered (batch, group, position).
        let own = own
            .transpose(0, 1)?
            .contiguous()?
            .reshape((kv_heads, rows, seq))?;
        let probs = super::ops::softmax_last_dim(&Tensor::cat(&[&shared, &own], 2)?)?;
        // cuBLAS through candle wants packed rows.
        let shared_probs = probs.narrow(2, 0, past)?.contiguous()?;
        let out_shared = shared_probs
            .matmul(&prefix_v)?
            .reshape((kv_heads, batch, groups * seq, head_dim))?
            .transpose(0, 1)?;
        let out_own = probs
            .narrow(2, past, seq)?
            .contiguous()?
            .reshape((kv_heads, batch, groups * seq, seq))?
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&v)?;
        let out = (out_shared + out_own)?
            .reshape((batch, heads, seq, head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq, heads * head_dim))?;
        attn.o_proj.forward_inference(&out)
    }

    /// Attention with its products in bf16 on AMX ([`super::amx::attention`]): `q`
    /// `(batch, kv_heads, groups · seq, head_dim)` rotated and scaled, against the first
    /// `first.2` keys/values of the `(batch or 1, kv_heads, capacity, head_dim)` buffers
    /// `first.0`/`first.1` (one row serves every batch row), then all of `second`'s; `mask` as
    /// in [`Llama::forward_hidden`], causal when `None`. Returns `(batch, seq, hidden)` after
    /// the output projection.
    #[allow(clippy::too_many_arguments)]
    fn attention_amx(
        &self,
        amx: Amx,
        attn: &Attention,
        q: &Tensor,
        seq: usize,
        first: (&Tensor, &Tensor, usize),
        second: Option<(&Tensor, &Tensor)>,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (batch, kv_heads, rows, head_dim) = q.dims4()?;
        let q = q.contiguous()?;
        let contiguous_pair = |(k, v): (&Tensor, &Tensor)| -> candle_core::Result<_> {
            Ok((k.contiguous()?, v.contiguous()?))
        };
        let first_buffers = contiguous_pair((first.0, first.1))?;
        let second_buffers = second.map(contiguous_pair).transpose()?;
        let mask = mask.map(Tensor::contiguous).transpose()?;
        let (q_storage, q_layout) = q.storage_and_layout();
        let (fk_storage, fk_layout) = first_buffers.0.storage_and_layout();
        let (fv_storage, fv_layout) = first_buffers.1.storage_and_layout();
        let describe = |keys: &Tensor, len: usize| -> candle_core::Result<(usize, usize, usize)> {
            let (rows, heads, capacity, dim) = keys.dims4()?;
            if heads != kv_heads
                || dim != head_dim
                || len > capacity
                || (rows != 1 && rows != batch)
            {
                candle_core::bail!(
                    "bf16 attention: key buffer {:?} does not fit {batch} rows of {kv_heads} \
                     KV heads × {head_dim} with {len} keys",
                    keys.dims()
                );
            }
            let head_stride = capacity * head_dim;
            let batch_stride = if rows == 1 { 0 } else { kv_heads * head_stride };
            Ok((batch_stride, head_stride, len))
        };
        let (batch_stride, head_stride, len) = describe(&first_buffers.0, first.2)?;
        let first_kv = super::amx::KeyValues {
            keys: storage_f32(&fk_storage, fk_layout)?,
            values: storage_f32(&fv_storage, fv_layout)?,
            batch_stride,
            head_stride,
            len,
        };
        let second_guards = second_buffers
            .as_ref()
            .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()));
        let second_kv = match (&second_buffers, &second_guards) {
            (Some((k, _)), Some(((sk_storage, sk_layout), (sv_storage, sv_layout)))) => {
                let (batch_stride, head_stride, len) = describe(k, k.dim(2)?)?;
                super::amx::KeyValues {
                    keys: storage_f32(sk_storage, sk_layout)?,
                    values: storage_f32(sv_storage, sv_layout)?,
                    batch_stride,
                    head_stride,
                    len,
                }
            }
            _ => super::amx::KeyValues::EMPTY,
        };
        let keys_total = first_kv.len + second_kv.len;
        let mask_guard = mask.as_ref().map(|m| m.storage_and_layout());
        let mask = match (&mask, &mask_guard) {
            (Some(m), Some((storage, layout))) => {
                let (mask_batch, one, other, mask_seq, total) = m.dims5()?;
                if one != 1
                    || other != 1
                    || total != keys_total
                    || (mask_batch != 1 && mask_batch != batch)
                    || (mask_seq != 1 && mask_seq != seq)
                {
                    candle_core::bail!(
                        "bf16 attention: mask {:?} does not fit {batch} rows of {seq} queries \
                         over {keys_total} keys",
                        m.dims()
                    );
                }
                super::amx::AttentionMask::Additive {
                    values: storage_f32(storage, layout)?,
                    mask_batch,
                    mask_seq,
                }
            }
            _ => super::amx::AttentionMask::Causal,
        };
        let out = super::amx::attention(
            amx,
            &super::amx::AttentionInputs {
                batch,
                kv_heads,
                groups: rows / seq,
                seq,
                head_dim,
                queries: storage_f32(&q_storage, q_layout)?,
                first: first_kv,
                second: second_kv,
                mask,
            },
        );
        let hidden = kv_heads * rows / seq * head_dim;
        let out = Tensor::from_vec(out, (batch, seq, hidden), &Device::Cpu)?;
        attn.o_proj.forward_inference(&out)
    }

    /// Logits over the whole vocabulary for hidden states `(..., hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let rows = hidden.elem_count() / self.config.hidden_size;
        let flat = hidden.reshape((rows, self.config.hidden_size))?;
        let packed = match (&self.lm_head_bf16, &self.lm_head_bf16_backward) {
            (Some(forward), Some(backward)) => Some(FrozenBf16 { forward, backward }),
            _ => None,
        };
        let logits = frozen_matmul_t(&flat, &self.lm_head, packed)?;
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.config.vocab_size;
        logits.reshape(out_dims)
    }

    /// The log-probability of each row's target token, `(rows,)`, for hidden states
    /// `(rows, hidden)`: one op on the CPU in f32 ([`super::head::target_log_probs`]), else
    /// logits, log-softmax and gather.
    pub fn target_log_probs(
        &self,
        hidden: &Tensor,
        targets: &[u32],
    ) -> candle_core::Result<Tensor> {
        let packed = match (&self.lm_head_bf16, &self.lm_head_bf16_backward) {
            (Some(forward), Some(backward)) => Some(FrozenBf16 { forward, backward }),
            _ => None,
        };
        if let Some(log_probs) =
            super::head::target_log_probs(hidden, &self.lm_head, packed, targets)?
        {
            return Ok(log_probs);
        }
        let log_probs = candle_nn::ops::log_softmax(&self.logits(hidden)?, D::Minus1)?;
        let ids = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), &self.device)?;
        log_probs.gather(&ids, 1)?.squeeze(1)
    }

    /// [`Llama::logits`] without gradient tracking (faster for a few rows on the CPU; bf16 on
    /// AMX when packed).
    pub fn logits_inference(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let rows = hidden.elem_count() / self.config.hidden_size;
        let flat = hidden.reshape((rows, self.config.hidden_size))?;
        let logits = match &self.lm_head_bf16 {
            Some(packed) => packed.matmul_t_tensor(&flat)?,
            None => match few_rows_matmul_t(&flat, &self.lm_head)? {
                Some(logits) => logits,
                None => return self.logits(hidden),
            },
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.config.vocab_size;
        logits.reshape(out_dims)
    }

    /// Logits of only `token_ids` for hidden states `(rows, hidden)` → `(rows, token_ids.len())`.
    pub fn logits_for_tokens(
        &self,
        hidden: &Tensor,
        token_ids: &[u32],
    ) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(token_ids, &self.device)?;
        let head = self.lm_head.index_select(&ids, 0)?;
        hidden.matmul(&head.t()?)
    }

    /// Packs every dense layer and the output layer in bf16 for AMX, so that inference
    /// (`forward_inference`, `logits_inference`) multiplies in bf16; with `for_training`, also
    /// their transposes, so that the differentiable forward and the inputs' gradients do too
    /// (the LoRA adapters and attention stay f32). The label-restricted scoring head keeps the
    /// f32 weights. Call after the last change to the base weights (an adapter merge clears
    /// what it changes). Needs the weights on the CPU.
    pub fn pack_bf16(&mut self, amx: Amx, for_training: bool) -> Result<(), LlmError> {
        if !matches!(self.device, Device::Cpu) {
            return Err(LlmError::BadRequest(
                "bf16 matmul is the CPU's AMX path; on CUDA leave the matmul at f32".into(),
            ));
        }
        let compute = |e: candle_core::Error| LlmError::Compute(e.to_string());
        let pack =
            |weight: &Tensor| -> Result<(Arc<Bf16Weight>, Option<Arc<Bf16Weight>>), LlmError> {
                let forward = Arc::new(Bf16Weight::from_tensor(amx, weight).map_err(compute)?);
                let backward = if for_training {
                    let transposed = weight.t().and_then(|t| t.contiguous()).map_err(compute)?;
                    Some(Arc::new(
                        Bf16Weight::from_tensor(amx, &transposed).map_err(compute)?,
                    ))
                } else {
                    None
                };
                Ok((forward, backward))
            };
        for layer in &mut self.layers {
            let attention = &mut layer.self_attn;
            let mlp = &mut layer.mlp;
            for linear in [
                &mut attention.q_proj,
                &mut attention.k_proj,
                &mut attention.v_proj,
                &mut attention.o_proj,
                &mut mlp.gate_proj,
                &mut mlp.up_proj,
                &mut mlp.down_proj,
            ] {
                let (forward, backward) = pack(&linear.weight)?;
                linear.bf16 = Some(forward);
                linear.bf16_backward = backward;
            }
        }
        let (forward, backward) = pack(&self.lm_head)?;
        self.lm_head_bf16 = Some(forward);
        self.lm_head_bf16_backward = backward;
        self.bf16_attention = Some(amx);
        Ok(())
    }

    /// Full forward without a cache from position 0 with a causal mask: logits `(batch, seq, vocab)`.
    pub fn forward(&self, input_ids: &Tensor, differentiable: bool) -> candle_core::Result<Tensor> {
        let hidden = self.forward_hidden_causal(input_ids, differentiable)?;
        self.logits(&hidden)
    }

    fn rope_for(
        &self,
        positions: Positions<'_>,
        batch: usize,
        seq: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let table_len = self.cos.dim(0)?;
        match positions {
            Positions::Uniform(start) => {
                if start + seq > table_len {
                    candle_core::bail!(
                        "position {} is beyond the model's context of {table_len}",
                        start + seq
                    );
                }
                Ok((
                    self.cos.narrow(0, start, seq)?,
                    self.sin.narrow(0, start, seq)?,
                ))
            }
            Positions::PerRow(starts) => {
                if starts.len() != batch {
                    candle_core::bail!("{} row positions for {batch} rows", starts.len());
                }
                let mut index = Vec::with_capacity(batch * seq);
                for &start in starts {
                    if start + seq > table_len {
                        candle_core::bail!(
                            "position {} is beyond the model's context of {table_len}",
                            start + seq
                        );
                    }
                    index.extend((start..start + seq).map(|p| p as u32));
                }
                let index = Tensor::new(index.as_slice(), &self.device)?;
                let half = self.config.head_dim() / 2;
                Ok((
                    self.cos
                        .index_select(&index, 0)?
                        .reshape((batch, seq, half))?,
                    self.sin
                        .index_select(&index, 0)?
                        .reshape((batch, seq, half))?,
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer_index: usize,
        attn: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut KvCache>,
        mask: Option<&Tensor>,
        differentiable: bool,
        fused_causal: bool,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let kv_heads = self.config.num_kv_heads();
        let head_dim = self.config.head_dim();
        let groups = heads / kv_heads;
        let project = |linear: &Linear, x: &Tensor| {
            if differentiable {
                linear.forward(x)
            } else {
                linear.forward_inference(x)
            }
        };
        let (q, k, v) = (
            project(&attn.q_proj, x)?,
            project(&attn.k_proj, x)?,
            project(&attn.v_proj, x)?,
        );
        if fused_causal && cache.is_none() {
            let shape = super::ops::AttentionHeads {
                heads,
                kv_heads,
                head_dim,
            };
            if let Some(out) = super::ops::causal_attention(&q, &k, &v, cos, sin, shape)? {
                return project(&attn.o_proj, &out);
            }
        }
        let q = q
            .reshape((batch, seq, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = k
            .reshape((batch, seq, kv_heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = v
            .reshape((batch, seq, kv_heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = rope(&q, cos, sin, differentiable)?;
        let k = rope(&k, cos, sin, differentiable)?;
        let (k_all, v_all) = match cache {
            Some(cache) => {
                let offset = cache.len;
                cache.keys[layer_index].slice_set(&k, 2, offset)?;
                cache.values[layer_index].slice_set(&v, 2, offset)?;
                (
                    cache.keys[layer_index].narrow(2, 0, offset + seq)?,
                    cache.values[layer_index].narrow(2, 0, offset + seq)?,
                )
            }
            None => (k, v),
        };
        let total = k_all.dim(2)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        // Grouped-query attention without copying K/V: the `groups` query heads that share one
        // KV head are laid out next to each other, so they fold into the row dimension.
        let q = (q * scale)?.reshape((batch, kv_heads, groups * seq, head_dim))?;
        if !differentiable && seq == 1 {
            if let Some(out) = single_token_attention(&q, &k_all, &v_all, mask)? {
                // With one position, (batch, heads, 1, head_dim) is already (batch, 1, hidden).
                return project(&attn.o_proj, &out.reshape((batch, seq, heads * head_dim))?);
            }
        }
        if let (Some(amx), false) = (self.bf16_attention, differentiable) {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                return self.attention_amx(amx, attn, &q, seq, (&k_all, &v_all, total), None, mask);
            }
        }
        let scores = q.matmul(&k_all.t()?)?;
        if fused_causal {
            let probs = super::ops::causal_softmax(&scores, seq, total - seq)?;
            let out = probs
                .matmul(&v_all)?
                .reshape((batch, heads, seq, head_dim))?
                .transpose(1, 2)?
                .reshape((batch, seq, heads * head_dim))?;
            return project(&attn.o_proj, &out);
        }
        let scores = match mask {
            Some(mask) => scores
                .reshape((batch, kv_heads, groups, seq, total))?
                .broadcast_add(mask)?
                .reshape((batch, kv_heads, groups * seq, total))?,
            None => scores,
        };
        let probs = if differentiable {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            super::ops::softmax_last_dim(&scores)?
        };
        let out = probs
            .matmul(&v_all)?
            .reshape((batch, heads, seq, head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq, heads * head_dim))?;
        project(&attn.o_proj, &out)
    }
}

/// The f32 values of a contiguous CPU storage region (for the bf16 attention).
fn storage_f32<'s>(
    storage: &'s candle_core::Storage,
    layout: &candle_core::Layout,
) -> candle_core::Result<&'s [f32]> {
    match storage {
        candle_core::Storage::Cpu(cpu) => super::ops::contiguous_f32(cpu, layout, "bf16 attention"),
        _ => candle_core::bail!("bf16 attention runs on the CPU"),
    }
}

/// A float slice of a CPU f32 tensor's storage, from the tensor's start offset to the end of
/// the storage, with the tensor's strides.
fn with_cpu_f32<R>(tensor: &Tensor, f: impl FnOnce(&[f32], &[usize]) -> R) -> Option<R> {
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => {
            Some(f(&data[layout.start_offset()..], layout.stride()))
        }
        _ => None,
    }
}

/// Attention of one new token per row, on the CPU in f32, straight from the cache buffers:
/// `q` `(batch, kv_heads, groups, head_dim)` (already scaled), `keys`/`values`
/// `(batch, kv_heads, total, head_dim)` (e.g. a narrowed cache, positions `head_dim` apart),
/// `mask` additive, `(batch or 1, 1, 1, 1, total)`. Returns `(batch, kv_heads, groups, head_dim)`,
/// or `None` where this does not apply. The batched small matmuls it replaces each packed their
/// operands, which cost more than the arithmetic at decode time.
fn single_token_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    use rayon::prelude::*;
    let (batch, kv_heads, groups, head_dim) = q.dims4()?;
    let (_, _, total, _) = keys.dims4()?;
    if !matches!(q.device(), Device::Cpu)
        || q.dtype() != DType::F32
        || keys.dtype() != DType::F32
        || values.dtype() != DType::F32
        || keys.dims4()? != (batch, kv_heads, total, head_dim)
        || values.dims4()? != (batch, kv_heads, total, head_dim)
        || total == 0
    {
        return Ok(None);
    }
    let mask_values: Option<Vec<f32>> = match mask {
        Some(mask) => Some(mask.flatten_all()?.to_vec1()?),
        None => None,
    };
    let mask_rows = match &mask_values {
        Some(m) if m.len() == total => 1,
        Some(m) if m.len() == batch * total => batch,
        Some(_) => return Ok(None),
        None => 0,
    };
    let queries: Vec<f32> = q.flatten_all()?.to_vec1()?;
    let tile = tile_kernel();
    let mut out = vec![0f32; batch * kv_heads * groups * head_dim];
    let computed = with_cpu_f32(keys, |key_data, key_strides| {
        with_cpu_f32(values, |value_data, value_strides| {
            let rows_ok = |strides: &[usize]| strides[3] == 1 && strides[2] == head_dim;
            if !rows_ok(key_strides) || !rows_ok(value_strides) {
                return false;
            }
            out.par_chunks_mut(groups * head_dim)
                .enumerate()
                .for_each(|(pair, out_rows)| {
                    let (b, h) = (pair / kv_heads, pair % kv_heads);
                    let key_base = b * key_strides[0] + h * key_strides[1];
                    let value_base = b * value_strides[0] + h * value_strides[1];
                    let key_block = &key_data[key_base..key_base + total * head_dim];
                    let value_block = &value_data[value_base..value_base + total * head_dim];
                    let query_block =
                        &queries[pair * groups * head_dim..(pair + 1) * groups * head_dim];
                    let mut scores = vec![0f32; total * groups];
                    tile(key_block, query_block, head_dim, &mut scores);
                    let mask_row = mask_values.as_ref().map(|m| {
                        let row = if mask_rows == 1 { 0 } else { b };
                        &m[row * total..(row + 1) * total]
                    });
                    for (g, out_row) in out_rows.chunks_mut(head_dim).enumerate() {
                        let mut max = f32::NEG_INFINITY;
                        for t in 0..total {
                            let score = &mut scores[t * groups + g];
                            if let Some(mask_row) = mask_row {
                                *score += mask_row[t];
                            }
                            max = max.max(*score);
                        }
                        let mut sum = 0f32;
                        for t in 0..total {
                            let weight = (scores[t * groups + g] - max).exp();
                            scores[t * groups + g] = weight;
                            sum += weight;
                        }
                        for (t, value_row) in value_block.chunks_exact(head_dim).enumerate() {
                            let p = scores[t * groups + g] / sum;
                            for (o, v) in out_row.iter_mut().zip(value_row) {
                                *o += p * v;
                            }
                        }
                    }
                });
            true
        })
    });
    if computed != Some(Some(true)) {
        return Ok(None);
    }
    Tensor::from_vec(out, (batch, kv_heads, groups, head_dim), q.device()).map(Some)
}

/// Additive causal mask `(1, 1, 1, seq, past + seq)`: query `i` sees keys `0..=past + i`.
pub fn causal_mask(seq: usize, past: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = past + seq;
    let mut values = vec![0f32; seq * total];
    for i in 0..seq {
        for j in past + i + 1..total {
            values[i * total + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(values, (1, 1, 1, seq, total), device)
}

/// Additive mask `(batch, 1, 1, 1, total)` for one new token per row, hiding each row's
/// `pads[r]` leading (left-padding) positions.
pub fn left_padding_mask(
    pads: &[usize],
    total: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut values = vec![0f32; pads.len() * total];
    for (row, &pad) in pads.iter().enumerate() {
        for value in &mut values[row * total..row * total + pad.min(total)] {
            *value = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(values, (pads.len(), 1, 1, 1, total), device)
}

fn rms_norm(
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    differentiable: bool,
) -> candle_core::Result<Tensor> {
    if differentiable {
        super::ops::rms_norm(x, weight, eps)
    } else {
        candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)
    }
}

/// HF-convention RoPE (rotate_half). `cos`/`sin` are `(seq, head_dim/2)` or `(batch, seq, head_dim/2)`.
fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    differentiable: bool,
) -> candle_core::Result<Tensor> {
    if differentiable {
        super::ops::rope(x, cos, sin)
    } else {
        candle_nn::rotary_emb::rope(x, &cos.contiguous()?, &sin.contiguous()?)
    }
}

fn rope_tables(config: &LlamaConfig, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let head_dim = config.head_dim();
    let half = head_dim / 2;
    let positions = config.max_position_embeddings.max(1);
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in &inv_freq {
            let angle = p as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (positions, half), device)?,
        Tensor::from_vec(sin, (positions, half), device)?,
    ))
}

fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, LlmError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LlmError::Load {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LlmError::Load {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(LlmError::Load {
            path: dir.display().to_string(),
            message: "no *.safetensors file in the model directory".to_string(),
        });
    }
    Ok(files)
}

/// The safetensors files of an HF model directory, sorted (used to fingerprint the weights).
pub fn weight_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, LlmError> {
    safetensors_files(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tile_kernel_this_cpu_runs_matches_the_portable_one() {
        let mut kernels: Vec<(&str, TileKernel)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(("avx2", tiles_avx2));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(("avx512", tiles_avx512));
            }
        }
        for (rows, inner, out) in [(1, 40, 9), (2, 16, 4), (3, 37, 13), (5, 48, 6), (8, 64, 7)] {
            let inputs: Vec<f32> = (0..rows * inner).map(|i| (i % 11) as f32 - 5.0).collect();
            let weights: Vec<f32> = (0..out * inner)
                .map(|i| (i % 7) as f32 * 0.5 - 1.5)
                .collect();
            let mut expected = vec![0f32; out * rows];
            tiles_portable(&weights, &inputs, inner, &mut expected);
            for (name, kernel) in &kernels {
                let mut actual = vec![f32::NAN; out * rows];
                kernel(&weights, &inputs, inner, &mut actual);
                for (e, a) in expected.iter().zip(&actual) {
                    assert!(
                        (e - a).abs() <= 1e-3 * e.abs().max(1.0),
                        "{name} {rows}x{inner}x{out}"
                    );
                }
            }
        }
    }

    #[test]
    fn few_rows_matmul_matches_candle_matmul_for_odd_shapes() {
        let device = Device::Cpu;
        for (rows, inner, out) in [
            (1, 576, 1536),
            (2, 16, 4),
            (3, 37, 13),
            (5, 48, 6),
            (8, 64, 7),
            (16, 200, 33),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, inner), &device).unwrap();
            let weight = Tensor::randn(0f32, 1.0, (out, inner), &device).unwrap();
            let expected: Vec<Vec<f32>> =
                x.matmul(&weight.t().unwrap()).unwrap().to_vec2().unwrap();
            let actual: Vec<Vec<f32>> = few_rows_matmul_t(&x, &weight)
                .unwrap()
                .expect("applies to few f32 rows on the CPU")
                .to_vec2()
                .unwrap();
            for (e_row, a_row) in expected.iter().zip(&actual) {
                assert_eq!(e_row.len(), out);
                for (e, a) in e_row.iter().zip(a_row) {
                    assert!((e - a).abs() <= 1e-4 * (1.0 + e.abs()), "{e} vs {a}");
                }
            }
        }
        let many = Tensor::zeros((FEW_ROWS + 1, 8), DType::F32, &device).unwrap();
        let weight = Tensor::zeros((4, 8), DType::F32, &device).unwrap();
        assert!(few_rows_matmul_t(&many, &weight).unwrap().is_none());
    }
}

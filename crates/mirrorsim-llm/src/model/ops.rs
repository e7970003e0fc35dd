//! Custom ops for the differentiable (training) path.
//!
//! [`rms_norm`] and [`rope`] run candle's fused kernels forward and give them a backward pass
//! (candle's own fused versions carry no gradient; the composite versions keep several
//! activation-sized tensors per call alive for backprop).
//!
//! [`causal_softmax`] is the softmax of attention scores under a causal mask, in one op with its
//! own backward `dS = P ⊙ (dP − Σⱼ dP ⊙ P)`. The composite version (mask add, max, subtract,
//! exp, sum, divide) keeps five score-sized tensors per layer alive for backprop; this keeps one
//! (the probabilities), which is most of a training step's activation memory at long sequences.
//!
//! [`causal_attention`] goes further on the CPU: a whole training self-attention (head
//! transposes, RoPE, scores, causal softmax, values) in one op with its own backward, because
//! candle's backprop allocates a zeroed gradient and adds into it for every graph node.
//! [`silu_mul_with_grad`] does the same for the MLP's activation.
//!
//! [`softmax_last_dim`] is the inference softmax. Both softmaxes normalise rows with
//! [`softmax_row`], whose exponential is a polynomial the compiler vectorises (libm's scalar
//! `expf` was a tenth of the choice-scoring time).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// The f32 data of a custom op's contiguous CPU input; `op` names the op in the error.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} needs a contiguous input");
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// A CPU storage region as a (copied) tensor, so a custom op can reuse candle's kernels.
pub(crate) fn cpu_tensor(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("custom op needs a contiguous input");
    };
    Tensor::from_slice(
        &storage.as_slice::<f32>()?[start..end],
        layout.shape(),
        &Device::Cpu,
    )
}

/// The data of a CPU f32 tensor as a custom op's output.
pub(crate) fn cpu_output(tensor: Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let tensor = tensor.contiguous()?;
    let shape = tensor.shape().clone();
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => {
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("custom op produced a strided output");
            };
            Ok((
                CpuStorage::F32(cpu.as_slice::<f32>()?[start..end].to_vec()),
                shape,
            ))
        }
        _ => candle_core::bail!("custom op ran off the CPU"),
    }
}

fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// RMSNorm over the last dim, `x / √(mean(x²) + eps) · weight`, with gradients for `x` and
/// `weight`. Off the CPU, the composite ops are used.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    if !cpu_f32(x) {
        let hidden = x.dim(D::Minus1)? as f64;
        let mean_square = (x.sqr()?.sum_keepdim(D::Minus1)? / hidden)?;
        return x
            .broadcast_div(&(mean_square + eps as f64)?.sqrt()?)?
            .broadcast_mul(weight);
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-with-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_tensor(x, x_layout)?;
        let w = cpu_tensor(w, w_layout)?;
        cpu_output(candle_nn::ops::rms_norm(&x, &w, self.eps)?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let hidden = x.dim(D::Minus1)? as f64;
        let rstd = ((x.sqr()?.sum_keepdim(D::Minus1)? / hidden)? + self.eps as f64)?
            .sqrt()?
            .recip()?;
        let normed = x.broadcast_mul(&rstd)?;
        let grad_normed = grad.broadcast_mul(weight)?;
        // d/dx of x·r: r·g − x·r³·mean(g ⊙ x) = r·(g − normed·mean(g ⊙ normed)).
        let mean = ((&grad_normed * &normed)?.sum_keepdim(D::Minus1)? / hidden)?;
        let grad_x = (grad_normed - normed.broadcast_mul(&mean)?)?.broadcast_mul(&rstd)?;
        let rows = grad.elem_count() / weight.elem_count();
        let grad_w = (grad * &normed)?
            .reshape((rows, weight.elem_count()))?
            .sum(0)?
            .reshape(weight.shape())?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

/// HF-convention RoPE (rotate_half) of `x (batch, heads, seq, head_dim)` with gradient for `x`
/// (the rotation by −θ). `cos`/`sin` are `(seq, head_dim/2)` or `(batch, seq, head_dim/2)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    if !cpu_f32(x) {
        return rope_composite(x, &cos, &sin);
    }
    x.contiguous()?.apply_op1(Rope { cos, sin })
}

fn rope_composite(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, _, seq, head_dim) = x.dims4()?;
    let half = head_dim / 2;
    let lead = if cos.rank() == 2 { 1 } else { batch };
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.reshape((lead, 1, seq, head_dim))?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.reshape((lead, 1, seq, head_dim))?;
    let first = x.narrow(D::Minus1, 0, half)?;
    let second = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope-with-grad"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_tensor(storage, layout)?;
        cpu_output(candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin)?)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(candle_nn::rotary_emb::rope(
            &grad.contiguous()?,
            &self.cos,
            &self.sin.neg()?,
        )?))
    }
}

/// Softmax over the last dim of `scores (…, rows, total)` where row `r` is the query at position
/// `past + r % seq` and may see keys `0..=past + r % seq` (rows are ordered group-major, as the
/// decoder folds grouped query heads into rows). Off the CPU, the composite ops are used.
pub fn causal_softmax(scores: &Tensor, seq: usize, past: usize) -> candle_core::Result<Tensor> {
    if !scores.device().is_cpu() || scores.dtype() != candle_core::DType::F32 {
        let (rows, total) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
        let mask: Vec<f32> = (0..rows)
            .flat_map(|r| {
                (0..total).map(move |j| {
                    if j <= past + r % seq {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (rows, total), scores.device())?;
        return candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1);
    }
    scores.contiguous()?.apply_op1(CausalSoftmax { seq, past })
}

struct CausalSoftmax {
    seq: usize,
    past: usize,
}

/// Softmax over the last dim (no gradient: inference only). On the CPU in f32 the rows go
/// through [`softmax_row`]; elsewhere candle's fused kernel.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if !cpu_f32(x) {
        return candle_nn::ops::softmax_last_dim(x);
    }
    x.contiguous()?.apply_op1_no_bwd(&SoftmaxLastDim)
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(storage, layout, "softmax")?;
        let total = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut output = vec![0f32; input.len()];
        output
            .par_chunks_mut(total)
            .zip(input.par_chunks(total))
            .for_each(|(out, scores)| softmax_row(scores, out));
        Ok((CpuStorage::F32(output), layout.shape().clone()))
    }
}

/// `silu(gate) · up`, the gated MLP's activation, in one pass (no gradient: inference only). On
/// the CPU in f32 the exponential is [`exp_polynomial`] (candle's `silu` calls libm's scalar
/// `expf`) and no intermediate tensor is made; elsewhere the composite ops are used.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if !cpu_f32(gate) || !cpu_f32(up) || gate.dims() != up.dims() {
        return gate.silu()? * up;
    }
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &SiluMul)
}

/// `silu(gate) · up` with gradients for both, for training: one node where the composite
/// (`silu`, then a product) has two activation-sized ones, and the forward of [`silu_mul`].
/// Backward: `∂up = dy · silu(g)`, `∂gate = dy · u · σ(g)(1 + g(1 − σ(g)))`.
/// Off the CPU, or for shapes that differ, the composite ops are used.
pub fn silu_mul_with_grad(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if !cpu_f32(gate) || !cpu_f32(up) || gate.dims() != up.dims() {
        return gate.silu()? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

struct SiluMul;

/// σ(g), with e^(−g) clamped as in [`silu_mul_chunk_portable`].
#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    let negated = if -g > 87.0 { 87.0 } else { -g };
    1.0 / (1.0 + exp_polynomial(negated))
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        gate_storage: &CpuStorage,
        gate_layout: &Layout,
        up_storage: &CpuStorage,
        up_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        const CHUNK: usize = 4096;
        let gates = contiguous_f32(gate_storage, gate_layout, "silu-mul")?;
        let ups = contiguous_f32(up_storage, up_layout, "silu-mul")?;
        if gates.len() != ups.len() {
            candle_core::bail!("silu-mul needs two tensors of one shape");
        }
        let mut out = vec![0f32; gates.len()];
        out.par_chunks_mut(CHUNK)
            .zip(gates.par_chunks(CHUNK).zip(ups.par_chunks(CHUNK)))
            .for_each(|(out, (gates, ups))| silu_mul_chunk(out, gates, ups));
        Ok((CpuStorage::F32(out), gate_layout.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        const CHUNK: usize = 4096;
        let dy = grad_res.detach().contiguous()?;
        if gate.dims() != up.dims() || gate.dims() != dy.dims() {
            candle_core::bail!("silu-mul backward: the gradient's shape differs from the inputs'");
        }
        let inputs = [&gate.detach(), &up.detach(), &dy];
        let (d_gate, d_up) = with_cpu_f32(inputs, "silu-mul backward", |[gates, ups, dys]| {
            let mut d_gate = vec![0f32; gates.len()];
            let mut d_up = vec![0f32; gates.len()];
            d_gate
                .par_chunks_mut(CHUNK)
                .zip(d_up.par_chunks_mut(CHUNK))
                .zip(gates.par_chunks(CHUNK))
                .zip(ups.par_chunks(CHUNK).zip(dys.par_chunks(CHUNK)))
                .for_each(|(((d_gate, d_up), gates), (ups, dys))| {
                    for i in 0..gates.len() {
                        let (g, u, dy) = (gates[i], ups[i], dys[i]);
                        let s = sigmoid(g);
                        d_up[i] = dy * g * s;
                        d_gate[i] = dy * u * s * (1.0 + g * (1.0 - s));
                    }
                });
            (d_gate, d_up)
        })?;
        Ok((
            Some(Tensor::from_vec(d_gate, gate.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(d_up, up.shape(), &Device::Cpu)?),
        ))
    }
}

/// Runs `f` on the f32 data of two CPU tensors (made contiguous first); `op` names the caller
/// in errors.
fn with_two_cpu_f32<R>(
    a: &Tensor,
    b: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32], &[f32]) -> R,
) -> candle_core::Result<R> {
    with_cpu_f32([a, b], op, |[a, b]| f(a, b))
}

/// Runs `f` on the f32 data of `N` CPU tensors (made contiguous first); `op` names the caller
/// in errors.
fn with_cpu_f32<const N: usize, R>(
    tensors: [&Tensor; N],
    op: &str,
    f: impl FnOnce([&[f32]; N]) -> R,
) -> candle_core::Result<R> {
    let contiguous = tensors
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let storages: Vec<_> = contiguous.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(N);
    for (storage, layout) in &storages {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("{op} runs on f32 CPU tensors");
        };
        slices.push(contiguous_f32(cpu, layout, op)?);
    }
    let Ok(slices) = <[&[f32]; N]>::try_from(slices) else {
        candle_core::bail!("{op}: expected {N} tensors");
    };
    Ok(f(slices))
}

/// Layout of the attention scores of continuations scored on top of a shared prefix.
#[derive(Debug, Clone, Copy)]
pub struct PrefixAttentionShape {
    pub batch: usize,
    pub kv_heads: usize,
    /// Query heads per key/value head.
    pub groups: usize,
    /// Continuation length.
    pub seq: usize,
    /// Prefix length.
    pub past: usize,
}

/// The attention probabilities of continuations on top of a shared prefix, from their two score
/// blocks, without concatenating them: `shared (kv_heads, batch·groups·seq, past)` against the
/// prefix keys and `own (batch, kv_heads, groups·seq, seq)` against the continuation's own keys,
/// where the query at continuation position `p` sees own keys `0..=p` (the causal mask is applied
/// here). Each query's softmax runs over its shared and visible own scores together; the result
/// keeps both layouts, so each block multiplies its values directly. CPU, f32, inference only.
pub fn prefix_attention_softmax(
    shared: &Tensor,
    own: &Tensor,
    shape: PrefixAttentionShape,
) -> candle_core::Result<(Tensor, Tensor)> {
    let PrefixAttentionShape {
        batch,
        kv_heads,
        groups,
        seq,
        past,
    } = shape;
    let rows = groups * seq;
    if shared.dims() != [kv_heads, batch * rows, past] || own.dims() != [batch, kv_heads, rows, seq]
    {
        candle_core::bail!(
            "prefix attention scores have shapes {:?} and {:?}, expected {:?} and {:?}",
            shared.dims(),
            own.dims(),
            [kv_heads, batch * rows, past],
            [batch, kv_heads, rows, seq]
        );
    }
    if !cpu_f32(shared) || !cpu_f32(own) {
        candle_core::bail!("prefix_attention_softmax runs on f32 CPU tensors");
    }
    let (shared_probs, own_probs) = with_two_cpu_f32(
        shared,
        own,
        "prefix attention",
        |shared_scores, own_scores| {
            let mut shared_probs = vec![0f32; shared_scores.len()];
            let mut own_probs = vec![0f32; own_scores.len()];
            // One block per (batch row, kv head): `rows` queries, contiguous in both layouts.
            let mut shared_blocks: Vec<Option<&mut [f32]>> = if past == 0 {
                (0..batch * kv_heads).map(|_| None).collect()
            } else {
                shared_probs.chunks_mut(rows * past).map(Some).collect()
            };
            let mut own_blocks: Vec<Option<&mut [f32]>> =
                own_probs.chunks_mut(rows * seq).map(Some).collect();
            let mut blocks = Vec::with_capacity(batch * kv_heads);
            for b in 0..batch {
                for h in 0..kv_heads {
                    let shared_block = shared_blocks[h * batch + b].take();
                    let own_block = own_blocks[b * kv_heads + h].take();
                    blocks.push((b, h, shared_block, own_block));
                }
            }
            blocks
                .into_par_iter()
                .for_each(|(b, h, shared_block, own_block)| {
                    let Some(own_block) = own_block else {
                        return;
                    };
                    let shared_start = (h * batch + b) * rows * past;
                    let own_start = (b * kv_heads + h) * rows * seq;
                    let mut scores = vec![0f32; past + seq];
                    let mut probs = vec![0f32; past + seq];
                    let mut shared_block = shared_block;
                    for row in 0..rows {
                        let visible = row % seq + 1;
                        let shared_row = &shared_scores[shared_start + row * past..][..past];
                        let own_row = &own_scores[own_start + row * seq..][..seq];
                        scores[..past].copy_from_slice(shared_row);
                        scores[past..past + visible].copy_from_slice(&own_row[..visible]);
                        softmax_row(&scores[..past + visible], &mut probs[..past + visible]);
                        if let Some(block) = shared_block.as_deref_mut() {
                            block[row * past..(row + 1) * past].copy_from_slice(&probs[..past]);
                        }
                        own_block[row * seq..row * seq + visible]
                            .copy_from_slice(&probs[past..past + visible]);
                    }
                });
            (shared_probs, own_probs)
        },
    )?;
    Ok((
        Tensor::from_vec(shared_probs, (kv_heads, batch * rows, past), &Device::Cpu)?,
        Tensor::from_vec(own_probs, (batch, kv_heads, rows, seq), &Device::Cpu)?,
    ))
}

/// `out = softmax(scores)` for one row (`-inf` scores get exactly 0; a row of only `-inf` gives
/// NaN like candle's). Uses AVX-512 where the CPU has it, chosen at run time.
pub fn softmax_row(scores: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        unsafe { softmax_row_avx512(scores, out) };
        return;
    }
    softmax_row_portable(scores, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row_avx512(scores: &[f32], out: &mut [f32]) {
    softmax_row_portable(scores, out);
}

/// `values[i] = e^(values[i] − max)` in place, in f32 precision ([`exp_polynomial`]); returns
/// `(max, Σ e^(values[i] − max))`, the parts of a log-sum-exp. AVX-512 where the CPU has it.
pub(crate) fn exp_polynomial_sum_in_place(values: &mut [f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        return unsafe { exp_polynomial_sum_in_place_avx512(values) };
    }
    exp_polynomial_sum_in_place_portable(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_polynomial_sum_in_place_avx512(values: &mut [f32]) -> (f32, f32) {
    exp_polynomial_sum_in_place_portable(values)
}

#[inline(always)]
fn exp_polynomial_sum_in_place_portable(values: &mut [f32]) -> (f32, f32) {
    let max = max_lanes(values);
    for value in values.iter_mut() {
        *value = exp_polynomial(*value - max);
    }
    (max, sum_lanes(values))
}

/// `values[i] = e^(values[i] − max)` in place, to bf16 precision (`exp_bf16_precision`: the
/// bf16 attention rounds these to 8 bits next); returns their sum (the softmax's denominator).
/// AVX-512 with FMA; callers hold an [`super::amx::Amx`], whose CPUs have both.
pub fn exp_shifted_in_place(values: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU supports AVX-512F and FMA, checked just above.
        return unsafe { exp_shifted_in_place_avx512(values) };
    }
    let max = max_lanes(values);
    let mut sum = 0f32;
    for value in values.iter_mut() {
        *value = exp_polynomial(*value - max);
        sum += *value;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn exp_shifted_in_place_avx512(values: &mut [f32]) -> f32 {
    let max = max_lanes(values);
    let mut sums = [0f32; LANES];
    let mut chunks = values.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (sum, value) in sums.iter_mut().zip(chunk) {
            *value = exp_bf16_precision(*value - max);
            *sum += *value;
        }
    }
    let mut tail = 0f32;
    for value in chunks.into_remainder() {
        *value = exp_bf16_precision(*value - max);
        tail += *value;
    }
    sums.iter().sum::<f32>() + tail
}

/// `e^x` for `x ≤ 0` within 6e-5 relative (bf16 keeps 8 bits, 4e-3): [`exp_polynomial`]'s
/// range reduction with a degree-4 Taylor polynomial in fused multiply-adds.
#[inline(always)]
pub(crate) fn exp_bf16_precision(x: f32) -> f32 {
    let (r, scale) = exp_range_reduction(x);
    let p = r
        .mul_add(1.0 / 24.0, 1.0 / 6.0)
        .mul_add(r, 0.5)
        .mul_add(r, 1.0)
        .mul_add(r, 1.0);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

#[inline(always)]
fn max_lanes(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = if value > *lane { value } else { *lane };
        }
    }
    tail.iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

#[inline(always)]
fn sum_lanes(values: &[f32]) -> f32 {
    let mut sums = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (sum, &value) in sums.iter_mut().zip(chunk) {
            *sum += value;
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// `Σ aᵢ·bᵢ` with [`LANES`] independent accumulators, so the loop vectorises.
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for ((sum, &a), &b) in sums.iter_mut().zip(a).zip(b) {
            *sum += a * b;
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// `out = silu(gates) · ups`, with AVX-512 where the CPU has it (chosen at run time).
fn silu_mul_chunk(out: &mut [f32], gates: &[f32], ups: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        unsafe { silu_mul_chunk_avx512(out, gates, ups) };
        return;
    }
    silu_mul_chunk_portable(out, gates, ups);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_chunk_avx512(out: &mut [f32], gates: &[f32], ups: &[f32]) {
    silu_mul_chunk_portable(out, gates, ups);
}

#[inline(always)]
fn silu_mul_chunk_portable(out: &mut [f32], gates: &[f32], ups: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gates).zip(ups) {
        // e^(-g) overflows past 87; silu(g) is 0 to f32 precision there. NaN passes.
        let negated = if -g > 87.0 { 87.0 } else { -g };
        *o = g / (1.0 + exp_polynomial(negated)) * u;
    }
}

/// Lanes of the max / sum reductions: independent accumulators the compiler keeps in vector
/// registers (one sequential f32 accumulator cannot be vectorised).
const LANES: usize = 16;

#[inline(always)]
fn softmax_row_portable(scores: &[f32], out: &mut [f32]) {
    let max = max_lanes(scores);
    for (o, &value) in out.iter_mut().zip(scores) {
        *o = exp_polynomial(value - max);
    }
    let inv = 1.0 / sum_lanes(out);
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// `e^x` for `x ≤ 0` (softmax arguments after subtracting the max) within 2 ulp, branch-free so
/// loops over it vectorise: `x = n ln 2 + r` with `|r| ≤ ln 2 / 2` ([`exp_range_reduction`]),
/// `e^r` by its degree-6 Taylor polynomial (remainder below 1.2e-7 relative), `2^n` written into
/// the exponent bits. Arguments below −87 (where `e^x` leaves the normal f32 range) and `-inf`
/// give 0; NaN gives NaN.
#[inline(always)]
pub(crate) fn exp_polynomial(x: f32) -> f32 {
    let (r, scale) = exp_range_reduction(x);
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// `x = n ln 2 + r` for the exponentials above: `(r, 2^n)`, with `x` clamped to −87 from below.
#[inline(always)]
fn exp_range_reduction(x: f32) -> (f32, f32) {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // Written so that NaN passes through (a broken score must not become a clean probability).
    let clamped = if x < -87.0 { -87.0 } else { x };
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    // `shifted` is ROUND + n exactly, so its low mantissa bits are n: integer ops that vectorise,
    // where `n as i32` (a saturating cast) would not.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    (r, f32::from_bits(n_bits.wrapping_add(127) << 23))
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(storage, layout, "causal-softmax")?;
        let dims = layout.shape().dims();
        if dims.len() < 2 {
            candle_core::bail!("causal-softmax needs at least two dims");
        }
        let total = dims[dims.len() - 1];
        let rows = dims[dims.len() - 2];
        let (seq, past) = (self.seq.max(1), self.past);
        let mut output = vec![0f32; input.len()];
        output
            .par_chunks_mut(total)
            .zip(input.par_chunks(total))
            .enumerate()
            .for_each(|(row, (out, scores))| {
                let visible = (past + (row % rows) % seq + 1).min(total);
                softmax_row(&scores[..visible], &mut out[..visible]);
            });
        Ok((CpuStorage::F32(output), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let weighted = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((grad_res.broadcast_sub(&weighted)? * res)?))
    }
}

/// The heads of a causal self-attention (see [`causal_attention`]).
#[derive(Debug, Clone, Copy)]
pub struct AttentionHeads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal self-attention without a cache, for training, from the projections to the input of
/// the output projection, in one op with its own backward. `q (batch, seq, heads·head_dim)`,
/// `k`, `v (batch, seq, kv_heads·head_dim)` are the projections' outputs; RoPE (`cos`, `sin` as
/// `(seq, head_dim/2)`) and the 1/√head_dim scale are applied inside. Returns
/// `(batch, seq, heads·head_dim)`.
///
/// The composite graph (head transposes, RoPE, scale, two matmuls, the softmax, the output
/// transpose) has about fifteen nodes, and candle's backprop allocates a zeroed gradient and
/// adds into it for every one, several of them score-sized. Here the probabilities are the one
/// score-sized tensor kept, as in [`causal_softmax`], and the backward is `dV = Pᵀ·dO`,
/// `dS = P ⊙ (dO·Vᵀ − rowsum(P ⊙ dO·Vᵀ))`, `dQ = s·dS·K`, `dK = s·dSᵀ·Q`, then RoPE by −θ.
/// The `groups` query heads of a KV head are folded into rows, as in the inference path.
/// `None` off the CPU or outside f32: the caller keeps the composite graph there.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: AttentionHeads,
) -> candle_core::Result<Option<Tensor>> {
    if !cpu_f32(q) || !cpu_f32(k) || !cpu_f32(v) || cos.rank() != 2 {
        return Ok(None);
    }
    let op = CausalAttention {
        heads,
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        saved: std::sync::Mutex::new(None),
    };
    Ok(Some(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        op,
    )?))
}

struct CausalAttention {
    heads: AttentionHeads,
    cos: Tensor,
    sin: Tensor,
    /// From the forward, for the backward: the rotated, folded queries and keys, the values
    /// (all head-major) and the probabilities `(batch, kv_heads, groups·seq, seq)`.
    saved: std::sync::Mutex<Option<[Tensor; 4]>>,
}

impl CausalAttention {
    fn groups(&self) -> usize {
        self.heads.heads / self.heads.kv_heads.max(1)
    }

    /// `(batch, seq, n·head_dim)` → `(batch, n, seq, head_dim)`, contiguous.
    fn split_heads(&self, x: &Tensor, n: usize) -> candle_core::Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        x.reshape((batch, seq, n, self.heads.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `(batch, n, seq, head_dim)` → `(batch, seq, n·head_dim)`.
    fn merge_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, n, seq, head_dim) = x.dims4()?;
        x.transpose(1, 2)?.reshape((batch, seq, n * head_dim))
    }

    /// Rotated queries folded to `(batch, kv_heads, groups·seq, head_dim)`, rotated keys and
    /// the values `(batch, kv_heads, seq, head_dim)`, and the probabilities.
    fn forward_parts(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<[Tensor; 4]> {
        let AttentionHeads {
            heads,
            kv_heads,
            head_dim,
        } = self.heads;
        let (batch, seq, _) = q.dims3()?;
        let rotate = |x: Tensor| candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin);
        let q = rotate(self.split_heads(q, heads)?)?.reshape((
            batch,
            kv_heads,
            self.groups() * seq,
            head_dim,
        ))?;
        let k = rotate(self.split_heads(k, kv_heads)?)?;
        let v = self.split_heads(v, kv_heads)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let scores = (&q * scale)?.matmul(&k.t()?)?;
        let probs = scores.apply_op1_no_bwd(&CausalSoftmax { seq, past: 0 })?;
        Ok([q, k, v, probs])
    }
}

impl candle_core::CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        q_storage: &CpuStorage,
        q_layout: &Layout,
        k_storage: &CpuStorage,
        k_layout: &Layout,
        v_storage: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = cpu_tensor(q_storage, q_layout)?;
        let k = cpu_tensor(k_storage, k_layout)?;
        let v = cpu_tensor(v_storage, v_layout)?;
        let AttentionHeads {
            heads,
            kv_heads,
            head_dim,
        } = self.heads;
        let (batch, seq, width) = q.dims3()?;
        let kv_shape = [batch, seq, kv_heads * head_dim];
        if width != heads * head_dim
            || k.dims() != kv_shape
            || v.dims() != kv_shape
            || heads % kv_heads.max(1) != 0
            || self.cos.dims() != [seq, head_dim / 2]
        {
            candle_core::bail!(
                "causal-attention: q {:?}, k {:?}, v {:?}, rope {:?} do not fit {heads} query \
                 heads, {kv_heads} KV heads of {head_dim}",
                q.dims(),
                k.dims(),
                v.dims(),
                self.cos.dims()
            );
        }
        let parts = self.forward_parts(&q, &k, &v)?;
        let [_, _, v, probs] = &parts;
        let out = probs.matmul(v)?.reshape((batch, heads, seq, head_dim))?;
        let out = self.merge_heads(&out)?;
        if let Ok(mut saved) = self.saved.lock() {
            *saved = Some(parts);
        }
        cpu_output(out)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let AttentionHeads {
            heads,
            kv_heads,
            head_dim,
        } = self.heads;
        let (batch, seq, _) = q.dims3()?;
        let saved = self.saved.lock().ok().and_then(|mut p| p.take());
        let [q, k, v, probs] = match saved {
            Some(parts) => parts,
            None => self.forward_parts(&q.detach(), &k.detach(), &v.detach())?,
        };
        let rows = self.groups() * seq;
        let d_out = self
            .split_heads(&grad_res.detach(), heads)?
            .reshape((batch, kv_heads, rows, head_dim))?;
        let d_v = probs.t()?.matmul(&d_out)?;
        let d_probs = d_out.matmul(&v.t()?)?.contiguous()?;
        let d_scores = softmax_backward_rows(&probs, &d_probs)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let d_q = (d_scores.matmul(&k)? * scale)?.reshape((batch, heads, seq, head_dim))?;
        let d_k = (d_scores.t()?.matmul(&q)? * scale)?;
        // RoPE is a rotation by θ: its gradient is the rotation by −θ.
        let sin_back = self.sin.neg()?;
        let unrotate =
            |x: &Tensor| candle_nn::rotary_emb::rope(&x.contiguous()?, &self.cos, &sin_back);
        Ok((
            Some(self.merge_heads(&unrotate(&d_q)?)?),
            Some(self.merge_heads(&unrotate(&d_k)?)?),
            Some(self.merge_heads(&d_v)?),
        ))
    }
}

/// `P ⊙ (dP − rowsum(P ⊙ dP))` row by row, for contiguous CPU f32 `probs` and `d_probs`.
fn softmax_backward_rows(probs: &Tensor, d_probs: &Tensor) -> candle_core::Result<Tensor> {
    let total = probs.dim(D::Minus1)?.max(1);
    let out = with_two_cpu_f32(probs, d_probs, "causal-attention backward", |p, dp| {
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(total)
            .zip(p.par_chunks(total).zip(dp.par_chunks(total)))
            .for_each(|(out, (p, dp))| {
                let dot = dot_lanes(p, dp);
                for ((out, p), dp) in out.iter_mut().zip(p).zip(dp) {
                    *out = p * (dp - dot);
                }
            });
        out
    })?;
    Tensor::from_vec(out, probs.shape(), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_precision_exp_is_within_6e5_and_keeps_zero_and_nan() {
        let mut x = 0.0f32;
        while x > -90.0 {
            let expected = (x as f64).exp();
            let actual = exp_bf16_precision(x) as f64;
            if expected > 1e-37 {
                assert!(
                    ((actual - expected) / expected).abs() < 6e-5,
                    "e^{x}: {actual} vs {expected}"
                );
            }
            x -= 0.0137;
        }
        assert_eq!(exp_bf16_precision(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_bf16_precision(-100.0), 0.0);
        assert!(exp_bf16_precision(f32::NAN).is_nan());
        let mut row = [0.5f32, -1.0, f32::NEG_INFINITY, 2.0];
        let sum = exp_shifted_in_place(&mut row);
        let expected = [(-1.5f64).exp(), (-3.0f64).exp(), 0.0, 1.0];
        for (a, e) in row.iter().zip(expected) {
            assert!((*a as f64 - e).abs() < 1e-4, "{row:?}");
        }
        assert!((sum as f64 - expected.iter().sum::<f64>()).abs() < 1e-4);
    }
    use candle_core::{Device, Var};

    #[test]
    fn silu_mul_matches_candle_silu_times_up() {
        let gate: Vec<f32> = (0..5000).map(|i| (i as f32 - 2500.0) * 0.04).collect();
        let up: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let gate = Tensor::from_vec(gate, (50, 100), &Device::Cpu).unwrap();
        let up = Tensor::from_vec(up, (50, 100), &Device::Cpu).unwrap();
        let expected: Vec<f32> = (gate.silu().unwrap() * &up)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let actual: Vec<f32> = silu_mul(&gate, &up)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, e) in actual.iter().zip(&expected) {
            assert!((a - e).abs() <= 1e-6 * e.abs().max(1.0), "{a} vs {e}");
        }
        let extremes = Tensor::new(&[-200f32, -88.0, 88.0, 200.0, f32::NAN], &Device::Cpu).unwrap();
        let ones = Tensor::ones(5, candle_core::DType::F32, &Device::Cpu).unwrap();
        let out: Vec<f32> = silu_mul(&extremes, &ones).unwrap().to_vec1().unwrap();
        assert!(out[0].abs() < 1e-30 && out[1].abs() < 1e-30, "{out:?}");
        assert_eq!(&out[2..4], &[88.0, 200.0]);
        assert!(out[4].is_nan(), "NaN passes through");
    }

    #[test]
    fn prefix_attention_softmax_equals_the_masked_softmax_of_the_concatenation() {
        let shape = PrefixAttentionShape {
            batch: 2,
            kv_heads: 3,
            groups: 2,
            seq: 5,
            past: 7,
        };
        let rows = shape.groups * shape.seq;
        let count = |n: usize, salt: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i + salt) * 2654435761) % 1000) as f32 / 125.0 - 4.0)
                .collect()
        };
        let shared = Tensor::from_vec(
            count(shape.kv_heads * shape.batch * rows * shape.past, 1),
            (shape.kv_heads, shape.batch * rows, shape.past),
            &Device::Cpu,
        )
        .unwrap();
        let own = Tensor::from_vec(
            count(shape.batch * shape.kv_heads * rows * shape.seq, 2),
            (shape.batch, shape.kv_heads, rows, shape.seq),
            &Device::Cpu,
        )
        .unwrap();
        let (shared_probs, own_probs) = prefix_attention_softmax(&shared, &own, shape).unwrap();
        let shared_probs = shared_probs.to_vec3::<f32>().unwrap();
        let own_probs: Vec<Vec<Vec<Vec<f32>>>> = (0..shape.batch)
            .map(|b| own_probs.get(b).unwrap().to_vec3().unwrap())
            .collect();
        let shared_scores = shared.to_vec3::<f32>().unwrap();
        let own_scores: Vec<Vec<Vec<Vec<f32>>>> = (0..shape.batch)
            .map(|b| own.get(b).unwrap().to_vec3().unwrap())
            .collect();
        for b in 0..shape.batch {
            for h in 0..shape.kv_heads {
                for row in 0..rows {
                    let visible = row % shape.seq + 1;
                    let shared_row = &shared_scores[h][b * rows + row];
                    let own_row = &own_scores[b][h][row];
                    let all: Vec<f64> = shared_row
                        .iter()
                        .chain(&own_row[..visible])
                        .map(|&v| v as f64)
                        .collect();
                    let max = all.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let total: f64 = all.iter().map(|v| (v - max).exp()).sum();
                    let expected: Vec<f64> = all.iter().map(|v| (v - max).exp() / total).collect();
                    let actual: Vec<f32> = shared_probs[h][b * rows + row]
                        .iter()
                        .chain(&own_probs[b][h][row])
                        .copied()
                        .collect();
                    for (j, &a) in actual.iter().enumerate() {
                        let e = expected.get(j).copied().unwrap_or(0.0);
                        assert!(
                            (a as f64 - e).abs() < 1e-6,
                            "b{b} h{h} row{row} [{j}]: {a} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp_polynomial_is_within_three_ulp_of_exp_on_the_softmax_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -86.9 * i as f32 / 200_000.0;
            let exact = (x as f64).exp();
            let relative = ((exp_polynomial(x) as f64 - exact) / exact).abs();
            worst = worst.max(relative);
        }
        assert!(
            worst < 3.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(exp_polynomial(0.0), 1.0);
        assert_eq!(exp_polynomial(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_polynomial(-200.0), 0.0);
        assert!(exp_polynomial(f32::NAN).is_nan());
        let mut out = [0f32; 3];
        softmax_row(&[0.0, f32::NAN, 1.0], &mut out);
        assert!(
            out.iter().all(|p| p.is_nan()),
            "NaN scores must not normalise: {out:?}"
        );
    }

    #[test]
    fn softmax_row_matches_f64_softmax_on_every_length_and_zeroes_masked_entries() {
        for len in [1usize, 3, 15, 16, 17, 33, 760] {
            let scores: Vec<f32> = (0..len)
                .map(|i| {
                    if i % 7 == 3 {
                        f32::NEG_INFINITY
                    } else {
                        ((i * 37 % 101) as f32 - 50.0) / 7.0
                    }
                })
                .collect();
            let mut out = vec![f32::NAN; len];
            softmax_row(&scores, &mut out);
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exps: Vec<f64> = scores.iter().map(|&s| (s as f64 - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for (i, (&got, &e)) in out.iter().zip(&exps).enumerate() {
                assert!((got as f64 - e / sum).abs() < 1e-6, "len {len}, entry {i}");
                if scores[i] == f32::NEG_INFINITY {
                    assert_eq!(got, 0.0);
                }
            }
        }
    }

    #[test]
    fn softmax_last_dim_equals_candles_within_1e6() -> candle_core::Result<()> {
        let values: Vec<f32> = (0..6 * 29)
            .map(|i| ((i * 13 % 37) as f32 - 18.0) / 3.0)
            .collect();
        let x = Tensor::from_vec(values, (2, 3, 29), &Device::Cpu)?;
        let ours = softmax_last_dim(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let candle = candle_nn::ops::softmax_last_dim(&x)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (a, b) in ours.iter().zip(&candle) {
            assert!((a - b).abs() < 1e-6);
        }
        Ok(())
    }

    fn composite(scores: &Tensor, seq: usize, past: usize) -> candle_core::Result<Tensor> {
        let (rows, total) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
        let mask: Vec<f32> = (0..rows)
            .flat_map(|r| {
                (0..total).map(move |j| {
                    if j <= past + r % seq {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (rows, total), scores.device())?;
        candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn ramp(shape: &[usize], scale: f32) -> Tensor {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * scale)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn rms_norm_and_rope_match_the_composite_ops_with_gradients() -> candle_core::Result<()> {
        let x = Var::from_tensor(&ramp(&[2, 3, 8], 0.2))?;
        let w = Var::from_tensor(&(ramp(&[8], 0.05) + 1.0)?)?;
        let probe = ramp(&[2, 3, 8], 0.7);
        let composite = {
            let mean_square = (x.sqr()?.sum_keepdim(D::Minus1)? / 8.0)?;
            x.broadcast_div(&(mean_square + 1e-5)?.sqrt()?)?
                .broadcast_mul(&w)?
        };
        let fused = rms_norm(&x, &w, 1e-5)?;
        assert!(max_diff(&fused, &composite) < 1e-5);
        let g1 = (fused * &probe)?.sum_all()?.backward()?;
        let g2 = (composite * &probe)?.sum_all()?.backward()?;
        for var in [&x, &w] {
            let d = max_diff(g1.get(var).unwrap(), g2.get(var).unwrap());
            assert!(d < 1e-4, "rms_norm gradient differs by {d}");
        }

        let q = Var::from_tensor(&ramp(&[2, 3, 5, 8], 0.1))?;
        let probe = ramp(&[2, 3, 5, 8], 0.3);
        for per_row in [false, true] {
            let (cos, sin) = if per_row {
                (ramp(&[2, 5, 4], 0.04), ramp(&[2, 5, 4], 0.03))
            } else {
                (ramp(&[5, 4], 0.04), ramp(&[5, 4], 0.03))
            };
            let fused = rope(&q, &cos, &sin)?;
            let composite = rope_composite(&q, &cos, &sin)?;
            assert!(max_diff(&fused, &composite) < 1e-6);
            let g1 = (fused * &probe)?.sum_all()?.backward()?;
            let g2 = (composite * &probe)?.sum_all()?.backward()?;
            assert!(max_diff(g1.get(&q).unwrap(), g2.get(&q).unwrap()) < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn silu_mul_with_grad_matches_the_composite_with_gradients() -> candle_core::Result<()> {
        // Gates from −22 to 22 reach the clamp-free range and both tails of the sigmoid.
        let gate = Var::from_tensor(&ramp(&[3, 5, 70], 2.0))?;
        let up = Var::from_tensor(&ramp(&[3, 5, 70], 0.3))?;
        let probe = ramp(&[3, 5, 70], 0.07);
        let fused = silu_mul_with_grad(&gate, &up)?;
        let composite = (gate.silu()? * up.as_tensor())?;
        let d = max_diff(&fused, &composite);
        assert!(d < 1e-5, "forward differs by {d}");
        let g_fused = (fused * &probe)?.sum_all()?.backward()?;
        let g_composite = (composite * &probe)?.sum_all()?.backward()?;
        for (name, var) in [("gate", &gate), ("up", &up)] {
            let d = max_diff(g_fused.get(var).unwrap(), g_composite.get(var).unwrap());
            assert!(d < 1e-5, "the {name} gradient differs by {d}");
        }
        Ok(())
    }

    /// The fused training attention against candle's composite graph (head transposes, RoPE,
    /// scale, matmul, the masked softmax, matmul, head merge), output and all three gradients,
    /// with grouped queries (3 query heads per KV head) and a sequence that fits no tile size.
    #[test]
    fn causal_attention_matches_the_composite_graph_with_gradients() -> candle_core::Result<()> {
        let (batch, kv_heads, groups, seq, head_dim) = (2, 2, 3, 7, 8);
        let heads = kv_heads * groups;
        let q = Var::from_tensor(&ramp(&[batch, seq, heads * head_dim], 0.09))?;
        let k = Var::from_tensor(&ramp(&[batch, seq, kv_heads * head_dim], 0.07))?;
        let v = Var::from_tensor(&ramp(&[batch, seq, kv_heads * head_dim], 0.11))?;
        let (cos, sin) = (
            ramp(&[seq, head_dim / 2], 0.04),
            ramp(&[seq, head_dim / 2], 0.03),
        );
        let probe = ramp(&[batch, seq, heads * head_dim], 0.05);
        let shape = AttentionHeads {
            heads,
            kv_heads,
            head_dim,
        };

        let fused = causal_attention(&q, &k, &v, &cos, &sin, shape)?.unwrap();
        let split = |x: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            x.reshape((batch, seq, n, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q_rot = rope_composite(&split(&q, heads)?, &cos, &sin)?;
        let k_rot = rope_composite(&split(&k, kv_heads)?, &cos, &sin)?;
        let scores = (q_rot.reshape((batch, kv_heads, groups * seq, head_dim))?
            * (1.0 / (head_dim as f64).sqrt()))?
        .matmul(&k_rot.t()?)?;
        let composite = composite(&scores, seq, 0)?
            .matmul(&split(&v, kv_heads)?)?
            .reshape((batch, heads, seq, head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq, heads * head_dim))?;
        assert_eq!(fused.dims(), composite.dims());
        let d = max_diff(&fused, &composite);
        assert!(d < 1e-6, "forward differs by {d}");
        let g_fused = (fused * &probe)?.sum_all()?.backward()?;
        let g_composite = (composite * &probe)?.sum_all()?.backward()?;
        for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, b) = (g_fused.get(var).unwrap(), g_composite.get(var).unwrap());
            let d = max_diff(a, b);
            let size = b.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(size > 1e-3, "the {name} gradient is too small to test");
            assert!(d < 1e-5, "the {name} gradient differs by {d}");
        }
        Ok(())
    }

    #[test]
    fn matches_the_composite_ops_forward_and_backward() -> candle_core::Result<()> {
        // (batch 2, kv heads 2, groups 2 × seq 3, total 5 = past 2 + seq 3)
        let values: Vec<f32> = (0..2 * 2 * 6 * 5)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let scores = Var::from_tensor(&Tensor::from_vec(values, (2, 2, 6, 5), &Device::Cpu)?)?;
        let weights = Tensor::from_vec(
            (0..2 * 2 * 6 * 5)
                .map(|i| (i % 7) as f32 - 3.0)
                .collect::<Vec<_>>(),
            (2, 2, 6, 5),
            &Device::Cpu,
        )?;
        let fused = causal_softmax(scores.as_tensor(), 3, 2)?;
        let reference = composite(scores.as_tensor(), 3, 2)?;
        let diff = (&fused - &reference)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "forward differs by {diff}");
        let g_fused = (fused * &weights)?.sum_all()?.backward()?;
        let g_reference = (reference * &weights)?.sum_all()?.backward()?;
        let (a, b) = (
            g_fused.get(scores.as_tensor()).unwrap(),
            g_reference.get(scores.as_tensor()).unwrap(),
        );
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "backward differs by {diff}");
        Ok(())
    }
}

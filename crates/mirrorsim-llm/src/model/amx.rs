//! bf16 matrix products on Intel AMX (Sapphire Rapids and later), on the CPU: the dense layers
//! and attention in inference, and the frozen base weights' products in LoRA training.
//!
//! Opt-in (`MatmulPrecision::Bf16`): each weight is rounded to bf16 once, at load, and stored in
//! the tile layout `TDPBF16PS` reads; activations (and attention's queries, keys, values and
//! exponentials) are rounded to bf16 on every call with AVX-512 BF16; products accumulate in
//! f32. One tile product does 16 × 16 × 32 multiply-adds in 16 cycles (measured 2.0–2.9 TFLOP/s
//! on one core); this VM's two vCPUs share one core's tile unit, and the 2×2-tile kernel reaches
//! 0.6–0.75 TFLOP/s on two threads at layer sizes (BENCHMARKS.md). bf16 weights also halve the
//! bytes a decode step reads. The price is bf16 rounding of both operands (8 significant bits):
//! next-token log-probabilities move by up to about 0.06, so the f32 path stays the default and
//! the reference for the correctness tests.
//!
//! The instructions are written with `asm!` (Rust's AMX intrinsics are unstable). Linux hands a
//! process the 8 KiB tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which
//! [`amx`] makes once; every work item loads its tile configuration and releases it when done.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// Proof that this process may run AMX-BF16 instructions: only [`amx`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Amx(());

/// Checks the CPU for AMX-BF16 and asks Linux for the tile state, once per process.
pub fn amx() -> Result<Amx, String> {
    static READY: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    READY.get_or_init(enable).clone().map(|()| Amx(()))
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn enable() -> Result<(), String> {
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that runs this binary's AVX code paths;
    // on older ones it returns zeros, which reads as "no AMX".
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    if leaf7.edx & (AMX_BF16 | AMX_TILE) != AMX_BF16 | AMX_TILE {
        return Err(
            "this CPU has no AMX-BF16 (Intel Xeon 4th generation, Sapphire Rapids, or \
                    later has it); use the default f32 matmul"
                .into(),
        );
    }
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16"))
    {
        return Err(
            "this CPU has AMX but not AVX-512 BF16, which the bf16 packing needs; use \
                    the default f32 matmul"
                .into(),
        );
    }
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    const SYS_ARCH_PRCTL: i64 = 158;
    let result: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only changes which register state the
    // kernel saves for this process; the syscall instruction clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if result != 0 {
        return Err(format!(
            "Linux refused this process the AMX tile state (arch_prctl error {}); AMX needs \
             Linux 5.16 or later; use the default f32 matmul",
            -result
        ));
    }
    Ok(())
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn enable() -> Result<(), String> {
    Err("bf16 matmul runs on Intel AMX under x86-64 Linux only; use the default f32 matmul".into())
}

/// Rows of a tile, and bf16 values along the inner dimension of one tile row.
const TILE_ROWS: usize = 16;
const TILE_INNER: usize = 32;
/// bf16 values in one 1 KiB tile.
const TILE_LEN: usize = TILE_ROWS * TILE_INNER;
/// Row blocks (of 32 rows) a work item covers: the item reuses one tile pair of the weight
/// (32 outputs × the whole inner dimension, 36 KiB for 576 inputs) while the activations of
/// its rows stream past. Items that swept 4 pairs for one row block re-read the whole weight
/// (1.7 MB for 576 × 1536) per row block, and ran 1.15–1.2× slower on a 600 × 576 · 1536
/// product (`examples/amx_bench.rs`, 1 and 2 threads).
const ROW_BLOCKS_PER_ITEM: usize = 8;

/// A weight `(out, in)` in bf16, packed for `TDPBF16PS`: tile `(n, k)` holds output rows
/// `16n..16n+16` and inputs `32k..32k+32`, with each output row's consecutive input pairs side by
/// side (`tile[p][2o + j] = W[16n + o][32k + 2p + j]`). Out and in are zero-padded to
/// multiples of 32.
pub struct Bf16Weight {
    out: usize,
    inner: usize,
    out_tiles: usize,
    inner_tiles: usize,
    tiles: TileBuffer,
}

impl std::fmt::Debug for Bf16Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Weight({} x {})", self.out, self.inner)
    }
}

impl Bf16Weight {
    /// Packs a row-major `(out, inner)` f32 weight.
    pub fn pack(_amx: Amx, weight: &[f32], out: usize, inner: usize) -> Self {
        assert_eq!(weight.len(), out * inner, "weight length is out × inner");
        let out_tiles = out.div_ceil(2 * TILE_ROWS) * 2;
        let inner_tiles = inner.div_ceil(TILE_INNER);
        let mut tiles = TileBuffer::zeroed(out_tiles * inner_tiles);
        tiles
            .values_mut()
            .par_chunks_mut(inner_tiles * TILE_LEN)
            .enumerate()
            .for_each(|(n, row_of_tiles)| {
                pack_weight_tile_row(row_of_tiles, n, out, |row| {
                    &weight[row * inner..(row + 1) * inner]
                })
            });
        Bf16Weight {
            out,
            inner,
            out_tiles,
            inner_tiles,
            tiles,
        }
    }

    /// Packs a contiguous 2-D f32 CPU tensor `(out, inner)`.
    pub fn from_tensor(amx: Amx, weight: &Tensor) -> candle_core::Result<Self> {
        let (out, inner) = weight.dims2()?;
        let values: Vec<f32> = weight
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Ok(Self::pack(amx, &values, out, inner))
    }

    pub fn out_features(&self) -> usize {
        self.out
    }

    pub fn in_features(&self) -> usize {
        self.inner
    }

    /// `x (rows, inner) · Wᵀ` as a `(rows, out)` f32 tensor; `x` must be f32 on the CPU.
    pub fn matmul_t_tensor(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, inner) = x.dims2()?;
        if inner != self.inner {
            candle_core::bail!(
                "bf16 matmul: input has {inner} features, the weight {}",
                self.inner
            );
        }
        if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 {
            candle_core::bail!("bf16 matmul needs an f32 input on the CPU");
        }
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let inputs = match &*storage {
            candle_core::Storage::Cpu(cpu) => {
                super::ops::contiguous_f32(cpu, layout, "bf16 matmul")?
            }
            _ => candle_core::bail!("bf16 matmul needs an f32 input on the CPU"),
        };
        let values = self.matmul_t(inputs, rows);
        drop(storage);
        Tensor::from_vec(values, (rows, self.out), &Device::Cpu)
    }

    /// `x (rows, inner) · Wᵀ` → `(rows, out)`, row-major.
    pub fn matmul_t(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.inner, "input length is rows × inner");
        if rows == 0 {
            return Vec::new();
        }
        let row_tiles = rows.div_ceil(TILE_ROWS);
        let activations = self.pack_activations(x, rows, row_tiles);
        let out_padded = self.out_tiles * TILE_ROWS;
        let rows_padded = row_tiles * TILE_ROWS;
        let mut output: Vec<f32> = Vec::with_capacity(rows_padded * out_padded);
        let row_blocks = row_tiles.div_ceil(2);
        let pairs = self.out_tiles / 2;
        let row_groups = row_blocks.div_ceil(ROW_BLOCKS_PER_ITEM);
        let output_ptr = SharedPtr(output.as_mut_ptr());
        let activations_ptr = SharedPtr(activations.values().as_ptr() as *mut u16);
        (0..row_groups * pairs).into_par_iter().for_each(|item| {
            let (group, pair) = (item / pairs, item % pairs);
            let blocks =
                group * ROW_BLOCKS_PER_ITEM..((group + 1) * ROW_BLOCKS_PER_ITEM).min(row_blocks);
            // SAFETY: the activations hold `row_tiles × inner_tiles` tiles and the weight
            // `out_tiles × inner_tiles`; the output holds `rows_padded × out_padded` f32, and
            // every item writes only its own rows and columns of it.
            unsafe {
                load_tile_config();
                for block in blocks {
                    let first_row_tile = 2 * block;
                    kernel(
                        activations_ptr
                            .get()
                            .add(first_row_tile * self.inner_tiles * TILE_LEN),
                        first_row_tile + 1 < row_tiles,
                        self.tiles.values().as_ptr(),
                        self.inner_tiles,
                        pair..pair + 1,
                        output_ptr
                            .get()
                            .add(first_row_tile * TILE_ROWS * out_padded),
                        out_padded,
                    );
                }
                release_tiles();
            }
        });
        // SAFETY: the items together stored every one of the `rows_padded × out_padded` values.
        unsafe { output.set_len(rows_padded * out_padded) };
        if out_padded == self.out {
            output.truncate(rows * self.out);
            output
        } else {
            let mut packed = Vec::with_capacity(rows * self.out);
            for row in output.chunks_exact(out_padded).take(rows) {
                packed.extend_from_slice(&row[..self.out]);
            }
            packed
        }
    }

    /// The activations in bf16 tiles: tile `(m, k)` holds rows `16m..16m+16`, inputs
    /// `32k..32k+32`, row-major; padding rows and inputs are zero.
    fn pack_activations(&self, x: &[f32], rows: usize, row_tiles: usize) -> TileBuffer {
        let mut buffer = TileBuffer::zeroed(row_tiles * self.inner_tiles);
        pack_activation_rows(buffer.values_mut(), self.inner_tiles, rows, |row| {
            &x[row * self.inner..(row + 1) * self.inner]
        });
        buffer
    }
}

/// Keys and values of attention, for [`attention`]: for batch row `b` and KV head `h`, key
/// `j < len` starts at `b · batch_stride + h · head_stride + j · head_dim` in `keys` (the
/// value at the same place in `values`). A batch stride of 0 shares one row's keys (a shared
/// prefix) across the batch.
#[derive(Clone, Copy)]
pub struct KeyValues<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub batch_stride: usize,
    pub head_stride: usize,
    pub len: usize,
}

impl KeyValues<'_> {
    pub const EMPTY: KeyValues<'static> = KeyValues {
        keys: &[],
        values: &[],
        batch_stride: 0,
        head_stride: 0,
        len: 0,
    };
}

/// Which keys a query sees.
#[derive(Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Query `t` of its row's `seq` sees the first `keys − seq + t + 1` keys.
    Causal,
    /// Added to the scores before the softmax: `(mask_batch, 1, 1, mask_seq, keys)` with
    /// `mask_batch` 1 or `batch` and `mask_seq` 1 or `seq` (size-1 dimensions broadcast).
    Additive {
        values: &'a [f32],
        mask_batch: usize,
        mask_seq: usize,
    },
}

/// Grouped-query attention for [`attention`]: `queries` `(batch, kv_heads, groups · seq,
/// head_dim)` (rows ordered (group, position), rotated and scaled by `1/√head_dim`) against the
/// keys of `first` followed by those of `second`.
pub struct AttentionInputs<'a> {
    pub batch: usize,
    pub kv_heads: usize,
    pub groups: usize,
    pub seq: usize,
    pub head_dim: usize,
    pub queries: &'a [f32],
    pub first: KeyValues<'a>,
    pub second: KeyValues<'a>,
    pub mask: AttentionMask<'a>,
}

/// Attention with both products in bf16 on AMX: per (batch row, KV head) the keys and the
/// transposed values are packed once, then each block of 32 queries gets its scores in f32,
/// the mask and the softmax's exponentials in f32, and its output from the bf16-rounded
/// exponentials, divided by their f32 sum afterwards. Returns
/// `(batch, seq, kv_heads · groups · head_dim)`, head `h · groups + g` in its own columns,
/// ready for the output projection.
pub fn attention(_amx: Amx, a: &AttentionInputs<'_>) -> Vec<f32> {
    let AttentionInputs {
        batch,
        kv_heads,
        groups,
        seq,
        head_dim,
        first,
        second,
        mask,
        ..
    } = *a;
    let rows = groups * seq;
    let keys_total = first.len + second.len;
    // Scores: keys are the "output" side (an even number of tiles), head_dim the inner side.
    let key_tiles = keys_total.div_ceil(2 * TILE_ROWS) * 2;
    let dim_inner_tiles = head_dim.div_ceil(TILE_INNER);
    // Outputs: head_dim is the output side, keys the inner side.
    let dim_tiles = head_dim.div_ceil(2 * TILE_ROWS) * 2;
    let key_inner_tiles = keys_total.div_ceil(TILE_INNER);
    let scores_stride = key_tiles * TILE_ROWS;
    let out_stride = dim_tiles * TILE_ROWS;
    const BLOCK: usize = 2 * TILE_ROWS;
    let visible = |row: usize| match mask {
        AttentionMask::Causal => keys_total - seq + row % seq + 1,
        AttentionMask::Additive { .. } => keys_total,
    };
    let blocks: Vec<Vec<f32>> = (0..batch * kv_heads)
        .into_par_iter()
        .map(|pair| {
            let (b, h) = (pair / kv_heads, pair % kv_heads);
            // Key or value `j`: the first part's, then the second's.
            let row = |j: usize, keys: bool| -> &[f32] {
                let (part, j) = if j < first.len {
                    (&first, j)
                } else {
                    (&second, j - first.len)
                };
                let buffer = if keys { part.keys } else { part.values };
                let start = b * part.batch_stride + h * part.head_stride + j * head_dim;
                &buffer[start..start + head_dim]
            };
            let key = |j: usize| row(j, true);
            let value = |j: usize| row(j, false);
            let mut key_pack = TileBuffer::zeroed(key_tiles * dim_inner_tiles);
            for (n, dst) in key_pack
                .values_mut()
                .chunks_mut(dim_inner_tiles * TILE_LEN)
                .enumerate()
            {
                pack_weight_tile_row(dst, n, keys_total, key);
            }
            let mut value_pack = TileBuffer::zeroed(dim_tiles * key_inner_tiles);
            pack_transposed_weight(value_pack.values_mut(), key_inner_tiles, keys_total, value);
            let queries = &a.queries[pair * rows * head_dim..][..rows * head_dim];
            let mut query_tiles = TileBuffer::zeroed(0);
            let mut prob_tiles = TileBuffer::zeroed(0);
            let mut scores = vec![0f32; BLOCK * scores_stride];
            let mut block_out = vec![0f32; BLOCK * out_stride];
            let mut result = vec![0f32; rows * head_dim];
            let mut inverse_sums = [0f32; BLOCK];
            // SAFETY: the tile configuration is loaded and released on this thread, around
            // kernels whose operands are sized as `kernel` requires: queries (and probabilities)
            // 2 row tiles × their inner tiles, keys `key_tiles × dim_inner_tiles` and values
            // `dim_tiles × key_inner_tiles` tiles, outputs `BLOCK` rows of their strides.
            unsafe { load_tile_config() };
            for start in (0..rows).step_by(BLOCK) {
                let count = (rows - start).min(BLOCK);
                query_tiles.reset(2 * dim_inner_tiles);
                pack_activation_rows(query_tiles.values_mut(), dim_inner_tiles, count, |r| {
                    &queries[(start + r) * head_dim..][..head_dim]
                });
                unsafe {
                    kernel(
                        query_tiles.values().as_ptr(),
                        count > TILE_ROWS,
                        key_pack.values().as_ptr(),
                        dim_inner_tiles,
                        0..key_tiles / 2,
                        scores.as_mut_ptr(),
                        scores_stride,
                    )
                };
                for (r, row) in scores.chunks_mut(scores_stride).take(count).enumerate() {
                    let row = &mut row[..visible(start + r)];
                    if let AttentionMask::Additive {
                        values,
                        mask_batch,
                        mask_seq,
                    } = mask
                    {
                        let mb = if mask_batch == 1 { 0 } else { b };
                        let mt = if mask_seq == 1 { 0 } else { (start + r) % seq };
                        let mask_row = &values[(mb * mask_seq + mt) * keys_total..][..keys_total];
                        for (score, &m) in row.iter_mut().zip(mask_row) {
                            *score += m;
                        }
                    }
                    // Normalised after the product: the output row is scaled by 1/sum.
                    inverse_sums[r] = 1.0 / super::ops::exp_shifted_in_place(row);
                }
                prob_tiles.reset(2 * key_inner_tiles);
                pack_activation_rows(prob_tiles.values_mut(), key_inner_tiles, count, |r| {
                    &scores[r * scores_stride..][..visible(start + r)]
                });
                unsafe {
                    kernel(
                        prob_tiles.values().as_ptr(),
                        count > TILE_ROWS,
                        value_pack.values().as_ptr(),
                        key_inner_tiles,
                        0..dim_tiles / 2,
                        block_out.as_mut_ptr(),
                        out_stride,
                    )
                };
                for (r, row) in block_out.chunks(out_stride).take(count).enumerate() {
                    let target = &mut result[(start + r) * head_dim..][..head_dim];
                    for (out, &value) in target.iter_mut().zip(&row[..head_dim]) {
                        *out = value * inverse_sums[r];
                    }
                }
            }
            unsafe { release_tiles() };
            result
        })
        .collect();
    let heads = kv_heads * groups;
    let mut out = vec![0f32; batch * seq * heads * head_dim];
    for (pair, block) in blocks.iter().enumerate() {
        let (b, h) = (pair / kv_heads, pair % kv_heads);
        for (row, values) in block.chunks_exact(head_dim).enumerate() {
            let (g, t) = (row / seq, row % seq);
            let head = h * groups + g;
            out[((b * seq + t) * heads + head) * head_dim..][..head_dim].copy_from_slice(values);
        }
    }
    out
}

/// Writes output rows `16n..16n+16` (those below `out`) of a weight into its row of tiles
/// `dst` (`inner_tiles` tiles, zeroed), in the layout of [`Bf16Weight`]; `row(r)` gives
/// weight row `r`'s inputs.
fn pack_weight_tile_row<'a>(
    dst: &mut [u16],
    n: usize,
    out: usize,
    row: impl Fn(usize) -> &'a [f32],
) {
    let inner_tiles = dst.len() / TILE_LEN;
    for o in 0..TILE_ROWS {
        let r = n * TILE_ROWS + o;
        if r >= out {
            break;
        }
        let source = row(r);
        assert!(
            source.len() <= inner_tiles * TILE_INNER,
            "row longer than the tiles"
        );
        for (k, chunk) in source.chunks(TILE_INNER).enumerate() {
            // SAFETY: `Amx` exists only where AVX-512 F/BW/BF16 do; the chunk has at most 32
            // values; tile `k` (1 KiB) lies in `dst`, and the scatter writes its 16 rows'
            // 4-byte column `o`.
            unsafe { simd::scatter_pairs(chunk, dst.as_mut_ptr().add(k * TILE_LEN), o) };
        }
    }
}

/// Writes `rows` activation rows (`row(r)`, each at most `inner_tiles · 32` values) into
/// zeroed tiles `dst` in the activation layout: tile `(m, k)` holds rows `16m..16m+16`, inputs
/// `32k..32k+32`, row-major.
fn pack_activation_rows<'a>(
    dst: &mut [u16],
    inner_tiles: usize,
    rows: usize,
    row: impl Fn(usize) -> &'a [f32],
) {
    assert!(dst.len() >= rows.div_ceil(TILE_ROWS) * inner_tiles * TILE_LEN);
    for r in 0..rows {
        let (m, within) = (r / TILE_ROWS, r % TILE_ROWS);
        let source = row(r);
        assert!(
            source.len() <= inner_tiles * TILE_INNER,
            "row longer than the tiles"
        );
        for (k, chunk) in source.chunks(TILE_INNER).enumerate() {
            let start = (m * inner_tiles + k) * TILE_LEN + within * TILE_INNER;
            // SAFETY: as in `pack_weight_tile_row`; the 64 bytes at `start` are one tile row,
            // inside `dst` (checked above) and 64-byte aligned (tiles are).
            unsafe { simd::store_row(chunk, dst.as_mut_ptr().add(start)) };
        }
    }
}

/// Writes the weight `W[o][i] = column(i)[o]` (`out` = `column(i).len()`, `inner` columns)
/// into zeroed tiles `dst` in the layout of [`Bf16Weight`] (`inner_tiles` tiles per tile row):
/// for the values of attention, whose rows are the product's inner side.
fn pack_transposed_weight<'a>(
    dst: &mut [u16],
    inner_tiles: usize,
    inner: usize,
    column: impl Fn(usize) -> &'a [f32],
) {
    let out_tiles = dst.len() / (inner_tiles * TILE_LEN);
    for i in (0..inner).step_by(2) {
        let (k, p) = (i / TILE_INNER, (i % TILE_INNER) / 2);
        let even = column(i);
        let odd = if i + 1 < inner { column(i + 1) } else { &[] };
        assert!(even.len() <= out_tiles * TILE_ROWS && odd.len() <= even.len());
        for n in 0..even.len().div_ceil(TILE_ROWS) {
            let part = |values: &'a [f32]| {
                let end = values.len().min((n + 1) * TILE_ROWS);
                &values[(n * TILE_ROWS).min(end)..end]
            };
            let start = (n * inner_tiles + k) * TILE_LEN + p * TILE_INNER;
            // SAFETY: as in `pack_weight_tile_row`; tile `(n, k)` lies in `dst` (checked
            // above) and its row `p` is 64 aligned bytes.
            unsafe { simd::store_interleaved(part(even), part(odd), dst.as_mut_ptr().add(start)) };
        }
    }
}

/// The f32 → bf16 conversions of the packers, with AVX-512 BF16 (`VCVTNE2PS2BF16`: round to
/// nearest even, NaN stays NaN; it reads denormals as zero).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// The mask of the first `count` (at most 16) lanes.
    #[inline(always)]
    fn first_lanes(count: usize) -> u16 {
        ((1u32 << count) - 1) as u16
    }

    /// Loads up to 32 values (zeros past the end) and converts them: lane `p` of the result
    /// holds values `2p` (low half) and `2p + 1` (high half).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pairs(values: &[f32]) -> __m512i {
        debug_assert!(values.len() <= 32);
        let low_count = values.len().min(16);
        let high_count = values.len().saturating_sub(16);
        // Masked-off lanes are never read, so the second pointer may lie past the slice.
        let low = _mm512_maskz_loadu_ps(first_lanes(low_count), values.as_ptr());
        let high = _mm512_maskz_loadu_ps(first_lanes(high_count), values.as_ptr().wrapping_add(16));
        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(high, low))
    }

    /// Up to 32 values → one 64-byte row at `dst` (64-byte aligned).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn store_row(values: &[f32], dst: *mut u16) {
        _mm512_store_si512(dst.cast(), pairs(values));
    }

    /// Up to 32 values of one weight row → column `o` (4 bytes) of the 16 rows of the tile at
    /// `tile`: pair `p` goes to row `p`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn scatter_pairs(values: &[f32], tile: *mut u16, o: usize) {
        // Row p starts 16 four-byte units after row p − 1.
        let rows = _mm512_setr_epi32(
            0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240,
        );
        _mm512_i32scatter_epi32::<4>(tile.add(2 * o).cast(), rows, pairs(values));
    }

    /// Up to 16 values of `even` and of `odd` → one 64-byte row at `dst` (aligned):
    /// `even[o], odd[o]` side by side for each `o`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn store_interleaved(even: &[f32], odd: &[f32], dst: *mut u16) {
        debug_assert!(even.len() <= 16 && odd.len() <= 16);
        let low = _mm512_maskz_loadu_ps(first_lanes(even.len()), even.as_ptr());
        let high = _mm512_maskz_loadu_ps(first_lanes(odd.len()), odd.as_ptr());
        let halves = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(high, low));
        // Result element 2o takes even[o] (element o), 2o + 1 takes odd[o] (element 16 + o).
        let order = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        _mm512_store_si512(dst.cast(), _mm512_permutexvar_epi16(order, halves));
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    pub(super) unsafe fn store_row(_: &[f32], _: *mut u16) {
        unreachable!("an Amx token exists only on x86-64")
    }
    pub(super) unsafe fn scatter_pairs(_: &[f32], _: *mut u16, _: usize) {
        unreachable!("an Amx token exists only on x86-64")
    }
    pub(super) unsafe fn store_interleaved(_: &[f32], _: &[f32], _: *mut u16) {
        unreachable!("an Amx token exists only on x86-64")
    }
}

/// One 1 KiB tile, aligned to a cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Tile([u16; TILE_LEN]);

/// Zeroed tile storage aligned to 64 bytes: a `TILELOADD` whose 64-byte rows straddle two cache
/// lines (a plain `Vec<u16>` is only 16-byte aligned) ran at a third of the aligned speed
/// (measured: 4 loads + 4 products per step, 18 ns against 6 ns per product).
struct TileBuffer(Vec<Tile>);

impl TileBuffer {
    fn zeroed(tiles: usize) -> Self {
        TileBuffer(vec![Tile([0; TILE_LEN]); tiles])
    }

    /// Makes the buffer `tiles` zeroed tiles long, keeping its allocation.
    fn reset(&mut self, tiles: usize) {
        self.0.clear();
        self.0.resize(tiles, Tile([0; TILE_LEN]));
    }

    fn values(&self) -> &[u16] {
        // SAFETY: `Tile` is `repr(C)` over `[u16; TILE_LEN]` and its size (1 KiB) is a multiple
        // of its alignment, so the tiles are contiguous u16 values with no padding.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * TILE_LEN) }
    }

    fn values_mut(&mut self) -> &mut [u16] {
        // SAFETY: as in `values`; the borrow is unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * TILE_LEN)
        }
    }
}

/// A raw pointer the work items share; each writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedPtr<T>(*mut T);
// SAFETY: used only for disjoint writes (output) or reads (activations) from rayon workers.
unsafe impl<T> Send for SharedPtr<T> {}
unsafe impl<T> Sync for SharedPtr<T> {}
impl<T> SharedPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// Palette 1 with all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const TILE_CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        bytes[16 + 2 * tile] = 64;
        bytes[48 + tile] = TILE_ROWS as u8;
        tile += 1;
    }
    TileConfig(bytes)
};

/// One block of a product: 16 or 32 rows (one or two row tiles from `activations`) times the
/// output columns of the tile pairs `pairs`, over the whole inner dimension (`inner_tiles`
/// tiles), stored as f32 into `output` (rows `out_stride` floats apart, starting at the
/// block's first row). The tile configuration must be loaded ([`load_tile_config`]).
///
/// Tiles: tmm0–tmm3 accumulate (row tile × column tile), tmm4/tmm5 hold the activation tiles,
/// tmm6/tmm7 the weight tiles. With 64-byte aligned tiles the order of loads and products made
/// no measurable difference (every order ran at the product's own 16 cycles from L1).
#[cfg(target_arch = "x86_64")]
unsafe fn kernel(
    activations: *const u16,
    two_row_tiles: bool,
    weight_tiles: *const u16,
    inner_tiles: usize,
    pairs: std::ops::Range<usize>,
    output: *mut f32,
    out_stride: usize,
) {
    use std::arch::asm;
    const TILE_STRIDE: usize = TILE_INNER * 2;
    let output_stride_bytes = out_stride * 4;
    let second_rows = activations.add(inner_tiles * TILE_LEN);
    for pair in pairs {
        let weights0 = weight_tiles.add(2 * pair * inner_tiles * TILE_LEN);
        let weights1 = weights0.add(inner_tiles * TILE_LEN);
        let c0 = output.add(2 * pair * TILE_ROWS);
        let c1 = c0.add(TILE_ROWS);
        let c2 = c0.add(TILE_ROWS * out_stride);
        let c3 = c2.add(TILE_ROWS);
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        for k in 0..inner_tiles {
            let offset = k * TILE_LEN;
            // First row tile against both column tiles; the second row tile (when there is
            // one) reuses the two weight tiles still loaded.
            asm!(
                "tileloadd tmm4, [{a0} + {stride}*1]",
                "tileloadd tmm6, [{b0} + {stride}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {stride}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                a0 = in(reg) activations.add(offset),
                b0 = in(reg) weights0.add(offset),
                b1 = in(reg) weights1.add(offset),
                stride = in(reg) TILE_STRIDE,
                options(nostack),
            );
            if two_row_tiles {
                asm!(
                    "tileloadd tmm5, [{a1} + {stride}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a1 = in(reg) second_rows.add(offset),
                    stride = in(reg) TILE_STRIDE,
                    options(nostack),
                );
            }
        }
        asm!(
            "tilestored [{c0} + {stride}*1], tmm0",
            "tilestored [{c1} + {stride}*1], tmm1",
            c0 = in(reg) c0,
            c1 = in(reg) c1,
            stride = in(reg) output_stride_bytes,
            options(nostack),
        );
        if two_row_tiles {
            asm!(
                "tilestored [{c2} + {stride}*1], tmm2",
                "tilestored [{c3} + {stride}*1], tmm3",
                c2 = in(reg) c2,
                c3 = in(reg) c3,
                stride = in(reg) output_stride_bytes,
                options(nostack),
            );
        }
    }
}

/// Loads [`TILE_CONFIG`]; every [`kernel`] call must come between this and [`release_tiles`]
/// on the same thread.
#[cfg(target_arch = "x86_64")]
unsafe fn load_tile_config() {
    std::arch::asm!("ldtilecfg [{config}]", config = in(reg) TILE_CONFIG.0.as_ptr(), options(nostack));
}

#[cfg(target_arch = "x86_64")]
unsafe fn release_tiles() {
    std::arch::asm!("tilerelease", options(nostack));
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn load_tile_config() {
    unreachable!("an Amx token exists only on x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn release_tiles() {
    unreachable!("an Amx token exists only on x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(
    _activations: *const u16,
    _two_row_tiles: bool,
    _weight_tiles: *const u16,
    _inner_tiles: usize,
    _pairs: std::ops::Range<usize>,
    _output: *mut f32,
    _out_stride: usize,
) {
    unreachable!("an Amx token exists only on x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The reference rounding: f32 → bf16 to nearest even; NaN stays NaN (quiet), infinities stay
    /// infinite. The packers' `VCVTNE2PS2BF16` must agree with it (denormals aside).
    fn to_bf16(value: f32) -> u16 {
        let bits = value.to_bits();
        let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
        let nan = ((bits >> 16) as u16) | 0x0040;
        if bits & 0x7fff_ffff > 0x7f80_0000 {
            nan
        } else {
            rounded
        }
    }

    fn from_bf16(value: u16) -> f32 {
        f32::from_bits((value as u32) << 16)
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even_and_keeps_nan_and_infinity() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is halfway too: ties go up to the even 1 + 2^-6.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(1.0 + 1.5 / 256.0), 0x3f81);
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(to_bf16(f32::NEG_INFINITY), 0xff80);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert!(from_bf16(to_bf16(f32::from_bits(0x7f80_0001))).is_nan());
        assert_eq!(
            to_bf16(f32::MAX),
            0x7f80,
            "rounds up to infinity, as IEEE does"
        );
        // The conversion the packers run rounds the same way (on a CPU with AMX).
        if amx().is_ok() {
            let values = [
                1.0,
                1.0 + 1.0 / 256.0,
                1.0 + 3.0 / 256.0,
                1.0 + 1.5 / 256.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::MAX,
                -0.3,
                1e-3,
            ];
            let mut tile = TileBuffer::zeroed(1);
            pack_activation_rows(tile.values_mut(), 1, 1, |_| &values[..]);
            for (value, &packed) in values.iter().zip(tile.values()) {
                assert_eq!(packed, to_bf16(*value), "{value}");
            }
            let nans = [f32::NAN, f32::from_bits(0x7f80_0001)];
            pack_activation_rows(tile.values_mut(), 1, 1, |_| &nans[..]);
            assert!(tile.values()[..2].iter().all(|&b| from_bf16(b).is_nan()));
        }
    }

    /// f64 attention over bf16-rounded queries, keys and values, for [`attention`]'s inputs:
    /// `(batch, seq, heads · head_dim)`.
    fn reference_attention(a: &AttentionInputs<'_>) -> Vec<f64> {
        let round = |value: f32| from_bf16(to_bf16(value)) as f64;
        let (batch, kv_heads, groups, seq, head_dim) =
            (a.batch, a.kv_heads, a.groups, a.seq, a.head_dim);
        let keys_total = a.first.len + a.second.len;
        let heads = kv_heads * groups;
        let mut out = vec![0f64; batch * seq * heads * head_dim];
        for b in 0..batch {
            for h in 0..kv_heads {
                let row_of = |part: &KeyValues<'_>, buffer: &[f32], j: usize| -> Vec<f64> {
                    let start = b * part.batch_stride + h * part.head_stride + j * head_dim;
                    buffer[start..start + head_dim]
                        .iter()
                        .map(|&v| round(v))
                        .collect()
                };
                let key = |j: usize| {
                    if j < a.first.len {
                        row_of(&a.first, a.first.keys, j)
                    } else {
                        row_of(&a.second, a.second.keys, j - a.first.len)
                    }
                };
                let value = |j: usize| {
                    if j < a.first.len {
                        row_of(&a.first, a.first.values, j)
                    } else {
                        row_of(&a.second, a.second.values, j - a.first.len)
                    }
                };
                for g in 0..groups {
                    for t in 0..seq {
                        let row = ((b * kv_heads + h) * groups * seq + g * seq + t) * head_dim;
                        let q: Vec<f64> = a.queries[row..row + head_dim]
                            .iter()
                            .map(|&v| round(v))
                            .collect();
                        let mut scores: Vec<f64> = (0..keys_total)
                            .map(|j| key(j).iter().zip(&q).map(|(k, q)| k * q).sum())
                            .collect();
                        match a.mask {
                            AttentionMask::Causal => {
                                for score in &mut scores[keys_total - seq + t + 1..] {
                                    *score = f64::NEG_INFINITY;
                                }
                            }
                            AttentionMask::Additive {
                                values,
                                mask_batch,
                                mask_seq,
                            } => {
                                let mb = if mask_batch == 1 { 0 } else { b };
                                let mt = if mask_seq == 1 { 0 } else { t };
                                let mask = &values[(mb * mask_seq + mt) * keys_total..];
                                for (score, &m) in scores.iter_mut().zip(mask) {
                                    *score += m as f64;
                                }
                            }
                        }
                        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                        let total: f64 = weights.iter().sum();
                        let head = h * groups + g;
                        for (j, w) in weights.iter().enumerate() {
                            for (d, v) in value(j).iter().enumerate() {
                                out[((b * seq + t) * heads + head) * head_dim + d] += w / total * v;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The bf16 attention equals f64 attention over its bf16-rounded operands within the
    /// rounding of the probabilities (8 bits), for a shared prefix (batch stride 0) followed by
    /// own keys under the causal mask, and for one cache under an additive mask that hides
    /// left padding; 40 query rows per head span two blocks of 32, head_dim 40 pads its tiles.
    #[test]
    fn amx_attention_matches_the_reference() {
        let amx = match amx() {
            Ok(amx) => amx,
            Err(message) => {
                eprintln!("AMX not available here: {message}");
                return;
            }
        };
        let (batch, kv_heads, groups, seq, past, head_dim) = (2, 2, 2, 20, 37, 40);
        let queries = values(batch * kv_heads * groups * seq * head_dim, 11);
        let prefix_keys = values(kv_heads * 50 * head_dim, 12);
        let prefix_values = values(kv_heads * 50 * head_dim, 13);
        let own_keys = values(batch * kv_heads * seq * head_dim, 14);
        let own_values = values(batch * kv_heads * seq * head_dim, 15);
        let shared = AttentionInputs {
            batch,
            kv_heads,
            groups,
            seq,
            head_dim,
            queries: &queries,
            first: KeyValues {
                keys: &prefix_keys,
                values: &prefix_values,
                batch_stride: 0,
                head_stride: 50 * head_dim,
                len: past,
            },
            second: KeyValues {
                keys: &own_keys,
                values: &own_values,
                batch_stride: kv_heads * seq * head_dim,
                head_stride: seq * head_dim,
                len: seq,
            },
            mask: AttentionMask::Causal,
        };
        // Row 0 hides its first 3 keys, row 1 none; both causal over their 20 new positions.
        let total = past + seq;
        let mut mask = vec![0f32; batch * seq * total];
        for b in 0..batch {
            for t in 0..seq {
                let row = &mut mask[(b * seq + t) * total..(b * seq + t + 1) * total];
                for (j, m) in row.iter_mut().enumerate() {
                    if (b == 0 && j < 3) || j > past + t {
                        *m = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let cache_keys = values(batch * kv_heads * 64 * head_dim, 16);
        let cache_values = values(batch * kv_heads * 64 * head_dim, 17);
        let padded = AttentionInputs {
            first: KeyValues {
                keys: &cache_keys,
                values: &cache_values,
                batch_stride: kv_heads * 64 * head_dim,
                head_stride: 64 * head_dim,
                len: total,
            },
            second: KeyValues::EMPTY,
            mask: AttentionMask::Additive {
                values: &mask,
                mask_batch: batch,
                mask_seq: seq,
            },
            ..shared
        };
        for inputs in [&shared, &padded] {
            let actual = attention(amx, inputs);
            let expected = reference_attention(inputs);
            assert_eq!(actual.len(), expected.len());
            let worst = actual
                .iter()
                .zip(&expected)
                .map(|(a, e)| (*a as f64 - e).abs())
                .fold(0.0, f64::max);
            // Values lie in [-1, 1]: bf16 probabilities move an output by at most 2^-8.
            assert!(worst < 4e-3, "largest difference {worst}");
        }
    }

    /// The AMX product equals an f64 product of the bf16-rounded operands to f32 accuracy, for
    /// every row remainder (1..=33 rows), odd inner sizes and outputs that are not a multiple of
    /// 32. On a CPU without AMX the test checks that [`amx`] says so in words.
    #[test]
    fn amx_product_matches_the_bf16_rounded_reference() {
        let amx = match amx() {
            Ok(amx) => amx,
            Err(message) => {
                assert!(message.contains("f32"), "{message}");
                eprintln!("AMX not available here, checked only the refusal: {message}");
                return;
            }
        };
        for &(rows_max, inner, out) in &[(33usize, 576usize, 192usize), (5, 70, 45), (17, 32, 64)] {
            let weight = values(out * inner, 7);
            let packed = Bf16Weight::pack(amx, &weight, out, inner);
            for rows in 1..=rows_max {
                let x = values(rows * inner, rows as u64);
                let actual = packed.matmul_t(&x, rows);
                assert_eq!(actual.len(), rows * out);
                for r in 0..rows {
                    for o in 0..out {
                        let reference: f64 = (0..inner)
                            .map(|i| {
                                from_bf16(to_bf16(x[r * inner + i])) as f64
                                    * from_bf16(to_bf16(weight[o * inner + i])) as f64
                            })
                            .sum();
                        let magnitude: f64 = (0..inner)
                            .map(|i| (x[r * inner + i] * weight[o * inner + i]).abs() as f64)
                            .sum();
                        let error = (actual[r * out + o] as f64 - reference).abs();
                        assert!(
                            error <= 1e-5 * magnitude.max(1.0),
                            "rows {rows}, inner {inner}, out {out}: [{r}][{o}] = {} vs {reference}",
                            actual[r * out + o]
                        );
                    }
                }
            }
        }
    }
}

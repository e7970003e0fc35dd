//! bf16 matrix products on Intel AMX (Sapphire Rapids and later), on the CPU: the dense layers
//! in inference and the frozen base weights' products in LoRA training.
//!
//! Opt-in (`MatmulPrecision::Bf16`): each weight is rounded to bf16 once, at load, and stored in
//! the tile layout `TDPBF16PS` reads; activations are rounded to bf16 on every call; products
//! accumulate in f32. One tile product does 16 × 16 × 32 multiply-adds in 16 cycles (measured
//! 2.9 TFLOP/s on one core from L1); this kernel reaches about a quarter of that on layer-sized
//! products, where half the operand tiles come from L2, which still makes the dense layers a
//! small part of prefill and scoring time; bf16 weights also halve the bytes a decode step reads.
//! The price is bf16 rounding of both operands (8 significant bits): next-token
//! log-probabilities move by up to about 0.06, so the f32 path stays the default and the
//! reference for the correctness tests.
//!
//! The instructions are written with `asm!` (Rust's AMX intrinsics are unstable). Linux hands a
//! process the 8 KiB tile state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which
//! [`amx`] makes once; every kernel loads its tile configuration and releases it when done.

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

/// f32 → bf16, rounding to nearest even; NaN stays NaN (quiet), infinities stay infinite.
#[inline(always)]
pub fn to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = ((bits >> 16) as u16) | 0x0040;
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

pub fn from_bf16(value: u16) -> f32 {
    f32::from_bits((value as u32) << 16)
}

/// Rows of a tile, and bf16 values along the inner dimension of one tile row.
const TILE_ROWS: usize = 16;
const TILE_INNER: usize = 32;
/// bf16 values in one 1 KiB tile.
const TILE_LEN: usize = TILE_ROWS * TILE_INNER;
/// Output columns a work item covers, in tile pairs (4 × 32 = 128 columns).
const PAIRS_PER_ITEM: usize = 4;

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
                for o in 0..TILE_ROWS {
                    let row = n * TILE_ROWS + o;
                    if row >= out {
                        break;
                    }
                    let source = &weight[row * inner..(row + 1) * inner];
                    for (i, &value) in source.iter().enumerate() {
                        let (k, within) = (i / TILE_INNER, i % TILE_INNER);
                        let p = within / 2;
                        let j = within % 2;
                        row_of_tiles[k * TILE_LEN + p * TILE_INNER + 2 * o + j] = to_bf16(value);
                    }
                }
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
        let column_items = pairs.div_ceil(PAIRS_PER_ITEM);
        let output_ptr = SharedPtr(output.as_mut_ptr());
        let activations_ptr = SharedPtr(activations.values().as_ptr() as *mut u16);
        (0..row_blocks * column_items)
            .into_par_iter()
            .for_each(|item| {
                let (block, column_item) = (item / column_items, item % column_items);
                let first_row_tile = 2 * block;
                let two_row_tiles = first_row_tile + 1 < row_tiles;
                let first_pair = column_item * PAIRS_PER_ITEM;
                let last_pair = (first_pair + PAIRS_PER_ITEM).min(pairs);
                // SAFETY: the activations hold `row_tiles × inner_tiles` tiles and the weight
                // `out_tiles × inner_tiles`; the output holds `rows_padded × out_padded` f32,
                // and every item writes only its own rows and columns of it.
                unsafe {
                    kernel(
                        activations_ptr
                            .get()
                            .add(first_row_tile * self.inner_tiles * TILE_LEN),
                        two_row_tiles,
                        self.tiles.values().as_ptr(),
                        self.inner_tiles,
                        first_pair..last_pair,
                        output_ptr
                            .get()
                            .add(first_row_tile * TILE_ROWS * out_padded),
                        out_padded,
                    );
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
        let tiles = buffer.values_mut();
        for (row, source) in x.chunks_exact(self.inner).enumerate().take(rows) {
            let (m, r) = (row / TILE_ROWS, row % TILE_ROWS);
            for (k, chunk) in source.chunks(TILE_INNER).enumerate() {
                let start = (m * self.inner_tiles + k) * TILE_LEN + r * TILE_INNER;
                for (target, &value) in tiles[start..start + chunk.len()].iter_mut().zip(chunk) {
                    *target = to_bf16(value);
                }
            }
        }
        buffer
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

/// One work item: 16 or 32 rows (one or two row tiles from `activations`) times the output
/// columns of the tile pairs `pairs`, over the whole inner dimension, stored as f32 into
/// `output` (rows `out_stride` floats apart, starting at this item's first row).
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
    asm!("ldtilecfg [{config}]", config = in(reg) TILE_CONFIG.0.as_ptr(), options(nostack));
    let second_rows = activations.add(inner_tiles * TILE_LEN);
    for pair in pairs {
        let weights0 = weight_tiles.add(2 * pair * inner_tiles * TILE_LEN);
        let weights1 = weights0.add(inner_tiles * TILE_LEN);
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
        let c0 = output.add(2 * pair * TILE_ROWS);
        let c1 = c0.add(TILE_ROWS);
        asm!(
            "tilestored [{c0} + {stride}*1], tmm0",
            "tilestored [{c1} + {stride}*1], tmm1",
            c0 = in(reg) c0,
            c1 = in(reg) c1,
            stride = in(reg) output_stride_bytes,
            options(nostack),
        );
        if two_row_tiles {
            let c2 = c0.add(TILE_ROWS * out_stride);
            let c3 = c2.add(TILE_ROWS);
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
    asm!("tilerelease", options(nostack));
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

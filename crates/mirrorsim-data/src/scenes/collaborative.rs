//! Collaborative negatives: a truncated SVD of the user–item matrix, computed with a randomized
//! range finder (Halko, Martinsson & Tropp 2011) plus power iterations, in plain Rust.
//!
//! The matrix holds only interactions strictly before the cutoff, so no eval-time information
//! reaches the item factors. At decision time a user is folded in from their own history
//! (strictly earlier interactions): `h = Σ_{i ∈ history} V_i`, and item `j` scores `h · V_j`,
//! i.e. the history's projection onto the top right-singular subspace.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::catalog::{Catalog, ItemIdx};

/// A compressed-sparse-row matrix of `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseMatrix {
    pub rows: usize,
    pub cols: usize,
    row_ptr: Vec<usize>,
    col_idx: Vec<u32>,
    values: Vec<f64>,
}

impl SparseMatrix {
    /// Builds a matrix from `(row, col, value)` triplets; duplicates are summed.
    pub fn from_triplets(rows: usize, cols: usize, triplets: &[(u32, u32, f64)]) -> Self {
        let mut sorted = triplets.to_vec();
        sorted.sort_unstable_by_key(|&(r, c, _)| (r, c));
        let mut row_ptr = vec![0usize; rows + 1];
        let mut col_idx = Vec::with_capacity(sorted.len());
        let mut values: Vec<f64> = Vec::with_capacity(sorted.len());
        let mut last: Option<(u32, u32)> = None;
        for (r, c, v) in sorted {
            if last == Some((r, c)) {
                if let Some(x) = values.last_mut() {
                    *x += v;
                }
                continue;
            }
            last = Some((r, c));
            row_ptr[r as usize + 1] += 1;
            col_idx.push(c);
            values.push(v);
        }
        for r in 0..rows {
            row_ptr[r + 1] += row_ptr[r];
        }
        SparseMatrix {
            rows,
            cols,
            row_ptr,
            col_idx,
            values,
        }
    }

    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Replaces every stored value by `f(value)`.
    pub fn map_values(&mut self, f: impl Fn(f64) -> f64) {
        self.values.iter_mut().for_each(|v| *v = f(*v));
    }

    pub fn transpose(&self) -> SparseMatrix {
        let mut triplets = Vec::with_capacity(self.nnz());
        for r in 0..self.rows {
            for k in self.row_ptr[r]..self.row_ptr[r + 1] {
                triplets.push((self.col_idx[k], r as u32, self.values[k]));
            }
        }
        SparseMatrix::from_triplets(self.cols, self.rows, &triplets)
    }

    /// `self × x`, in parallel over rows.
    pub fn mul_dense(&self, x: &DenseMatrix) -> DenseMatrix {
        assert_eq!(self.cols, x.rows, "sparse × dense: inner dimensions differ");
        let width = x.cols;
        let mut out = DenseMatrix::zeros(self.rows, width);
        if width == 0 {
            return out;
        }
        out.data
            .par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, out_row)| {
                for k in self.row_ptr[r]..self.row_ptr[r + 1] {
                    let v = self.values[k];
                    let x_row = x.row(self.col_idx[k] as usize);
                    for (o, &xv) in out_row.iter_mut().zip(x_row) {
                        *o += v * xv;
                    }
                }
            });
        out
    }
}

/// A row-major dense matrix of `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl DenseMatrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        DenseMatrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn get(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    /// `selfᵀ × other` (both with the same number of rows): a small `cols × other.cols` matrix.
    fn transpose_mul(&self, other: &DenseMatrix) -> DenseMatrix {
        let mut out = DenseMatrix::zeros(self.cols, other.cols);
        for r in 0..self.rows {
            let a = self.row(r);
            let b = other.row(r);
            for (i, &av) in a.iter().enumerate() {
                let out_row = &mut out.data[i * other.cols..(i + 1) * other.cols];
                for (o, &bv) in out_row.iter_mut().zip(b) {
                    *o += av * bv;
                }
            }
        }
        out
    }

    /// `self × small` where `small` is `cols × m`.
    fn mul_small(&self, small: &DenseMatrix) -> DenseMatrix {
        let mut out = DenseMatrix::zeros(self.rows, small.cols);
        out.data
            .par_chunks_mut(small.cols.max(1))
            .enumerate()
            .for_each(|(r, out_row)| {
                for (i, &av) in self.row(r).iter().enumerate() {
                    for (o, &bv) in out_row.iter_mut().zip(small.row(i)) {
                        *o += av * bv;
                    }
                }
            });
        out
    }

    /// Makes the columns orthonormal in place (modified Gram–Schmidt, run twice for
    /// numerical safety). Columns that are (numerically) dependent on earlier ones become 0.
    fn orthonormalize_columns(&mut self) {
        let (rows, cols) = (self.rows, self.cols);
        // Work column by column on a column-major copy: contiguous dot products.
        let mut columns: Vec<Vec<f64>> = (0..cols)
            .map(|c| (0..rows).map(|r| self.data[r * cols + c]).collect())
            .collect();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let original_norms: Vec<f64> = columns.iter().map(|c| norm(c)).collect();
        for _pass in 0..2 {
            for (c, &original) in original_norms.iter().enumerate() {
                let (done, rest) = columns.split_at_mut(c);
                let column = &mut rest[0];
                for prev in done.iter() {
                    let dot: f64 = column.iter().zip(prev).map(|(a, b)| a * b).sum();
                    if dot != 0.0 {
                        column.iter_mut().zip(prev).for_each(|(a, b)| *a -= dot * b);
                    }
                }
                let n = norm(column);
                let scale = if n > 1e-10 * original.max(f64::MIN_POSITIVE) {
                    1.0 / n
                } else {
                    0.0
                };
                column.iter_mut().for_each(|x| *x *= scale);
            }
        }
        for (c, column) in columns.iter().enumerate() {
            for (r, &x) in column.iter().enumerate() {
                self.data[r * cols + c] = x;
            }
        }
    }
}

/// A truncated SVD `A ≈ U diag(σ) Vᵀ`, singular values in decreasing order.
#[derive(Debug, Clone)]
pub struct Svd {
    pub singular_values: Vec<f64>,
    /// `rows × dims`, orthonormal columns.
    pub u: DenseMatrix,
    /// `cols × dims`, orthonormal columns.
    pub v: DenseMatrix,
}

/// Randomized truncated SVD of rank `dims` (fewer if the matrix is smaller), deterministic
/// given `seed`.
pub fn truncated_svd(a: &SparseMatrix, dims: usize, power_iterations: usize, seed: u64) -> Svd {
    let oversampled = (dims + 10).min(a.rows).min(a.cols);
    let dims = dims.min(oversampled);
    let at = a.transpose();

    let mut rng = StdRng::seed_from_u64(seed ^ 0x5356_445f_7365_6564);
    let mut omega = DenseMatrix::zeros(a.cols, oversampled);
    for x in omega.data.iter_mut() {
        *x = standard_normal(&mut rng);
    }
    let mut q = a.mul_dense(&omega);
    q.orthonormalize_columns();
    for _ in 0..power_iterations {
        let mut z = at.mul_dense(&q);
        z.orthonormalize_columns();
        q = a.mul_dense(&z);
        q.orthonormalize_columns();
    }
    // B = Qᵀ A, kept transposed: Bt = Aᵀ Q (cols × l). B Bᵀ = Btᵀ Bt is l × l.
    let bt = at.mul_dense(&q);
    let gram = bt.transpose_mul(&bt);
    let (eigenvalues, eigenvectors) = symmetric_eigen(&gram);

    let mut order: Vec<usize> = (0..eigenvalues.len()).collect();
    order.sort_by(|&i, &j| eigenvalues[j].total_cmp(&eigenvalues[i]).then(i.cmp(&j)));
    order.truncate(dims);
    let singular_values: Vec<f64> = order
        .iter()
        .map(|&i| eigenvalues[i].max(0.0).sqrt())
        .collect();
    let mut w = DenseMatrix::zeros(oversampled, dims);
    for (c, &i) in order.iter().enumerate() {
        for r in 0..oversampled {
            w.data[r * dims + c] = eigenvectors.get(r, i);
        }
    }
    let u = q.mul_small(&w);
    let mut v = bt.mul_small(&w);
    for r in 0..v.rows {
        for (c, &s) in singular_values.iter().enumerate() {
            let x = &mut v.data[r * dims + c];
            *x = if s > 1e-12 { *x / s } else { 0.0 };
        }
    }
    Svd {
        singular_values,
        u,
        v,
    }
}

fn standard_normal(rng: &mut StdRng) -> f64 {
    // Box–Muller; 1 − u keeps the logarithm finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations: returns the
/// eigenvalues and the eigenvectors as the columns of a matrix.
fn symmetric_eigen(m: &DenseMatrix) -> (Vec<f64>, DenseMatrix) {
    let n = m.rows;
    let mut a = m.clone();
    let mut v = DenseMatrix::zeros(n, n);
    for i in 0..n {
        v.data[i * n + i] = 1.0;
    }
    let total: f64 = a
        .data
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a.get(i, j).powi(2))
            .sum();
        if off <= 1e-30 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a.get(p, q);
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a.get(q, q) - a.get(p, p)) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a.get(k, p);
                    let akq = a.get(k, q);
                    a.data[k * n + p] = c * akp - s * akq;
                    a.data[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a.get(p, k);
                    let aqk = a.get(q, k);
                    a.data[p * n + k] = c * apk - s * aqk;
                    a.data[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let vkp = v.get(k, p);
                    let vkq = v.get(k, q);
                    v.data[k * n + p] = c * vkp - s * vkq;
                    v.data[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a.get(i, i)).collect(), v)
}

/// Item factors of the pre-cutoff user–item matrix, used to score items for a user's history.
#[derive(Debug, Clone)]
pub struct CollaborativeModel {
    pub dims: usize,
    /// `items × dims`, row-major.
    item_factors: Vec<f32>,
    pub singular_values: Vec<f64>,
}

impl CollaborativeModel {
    /// Fits the model on `catalog.interactions[..cutoff_position]` (binary implicit feedback:
    /// 1 where the user interacted with the item, however often).
    pub fn fit(
        catalog: &Catalog,
        cutoff_position: usize,
        dims: usize,
        power_iterations: usize,
        seed: u64,
    ) -> Self {
        let triplets: Vec<(u32, u32, f64)> = catalog.interactions[..cutoff_position]
            .iter()
            .map(|i| (i.user, i.item, 1.0))
            .collect();
        let mut matrix =
            SparseMatrix::from_triplets(catalog.users.len(), catalog.items.len(), &triplets);
        matrix.map_values(|v| v.min(1.0));
        let svd = if matrix.nnz() == 0 || matrix.rows == 0 || matrix.cols == 0 {
            Svd {
                singular_values: Vec::new(),
                u: DenseMatrix::zeros(matrix.rows, 0),
                v: DenseMatrix::zeros(matrix.cols, 0),
            }
        } else {
            truncated_svd(&matrix, dims, power_iterations, seed)
        };
        let dims = svd.v.cols;
        CollaborativeModel {
            dims,
            item_factors: svd.v.data.iter().map(|&x| x as f32).collect(),
            singular_values: svd.singular_values,
        }
    }

    pub fn item_factors(&self, item: ItemIdx) -> &[f32] {
        let start = item as usize * self.dims;
        &self.item_factors[start..start + self.dims]
    }

    /// The user's latent vector folded in from the items of their history.
    pub fn fold_in(&self, items: impl IntoIterator<Item = ItemIdx>) -> Vec<f32> {
        let mut h = vec![0.0f32; self.dims];
        for item in items {
            for (x, &f) in h.iter_mut().zip(self.item_factors(item)) {
                *x += f;
            }
        }
        h
    }

    /// The score of every item for latent vector `h`.
    pub fn scores(&self, h: &[f32]) -> Vec<f32> {
        if self.dims == 0 {
            return vec![0.0; self.item_factors.len()];
        }
        self.item_factors
            .chunks_exact(self.dims)
            .map(|f| dot(f, h))
            .collect()
    }
}

/// A dot product with eight independent partial sums, so that it vectorises (a single running
/// `f32` sum cannot be reordered by the compiler).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for ((lane, x), y) in lanes.iter_mut().zip(ca).zip(cb) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `n × k` matrix with orthonormal columns, from seeded random numbers.
    fn orthonormal(n: usize, k: usize, seed: u64) -> DenseMatrix {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut m = DenseMatrix::zeros(n, k);
        for x in m.data.iter_mut() {
            *x = standard_normal(&mut rng);
        }
        m.orthonormalize_columns();
        m
    }

    #[test]
    fn svd_recovers_a_low_rank_matrix_exactly() {
        let (rows, cols) = (60, 40);
        let sigma = [9.0, 4.0, 1.5];
        let x = orthonormal(rows, 3, 1);
        let y = orthonormal(cols, 3, 2);
        let mut dense = vec![0.0; rows * cols];
        let mut triplets = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                let v: f64 = (0..3).map(|k| x.get(r, k) * sigma[k] * y.get(c, k)).sum();
                dense[r * cols + c] = v;
                triplets.push((r as u32, c as u32, v));
            }
        }
        let a = SparseMatrix::from_triplets(rows, cols, &triplets);
        let svd = truncated_svd(&a, 3, 2, 42);
        for (got, want) in svd.singular_values.iter().zip(sigma) {
            assert!((got - want).abs() < 1e-9, "singular value {got} vs {want}");
        }
        let mut max_err: f64 = 0.0;
        for r in 0..rows {
            for c in 0..cols {
                let v: f64 = (0..3)
                    .map(|k| svd.u.get(r, k) * svd.singular_values[k] * svd.v.get(c, k))
                    .sum();
                max_err = max_err.max((v - dense[r * cols + c]).abs());
            }
        }
        assert!(max_err < 1e-9, "reconstruction error {max_err}");
        // V has orthonormal columns.
        let vtv = svd.v.transpose_mul(&svd.v);
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((vtv.get(i, j) - want).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn svd_top_singular_values_match_a_full_rank_matrix_spectrum() {
        // diag(10, 7, 5, 3, 2, 1) embedded in a sparse 6 × 6 matrix: rank-2 SVD finds 10 and 7.
        let triplets: Vec<(u32, u32, f64)> = [10.0, 7.0, 5.0, 3.0, 2.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, ((i + 2) % 6) as u32, v))
            .collect();
        let a = SparseMatrix::from_triplets(6, 6, &triplets);
        let svd = truncated_svd(&a, 2, 3, 7);
        assert_eq!(svd.singular_values.len(), 2);
        assert!((svd.singular_values[0] - 10.0).abs() < 1e-9);
        assert!((svd.singular_values[1] - 7.0).abs() < 1e-9);
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-3 * plain.abs().max(1.0));
    }

    #[test]
    fn sparse_products_and_duplicates() {
        let a = SparseMatrix::from_triplets(2, 3, &[(0, 1, 2.0), (1, 2, 1.0), (0, 1, 1.0)]);
        assert_eq!(a.nnz(), 2);
        let x = DenseMatrix {
            rows: 3,
            cols: 1,
            data: vec![1.0, 10.0, 100.0],
        };
        assert_eq!(a.mul_dense(&x).data, vec![30.0, 100.0]);
        let at = a.transpose();
        let y = DenseMatrix {
            rows: 2,
            cols: 1,
            data: vec![1.0, 2.0],
        };
        assert_eq!(at.mul_dense(&y).data, vec![0.0, 3.0, 2.0]);
    }

    #[test]
    fn fold_in_scores_co_consumed_items_highest() {
        use crate::catalog::{CatalogBuilder, Interaction};
        // Two taste groups: users 0–9 take items a*, users 10–19 take items b*.
        let mut b = CatalogBuilder::new("t");
        let mut t = 0;
        for u in 0..20 {
            let user = b.user(&format!("u{u}"));
            let group = if u < 10 { "a" } else { "b" };
            for i in 0..5 {
                if (u + i) % 5 == 0 {
                    continue; // everyone skips one item of their group
                }
                let item = b.item(&format!("{group}{i}"));
                t += 1;
                b.push_interaction(Interaction {
                    user,
                    item,
                    timestamp: t,
                    rating: None,
                    review: None,
                    impressions: None,
                });
            }
        }
        let c = b.finish();
        // Rank 2 keeps exactly the two group directions (the largest singular values).
        let model = CollaborativeModel::fit(&c, c.interactions.len(), 2, 3, 1);
        let a_items: Vec<ItemIdx> = (0..5)
            .map(|i| c.item_idx(&format!("a{i}")).unwrap())
            .collect();
        let b_items: Vec<ItemIdx> = (0..5)
            .map(|i| c.item_idx(&format!("b{i}")).unwrap())
            .collect();
        let h = model.fold_in([a_items[1], a_items[2]]);
        let scores = model.scores(&h);
        let best_b = b_items
            .iter()
            .map(|&i| scores[i as usize])
            .fold(f32::MIN, f32::max);
        assert!(best_b.abs() < 1e-4, "b-items score {best_b}");
        for &i in &a_items {
            assert!(
                scores[i as usize] > 0.3,
                "a-item {i} scores {}",
                scores[i as usize]
            );
        }
    }
}

//! The one dense solve EASE needs: the inverse of a symmetric positive definite matrix.

use rayon::prelude::*;

use crate::error::EvalError;

/// Inverts the row-major `n × n` symmetric positive definite matrix `a` in place, by
/// Gauss–Jordan elimination without pivoting (the pivots of an SPD matrix stay positive). The
/// updates of the other rows at each step run in parallel. Fails on a non-positive pivot.
pub fn invert_spd_in_place(a: &mut [f64], n: usize) -> Result<(), EvalError> {
    if a.len() != n * n {
        return Err(EvalError::Config(format!(
            "matrix buffer holds {} values, not {n} × {n}",
            a.len()
        )));
    }
    let mut pivot_row = vec![0.0; n];
    for k in 0..n {
        let pivot = a[k * n + k];
        if !(pivot > 0.0 && pivot.is_finite()) {
            return Err(EvalError::Config(format!(
                "matrix is not positive definite: pivot {k} is {pivot}"
            )));
        }
        let row = &mut a[k * n..(k + 1) * n];
        row[k] = 1.0;
        for value in row.iter_mut() {
            *value /= pivot;
        }
        pivot_row.copy_from_slice(row);
        let pivot_row = &pivot_row;
        a.par_chunks_mut(n)
            .enumerate()
            .filter(|(i, _)| *i != k)
            .for_each(|(_, row)| {
                let factor = row[k];
                if factor == 0.0 {
                    return;
                }
                row[k] = 0.0;
                for (value, &p) in row.iter_mut().zip(pivot_row) {
                    *value -= factor * p;
                }
            });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_times_matrix_is_identity() {
        let n = 4;
        let m: Vec<f64> = vec![
            4.0, 1.0, 0.5, 0.0, //
            1.0, 3.0, 0.2, 0.1, //
            0.5, 0.2, 2.0, 0.3, //
            0.0, 0.1, 0.3, 1.5,
        ];
        let mut inv = m.clone();
        invert_spd_in_place(&mut inv, n).unwrap();
        for i in 0..n {
            for j in 0..n {
                let product: f64 = (0..n).map(|l| m[i * n + l] * inv[l * n + j]).sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((product - expected).abs() < 1e-12, "({i},{j}) = {product}");
            }
        }
        let mut singular = vec![1.0, 2.0, 2.0, 4.0];
        assert!(invert_spd_in_place(&mut singular, 2).is_err());
    }
}

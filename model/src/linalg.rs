//! The Newton step's linear solve: Cholesky factorisation `A = L Lᵀ` of a small
//! symmetric positive-definite matrix and two triangular solves (Golub & Van Loan,
//! *Matrix Computations*, 4th ed., Alg. 4.2.1). Pure: no I/O. `O(d³/3)` for `d ≤ ~64`
//! parameters, so no LAPACK.

use ndarray::{Array1, Array2};

/// What can go wrong solving.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinalgError {
    #[error("cholesky: the matrix is {rows}×{cols}, the right-hand side has {rhs} entries")]
    Shape { rows: usize, cols: usize, rhs: usize },
    #[error("cholesky: pivot {index} is {pivot}, the matrix is not positive definite")]
    NotPositiveDefinite { index: usize, pivot: f64 },
}

/// The lower-triangular `L` with `A = L Lᵀ`; reads only the lower triangle of `a`.
pub fn cholesky(a: &Array2<f64>) -> Result<Array2<f64>, LinalgError> {
    let (n, m) = a.dim();
    if n != m {
        return Err(LinalgError::Shape { rows: n, cols: m, rhs: n });
    }
    let mut l = Array2::<f64>::zeros((n, n));
    for j in 0..n {
        // Golub & Van Loan Alg. 4.2.1: L[j][j] = sqrt(A[j][j] − Σ_k<j L[j][k]²).
        let pivot = a[[j, j]] - (0..j).map(|k| l[[j, k]] * l[[j, k]]).sum::<f64>();
        if !(pivot > 0.0 && pivot.is_finite()) {
            return Err(LinalgError::NotPositiveDefinite { index: j, pivot });
        }
        let d = pivot.sqrt();
        l[[j, j]] = d;
        for i in j + 1..n {
            let s = a[[i, j]] - (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum::<f64>();
            l[[i, j]] = s / d;
        }
    }
    Ok(l)
}

/// Solves `A x = b` for symmetric positive-definite `A`: `L y = b`, then `Lᵀ x = y`.
pub fn cholesky_solve(a: &Array2<f64>, b: &Array1<f64>) -> Result<Array1<f64>, LinalgError> {
    let (rows, cols) = a.dim();
    if rows != cols || b.len() != rows {
        return Err(LinalgError::Shape { rows, cols, rhs: b.len() });
    }
    let l = cholesky(a)?;
    let n = b.len();
    let mut y = Array1::<f64>::zeros(n);
    for i in 0..n {
        y[i] = (b[i] - (0..i).map(|k| l[[i, k]] * y[k]).sum::<f64>()) / l[[i, i]];
    }
    let mut x = Array1::<f64>::zeros(n);
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[[k, i]] * x[k]).sum::<f64>()) / l[[i, i]];
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// A known solve: A = [[4, 12, −16], [12, 37, −43], [−16, −43, 98]] has
    /// L = [[2, 0, 0], [6, 1, 0], [−8, 5, 3]] (the textbook example), and with
    /// x = (1, −2, 3), b = A x = (−68, −191, 364).
    #[test]
    fn known_factor_and_solve() {
        let a = array![[4.0, 12.0, -16.0], [12.0, 37.0, -43.0], [-16.0, -43.0, 98.0]];
        let l = cholesky(&a).unwrap();
        let expected = array![[2.0, 0.0, 0.0], [6.0, 1.0, 0.0], [-8.0, 5.0, 3.0]];
        assert!((&l - &expected).iter().all(|e| e.abs() < 1e-12), "{l}");
        let x = cholesky_solve(&a, &array![-68.0, -191.0, 364.0]).unwrap();
        assert!((&x - &array![1.0, -2.0, 3.0]).iter().all(|e| e.abs() < 1e-12), "{x}");
    }

    /// A larger system, checked by its residual: a Gram matrix plus the identity.
    #[test]
    fn residual_of_a_64_by_64_solve() {
        let n = 64;
        let m = Array2::from_shape_fn((n, n), |(i, j)| ((i * 31 + j * 17) % 13) as f64 / 13.0 - 0.5);
        let a = m.t().dot(&m) + Array2::<f64>::eye(n);
        let b = Array1::from_shape_fn(n, |i| (i as f64).sin());
        let x = cholesky_solve(&a, &b).unwrap();
        let r = a.dot(&x) - &b;
        assert!(r.iter().all(|e| e.abs() < 1e-10));
    }

    #[test]
    fn refuses_indefinite_and_misshapen() {
        let a = array![[1.0, 2.0], [2.0, 1.0]];
        assert!(matches!(cholesky(&a), Err(LinalgError::NotPositiveDefinite { index: 1, .. })));
        assert!(cholesky_solve(&Array2::eye(2), &array![1.0]).is_err());
    }
}

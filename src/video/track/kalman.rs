//! The constant-velocity Kalman filter a track carries (SORT's state, ByteTrack's noise model).

#![allow(clippy::needless_range_loop)] // Index loops read closest to the matrix algebra.

/// ByteTrack's `std_weight_position`.
const STD_POS: f64 = 1.0 / 20.0;
/// ByteTrack's `std_weight_velocity`.
const STD_VEL: f64 = 1.0 / 160.0;
/// Floor on the height that scales the noises (keeps them positive on degenerate predictions).
const MIN_NOISE_H: f64 = 1e-6;

type Mat8 = [[f64; 8]; 8];

/// Constant-velocity Kalman filter on `[cx, cy, a, h, vcx, vcy, va, vh]`, measuring `[cx, cy, a, h]`.
#[derive(Debug, Clone)]
pub(super) struct Kalman {
    pub(super) mean: [f64; 8],
    pub(super) cov: Mat8,
}

pub(super) fn all_finite(mean: &[f64; 8], cov: &Mat8) -> bool {
    mean.iter()
        .chain(cov.iter().flatten())
        .all(|x| x.is_finite())
}

/// Height that scales the noises: positive even for a NaN or degenerate prediction.
fn noise_h(h: f64) -> f64 {
    h.abs().max(MIN_NOISE_H) // `max` ignores NaN.
}

// Index loops read closest to the matrix algebra they implement.
#[allow(clippy::needless_range_loop)]
impl Kalman {
    pub(super) fn new(z: [f64; 4]) -> Self {
        let h = noise_h(z[3]);
        let (p, v) = (2.0 * STD_POS * h, 10.0 * STD_VEL * h);
        let std = [p, p, 1e-2, p, v, v, 1e-5, v];
        let mut cov = [[0.0; 8]; 8];
        for (i, s) in std.iter().enumerate() {
            cov[i][i] = s * s;
        }
        let mut mean = [0.0; 8];
        mean[..4].copy_from_slice(&z);
        Kalman { mean, cov }
    }

    /// Advances by `dt` nominal frames: `x = F x`, `P = F P Fᵀ + Q·dt`. `dt = 0` changes nothing.
    pub(super) fn predict(&mut self, dt: f64) {
        if dt <= 0.0 || !dt.is_finite() {
            return;
        }
        let h = noise_h(self.mean[3]);
        let (p, v) = (STD_POS * h, STD_VEL * h);
        let q = [p, p, 1e-2, p, v, v, 1e-5, v];
        for i in 0..4 {
            self.mean[i] += dt * self.mean[i + 4];
        }
        // F P (row i < 4 gains dt · row i+4), then (F P) Fᵀ (column j < 4 gains dt · column j+4).
        for i in 0..4 {
            for j in 0..8 {
                self.cov[i][j] += dt * self.cov[i + 4][j];
            }
        }
        for row in self.cov.iter_mut() {
            for j in 0..4 {
                row[j] += dt * row[j + 4];
            }
        }
        for (i, s) in q.iter().enumerate() {
            self.cov[i][i] += s * s * dt;
        }
    }

    /// Kalman update with measurement `z`: `S = H P Hᵀ + R`, `K = P Hᵀ S⁻¹`, `P = (I − K H) P`.
    /// Returns false (state untouched) if `S` is singular or the result is not finite.
    pub(super) fn update(&mut self, z: [f64; 4]) -> bool {
        let h = noise_h(self.mean[3]);
        let r = [STD_POS * h, STD_POS * h, 1e-1, STD_POS * h];
        let mut s = [[0.0; 4]; 4];
        let mut hp = [[0.0; 8]; 4]; // H P: the first four rows of P.
        for i in 0..4 {
            s[i][..4].copy_from_slice(&self.cov[i][..4]);
            s[i][i] += r[i] * r[i];
            hp[i] = self.cov[i];
        }
        // S symmetric, so K Sᵀ = P Hᵀ  ⇔  S Kᵀ = H P.
        let Some(kt) = solve4(s, hp) else {
            return false;
        };
        let mut mean = self.mean;
        let mut cov = self.cov;
        for i in 0..8 {
            for k in 0..4 {
                mean[i] += kt[k][i] * (z[k] - self.mean[k]);
                for j in 0..8 {
                    cov[i][j] -= kt[k][i] * hp[k][j];
                }
            }
        }
        for i in 0..8 {
            for j in 0..i {
                let avg = 0.5 * (cov[i][j] + cov[j][i]);
                cov[i][j] = avg;
                cov[j][i] = avg;
            }
        }
        if !all_finite(&mean, &cov) {
            return false;
        }
        self.mean = mean;
        self.cov = cov;
        true
    }

    pub(super) fn bbox(&self) -> [f32; 4] {
        let [cx, cy, a, h] = [self.mean[0], self.mean[1], self.mean[2], self.mean[3]];
        let (w2, h2) = (a * h / 2.0, h / 2.0);
        [cx - w2, cy - h2, cx + w2, cy + h2].map(|v| v as f32)
    }
}

/// Solves `S X = B` for a 4x4 `S` by Gauss-Jordan elimination with partial pivoting; `None` when
/// `S` is (numerically) singular or not finite.
#[allow(clippy::needless_range_loop)]
pub(super) fn solve4(mut s: [[f64; 4]; 4], mut b: [[f64; 8]; 4]) -> Option<[[f64; 8]; 4]> {
    if s.iter().flatten().any(|x| !x.is_finite()) {
        return None;
    }
    let tol = s.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs())) * 1e-13;
    for col in 0..4 {
        let piv = (col..4).max_by(|&x, &y| s[x][col].abs().total_cmp(&s[y][col].abs()))?;
        if s[piv][col].abs() <= tol {
            return None;
        }
        s.swap(col, piv);
        b.swap(col, piv);
        let d = s[col][col];
        for x in s[col].iter_mut() {
            *x /= d;
        }
        for x in b[col].iter_mut() {
            *x /= d;
        }
        for row in 0..4 {
            let f = s[row][col];
            if row == col {
                continue;
            }
            for j in 0..4 {
                s[row][j] -= f * s[col][j];
            }
            for j in 0..8 {
                b[row][j] -= f * b[col][j];
            }
        }
    }
    Some(b)
}

//! Special functions for variational LDA: ψ (digamma), ψ′ (trigamma), a vectorisable
//! `exp(ψ(x))` in f32 for the E-step's inner loop, and Gamma sampling for initialisation.

use rand::Rng;

/// ψ(x) for x > 0, to about 1e-12: recurrence up to x ≥ 6, then the asymptotic series.
pub fn digamma(mut x: f64) -> f64 {
    let mut shift = 0.0;
    while x < 6.0 {
        shift -= 1.0 / x;
        x += 1.0;
    }
    let r = 1.0 / (x * x);
    let series =
        r * (1.0 / 12.0 - r * (1.0 / 120.0 - r * (1.0 / 252.0 - r * (1.0 / 240.0 - r / 132.0))));
    shift + x.ln() - 0.5 / x - series
}

/// ψ′(x) for x > 0.
pub fn trigamma(mut x: f64) -> f64 {
    let mut shift = 0.0;
    while x < 6.0 {
        shift += 1.0 / (x * x);
        x += 1.0;
    }
    let r = 1.0 / (x * x);
    let series =
        1.0 / x + r / 2.0 + r / x * (1.0 / 6.0 - r * (1.0 / 30.0 - r * (1.0 / 42.0 - r / 30.0)));
    shift + series
}

/// `exp(x)` in f32 without a libm call, so loops over it vectorise; relative error ≈ 2e-7,
/// 0 below −87 (where f32 would go subnormal).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer.
    let clamped = x.clamp(-87.0, 88.0);
    let n = (clamped * LOG2E + ROUND) - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    // Taylor to r^6 on |r| ≤ ln2/2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// `exp(ψ(x))` for x > 0 in f32, branch-free so the E-step loop vectorises:
/// ψ(x) = ψ(x + 6) − Σᵢ₌₀⁵ 1/(x + i), with ψ(y) ≈ ln y − 1/(2y) − 1/(12y²) + 1/(120y⁴) for
/// y ≥ 6, so exp(ψ(x)) = y · exp(−1/(2y) − 1/(12y²) + 1/(120y⁴) − Σ 1/(x + i)).
#[inline(always)]
pub fn exp_digamma(x: f32) -> f32 {
    let y = x + 6.0;
    let inv = 1.0 / y;
    let inv2 = inv * inv;
    // Pairs share a division: 1/a + 1/(a+1) = (2a + 1) / (a (a + 1)).
    let pair = |a: f32| (2.0 * a + 1.0) / (a * (a + 1.0));
    let shift = pair(x) + pair(x + 2.0) + pair(x + 4.0);
    y * fast_exp(-0.5 * inv - inv2 * (1.0 / 12.0 - inv2 / 120.0) - shift)
}

/// Gamma(shape, scale) draws, shape ≥ 1 (Marsaglia & Tsang 2000, with their squeeze so
/// most draws need no logarithm, and both normals of each Box–Muller pair used).
pub struct GammaSampler {
    d: f64,
    c: f64,
    scale: f64,
    spare_normal: Option<f64>,
}

impl GammaSampler {
    pub fn new(shape: f64, scale: f64) -> GammaSampler {
        assert!(shape >= 1.0, "shape {shape} < 1");
        let d = shape - 1.0 / 3.0;
        GammaSampler {
            d,
            c: 1.0 / (9.0 * d).sqrt(),
            scale,
            spare_normal: None,
        }
    }

    pub fn sample(&mut self, rng: &mut impl Rng) -> f64 {
        loop {
            let z = self.standard_normal(rng);
            let v = (1.0 + self.c * z).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u: f64 = rng.random();
            if u < 1.0 - 0.0331 * z.powi(4) || u.ln() < 0.5 * z * z + self.d * (1.0 - v + v.ln()) {
                return self.d * v * self.scale;
            }
        }
    }

    fn standard_normal(&mut self, rng: &mut impl Rng) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // Box–Muller; 1 − u keeps the log argument in (0, 1].
        let u: f64 = rng.random();
        let v: f64 = rng.random();
        let radius = (-2.0 * (1.0 - u).ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * v).sin_cos();
        self.spare_normal = Some(radius * sin);
        radius * cos
    }
}

/// `E[log θ]` of a Dirichlet with parameter `gamma`.
pub fn dirichlet_expectation(gamma: &[f64]) -> Vec<f64> {
    let total = digamma(gamma.iter().sum());
    gamma.iter().map(|&g| digamma(g) - total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    // Reference values (scipy 1.x in /tmp/benchvenv):
    // python3 -c "from scipy.special import digamma, polygamma
    // for x in (0.01, 0.5, 1.0, 3.7, 42.0): print((x, float(digamma(x)), float(polygamma(1, x))))"
    const REF: &[(f64, f64, f64)] = &[
        (0.01, -100.56088545786868, 10001.621213528311),
        (0.5, -1.9635100260214235, 4.93480220054468),
        (1.0, -0.5772156649015329, 1.6449340668482266),
        (3.7, 1.1671535393615113, 0.31003785767003833),
        (42.0, 3.725717617937282, 0.02409521984367057),
    ];

    #[test]
    fn digamma_and_trigamma_match_scipy() {
        for &(x, psi, psi1) in REF {
            assert!(
                (digamma(x) - psi).abs() < 1e-10 * psi.abs().max(1.0),
                "ψ({x})"
            );
            assert!((trigamma(x) - psi1).abs() < 1e-9 * psi1, "ψ′({x})");
        }
    }

    #[test]
    fn fast_exp_and_exp_digamma_are_accurate() {
        for i in -800..=800 {
            let x = i as f32 * 0.1;
            let rel = (fast_exp(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp();
            assert!(rel < 1e-6, "exp({x}) rel err {rel}");
        }
        assert_eq!(fast_exp(-100.0), 0.0);
        for &x in &[0.02, 0.1, 0.5, 1.0, 2.5, 7.0, 30.0, 1000.0, 1e5] {
            let want = digamma(x).exp();
            let got = exp_digamma(x as f32) as f64;
            assert!(
                (got - want).abs() <= 2e-6 * want,
                "exp(ψ({x})): {got} vs {want}"
            );
        }
    }

    #[test]
    fn gamma_samples_have_the_right_moments() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut gamma = GammaSampler::new(100.0, 0.01);
        let draws: Vec<f64> = (0..20_000).map(|_| gamma.sample(&mut rng)).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!((mean - 1.0).abs() < 0.005, "mean {mean}");
        assert!((var - 0.01).abs() < 0.001, "var {var}");
    }
}

//! Caffe's local response normalisation ACROSS_CHANNELS over NCHW:
//! `y = x · (k + α/size · Σ x²)^−β`, the sum over the `size` channels centred on each channel
//! (clipped at the ends, zeros beyond them as in Caffe's padded square).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use num_traits::{Float, Zero};
use rayon::prelude::*;

use super::cpu::{self, Element, Kernel1, Kernel2};
#[cfg(feature = "cuda")]
use super::cuda::{self, CudaOut};
use super::{dims4, OpError};
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;

/// LRN across channels. `size` must be odd (Caffe's requirement); GoogLeNet uses
/// `lrn(x, 5, 1e-4, 0.75, 1.0)`.
pub fn lrn(x: &Tensor, size: usize, alpha: f64, beta: f64, k: f64) -> Result<Tensor> {
    let bad = |field, requirement, value: String| OpError::BadArgument {
        op: "lrn",
        field,
        requirement,
        value,
    };
    if size.is_multiple_of(2) {
        return Err(bad("size", "odd", size.to_string()).into());
    }
    if !k.is_finite() || k <= 0.0 {
        return Err(bad("k", "positive and finite", k.to_string()).into());
    }
    if !alpha.is_finite() || alpha < 0.0 || !beta.is_finite() {
        return Err(bad(
            "alpha, beta",
            "finite, alpha ≥ 0",
            format!("{alpha}, {beta}"),
        )
        .into());
    }
    let (_, c, h, w) = dims4("lrn", x)?;
    let geom = LrnGeom {
        c,
        plane: h * w,
        size,
        alpha,
        beta,
        k,
    };
    x.contiguous()?.apply_op1(Lrn(geom))
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct LrnGeom {
    c: usize,
    plane: usize,
    size: usize,
    alpha: f64,
    beta: f64,
    k: f64,
}

impl LrnGeom {
    /// Channels whose squares enter channel `c`'s sum (and, the window being symmetric, the
    /// channels whose sums channel `c` enters).
    fn window(&self, c: usize) -> std::ops::Range<usize> {
        let half = self.size / 2;
        c.saturating_sub(half)..(c + half + 1).min(self.c)
    }

    /// The scale `k + α/size · Σ x²` of plane `index` (image n, channel c), into `scale`.
    fn scale<T: Element>(&self, x: &[T], index: usize, scale: &mut [T::Acc]) {
        let (image, channel) = (index / self.c, index % self.c);
        let coeff = T::acc_from_f64(self.alpha / self.size as f64);
        scale.fill(T::acc_from_f64(self.k));
        for neighbour in self.window(channel) {
            let start = (image * self.c + neighbour) * self.plane;
            for (s, &v) in scale.iter_mut().zip(&x[start..start + self.plane]) {
                let v = v.to_acc();
                *s += coeff * v * v;
            }
        }
    }

    fn beta_is_three_quarters(&self) -> bool {
        self.beta == 0.75
    }

    /// Plane `index`'s scales into `scale` and their powers `scale^−β` into `power`; β = 0.75
    /// by square roots (several times faster than `powf`), in a loop of its own so that it
    /// vectorises.
    fn scale_and_power<T: Element>(
        &self,
        x: &[T],
        index: usize,
        scale: &mut [T::Acc],
        power: &mut [T::Acc],
    ) {
        self.scale(x, index, scale);
        if self.beta_is_three_quarters() {
            for (p, &s) in power.iter_mut().zip(scale.iter()) {
                let r = s.sqrt();
                *p = (r * r.sqrt()).recip();
            }
        } else {
            let minus_beta = T::acc_from_f64(-self.beta);
            for (p, &s) in power.iter_mut().zip(scale.iter()) {
                *p = s.powf(minus_beta);
            }
        }
    }

    /// Runs op's CUDA kernel over `operands` (x, or x and dL/dy), into a tensor of x's shape.
    /// The float constants are rounded from f64 as the CPU kernels round them.
    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        op: &'static str,
        operands: &[(&CudaStorage, &Layout)],
        shape: &Shape,
    ) -> CudaOut {
        // The last value bounds the kernels' channel-window arithmetic.
        let [c, plane, size, _] =
            cuda::ints(op, [self.c, self.plane, self.size, self.c + self.size])?;
        let params = cuda::LrnParams {
            c,
            plane,
            size,
            fast_beta: i32::from(self.beta_is_three_quarters()),
            coeff: (self.alpha / self.size as f64) as f32,
            beta: self.beta as f32,
            k: self.k as f32,
            grad_coeff: (2.0 * self.alpha * self.beta / self.size as f64) as f32,
        };
        Ok((
            cuda::launch(op, operands, shape.elem_count(), params)?,
            shape.clone(),
        ))
    }
}

struct Lrn(LrnGeom);
struct LrnGrad(LrnGeom);

impl CustomOp1 for Lrn {
    fn name(&self) -> &'static str {
        "lrn"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::apply1(self, s, l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CudaOut {
        self.0.cuda(Self::OP, &[(s, l)], l.shape())
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &LrnGrad(self.0))?;
        Ok(Some(grad))
    }
}

impl Kernel1 for Lrn {
    const OP: &'static str = "lrn";

    fn run<T: Element>(&self, x: &[T]) -> Vec<T> {
        let g = &self.0;
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(g.plane).enumerate().for_each_init(
            || (vec![T::Acc::zero(); g.plane], vec![T::Acc::zero(); g.plane]),
            |(scale, power), (index, out)| {
                g.scale_and_power(x, index, scale, power);
                let xs = &x[index * g.plane..(index + 1) * g.plane];
                for ((o, &v), &p) in out.iter_mut().zip(xs).zip(power.iter()) {
                    *o = T::from_acc(v.to_acc() * p);
                }
            },
        );
        out
    }
}

/// Gradient of LRN: arguments (x, dL/dy), result
/// `dL/dx_c = dy_c·s_c^−β − 2αβ/size · x_c · Σ_{c' : c ∈ window(c')} dy_c'·x_c'·s_c'^(−β−1)`.
/// Scales are recomputed from x; a first pass stores the per-channel ratios the second pass
/// sums over the window.
impl CustomOp2 for LrnGrad {
    fn name(&self) -> &'static str {
        "lrn_grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::apply2(self, s1, l1, s2, l2)?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> CudaOut {
        self.0.cuda(Self::OP, &[(s1, l1), (s2, l2)], l1.shape())
    }
}

impl Kernel2 for LrnGrad {
    const OP: &'static str = "lrn_grad";

    fn run<T: Element>(&self, x: &[T], dy: &[T]) -> Vec<T> {
        let g = &self.0;
        let mut direct = vec![T::Acc::zero(); x.len()];
        let mut ratio = vec![T::Acc::zero(); x.len()];
        direct
            .par_chunks_mut(g.plane)
            .zip(ratio.par_chunks_mut(g.plane))
            .enumerate()
            .for_each_init(
                || (vec![T::Acc::zero(); g.plane], vec![T::Acc::zero(); g.plane]),
                |(scale, power), (index, (direct, ratio))| {
                    g.scale_and_power(x, index, scale, power);
                    let span = index * g.plane..(index + 1) * g.plane;
                    let terms = direct
                        .iter_mut()
                        .zip(ratio)
                        .zip(scale.iter().zip(power.iter()))
                        .zip(dy[span.clone()].iter().zip(&x[span]));
                    for (((d, r), (&s, &p)), (&grad, &x)) in terms {
                        let grad = grad.to_acc();
                        *d = grad * p;
                        *r = grad * x.to_acc() * p / s;
                    }
                },
            );
        let coeff = T::acc_from_f64(2.0 * g.alpha * g.beta / g.size as f64);
        let mut dx = vec![T::zero(); x.len()];
        // Whole planes at a time (the window's ratios summed plane by plane) so that it
        // vectorises.
        dx.par_chunks_mut(g.plane).enumerate().for_each_init(
            || vec![T::Acc::zero(); g.plane],
            |sum, (index, dx)| {
                let (image, channel) = (index / g.c, index % g.c);
                sum.fill(T::Acc::zero());
                for neighbour in g.window(channel) {
                    let start = (image * g.c + neighbour) * g.plane;
                    for (s, &r) in sum.iter_mut().zip(&ratio[start..start + g.plane]) {
                        *s += r;
                    }
                }
                let span = index * g.plane..(index + 1) * g.plane;
                for (((d, &s), &direct), &x) in dx
                    .iter_mut()
                    .zip(sum.iter())
                    .zip(&direct[span.clone()])
                    .zip(&x[span])
                {
                    *d = T::from_acc(direct - coeff * x.to_acc() * s);
                }
            },
        );
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::gradcheck::{assert_gradient_matches, random_values};

    #[test]
    fn gradient_matches_finite_differences() {
        // Large α so the cross-channel term matters; β = 0.75 takes the square-root path.
        let cases = [
            ((2, 7, 3, 3), 5, 0.9, 0.75, 1.0),
            ((1, 3, 4, 5), 5, 0.5, 0.6, 2.0),
            ((2, 6, 2, 3), 3, 1.5, 0.75, 1.0),
            ((1, 1, 3, 3), 1, 0.7, 1.2, 1.0),
        ];
        for (shape, size, alpha, beta, k) in cases {
            let x = random_values(shape, 21).unwrap();
            assert_gradient_matches(|x| lrn(x, size, alpha, beta, k), &x, 1e-6).unwrap();
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        // Direct evaluation of the formula, channel by channel, at one pixel.
        let x = random_values((1, 4, 1, 1), 5).unwrap();
        let y = lrn(&x, 3, 0.3, 0.75, 1.5).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let ys = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for c in 0..4usize {
            let lo = c.saturating_sub(1);
            let hi = (c + 2).min(4);
            let sq: f64 = xs[lo..hi].iter().map(|v| v * v).sum();
            let want = xs[c] * (1.5_f64 + 0.3 / 3.0 * sq).powf(-0.75);
            assert!(
                (ys[c] - want).abs() < 1e-12,
                "channel {c}: {} vs {want}",
                ys[c]
            );
        }
    }

    #[test]
    fn half_precision_agrees_with_f32() {
        let x = (random_values((2, 6, 3, 3), 8).unwrap() * 4.0).unwrap();
        let want = lrn(&x, 5, 0.5, 0.75, 1.0).unwrap();
        for dtype in [
            candle_core::DType::F32,
            candle_core::DType::BF16,
            candle_core::DType::F16,
        ] {
            let got = lrn(&x.to_dtype(dtype).unwrap(), 5, 0.5, 0.75, 1.0).unwrap();
            let diff = (got.to_dtype(candle_core::DType::F64).unwrap() - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_vec0::<f64>()
                .unwrap();
            assert!(diff < 3e-2, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn even_size_is_rejected() {
        let x = random_values((1, 4, 2, 2), 1).unwrap();
        let msg = lrn(&x, 4, 1e-4, 0.75, 1.0).unwrap_err().to_string();
        assert!(msg.contains("lrn: size must be odd, got 4"), "{msg}");
    }
}

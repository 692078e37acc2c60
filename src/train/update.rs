//! One parameter's SGD update, `v = m·h + lr·(c·g + d·w)` then `w −= v`. In: the weights (a
//! `Var`, updated in place), the momentum history and the gradient. Out: the new history.
//!
//! On the CPU in f32 the update is two passes over the parameter (a new history from the old
//! one, the weights and the gradient; then the weights in place), where candle's element-wise
//! ops take seven, each writing a fresh tensor: the full network's 13.4M weights made that a
//! tenth of a 1-thread step's non-product time (BENCHMARKS.md, issue 17). Elsewhere (CUDA,
//! other dtypes) it is candle's ops. Both round every element alike: the same f32 operations
//! in the same order, so the two give the same bits.

use candle_core::{CpuStorage, CustomOp3, DType, InplaceOp2, Layout, Shape, Tensor, Var};

/// The scalars of one parameter's update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Coefficients {
    /// Global-norm clipping's scale, when it clipped.
    pub clip: Option<f64>,
    /// Weight decay times the parameter's multiplier; 0 for none.
    pub decay: f64,
    pub momentum: f64,
    /// Learning rate times the parameter's multiplier.
    pub lr: f64,
}

/// Updates `weights` in place and returns the new momentum history.
pub(super) fn update(
    weights: &Var,
    history: &Tensor,
    grad: &Tensor,
    k: Coefficients,
) -> candle_core::Result<Tensor> {
    let fused = weights.device().is_cpu()
        && [weights.dtype(), history.dtype(), grad.dtype()] == [DType::F32; 3];
    if !fused {
        return with_candle_ops(weights, history, grad, k);
    }
    let (weights, history, grad) = (
        weights.as_tensor(),
        history.contiguous()?,
        grad.contiguous()?,
    );
    let velocity = history.apply_op3_no_bwd(weights, &grad, &Velocity(k))?;
    weights.inplace_op2(&velocity, &Subtract)?;
    Ok(velocity)
}

/// The update as candle's element-wise ops (each `tensor * scalar` is candle's
/// `affine(scalar, 0)`: `x·s + 0` in f32, as [`Velocity`] writes it).
fn with_candle_ops(
    weights: &Var,
    history: &Tensor,
    grad: &Tensor,
    k: Coefficients,
) -> candle_core::Result<Tensor> {
    // Detached: an update that tracked the variable would chain every step's graph
    // (activations included) to the next through the momentum buffer.
    let w = weights.as_tensor().detach();
    let mut g = match k.clip {
        Some(scale) => (grad.detach() * scale)?,
        None => grad.detach(),
    };
    if k.decay != 0.0 {
        g = (g + (&w * k.decay)?)?;
    }
    let velocity = ((history * k.momentum)? + (g * k.lr)?)?;
    weights.set(&(&w - &velocity)?)?;
    Ok(velocity)
}

/// `(history, weights, grad) → m·h + lr·(c·g + d·w)`, element by element.
struct Velocity(Coefficients);

impl CustomOp3 for Velocity {
    fn name(&self) -> &'static str {
        "sgd_velocity"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (h, w, g) = (f32s(s1, l1)?, f32s(s2, l2)?, f32s(s3, l3)?);
        let k = self.0;
        let scale = |x: f32, s: f64| x * s as f32 + 0.0;
        let v = h
            .iter()
            .zip(w)
            .zip(g)
            .map(|((&h, &w), &g)| {
                let mut g = k.clip.map_or(g, |c| scale(g, c));
                if k.decay != 0.0 {
                    g += scale(w, k.decay);
                }
                scale(h, k.momentum) + scale(g, k.lr)
            })
            .collect();
        Ok((CpuStorage::F32(v), l1.shape().clone()))
    }
}

/// `w −= v` in place.
struct Subtract;

impl InplaceOp2 for Subtract {
    fn name(&self) -> &'static str {
        "sgd_subtract"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let v = f32s(s2, l2)?;
        let (start, end) = l1.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("sgd_subtract: weights not contiguous".into())
        })?;
        let CpuStorage::F32(w) = s1 else {
            candle_core::bail!("sgd_subtract: weights are not f32");
        };
        for (w, &v) in w[start..end].iter_mut().zip(v) {
            *w -= v;
        }
        Ok(())
    }
}

/// The f32 elements of a contiguous operand.
fn f32s<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (CpuStorage::F32(data), Some((start, end))) = (s, l.contiguous_offsets()) else {
        candle_core::bail!("sgd update: operands must be contiguous f32");
    };
    Ok(&data[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused CPU update and candle's ops give the same bits, with and without clipping and
    /// decay, over several steps (the history fed back).
    #[test]
    fn the_fused_update_equals_candles_ops_bit_for_bit() {
        let dev = Device::Cpu;
        for (clip, decay) in [
            (None, 0.0),
            (Some(0.37), 0.0),
            (None, 5e-4),
            (Some(0.9), 1e-3),
        ] {
            let k = Coefficients {
                clip,
                decay,
                momentum: 0.9,
                lr: 0.013,
            };
            let start = Tensor::randn(0f32, 1.0, (7, 33), &dev).unwrap();
            let (fused_w, ops_w) = (
                Var::from_tensor(&start.copy().unwrap()).unwrap(),
                Var::from_tensor(&start.copy().unwrap()).unwrap(),
            );
            let mut fused_h = Tensor::zeros((7, 33), DType::F32, &dev).unwrap();
            let mut ops_h = fused_h.clone();
            for _ in 0..4 {
                let g = Tensor::randn(0f32, 1.0, (7, 33), &dev).unwrap();
                fused_h = update(&fused_w, &fused_h, &g, k).unwrap();
                ops_h = with_candle_ops(&ops_w, &ops_h, &g, k).unwrap();
            }
            let bits = |t: &Tensor| -> Vec<u32> {
                let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                v.into_iter().map(f32::to_bits).collect()
            };
            assert_eq!(bits(fused_w.as_tensor()), bits(ops_w.as_tensor()), "{k:?}");
            assert_eq!(bits(&fused_h), bits(&ops_h), "{k:?}");
            assert_ne!(
                bits(fused_w.as_tensor()),
                bits(&start),
                "{k:?}: nothing updated"
            );
        }
    }
}

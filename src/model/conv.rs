//! 2-D convolution whose backward runs as ordinary (im2col + gemm) convolutions on CPU.
//!
//! In: an NCHW input, an OIHW kernel, padding and stride. Out: candle's `conv2d` value, with
//! gradients computed as: input grad = the output grad convolved with the kernel flipped and
//! transposed (stride 1), kernel grad = candle's own formula. Candle's CPU backward instead
//! takes the input grad through `conv_transpose2d`, a direct loop 5–10× slower than the
//! forward (see notes/net.md), and computes it even for the images, which need none.
//!
//! The value comes from a plain `conv2d` on detached operands; a custom op that outputs zeros
//! carries the gradients. On other devices (no CPU kernel for the zero op) it is candle's
//! `conv2d` unchanged.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Zeros of the convolution's output shape; its backward is the convolution's backward.
struct ConvGrad {
    pad: usize,
    stride: usize,
    out_shape: Shape,
}

impl CustomOp2 for ConvGrad {
    fn name(&self) -> &'static str {
        "conv2d-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let zeros = vec![0f32; self.out_shape.elem_count()];
        Ok((CpuStorage::F32(zeros), self.out_shape.clone()))
    }

    fn bwd(
        &self,
        input: &Tensor,
        kernel: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, kh, kw) = kernel.dims4()?;
        let input_grad = match (input.track_op(), self.stride) {
            (false, _) => None,
            (true, 1) => {
                let flipped = kernel.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
                Some(grad.conv2d(&flipped, kh - 1 - self.pad, 1, 1, 1)?)
            }
            // Strided convolutions (only conv1 in GoogLeNet, whose input is the images) keep
            // candle's formula.
            (true, stride) => {
                let (_, _, h, _) = input.dims4()?;
                let covered = (grad.dim(2)? - 1) * stride + kh - 2 * self.pad;
                Some(grad.conv_transpose2d(kernel, self.pad, h - covered, stride, 1)?)
            }
        };
        let kernel_grad = input
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, self.pad, 1, self.stride, 1)?
            .transpose(0, 1)?
            .narrow(2, 0, kh)?
            .narrow(3, 0, kw)?;
        Ok((input_grad, Some(kernel_grad)))
    }
}

/// `input.conv2d(kernel, pad, stride, 1, 1)` with the faster CPU backward.
pub fn conv2d(input: &Tensor, kernel: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    let value = input.detach().conv2d(&kernel.detach(), pad, stride, 1, 1)?;
    let tracked = input.track_op() || kernel.track_op();
    if !tracked || !input.device().is_cpu() || input.dtype() != candle_core::DType::F32 {
        return match tracked {
            true => input.conv2d(kernel, pad, stride, 1, 1),
            false => Ok(value),
        };
    }
    let grad = ConvGrad {
        pad,
        stride,
        out_shape: value.shape().clone(),
    };
    value + input.apply_op2(kernel, grad)?
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Gradients of a weighted sum of the output, ours against candle's own conv backward.
    fn compare(c: usize, o: usize, k: usize, pad: usize, stride: usize, side: usize) {
        let dev = Device::Cpu;
        let x =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c, side, side), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (o, c, k, k), &dev).unwrap()).unwrap();
        let reference = x.conv2d(&w, pad, stride, 1, 1).unwrap();
        let ours = conv2d(&x, &w, pad, stride).unwrap();
        let probe = Tensor::randn(0f32, 1.0, reference.shape(), &dev).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&reference), values(&ours));
        let g_ref = (reference * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_ours = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&x, &w] {
            let (a, b) = (
                values(g_ref.get(var).unwrap()),
                values(g_ours.get(var).unwrap()),
            );
            let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                worst <= 1e-5 * scale,
                "c{c} o{o} k{k} p{pad} s{stride}: {worst} vs {scale}"
            );
        }
    }

    #[test]
    fn gradients_match_candles_conv_backward() {
        compare(3, 4, 3, 1, 1, 9);
        compare(5, 2, 5, 2, 1, 7);
        compare(4, 6, 1, 0, 1, 5);
        compare(3, 4, 7, 3, 2, 16);
        compare(3, 4, 7, 3, 2, 15);
    }

    #[test]
    fn untracked_input_gets_no_gradient() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (2, 3, 3, 3), &dev).unwrap()).unwrap();
        let grads = conv2d(&x, &w, 1, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&w).is_some());
    }
}

//! A convolution's bias and ReLU fused: `y = max(x + bias[c], 0)` over NCHW, with backward
//! `dx = dy · [y > 0]` and `dbias[c] = Σ_{n,h,w} dx` (y > 0 exactly where x + bias > 0).
//! Replaces `broadcast_add` + `relu`, whose backward is several full passes over the
//! activation plus a generic strided reduction for the bias.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use num_traits::{Float, Zero};
use rayon::prelude::*;

use super::cpu::{self, Element, Kernel1, Kernel2};
#[cfg(feature = "cuda")]
use super::cuda::{self, CudaOut, Grid};
use super::{dims4, OpError};
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;

/// `max(x + bias[c], 0)` for NCHW `x` and a `[C]` bias of x's dtype. On the CPU the f32
/// result is bit-identical to `x.broadcast_add(&bias.reshape((1, (), 1, 1))?)?.relu()`.
pub fn bias_relu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = dims4(BiasRelu::OP, x)?;
    if bias.dims() != [c] {
        return Err(OpError::BadArgument {
            op: BiasRelu::OP,
            field: "bias",
            requirement: "of shape [C], C being x's channels",
            value: format!("{:?} for {c} channels", bias.dims()),
        }
        .into());
    }
    let geom = BiasGeom { n, c, plane: h * w };
    x.contiguous()?
        .apply_op2(&bias.contiguous()?, BiasRelu(geom))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BiasGeom {
    n: usize,
    c: usize,
    plane: usize,
}

impl BiasGeom {
    /// The length of the chunks the CPU kernels hand to rayon: one plane (at least one
    /// element, for empty planes).
    fn chunk(&self) -> usize {
        self.plane.max(1)
    }

    /// Runs op's CUDA kernel over `operands` on `grid`, into a tensor of shape `out`.
    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        op: &'static str,
        operands: &[(&CudaStorage, &Layout)],
        grid: Grid,
        out: &Shape,
    ) -> CudaOut {
        let [n, c, plane] = cuda::ints(op, [self.n, self.c, self.plane])?;
        let params = cuda::BiasParams { c, plane, n };
        Ok((
            cuda::launch_on(grid, op, operands, out.elem_count(), params)?,
            out.clone(),
        ))
    }
}

/// The forward: arguments (x, bias), result y.
struct BiasRelu(BiasGeom);
/// Arguments (y, dL/dy), result dL/dx.
struct ReluGrad(BiasGeom);
/// Argument dL/dx, result dL/dbias: the per-channel sum.
struct BiasGrad(BiasGeom);

/// `CustomOp2` for an elementwise kernel over x-shaped first operands: the result has the
/// first operand's shape, one CUDA thread per element; `$bwd`, if named, is its backward.
macro_rules! elementwise_op2 {
    ($op:ident $(, $bwd:ident)?) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                Self::OP
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
            fn cuda_fwd(
                &self,
                s1: &CudaStorage,
                l1: &Layout,
                s2: &CudaStorage,
                l2: &Layout,
            ) -> CudaOut {
                let operands = [(s1, l1), (s2, l2)];
                self.0.cuda(Self::OP, &operands, Grid::PerElement, l1.shape())
            }

            $(
                fn bwd(
                    &self,
                    arg1: &Tensor,
                    arg2: &Tensor,
                    res: &Tensor,
                    grad_res: &Tensor,
                ) -> Result<(Option<Tensor>, Option<Tensor>)> {
                    self.$bwd(arg1, arg2, res, grad_res)
                }
            )?
        }
    };
}

elementwise_op2!(BiasRelu, backward);
elementwise_op2!(ReluGrad);

impl BiasRelu {
    /// dL/dx = dL/dy where y > 0, and dL/dbias its per-channel sum.
    fn backward(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = y.apply_op2_no_bwd(&dy.contiguous()?, &ReluGrad(self.0))?;
        let dbias = dx.apply_op1_no_bwd(&BiasGrad(self.0))?;
        debug_assert_eq!(dbias.dims(), bias.dims());
        Ok((Some(dx), Some(dbias)))
    }
}

impl Kernel2 for BiasRelu {
    const OP: &'static str = "bias_relu";

    fn run<T: Element>(&self, x: &[T], bias: &[T]) -> Vec<T> {
        let g = &self.0;
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(g.chunk())
            .zip(x.par_chunks(g.chunk()))
            .enumerate()
            .for_each(|(index, (y, x))| {
                let b = bias[index % g.c].to_acc();
                for (o, &v) in y.iter_mut().zip(x) {
                    // f32: the same `+` then `f32::max(·, 0)` as candle's add and relu.
                    *o = T::from_acc((v.to_acc() + b).max(T::Acc::zero()));
                }
            });
        y
    }
}

impl Kernel2 for ReluGrad {
    const OP: &'static str = "bias_relu_grad";

    fn run<T: Element>(&self, y: &[T], dy: &[T]) -> Vec<T> {
        let chunk = self.0.chunk();
        let mut dx = vec![T::zero(); y.len()];
        dx.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk))
            .zip(dy.par_chunks(chunk))
            .for_each(|((dx, y), dy)| {
                for ((d, &v), &g) in dx.iter_mut().zip(y).zip(dy) {
                    if v > T::zero() {
                        *d = g;
                    }
                }
            });
        dx
    }
}

impl CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        Self::OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::apply1(self, s, l)?, Shape::from(self.0.c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CudaOut {
        self.0.cuda(
            Self::OP,
            &[(s, l)],
            Grid::BlockPerElement,
            &Shape::from(self.0.c),
        )
    }
}

impl Kernel1 for BiasGrad {
    const OP: &'static str = "bias_grad";

    /// Each plane summed in parallel, then each channel's planes in image order: the same
    /// result every run.
    fn run<T: Element>(&self, dx: &[T]) -> Vec<T> {
        let g = &self.0;
        debug_assert_eq!(dx.len(), g.n * g.c * g.plane);
        if g.plane == 0 {
            return vec![T::zero(); g.c];
        }
        let planes: Vec<T::Acc> = dx
            .par_chunks(g.plane)
            .map(|plane| {
                plane
                    .iter()
                    .fold(T::Acc::zero(), |sum, &v| sum + v.to_acc())
            })
            .collect();
        (0..g.c)
            .map(|channel| {
                let sum = (0..g.n).fold(T::Acc::zero(), |sum, image| {
                    sum + planes[image * g.c + channel]
                });
                T::from_acc(sum)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::gradcheck::{
        assert_gradient_matches, cuda_device, distinct_values, random_values, relative_error,
    };
    use candle_core::{DType, Device, Var};

    type Nchw = (usize, usize, usize, usize);

    const CASES: [Nchw; 4] = [(2, 3, 4, 5), (1, 4, 3, 3), (3, 2, 1, 1), (2, 1, 2, 7)];

    /// A bias of `c` values in [−1, 1].
    fn bias(c: usize, seed: u64) -> Tensor {
        random_values(c, seed).unwrap()
    }

    #[test]
    fn gradient_matches_finite_differences_in_x() {
        for (i, shape) in CASES.into_iter().enumerate() {
            let x = distinct_values(shape, 30 + i as u64).unwrap();
            let b = bias(shape.1, 40 + i as u64);
            assert_gradient_matches(|x| bias_relu(x, &b), &x, 1e-6).unwrap();
        }
    }

    #[test]
    fn gradient_matches_finite_differences_in_bias() {
        for (i, shape) in CASES.into_iter().enumerate() {
            let x = distinct_values(shape, 50 + i as u64).unwrap();
            let b = bias(shape.1, 60 + i as u64);
            assert_gradient_matches(|b| bias_relu(&x, b), &b, 1e-6).unwrap();
        }
    }

    #[test]
    fn f32_forward_is_bit_identical_to_broadcast_add_and_relu() {
        for (i, shape) in [(2, 64, 12, 12), (3, 5, 4, 4), (1, 7, 1, 1)]
            .into_iter()
            .enumerate()
        {
            let x = random_values(shape, 70 + i as u64)
                .and_then(|x| x.to_dtype(DType::F32))
                .unwrap();
            let b = bias(shape.1, 80 + i as u64).to_dtype(DType::F32).unwrap();
            let ours = bias_relu(&x, &b).unwrap();
            let theirs = x
                .broadcast_add(&b.reshape((1, (), 1, 1)).unwrap())
                .unwrap()
                .relu()
                .unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.into_iter().map(f32::to_bits).collect()
            };
            assert_eq!(bits(&ours), bits(&theirs), "{shape:?}");
        }
    }

    #[test]
    fn gradients_match_candle_and_half_precision_agrees() {
        let shape = (2, 3, 5, 4);
        let x = random_values(shape, 3).unwrap();
        let b = bias(3, 4);
        let probe = random_values(shape, 5).unwrap();
        let want = value_and_grads(&|x, b| candle_bias_relu(x, b), &x, &b, &probe).unwrap();
        for (dtype, tol) in [
            (DType::F64, 1e-12),
            (DType::F32, 1e-6),
            (DType::BF16, 1e-2),
            (DType::F16, 2e-3),
        ] {
            let got = bias_relu_on(&Device::Cpu, dtype, &x, &b, &probe).unwrap();
            assert_close("cpu", &want, &got, dtype, tol);
        }
    }

    #[test]
    fn bad_operands_are_typed_errors() {
        let x = Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let wrong = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let msg = bias_relu(&x, &wrong).unwrap_err().to_string();
        assert!(
            msg.contains("bias_relu: bias must be of shape [C]"),
            "{msg}"
        );
        let other = Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap();
        let msg = bias_relu(&x, &other).unwrap_err().to_string();
        assert!(
            msg.contains("bias_relu: operands have different dtypes"),
            "{msg}"
        );
    }

    fn candle_bias_relu(x: &Tensor, b: &Tensor) -> Result<Tensor> {
        x.broadcast_add(&b.reshape((1, (), 1, 1))?)?.relu()
    }

    /// `f(x, b)` and the gradients of `Σ f(x, b)·probe` with respect to x and b.
    fn value_and_grads(
        f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
        x: &Tensor,
        b: &Tensor,
        probe: &Tensor,
    ) -> Result<[Tensor; 3]> {
        let (x, b) = (Var::from_tensor(x)?, Var::from_tensor(b)?);
        let y = f(x.as_tensor(), b.as_tensor())?;
        let grads = (&y * probe)?.sum_all()?.backward()?;
        let grad = |v: &Var| grads.get(v.as_tensor()).expect("y depends on it").clone();
        Ok([y.clone(), grad(&x), grad(&b)])
    }

    /// bias_relu's `value_and_grads` with the operands cast to `dtype` on `device`.
    fn bias_relu_on(
        device: &Device,
        dtype: DType,
        x: &Tensor,
        b: &Tensor,
        probe: &Tensor,
    ) -> Result<[Tensor; 3]> {
        let on = |t: &Tensor| t.to_dtype(dtype)?.to_device(device);
        value_and_grads(&|x, b| bias_relu(x, b), &on(x)?, &on(b)?, &on(probe)?)
    }

    /// Panics unless the forwards, dx and dbias agree within `tol` (`relative_error`), `got`
    /// being of `dtype`.
    fn assert_close(what: &str, want: &[Tensor; 3], got: &[Tensor; 3], dtype: DType, tol: f64) {
        for ((part, w), g) in ["forward", "dx", "dbias"].into_iter().zip(want).zip(got) {
            assert_eq!(g.dtype(), dtype);
            let err = relative_error(w, g).unwrap();
            assert!(err <= tol, "{what} {dtype:?} {part}: relative error {err}");
        }
    }

    /// The CUDA kernels against an f64 CPU reference on the same (dtype-rounded) values, on
    /// GoogLeNet's shapes: forward, dx and dbias within 1e-5 in f32 and 1e-2 in bf16.
    #[test]
    fn cuda_matches_cpu_on_googlenet_shapes() {
        let Some(device) = cuda_device() else { return };
        let shapes = [
            (2, 64, 112, 112),
            (2, 192, 28, 28),
            (2, 832, 7, 7),
            (3, 5, 4, 4),
        ];
        for (i, shape) in shapes.into_iter().enumerate() {
            let seed = 90 + 3 * i as u64;
            let (x, b) = (random_values(shape, seed).unwrap(), bias(shape.1, seed + 1));
            let probe = random_values(shape, seed + 2).unwrap();
            for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
                let rounded = |t: &Tensor| t.to_dtype(dtype)?.to_dtype(DType::F64);
                let (x, b, probe) = (
                    rounded(&x).unwrap(),
                    rounded(&b).unwrap(),
                    rounded(&probe).unwrap(),
                );
                let want = value_and_grads(&|x, b| bias_relu(x, b), &x, &b, &probe).unwrap();
                let got = bias_relu_on(&device, dtype, &x, &b, &probe).unwrap();
                assert_close(&format!("{shape:?}"), &want, &got, dtype, tol);
            }
        }
    }

    /// The bias gradient's block reduction has a fixed order: the same bits on every run.
    #[test]
    fn cuda_bias_gradient_is_deterministic() {
        let Some(device) = cuda_device() else { return };
        let shape = (4, 64, 56, 56);
        let x = random_values(shape, 7).unwrap();
        let b = bias(64, 8);
        let probe = random_values(shape, 9).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let run = || -> Vec<f64> {
                let [_, _, dbias] = bias_relu_on(&device, dtype, &x, &b, &probe).unwrap();
                dbias.to_dtype(DType::F64).unwrap().to_vec1().unwrap()
            };
            let first = run();
            for _ in 0..3 {
                assert_eq!(run(), first, "{dtype:?}");
            }
        }
    }
}

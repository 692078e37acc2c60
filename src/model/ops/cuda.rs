//! CUDA plumbing for the op kernels of `kernels.cu`: the embedded PTX, the kernels' parameter
//! structs, and the one launch path every op's `cuda_fwd` goes through (f32 and bf16).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};
use half::bf16;

use super::OpError;

/// `kernels.cu` as PTX for `compute_90`, built by build.rs.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/websieve_kernels.ptx"));

/// The name candle caches the loaded PTX module under.
const MODULE: &str = "websieve_ops";

/// Every kernel `launch` may launch: `<op>_<dtype>`, op being the ops' `Kernel::OP`. A test
/// checks each against the PTX; `launch` refuses names not listed.
const KERNELS: &[&str] = &[
    "max_pool2d_f32",
    "max_pool2d_bf16",
    "max_pool2d_grad_f32",
    "max_pool2d_grad_bf16",
    "avg_pool2d_f32",
    "avg_pool2d_bf16",
    "avg_pool2d_grad_f32",
    "avg_pool2d_grad_bf16",
    "lrn_f32",
    "lrn_bf16",
    "lrn_grad_f32",
    "lrn_grad_bf16",
    "bias_relu_f32",
    "bias_relu_bf16",
    "bias_relu_grad_f32",
    "bias_relu_grad_bf16",
    "bias_grad_f32",
    "bias_grad_bf16",
];

/// What an op's `cuda_fwd` returns: the result's storage and shape.
pub(super) type CudaOut = Result<(CudaStorage, Shape)>;

/// Threads per block; one thread per output element.
const BLOCK: u32 = 256;

/// Threads per block of kernels.cu's REDUCE kernels (its `REDUCE_THREADS`).
const REDUCE_THREADS: u32 = 1024;

/// How a kernel's threads cover its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grid {
    /// One thread per result element, `BLOCK` to a block.
    PerElement,
    /// One block of `REDUCE_THREADS` per result element (kernels.cu's REDUCE kernels).
    BlockPerElement,
}

impl Grid {
    fn config(self, out_len: usize) -> LaunchConfig {
        let (grid, block) = match self {
            Grid::PerElement => (out_len.div_ceil(BLOCK as usize) as u32, BLOCK),
            Grid::BlockPerElement => (out_len as u32, REDUCE_THREADS),
        };
        LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// `kernels.cu`'s `PoolParams`, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolParams {
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    pub kernel: i32,
    pub stride: i32,
    pub pad: i32,
}

/// `kernels.cu`'s `LrnParams`, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct LrnParams {
    pub c: i32,
    pub plane: i32,
    pub size: i32,
    pub fast_beta: i32,
    pub coeff: f32,
    pub beta: f32,
    pub k: f32,
    pub grad_coeff: f32,
}

/// `kernels.cu`'s `BiasParams`, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct BiasParams {
    pub c: i32,
    pub plane: i32,
    pub n: i32,
}

// SAFETY: plain `repr(C)` structs of 4-byte scalars, laid out as their C twins.
unsafe impl DeviceRepr for PoolParams {}
unsafe impl DeviceRepr for LrnParams {}
unsafe impl DeviceRepr for BiasParams {}

/// `values` as the kernels' `int`s: sizes (and the bounds of the kernels' index arithmetic)
/// must stay below 2^31.
pub(super) fn ints<const N: usize>(op: &'static str, values: [usize; N]) -> Result<[i32; N]> {
    let mut out = [0; N];
    for (o, v) in out.iter_mut().zip(values) {
        *o = i32::try_from(v).map_err(|_| OpError::BadArgument {
            op,
            field: "size",
            requirement: "below 2^31 for the CUDA kernels",
            value: v.to_string(),
        })?;
    }
    Ok(out)
}

/// Runs kernel `<op>_<dtype>` over contiguous operands of one dtype, one thread per element of
/// the `out_len` result: `kernel(out_len, operands…, out, params)`.
pub(super) fn launch<P: DeviceRepr>(
    op: &'static str,
    operands: &[(&CudaStorage, &Layout)],
    out_len: usize,
    params: P,
) -> Result<CudaStorage> {
    launch_on(Grid::PerElement, op, operands, out_len, params)
}

/// `launch` with the threads laid out as `grid` says.
pub(super) fn launch_on<P: DeviceRepr>(
    grid: Grid,
    op: &'static str,
    operands: &[(&CudaStorage, &Layout)],
    out_len: usize,
    params: P,
) -> Result<CudaStorage> {
    let dtype = operands[0].0.dtype();
    if let Some((other, _)) = operands.iter().find(|(s, _)| s.dtype() != dtype) {
        return Err(OpError::DTypeMismatch {
            op,
            lhs: dtype,
            rhs: other.dtype(),
        }
        .into());
    }
    match dtype {
        DType::F32 => typed::<f32, P>(grid, op, "f32", operands, out_len, params),
        DType::BF16 => typed::<bf16, P>(grid, op, "bf16", operands, out_len, params),
        dtype => Err(OpError::UnsupportedDType { op, dtype }.into()),
    }
}

fn typed<T: CudaDType + DeviceRepr, P: DeviceRepr>(
    grid: Grid,
    op: &'static str,
    dtype: &str,
    operands: &[(&CudaStorage, &Layout)],
    out_len: usize,
    params: P,
) -> Result<CudaStorage> {
    let [total] = ints(op, [out_len])?;
    let inputs = operands
        .iter()
        .map(|(s, l)| {
            let (start, end) = l
                .contiguous_offsets()
                .ok_or(OpError::NotContiguous { op })?;
            ints(op, [end - start])?;
            Ok(s.as_cuda_slice::<T>()?.slice(start..end))
        })
        .collect::<Result<Vec<_>>>()?;
    let device = operands[0].0.device();
    // SAFETY: the kernel writes every element.
    let mut out = unsafe { device.alloc::<T>(out_len)? };
    if total > 0 {
        let name = format!("{op}_{dtype}");
        if !KERNELS.contains(&name.as_str()) {
            candle_core::bail!("{op}: no CUDA kernel {name}");
        }
        let func = device.get_or_load_custom_func(&name, MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&total);
        for input in &inputs {
            args.arg(input);
        }
        args.arg(&mut out);
        args.arg(&params);
        let cfg = grid.config(out_len);
        // SAFETY: the arguments match the kernel's signature (kernels.cu's UNARY/BINARY/REDUCE);
        // `out` has `total` elements; the inputs hold the elements the params describe, the
        // ops being private and built only by their op functions and backward passes from
        // the operands' own shapes.
        unsafe { args.launch(cfg) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::gradcheck::{cuda_device, random_values, relative_error};
    use crate::model::ops::pool::{Nchw, CASES};
    use crate::model::ops::{avg_pool2d, lrn, max_pool2d};
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn kernels_compile_for_sm_90() {
        assert!(
            PTX.lines().any(|line| line.trim() == ".target sm_90"),
            "the PTX does not target sm_90"
        );
        for name in KERNELS {
            assert!(
                PTX.contains(&format!(".entry {name}(")),
                "the PTX has no entry {name}"
            );
            // The params come last, after total, the operands and out, and must be as large
            // as the Rust struct that `launch` passes.
            let binary = name.starts_with("max_pool2d_grad")
                || name.starts_with("lrn_grad")
                || name.starts_with("bias_relu");
            let size = if name.starts_with("lrn") {
                std::mem::size_of::<LrnParams>()
            } else if name.starts_with("bias") {
                std::mem::size_of::<BiasParams>()
            } else {
                std::mem::size_of::<PoolParams>()
            };
            let params = format!(".b8 {name}_param_{}[{size}]", 3 + usize::from(binary));
            assert!(PTX.contains(&params), "{name}: no parameter {params}");
        }
    }

    /// `f(x)` and the gradient of `Σ f(x)·probe` with respect to x.
    fn value_and_grad(
        f: &dyn Fn(&Tensor) -> Result<Tensor>,
        x: &Tensor,
        probe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let var = Var::from_tensor(x)?;
        let y = f(var.as_tensor())?;
        let grads = (&y * probe)?.sum_all()?.backward()?;
        let dx = grads.get(var.as_tensor()).expect("y depends on x").clone();
        Ok((y, dx))
    }

    /// Panics unless `f`'s forward and gradient on `device` match the f32 CPU kernels on the
    /// same values: within 1e-5 in f32 and 1e-2 in bf16 (the CPU then computes from the
    /// bf16-rounded x and probe, so that rounding cannot move a max-pool argmax).
    fn assert_matches_cpu(
        device: &Device,
        what: &str,
        f: &dyn Fn(&Tensor) -> Result<Tensor>,
        x: &Tensor,
    ) -> Result<()> {
        let probe = random_values(f(x)?.shape(), 17)?;
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
            let rounded = |t: &Tensor| t.to_dtype(dtype)?.to_dtype(DType::F32);
            let (x32, probe32) = (rounded(x)?, rounded(&probe)?);
            let (want_y, want_dx) = value_and_grad(f, &x32, &probe32)?;
            let on_device = |t: &Tensor| t.to_dtype(dtype)?.to_device(device);
            let (y, dx) = value_and_grad(f, &on_device(&x32)?, &on_device(&probe32)?)?;
            for (part, want, got) in [("forward", &want_y, &y), ("gradient", &want_dx, &dx)] {
                assert_eq!(got.dtype(), dtype);
                let err = relative_error(want, got)?;
                assert!(err <= tol, "{what} {dtype:?} {part}: relative error {err}");
            }
        }
        Ok(())
    }

    type Pool = fn(&Tensor, usize, usize, usize, bool) -> Result<Tensor>;

    /// `pool` on CUDA against the CPU over `cases`, on random x.
    fn assert_pool_matches_cpu(
        pool: Pool,
        name: &str,
        cases: &[(Nchw, usize, usize, usize, bool)],
    ) {
        let Some(device) = cuda_device() else { return };
        for (i, &(shape, k, s, p, ceil)) in cases.iter().enumerate() {
            let x = random_values(shape, 40 + i as u64)
                .and_then(|x| x.to_dtype(DType::F32))
                .unwrap();
            let what = format!("{name} {shape:?} k{k} s{s} p{p} ceil {ceil}");
            assert_matches_cpu(&device, &what, &|x| pool(x, k, s, p, ceil), &x).unwrap();
        }
    }

    #[test]
    fn max_pool_matches_cpu() {
        let googlenet = [
            ((2, 64, 112, 112), 3, 2, 0, true),
            ((2, 192, 56, 56), 3, 2, 0, true),
            ((2, 480, 28, 28), 3, 1, 1, true),
        ];
        assert_pool_matches_cpu(max_pool2d, "max_pool2d", &[&CASES[..], &googlenet].concat());
    }

    #[test]
    fn avg_pool_matches_cpu() {
        let googlenet = [((2, 512, 14, 14), 5, 3, 0, true)];
        assert_pool_matches_cpu(avg_pool2d, "avg_pool2d", &[&CASES[..], &googlenet].concat());
    }

    #[test]
    fn lrn_matches_cpu() {
        let Some(device) = cuda_device() else { return };
        // (shape, size, alpha, beta, k, scale of x): large α so the cross-channel term
        // matters, β ≠ 0.75 for the powf path, then GoogLeNet's own.
        let cases = [
            ((2, 7, 3, 3), 5, 0.9, 0.75, 1.0, 1.0),
            ((1, 3, 4, 5), 5, 0.5, 0.6, 2.0, 1.0),
            ((2, 6, 2, 3), 3, 1.5, 0.75, 1.0, 1.0),
            ((1, 1, 3, 3), 1, 0.7, 1.2, 1.0, 1.0),
            ((2, 64, 56, 56), 5, 1e-4, 0.75, 1.0, 30.0),
            ((2, 192, 56, 56), 5, 1e-4, 0.75, 1.0, 30.0),
        ];
        for (i, (shape, size, alpha, beta, k, scale)) in cases.into_iter().enumerate() {
            let x = random_values(shape, 60 + i as u64)
                .and_then(|x| (x * scale)?.to_dtype(DType::F32))
                .unwrap();
            let what = format!("lrn {shape:?} size {size} α {alpha} β {beta} k {k}");
            assert_matches_cpu(&device, &what, &|x| lrn(x, size, alpha, beta, k), &x).unwrap();
        }
    }

    /// Inputs of a few small integers tie everywhere (and in bf16 too): the CUDA kernels must
    /// route the gradient to the same element as the CPU's, so both dtypes agree to the bit.
    #[test]
    fn max_pool_ties_match_cpu_exactly() {
        let Some(device) = cuda_device() else { return };
        let googlenet = [
            ((2, 64, 28, 28), 3, 2, 0, true),
            ((2, 32, 28, 28), 3, 1, 1, true),
        ];
        for (i, &(shape, k, s, p, ceil)) in [&CASES[..], &googlenet].concat().iter().enumerate() {
            let x = (random_values(shape, 80 + i as u64).unwrap() * 1.5)
                .and_then(|x| x.round())
                .unwrap();
            let probe = random_values(
                max_pool2d(&x, k, s, p, ceil).unwrap().shape(),
                90 + i as u64,
            )
            .unwrap();
            for dtype in [DType::F32, DType::BF16] {
                let f = |x: &Tensor| max_pool2d(x, k, s, p, ceil);
                let (x, probe) = (x.to_dtype(dtype).unwrap(), probe.to_dtype(dtype).unwrap());
                let (want_y, want_dx) = value_and_grad(&f, &x, &probe).unwrap();
                let (y, dx) = value_and_grad(
                    &f,
                    &x.to_device(&device).unwrap(),
                    &probe.to_device(&device).unwrap(),
                )
                .unwrap();
                let what = format!("{shape:?} k{k} s{s} p{p} ceil {ceil} {dtype:?}");
                assert_eq!(relative_error(&want_y, &y).unwrap(), 0.0, "{what} forward");
                assert_eq!(
                    relative_error(&want_dx, &dx).unwrap(),
                    0.0,
                    "{what} gradient"
                );
            }
        }
    }

    #[test]
    fn other_dtypes_are_rejected() {
        let Some(device) = cuda_device() else { return };
        let x = Tensor::zeros((1, 2, 4, 4), DType::F64, &device).unwrap();
        let msg = max_pool2d(&x, 2, 2, 0, false).unwrap_err().to_string();
        assert!(msg.contains("max_pool2d: unsupported dtype F64"), "{msg}");
        let msg = lrn(&x, 3, 1e-4, 0.75, 1.0).unwrap_err().to_string();
        assert!(msg.contains("lrn: unsupported dtype F64"), "{msg}");
    }
}

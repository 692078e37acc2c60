//! 2-D convolution (NCHW input, OIHW kernel, one padding and stride for both axes), alone or
//! fused with the bias and ReLU that follow it in GoogLeNet, with a fast backward that
//! computes only the gradients needed (none for an input that does not track, such as the
//! images).
//!
//! In: input, kernel, (bias), padding, stride. Out: the value of candle's `conv2d` (to float
//! rounding: the sums run in another order), or `max(conv2d + bias, 0)`, differentiable.
//! Why: candle's backward is slow: on CPU a direct `conv_transpose2d` loop 5–10× slower than the
//! forward (BENCHMARKS.md, "Why `model::conv` exists"); on CUDA a naive kernel (GoogLeNet's
//! conv1 at batch 64 on an H200: 182 ms a step against 1.9 ms for the forward).
//!
//! - CPU f32: our own op (module `cpu`): im2col and one gemm over the whole batch per pass,
//!   bias and ReLU applied as the product is written out (BENCHMARKS.md, "GoogLeNet training
//!   speed").
//! - CUDA f32 and bf16 with the `cudnn` feature: forward, backward-data and backward-filter
//!   through cuDNN, planned once per shape (module `cudnn`); f32 in strict FP32 unless
//!   [`set_tf32`], bf16 computing in f32 on tensor cores. Bias and ReLU: `ops::bias_relu`.
//! - Elsewhere (other dtypes, CUDA without `cudnn`): candle's `conv2d`, then `ops::bias_relu`.

mod cpu;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Result, Tensor};

/// Operands the CPU convolution cannot take; wrapped into `candle_core::Error`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConvError {
    #[error(
        "conv2d: input {input:?} and kernel {kernel:?} (padding {pad}, stride {stride}) do not \
         fit: expected NCHW and OIHW with the same C, a kernel no larger than the padded input, \
         a stride of at least 1"
    )]
    Shapes {
        input: Vec<usize>,
        kernel: Vec<usize>,
        pad: usize,
        stride: usize,
    },
    #[error("conv2d: the CPU convolution takes contiguous f32 operands on the CPU")]
    NotCpuF32,
}

impl From<ConvError> for candle_core::Error {
    fn from(e: ConvError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// Whether f32 convolutions on CUDA may use TF32 tensor cores (about 10 mantissa bits).
static TF32: AtomicBool = AtomicBool::new(false);

/// Whether CUDA convolutions use reproducible cuDNN algorithms.
static DETERMINISTIC: AtomicBool = AtomicBool::new(false);

/// Lets f32 convolutions on CUDA (with `cudnn`) run in TF32 from now on; off (strict FP32) by
/// default. Convolutions already in a graph keep the mode they were built with.
pub fn set_tf32(on: bool) {
    TF32.store(on, Ordering::Relaxed);
}

/// Makes CUDA convolutions (with `cudnn`) bit-for-bit reproducible from now on, at some speed:
/// algorithms from cuDNN's heuristics instead of a benchmark, and none that sums with atomics.
/// Off by default.
pub fn set_deterministic(on: bool) {
    DETERMINISTIC.store(on, Ordering::Relaxed);
}

/// Whether operands run through the CPU op (module `cpu`).
fn on_cpu_in_f32(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The CPU op's geometry for these operands.
fn cpu_op(input: &Tensor, kernel: &Tensor, pad: usize, stride: usize) -> Result<cpu::Conv> {
    Ok(cpu::Conv(cpu::Geometry::new(
        input.dims(),
        kernel.dims(),
        pad,
        stride,
    )?))
}

/// `max(input.conv2d(kernel, pad, stride, 1, 1) + bias[o], 0)`, `bias` of shape `[O]` and the
/// operands' dtype: on the CPU in f32 one op (bias and ReLU applied as the output is written),
/// elsewhere [`conv2d`] then `ops::bias_relu`.
pub fn conv2d_bias_relu(
    input: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    pad: usize,
    stride: usize,
) -> Result<Tensor> {
    if !on_cpu_in_f32(&[input, kernel, bias]) {
        return crate::model::ops::bias_relu(&conv2d(input, kernel, pad, stride)?, bias);
    }
    let op = cpu_op(input, kernel, pad, stride)?;
    if bias.dims() != [kernel.dim(0)?] {
        return Err(crate::model::ops::OpError::BadArgument {
            op: "conv2d_bias_relu",
            field: "bias",
            requirement: "of shape [O], O being the kernel's output channels",
            value: format!("{:?}", bias.dims()),
        }
        .into());
    }
    input
        .contiguous()?
        .apply_op3(&kernel.contiguous()?, &bias.contiguous()?, op)
}

/// How convolutions run on CUDA with `cudnn`: see [`set_tf32`] and [`set_deterministic`].
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))] // read by cuDNN alone
struct Mode {
    tf32: bool,
    deterministic: bool,
}

/// `input.conv2d(kernel, pad, stride, 1, 1)` with the faster backward (on the CPU in f32, our
/// own op).
pub fn conv2d(input: &Tensor, kernel: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    let mode = Mode {
        tf32: TF32.load(Ordering::Relaxed),
        deterministic: DETERMINISTIC.load(Ordering::Relaxed),
    };
    conv2d_with(input, kernel, (pad, stride), mode)
}

/// [`conv2d`] in the given mode.
fn conv2d_with(
    input: &Tensor,
    kernel: &Tensor,
    geometry: (usize, usize),
    mode: Mode,
) -> Result<Tensor> {
    let (pad, stride) = geometry;
    #[cfg(feature = "cudnn")]
    if input.device().is_cuda() && matches!(input.dtype(), DType::F32 | DType::BF16) {
        return cudnn::conv2d(input, kernel, pad, stride, mode);
    }
    #[cfg(not(feature = "cudnn"))]
    let _ = mode; // only cuDNN has the switches
    if !on_cpu_in_f32(&[input, kernel]) {
        return input.conv2d(kernel, pad, stride, 1, 1);
    }
    let op = cpu_op(input, kernel, pad, stride)?;
    input.contiguous()?.apply_op2(&kernel.contiguous()?, op)
}

/// cuDNN forward, backward-data and backward-filter on candle's CUDA storage.
///
/// Per device (candle's `DeviceId`, which owns one stream) and thread: one cuDNN handle bound
/// to that stream (handles are not `Send`, hence a thread local, as in candle), one workspace
/// buffer grown to the largest need, and a plan per `Key` (direction, dtype, shapes, padding,
/// stride, math mode, determinism): descriptors, an algorithm and its workspace size. The
/// algorithm is the one that ran fastest on the first operands of that key (a one-time
/// benchmark per shape, as PyTorch's `cudnn.benchmark`; cudarc's safe API hides the raw
/// descriptors `cudnnFind*` needs) or, with `set_deterministic`, cuDNN's heuristic
/// choice among deterministic algorithms, the same every run.
/// Every call runs on candle's stream, in order with candle's own kernels, so the shared
/// workspace needs no synchronisation.
#[cfg(feature = "cudnn")]
mod cudnn {
    use std::cell::RefCell;
    use std::collections::hash_map::Entry;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use candle_core::cuda_backend::cudarc::cudnn::{
        sys, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn,
        CudnnDataType, CudnnError, FilterDescriptor, TensorDescriptor,
    };
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
    use candle_core::cuda_backend::{CudaDType, DeviceId};
    use candle_core::{
        bail, CpuStorage, CudaDevice, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor,
        WithDType,
    };
    use half::bf16;
    use sys::cudnnConvolutionBwdDataAlgo_t as DataAlgo;
    use sys::cudnnConvolutionBwdFilterAlgo_t as FilterAlgo;
    use sys::cudnnConvolutionFwdAlgo_t as FwdAlgo;
    use sys::cudnnMathType_t as Math;

    /// `input.conv2d(kernel, pad, stride, 1, 1)` for f32 or bf16 CUDA tensors, through cuDNN.
    pub(super) fn conv2d(
        input: &Tensor,
        kernel: &Tensor,
        pad: usize,
        stride: usize,
        mode: super::Mode,
    ) -> Result<Tensor> {
        let (input, kernel) = (input.contiguous()?, kernel.contiguous()?);
        let ((n, c, h, w), (o, kc, kh, kw)) = (input.dims4()?, kernel.dims4()?);
        if c != kc || input.dtype() != kernel.dtype() || stride == 0 {
            bail!(
                "conv2d: input {:?} {:?} and kernel {:?} {:?} (stride {stride}) do not fit",
                input.dims(),
                input.dtype(),
                kernel.dims(),
                kernel.dtype()
            )
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            bail!("conv2d: input {h}×{w} padded by {pad} is smaller than the kernel {kh}×{kw}")
        }
        let int = |d: usize| i32::try_from(d).map_err(candle_core::Error::wrap);
        let math = match (input.dtype(), mode.tf32) {
            // FMA_MATH forbids tensor cores, TF32 included; DEFAULT_MATH allows TF32 (cuDNN 8+,
            // unless NVIDIA_TF32_OVERRIDE=0).
            (DType::F32, false) => Math::CUDNN_FMA_MATH,
            (DType::F32, true) => Math::CUDNN_DEFAULT_MATH,
            _ => Math::CUDNN_TENSOR_OP_MATH,
        };
        let op = Conv {
            key: Key {
                direction: Direction::Forward,
                dtype: input.dtype(),
                input: [int(n)?, int(c)?, int(h)?, int(w)?],
                kernel: [int(o)?, int(c)?, int(kh)?, int(kw)?],
                pad: int(pad)?,
                stride: int(stride)?,
                math,
                deterministic: mode.deterministic,
            },
        };
        input.apply_op2(&kernel, op)
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum Direction {
        /// (input, kernel) → output.
        Forward,
        /// (output grad, kernel) → input grad.
        BackwardData,
        /// (input, output grad) → kernel grad.
        BackwardFilter,
    }

    /// What a plan depends on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    struct Key {
        direction: Direction,
        dtype: DType,
        /// N, C, H, W.
        input: [i32; 4],
        /// O, C, kh, kw.
        kernel: [i32; 4],
        pad: i32,
        stride: i32,
        math: Math,
        deterministic: bool,
    }

    impl Key {
        /// N, O, OH, OW.
        fn output(&self) -> [i32; 4] {
            let ([n, _, h, w], [o, _, kh, kw]) = (self.input, self.kernel);
            let side = |len: i32, k: i32| (len + 2 * self.pad - k) / self.stride + 1;
            [n, o, side(h, kh), side(w, kw)]
        }

        /// Shapes of the two operands and of the result, in this direction.
        fn shapes(&self) -> [[i32; 4]; 3] {
            let (x, w, y) = (self.input, self.kernel, self.output());
            match self.direction {
                Direction::Forward => [x, w, y],
                Direction::BackwardData => [y, w, x],
                Direction::BackwardFilter => [x, y, w],
            }
        }
    }

    /// One cuDNN pass as a candle op; only the forward one is differentiable (by the other two).
    #[derive(Clone, Copy)]
    struct Conv {
        key: Key,
    }

    impl Conv {
        fn toward(self, direction: Direction) -> Self {
            Self {
                key: Key {
                    direction,
                    ..self.key
                },
            }
        }

        fn launch<T: Elem>(
            &self,
            a: &CudaStorage,
            a_layout: &Layout,
            b: &CudaStorage,
            b_layout: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let [a_dims, b_dims, out_dims] = self.key.shapes();
            let (a_view, b_view) = (
                view::<T>(a, a_layout, a_dims)?,
                view::<T>(b, b_layout, b_dims)?,
            );
            let shape = Shape::from(out_dims.map(|d| d as usize).to_vec());
            let device = &a.device;
            // SAFETY: cuDNN writes every element (beta = 0: it never reads the output).
            let mut out = unsafe { device.alloc::<T>(shape.elem_count())? };
            // SAFETY: `view` checked the operands against the key's shapes, `out` has the
            // result's, all contiguous NCHW of dtype T.
            unsafe { run(device, &self.key, &a_view, &b_view, &mut out)? };
            Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), shape))
        }
    }

    /// A contiguous operand's data, checked to have the expected shape.
    fn view<'a, T: CudaDType>(
        storage: &'a CudaStorage,
        layout: &Layout,
        dims: [i32; 4],
    ) -> Result<CudaView<'a, T>> {
        let expected = dims.map(|d| d as usize);
        match layout.contiguous_offsets() {
            Some((start, end)) if layout.dims() == expected => {
                Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
            }
            _ => bail!("cudnn conv2d: expected a contiguous {expected:?} operand, got {layout:?}"),
        }
    }

    impl CustomOp2 for Conv {
        fn name(&self) -> &'static str {
            "cudnn-conv2d"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("cudnn-conv2d runs on CUDA only")
        }

        fn cuda_fwd(
            &self,
            a: &CudaStorage,
            a_layout: &Layout,
            b: &CudaStorage,
            b_layout: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            match self.key.dtype {
                DType::F32 => self.launch::<f32>(a, a_layout, b, b_layout),
                DType::BF16 => self.launch::<bf16>(a, a_layout, b, b_layout),
                dtype => bail!("cudnn-conv2d: unsupported dtype {dtype:?}"),
            }
        }

        fn bwd(
            &self,
            input: &Tensor,
            kernel: &Tensor,
            _: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            if self.key.direction != Direction::Forward {
                bail!("cudnn-conv2d: the backward passes have no gradient")
            }
            let grad = grad.contiguous()?;
            let input_grad = match input.track_op() {
                true => Some(grad.apply_op2_no_bwd(kernel, &self.toward(Direction::BackwardData))?),
                false => None,
            };
            let kernel_grad = match kernel.track_op() {
                true => {
                    Some(input.apply_op2_no_bwd(&grad, &self.toward(Direction::BackwardFilter))?)
                }
                false => None,
            };
            Ok((input_grad, kernel_grad))
        }
    }

    /// The element types cuDNN runs here, each with its own plans.
    trait Elem: CudnnDataType + CudaDType + DeviceRepr + WithDType {
        fn plans(plans: &mut Plans) -> &mut HashMap<Key, Plan<Self>>;
    }

    impl Elem for f32 {
        fn plans(plans: &mut Plans) -> &mut HashMap<Key, Plan<Self>> {
            &mut plans.f32
        }
    }

    impl Elem for bf16 {
        fn plans(plans: &mut Plans) -> &mut HashMap<Key, Plan<Self>> {
            &mut plans.bf16
        }
    }

    #[derive(Default)]
    struct Plans {
        f32: HashMap<Key, Plan<f32>>,
        bf16: HashMap<Key, Plan<bf16>>,
    }

    /// Input, kernel and output descriptors and the convolution's (computing in f32), for any
    /// direction.
    struct Descriptors<T> {
        conv: ConvDescriptor<f32>,
        x: TensorDescriptor<T>,
        w: FilterDescriptor<T>,
        y: TensorDescriptor<T>,
    }

    impl<T: CudnnDataType> Descriptors<T> {
        fn new(handle: &Arc<Cudnn>, key: &Key) -> Result<Self> {
            use sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW as NCHW;
            let mut conv = handle.create_conv2d::<f32>(
                [key.pad; 2],
                [key.stride; 2],
                [1; 2],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )?;
            conv.set_math_type(key.math)?;
            Ok(Self {
                conv,
                x: handle.create_4d_tensor::<T>(NCHW, key.input)?,
                w: handle.create_4d_filter::<T>(NCHW, key.kernel)?,
                y: handle.create_4d_tensor::<T>(NCHW, key.output())?,
            })
        }

        fn forward(&self) -> ConvForward<'_, T, f32, T> {
            ConvForward {
                conv: &self.conv,
                x: &self.x,
                w: &self.w,
                y: &self.y,
            }
        }

        fn backward_data(&self) -> ConvBackwardData<'_, T, f32, T> {
            ConvBackwardData {
                conv: &self.conv,
                dx: &self.x,
                w: &self.w,
                dy: &self.y,
            }
        }

        fn backward_filter(&self) -> ConvBackwardFilter<'_, T, f32, T> {
            ConvBackwardFilter {
                conv: &self.conv,
                x: &self.x,
                dw: &self.w,
                dy: &self.y,
            }
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Algo {
        Forward(FwdAlgo),
        BackwardData(DataAlgo),
        BackwardFilter(FilterAlgo),
    }

    impl Algo {
        /// Every algorithm cuDNN has for this direction.
        fn candidates(direction: Direction) -> Vec<Algo> {
            match direction {
                Direction::Forward => [
                    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
                    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
                    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
                    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
                    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
                    FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
                ]
                .map(Algo::Forward)
                .to_vec(),
                Direction::BackwardData => [
                    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
                    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
                    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
                    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
                    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
                ]
                .map(Algo::BackwardData)
                .to_vec(),
                Direction::BackwardFilter => [
                    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
                    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
                    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
                    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
                ]
                .map(Algo::BackwardFilter)
                .to_vec(),
            }
        }
    }

    impl<T: Elem> Descriptors<T> {
        fn workspace_size(&self, algo: Algo) -> std::result::Result<usize, CudnnError> {
            match algo {
                Algo::Forward(algo) => self.forward().get_workspace_size(algo),
                Algo::BackwardData(algo) => self.backward_data().get_workspace_size(algo),
                Algo::BackwardFilter(algo) => self.backward_filter().get_workspace_size(algo),
            }
        }

        /// Runs the direction `algo` is for: `out` = result of operands `a` and `b` (see
        /// `Direction`), overwritten (beta = 0).
        ///
        /// # Safety
        /// The operands and `out` must have the descriptors' shapes and dtype, contiguous, and
        /// `workspace` at least `self.workspace_size(algo)` bytes.
        unsafe fn launch(
            &self,
            algo: Algo,
            workspace: Option<&mut CudaSlice<u8>>,
            a: &CudaView<T>,
            b: &CudaView<T>,
            out: &mut CudaSlice<T>,
        ) -> std::result::Result<(), CudnnError> {
            // alpha and beta go to cuDNN as f32 for bf16 (`CudnnDataType::Scalar`).
            let scale = (T::from_f64(1.0), T::from_f64(0.0));
            match algo {
                Algo::Forward(algo) => self.forward().launch(algo, workspace, scale, a, b, out),
                Algo::BackwardData(algo) => self
                    .backward_data()
                    .launch(algo, workspace, scale, out, b, a),
                Algo::BackwardFilter(algo) => self
                    .backward_filter()
                    .launch(algo, workspace, scale, a, out, b),
            }
        }

        /// cuDNN's first choice by its heuristics (the same every run, unlike a benchmark's),
        /// with the algorithms that sum with atomics, so whose results vary run to run
        /// (backward-data ALGO_0, backward-filter ALGO_0 and ALGO_3), swapped for ALGO_1; every
        /// forward algorithm is deterministic.
        fn deterministic(&self, direction: Direction) -> Result<(Algo, usize)> {
            let algo = match direction {
                Direction::Forward => Algo::Forward(self.forward().pick_algorithm()?),
                Direction::BackwardData => match self.backward_data().pick_algorithm()? {
                    DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 => {
                        Algo::BackwardData(DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1)
                    }
                    algo => Algo::BackwardData(algo),
                },
                Direction::BackwardFilter => match self.backward_filter().pick_algorithm()? {
                    FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0
                    | FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 => {
                        Algo::BackwardFilter(FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1)
                    }
                    algo => Algo::BackwardFilter(algo),
                },
            };
            Ok((algo, self.workspace_size(algo)?))
        }

        /// The fastest candidate on these operands and its workspace size, each timed on its
        /// second run (the first loads its kernels), like PyTorch's `cudnn.benchmark`; those
        /// cuDNN refuses, or that would need over `MAX_WORKSPACE`, are skipped. Leaves some
        /// candidate's result in `out`.
        ///
        /// # Safety
        /// As for `launch`.
        unsafe fn fastest(
            &self,
            key: &Key,
            device: &CudaDevice,
            a: &CudaView<T>,
            b: &CudaView<T>,
            out: &mut CudaSlice<T>,
        ) -> Result<(Algo, usize)> {
            const MAX_WORKSPACE: usize = 1 << 30;
            let stream = device.cuda_stream();
            let mut best: Option<(Duration, Algo, usize)> = None;
            for algo in Algo::candidates(key.direction) {
                let Ok(bytes) = self.workspace_size(algo) else {
                    continue;
                };
                if bytes > MAX_WORKSPACE {
                    continue;
                }
                // SAFETY: scratch memory, which cuDNN never reads before writing.
                let mut workspace = match bytes {
                    0 => None,
                    _ => match device.alloc::<u8>(bytes) {
                        Ok(workspace) => Some(workspace),
                        Err(_) => continue, // out of memory
                    },
                };
                let mut time = || -> Result<Duration> {
                    let start = Instant::now();
                    self.launch(algo, workspace.as_mut(), a, b, out)?;
                    stream.synchronize().map_err(candle_core::Error::wrap)?;
                    Ok(start.elapsed())
                };
                let Ok(elapsed) = time().and_then(|_| time()) else {
                    continue;
                };
                if best.is_none_or(|(fastest, ..)| elapsed < fastest) {
                    best = Some((elapsed, algo, bytes));
                }
            }
            match best {
                Some((_, algo, bytes)) => Ok((algo, bytes)),
                None => bail!("cudnn-conv2d: no cuDNN algorithm runs {key:?}"),
            }
        }
    }

    /// Everything one direction of one shape needs but the data.
    struct Plan<T> {
        descriptors: Descriptors<T>,
        algo: Algo,
        /// Bytes.
        workspace: usize,
    }

    /// One device's cuDNN state on this thread.
    struct State {
        handle: Arc<Cudnn>,
        plans: Plans,
        workspace: Option<CudaSlice<u8>>,
    }

    thread_local! {
        static STATES: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
    }

    /// `out` = the key's direction on operands `a` and `b`, through the key's plan, built (and
    /// its algorithm chosen on these operands) on first use, and the shared workspace, grown as
    /// needed.
    ///
    /// # Safety
    /// The operands and `out` must have the key's shapes and dtype, contiguous.
    unsafe fn run<T: Elem>(
        device: &CudaDevice,
        key: &Key,
        a: &CudaView<T>,
        b: &CudaView<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        STATES.with(|states| {
            let mut states = states.borrow_mut();
            let state = match states.entry(device.id()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => entry.insert(State {
                    handle: Cudnn::new(device.cuda_stream())?,
                    plans: Plans::default(),
                    workspace: None,
                }),
            };
            let plan = match T::plans(&mut state.plans).entry(*key) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let descriptors = Descriptors::new(&state.handle, key)?;
                    let (algo, workspace) = match key.deterministic {
                        true => descriptors.deterministic(key.direction)?,
                        false => descriptors.fastest(key, device, a, b, out)?,
                    };
                    entry.insert(Plan {
                        descriptors,
                        algo,
                        workspace,
                    })
                }
            };
            let workspace = match plan.workspace {
                0 => None,
                bytes => {
                    if state.workspace.as_ref().is_none_or(|w| w.len() < bytes) {
                        // Free the old one (in stream order) before taking the larger one.
                        // SAFETY: scratch memory, which cuDNN never reads before writing.
                        state.workspace = None;
                        state.workspace = Some(device.alloc::<u8>(bytes)?);
                    }
                    state.workspace.as_mut()
                }
            };
            plan.descriptors.launch(plan.algo, workspace, a, b, out)?;
            Ok(())
        })
    }

    /// This thread's plans, one line each, for test failure messages.
    #[cfg(test)]
    pub(super) fn describe_plans() -> String {
        STATES.with(|states| {
            let states = states.borrow();
            let keys = states.values().flat_map(|s| {
                let f32 = s.plans.f32.iter().map(|(k, p)| (*k, p.algo, p.workspace));
                f32.chain(s.plans.bf16.iter().map(|(k, p)| (*k, p.algo, p.workspace)))
            });
            keys.map(|(key, algo, bytes)| format!("{key:?}: {algo:?}, {bytes} B\n"))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    #[cfg(feature = "cudnn")]
    use super::cudnn::describe_plans;
    use super::*;
    use crate::model::ops::gradcheck::{cuda_device, relative_error};

    /// The largest absolute difference between `a` and `b`, against the largest |a| (at least 1).
    fn worst_relative(a: &Tensor, b: &Tensor) -> (f32, f32) {
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a, b) = (values(a), values(b));
        assert_eq!(a.len(), b.len());
        let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        (worst, scale)
    }

    /// An empty batch convolves to an empty output, and its gradients are empty or zero
    /// (`runner bench train --full-batch 0` used to panic in im2col).
    #[test]
    fn an_empty_batch_has_an_empty_output_and_zero_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::zeros((0, 3, 8, 8), DType::F32, &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::ones((4, 3, 3, 3), DType::F32, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::ones(4, DType::F32, &dev).unwrap()).unwrap();
        let y = conv2d_bias_relu(&x, &w, &b, 1, 1).unwrap();
        assert_eq!(y.dims(), [0, 4, 8, 8]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(&x).unwrap().dims(), [0, 3, 8, 8]);
        let dw = grads.get(&w).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(dw.to_scalar::<f32>().unwrap(), 0.0);
    }

    /// Value and gradients of a weighted sum of the output, ours against candle's own conv
    /// (and its `broadcast_add` + `relu` for the fused op), within 1e-5 of the largest value:
    /// the plain convolution and the fused one, with a bias of both signs so that the ReLU
    /// cuts.
    fn compare(c: usize, o: usize, k: usize, pad: usize, stride: usize, side: usize) {
        let dev = Device::Cpu;
        let x =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c, side, side), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (o, c, k, k), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, o, &dev).unwrap()).unwrap();
        let plain = x.conv2d(&w, pad, stride, 1, 1).unwrap();
        let fused = plain
            .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        let cases = [
            ("conv2d", plain, conv2d(&x, &w, pad, stride).unwrap()),
            (
                "conv2d_bias_relu",
                fused,
                conv2d_bias_relu(&x, &w, &b, pad, stride).unwrap(),
            ),
        ];
        for (name, reference, ours) in cases {
            let at = format!("{name} c{c} o{o} k{k} p{pad} s{stride} side{side}");
            let (worst, scale) = worst_relative(&reference, &ours);
            assert!(worst <= 1e-5 * scale, "value of {at}: {worst} vs {scale}");
            let probe = Tensor::randn(0f32, 1.0, reference.shape(), &dev).unwrap();
            let grads = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let (g_ref, g_ours) = (grads(reference), grads(ours));
            for (var, operand) in [(&x, "input"), (&w, "kernel"), (&b, "bias")] {
                match (g_ref.get(var), g_ours.get(var)) {
                    (Some(expected), Some(got)) => {
                        let (worst, scale) = worst_relative(expected, got);
                        assert!(
                            worst <= 1e-5 * scale,
                            "{operand} grad of {at}: {worst} vs {scale}"
                        );
                    }
                    (None, None) => {}
                    (expected, got) => panic!("{operand} grad of {at}: {expected:?} vs {got:?}"),
                }
            }
        }
    }

    #[test]
    fn gradients_match_candles_conv_backward() {
        compare(3, 4, 3, 1, 1, 9);
        compare(5, 2, 5, 2, 1, 7);
        compare(4, 6, 1, 0, 1, 5);
        compare(3, 4, 7, 3, 2, 16);
        compare(3, 4, 7, 3, 2, 15);
        // 1×1 with a stride and with padding, 3×3 with stride 2 and 3, a kernel as large as
        // the padded input.
        compare(4, 3, 1, 0, 2, 7);
        compare(2, 3, 1, 1, 1, 4);
        compare(3, 5, 3, 1, 2, 8);
        compare(3, 2, 3, 0, 3, 10);
        compare(2, 3, 5, 1, 1, 3);
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((2, 4, 3, 3), DType::F32, &dev).unwrap();
        let err = conv2d(&x, &w, 1, 1).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        let w = Tensor::zeros((2, 3, 7, 7), DType::F32, &dev).unwrap();
        assert!(conv2d(&x, &w, 1, 1).is_err());
        let w = Tensor::zeros((2, 3, 3, 3), DType::F32, &dev).unwrap();
        let bias = Tensor::zeros(3, DType::F32, &dev).unwrap();
        let err = conv2d_bias_relu(&x, &w, &bias, 1, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bias"), "{err}");
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

    /// (C, side, O, k, pad, stride) on batch 2: GoogLeNet's convolution geometries, conv1 also
    /// on an odd side (where (side + 2·pad − k) is odd, so the last input row feeds no output).
    const GEOMETRIES: [(usize, usize, usize, usize, usize, usize); 5] = [
        (3, 64, 64, 7, 3, 2),
        (3, 65, 64, 7, 3, 2),
        (192, 14, 64, 1, 0, 1),
        (96, 14, 128, 3, 1, 1),
        (16, 14, 32, 5, 2, 1),
    ];

    /// Value, input grad and kernel grad of `sum(conv2d(x, w) · probe)`; the input grad is
    /// `None` when x does not track.
    fn conv_and_grads(
        x: &Tensor,
        w: &Tensor,
        probe: &Tensor,
        geometry: (usize, usize),
        track_input: bool,
        mode: Mode,
    ) -> Result<[Option<Tensor>; 3]> {
        let (x_var, w) = (Var::from_tensor(x)?, Var::from_tensor(w)?);
        let x = match track_input {
            true => x_var.as_tensor(),
            false => x,
        };
        let value = conv2d_with(x, &w, geometry, mode)?;
        let grads = (&value * probe)?.sum_all()?.backward()?;
        Ok([Some(value), grads.get(x).cloned(), grads.get(&w).cloned()])
    }

    /// CUDA (in `dtype` and `mode`) against CPU f32 on the same (dtype-rounded) operands: each
    /// of value, input grad and kernel grad within `tol` relative error; when deterministic,
    /// also the same bits twice.
    fn check_cuda_against_cpu(dtype: DType, mode: Mode, track_input: bool, tol: f64) -> Result<()> {
        let Some(cuda) = cuda_device() else {
            return Ok(());
        };
        let cpu = Device::Cpu;
        for (c, side, o, k, pad, stride) in GEOMETRIES {
            let out = (side + 2 * pad - k) / stride + 1;
            let x = Tensor::randn(0f32, 1.0, (2, c, side, side), &cpu)?.to_dtype(dtype)?;
            let w = Tensor::randn(0f32, 0.3, (o, c, k, k), &cpu)?.to_dtype(dtype)?;
            let probe = Tensor::randn(0f32, 1.0, (2, o, out, out), &cpu)?.to_dtype(dtype)?;
            let on = |device: &Device, dtype: DType| {
                let [x, w, probe] = [&x, &w, &probe].map(|t| t.to_device(device)?.to_dtype(dtype));
                conv_and_grads(&x?, &w?, &probe?, (pad, stride), track_input, mode)
            };
            let (expected, got) = (on(&cpu, DType::F32)?, on(&cuda, dtype)?);
            if mode.deterministic {
                for (g, again) in got.iter().zip(on(&cuda, dtype)?) {
                    let diff = g.as_ref().zip(again).map(|(g, h)| relative_error(g, &h));
                    assert_eq!(
                        diff.transpose()?.unwrap_or(0.0),
                        0.0,
                        "rerun differs\n{}",
                        describe_plans()
                    );
                }
            }
            assert_eq!(
                got[1].is_some(),
                track_input,
                "an input grad iff the input tracks"
            );
            for (name, (e, g)) in ["value", "input grad", "kernel grad"]
                .iter()
                .zip(expected.iter().zip(&got))
            {
                let at =
                    format!("{dtype:?} {mode:?} input tracks {track_input}, c{c} side{side} o{o} k{k} p{pad} s{stride}");
                match (e, g) {
                    (Some(e), Some(g)) => {
                        assert_eq!(e.dims(), g.dims(), "{name} shape at {at}");
                        let err = relative_error(e, g)?;
                        assert!(
                            err <= tol,
                            "{name} at {at}: {err:e} > {tol:e}\n{}",
                            describe_plans()
                        );
                    }
                    (None, None) => {}
                    _ => panic!("{name} at {at}: CPU {e:?}, CUDA {g:?}"),
                }
            }
        }
        Ok(())
    }

    /// Stands in for the cuDNN plans in failure messages.
    #[cfg(not(feature = "cudnn"))]
    fn describe_plans() -> String {
        String::from("(no cuDNN)")
    }

    /// Each mode on CUDA against the CPU: strict f32, deterministic f32 (also the same bits
    /// twice), TF32, bf16, and strict f32 on an input that does not track (no input grad).
    #[test]
    fn cuda_matches_cpu() -> Result<()> {
        let strict = Mode::default();
        let deterministic = Mode {
            deterministic: true,
            ..strict
        };
        let tf32 = Mode {
            tf32: true,
            ..strict
        };
        for (dtype, mode, track_input, tol) in [
            (DType::F32, strict, true, 1e-5),
            (DType::F32, deterministic, true, 1e-5),
            (DType::F32, tf32, true, 5e-3),
            (DType::BF16, strict, true, 2e-2),
            (DType::F32, strict, false, 1e-5),
        ] {
            check_cuda_against_cpu(dtype, mode, track_input, tol)?;
        }
        Ok(())
    }

    /// Milliseconds per training step (forward and the gradients needed) of two GoogLeNet
    /// convolutions at batch 64 on CUDA, through cuDNN in f32, TF32 and bf16 and through
    /// candle's own f32 conv; then the algorithms chosen. Run with `--ignored --nocapture`.
    #[test]
    #[ignore = "timing, needs a GPU"]
    fn cuda_step_time() -> Result<()> {
        let Some(cuda) = cuda_device() else {
            return Ok(());
        };
        // TF32 or not through cuDNN; None: candle's own conv2d.
        let modes = [
            ("f32", DType::F32, Some(false)),
            ("tf32", DType::F32, Some(true)),
            ("bf16", DType::BF16, Some(false)),
            ("candle f32", DType::F32, None),
        ];
        // conv1 on the images (no input grad), then inception 3a's 3×3.
        for (c, side, o, k, pad, stride, track_input) in
            [(3, 224, 64, 7, 3, 2, false), (96, 28, 128, 3, 1, 1, true)]
        {
            for (name, dtype, tf32) in modes {
                let x = Tensor::randn(0f32, 1.0, (64, c, side, side), &cuda)?.to_dtype(dtype)?;
                let x = match track_input {
                    true => Var::from_tensor(&x)?.as_tensor().clone(),
                    false => x,
                };
                let w = Tensor::randn(0f32, 0.1, (o, c, k, k), &cuda)?.to_dtype(dtype)?;
                let w = Var::from_tensor(&w)?;
                let conv = || match tf32 {
                    Some(tf32) => conv2d_with(
                        &x,
                        &w,
                        (pad, stride),
                        Mode {
                            tf32,
                            ..Mode::default()
                        },
                    ),
                    None => x.conv2d(&w, pad, stride, 1, 1),
                };
                let step = || conv()?.sum_all()?.backward();
                let start = std::time::Instant::now();
                step()?;
                cuda.synchronize()?;
                let first = start.elapsed().as_secs_f64() * 1e3;
                let start = std::time::Instant::now();
                for _ in 0..10 {
                    step()?;
                }
                cuda.synchronize()?;
                let ms = start.elapsed().as_secs_f64() * 100.0;
                eprintln!("c{c} side{side} o{o} k{k} s{stride} {name}: {ms:.2} ms/step ({first:.0} ms first)");
            }
        }
        eprintln!("{}", describe_plans());
        Ok(())
    }
}

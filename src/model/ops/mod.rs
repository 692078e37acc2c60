//! Custom ops candle lacks, with forward and backward: max and average pooling with padding,
//! ceil mode and any kernel/stride (Caffe's semantics), Caffe's cross-channel LRN, and a
//! convolution's bias and ReLU fused.
//!
//! In: NCHW tensors (f32, f64, bf16 or f16 on the CPU; f32 or bf16 on CUDA). Out: NCHW tensors
//! whose gradient flows through candle's autograd. Each op is a candle `CustomOp` whose
//! backward is itself a custom op, with a CPU kernel and, with the `cuda` feature, a CUDA
//! kernel (`kernels.cu`, launched by `cuda.rs`) that gives the CPU's results, ties included.
//! CPU kernels run in parallel (rayon) over the N·C planes and never materialise shifted
//! copies of an activation; CUDA kernels gather each output from its inputs, so they need no
//! atomics and are deterministic.

mod bias_relu;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(test)]
pub(crate) mod gradcheck;
mod lrn;
mod pool;

pub use bias_relu::bias_relu;
pub use lrn::lrn;
pub use pool::{avg_pool2d, max_pool2d, pooled_len};

/// Bad arguments to an op; wrapped into `candle_core::Error` by the op functions.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum OpError {
    #[error("{op}: expected an NCHW tensor of rank 4, got shape {shape:?}")]
    NotNchw { op: &'static str, shape: Vec<usize> },
    #[error("{op}: {field} must be {requirement}, got {value}")]
    BadArgument {
        op: &'static str,
        field: &'static str,
        requirement: &'static str,
        value: String,
    },
    #[error("{op}: input {len} padded by {pad} on each side is smaller than the kernel {kernel}")]
    InputTooSmall {
        op: &'static str,
        len: usize,
        pad: usize,
        kernel: usize,
    },
    #[error("{op}: unsupported dtype {dtype:?} (expected f32, f64, bf16 or f16)")]
    UnsupportedDType {
        op: &'static str,
        dtype: candle_core::DType,
    },
    #[error("{op}: operands have different dtypes {lhs:?} and {rhs:?}")]
    DTypeMismatch {
        op: &'static str,
        lhs: candle_core::DType,
        rhs: candle_core::DType,
    },
    #[error("{op}: the kernel needs a contiguous operand")]
    NotContiguous { op: &'static str },
}

impl From<OpError> for candle_core::Error {
    fn from(e: OpError) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// Shape of an NCHW tensor, or a typed error naming the op.
fn dims4(
    op: &'static str,
    x: &candle_core::Tensor,
) -> Result<(usize, usize, usize, usize), OpError> {
    x.dims4().map_err(|_| OpError::NotNchw {
        op,
        shape: x.dims().to_vec(),
    })
}

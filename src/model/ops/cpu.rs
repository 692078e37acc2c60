//! CPU plumbing shared by the op kernels: the element types they accept (each with the float
//! type it accumulates in) and the dispatch from candle's untyped `CpuStorage` to a typed kernel.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, WithDType};
use half::{bf16, f16};
use num_traits::Float;

use super::OpError;

/// A storage element a kernel reads and writes; sums and powers run in `Acc` so that half
/// precision inputs do not lose the small terms of a window sum.
pub(crate) trait Element: WithDType {
    type Acc: Float + std::ops::AddAssign + std::ops::SubAssign + Send + Sync;
    fn to_acc(self) -> Self::Acc;
    fn from_acc(a: Self::Acc) -> Self;
    fn acc_from_f64(v: f64) -> Self::Acc;
}

macro_rules! element {
    ($t:ty, $acc:ty, $to:expr, $from:expr) => {
        impl Element for $t {
            type Acc = $acc;
            #[inline(always)]
            fn to_acc(self) -> $acc {
                $to(self)
            }
            #[inline(always)]
            fn from_acc(a: $acc) -> Self {
                $from(a)
            }
            #[inline(always)]
            fn acc_from_f64(v: f64) -> $acc {
                v as $acc
            }
        }
    };
}
element!(f32, f32, |x| x, |a| a);
element!(f64, f64, |x| x, |a| a);
element!(bf16, f32, bf16::to_f32, bf16::from_f32);
element!(f16, f32, f16::to_f32, f16::from_f32);

/// A kernel over one operand.
pub(crate) trait Kernel1 {
    const OP: &'static str;
    fn run<T: Element>(&self, x: &[T]) -> Vec<T>;
}

/// A kernel over two operands of one dtype.
pub(crate) trait Kernel2 {
    const OP: &'static str;
    fn run<T: Element>(&self, a: &[T], b: &[T]) -> Vec<T>;
}

pub(crate) fn apply1<K: Kernel1>(k: &K, s: &CpuStorage, l: &Layout) -> Result<CpuStorage> {
    fn typed<T: Element, K: Kernel1>(k: &K, s: &CpuStorage, l: &Layout) -> Result<CpuStorage> {
        let x = contiguous(K::OP, T::cpu_storage_as_slice(s)?, l)?;
        Ok(T::to_cpu_storage_owned(k.run(x)))
    }
    match s.dtype() {
        DType::F32 => typed::<f32, K>(k, s, l),
        DType::F64 => typed::<f64, K>(k, s, l),
        DType::BF16 => typed::<bf16, K>(k, s, l),
        DType::F16 => typed::<f16, K>(k, s, l),
        dtype => Err(OpError::UnsupportedDType { op: K::OP, dtype }.into()),
    }
}

pub(crate) fn apply2<K: Kernel2>(
    k: &K,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> Result<CpuStorage> {
    fn typed<T: Element, K: Kernel2>(
        k: &K,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<CpuStorage> {
        let a = contiguous(K::OP, T::cpu_storage_as_slice(s1)?, l1)?;
        let b = contiguous(K::OP, T::cpu_storage_as_slice(s2)?, l2)?;
        Ok(T::to_cpu_storage_owned(k.run(a, b)))
    }
    let (lhs, rhs) = (s1.dtype(), s2.dtype());
    if lhs != rhs {
        return Err(OpError::DTypeMismatch {
            op: K::OP,
            lhs,
            rhs,
        }
        .into());
    }
    match lhs {
        DType::F32 => typed::<f32, K>(k, s1, l1, s2, l2),
        DType::F64 => typed::<f64, K>(k, s1, l1, s2, l2),
        DType::BF16 => typed::<bf16, K>(k, s1, l1, s2, l2),
        DType::F16 => typed::<f16, K>(k, s1, l1, s2, l2),
        dtype => Err(OpError::UnsupportedDType { op: K::OP, dtype }.into()),
    }
}

/// The elements of a contiguous layout; the op functions make every operand contiguous first.
fn contiguous<'a, T>(op: &'static str, data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(OpError::NotContiguous { op }.into()),
    }
}

//! 2-D max and average pooling over NCHW with any kernel, stride and padding, in floor or
//! ceil mode, with Caffe's output size and Caffe's average divisor (windows count the padding
//! they cover, but not the overhang past it that ceil mode adds).

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use num_traits::Zero;
use rayon::prelude::*;

use super::cpu::{self, Element, Kernel1, Kernel2};
#[cfg(feature = "cuda")]
use super::cuda::{self, CudaOut};
use super::{dims4, OpError};
#[cfg(feature = "cuda")]
use candle_core::CudaStorage;

/// Max pooling: each output is the largest input in its window (padding never wins; ties go
/// to the first in row-major order, and the gradient with them, as in Caffe).
pub fn max_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
    ceil_mode: bool,
) -> Result<Tensor> {
    let geom = PoolGeom::new("max_pool2d", x, kernel, stride, pad, ceil_mode)?;
    x.contiguous()?.apply_op1(MaxPool2d(geom))
}

/// Average pooling with Caffe's divisor: a window's size clipped to the padded input, so
/// zero padding counts and ceil mode's overhang does not (PyTorch's `count_include_pad=True`).
pub fn avg_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    pad: usize,
    ceil_mode: bool,
) -> Result<Tensor> {
    let geom = PoolGeom::new("avg_pool2d", x, kernel, stride, pad, ceil_mode)?;
    x.contiguous()?.apply_op1(AvgPool2d(geom))
}

/// Output length of pooling `len` inputs: `floor` or `ceil` of `(len + 2·pad − kernel)/stride`
/// plus one, and in ceil mode one fewer when the last window would start past the input
/// (PyTorch's rule; Caffe checks it only when padded, which differs only for stride > kernel,
/// where Caffe would pool an empty window).
pub fn pooled_len(
    len: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    ceil_mode: bool,
) -> std::result::Result<usize, OpError> {
    let span = (len + 2 * pad)
        .checked_sub(kernel)
        .ok_or(OpError::InputTooSmall {
            op: "pooled_len",
            len,
            pad,
            kernel,
        })?;
    let steps = if ceil_mode {
        span.div_ceil(stride)
    } else {
        span / stride
    };
    let last_starts_past_input = ceil_mode && steps * stride >= len + pad;
    Ok(steps + 1 - usize::from(last_starts_past_input))
}

/// Everything a pooling kernel needs to know about its input and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

/// One output position's window along one axis: inputs `start..end`, divisor `extent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: usize,
    end: usize,
    extent: usize,
}

impl PoolGeom {
    fn new(
        op: &'static str,
        x: &Tensor,
        kernel: usize,
        stride: usize,
        pad: usize,
        ceil_mode: bool,
    ) -> std::result::Result<Self, OpError> {
        let bad = |field, requirement, value: usize| OpError::BadArgument {
            op,
            field,
            requirement,
            value: value.to_string(),
        };
        if kernel == 0 {
            return Err(bad("kernel", "at least 1", kernel));
        }
        if stride == 0 {
            return Err(bad("stride", "at least 1", stride));
        }
        if pad >= kernel {
            return Err(bad("pad", "smaller than the kernel", pad));
        }
        let (n, c, h, w) = dims4(op, x)?;
        let out_len = |len| {
            pooled_len(len, kernel, stride, pad, ceil_mode).map_err(|_| OpError::InputTooSmall {
                op,
                len,
                pad,
                kernel,
            })
        };
        Ok(Self {
            n,
            c,
            h,
            w,
            kernel,
            stride,
            pad,
            oh: out_len(h)?,
            ow: out_len(w)?,
        })
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    fn in_shape(&self) -> Shape {
        Shape::from((self.n, self.c, self.h, self.w))
    }

    fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.c, self.oh, self.ow))
    }

    /// The windows of all output positions along an axis of `len` inputs and `out` outputs.
    fn windows(&self, len: usize, out: usize) -> Vec<Window> {
        (0..out)
            .map(|o| {
                let padded_start = (o * self.stride) as isize - self.pad as isize;
                let padded_end =
                    (padded_start + self.kernel as isize).min((len + self.pad) as isize);
                Window {
                    start: padded_start.max(0) as usize,
                    end: (padded_end as usize).min(len),
                    extent: (padded_end - padded_start) as usize,
                }
            })
            .collect()
    }

    fn row_col_windows(&self) -> (Vec<Window>, Vec<Window>) {
        (self.windows(self.h, self.oh), self.windows(self.w, self.ow))
    }

    /// The outputs along a row whose window `cols` lies whole inside the input at stride 1
    /// (the inception branches' 3×3/1 pools): there consecutive outputs read consecutive
    /// inputs. Empty at other strides.
    fn inner_columns(&self, cols: &[Window]) -> Range<usize> {
        let full = |cw: &Window| cw.end - cw.start == self.kernel;
        match (self.stride, cols.iter().position(full)) {
            (1, Some(first)) => first..cols.iter().rposition(full).map_or(first, |j| j + 1),
            _ => 0..0,
        }
    }

    /// Runs op's CUDA kernel over `operands` (x, or x and dL/dy, or dL/dy), into a tensor of
    /// shape `out`.
    #[cfg(feature = "cuda")]
    fn cuda(&self, op: &'static str, operands: &[(&CudaStorage, &Layout)], out: Shape) -> CudaOut {
        // The last value bounds the kernels' window arithmetic.
        let [h, w, oh, ow, kernel, stride, pad, _] = cuda::ints(
            op,
            [
                self.h,
                self.w,
                self.oh,
                self.ow,
                self.kernel,
                self.stride,
                self.pad,
                self.h.max(self.w) + 2 * self.pad + self.kernel + self.stride,
            ],
        )?;
        let params = cuda::PoolParams {
            h,
            w,
            oh,
            ow,
            kernel,
            stride,
            pad,
        };
        Ok((cuda::launch(op, operands, out.elem_count(), params)?, out))
    }
}

/// Index in `plane` (row width `w`) of the first largest input of a window (Caffe's tie rule).
#[inline]
fn argmax<T: Element>(plane: &[T], w: usize, rows: &Window, cols: &Window) -> usize {
    let mut best = rows.start * w + cols.start;
    let mut best_value = plane[best];
    for r in rows.start..rows.end {
        let row = r * w;
        for (c, &v) in plane[row + cols.start..row + cols.end].iter().enumerate() {
            if v > best_value {
                best_value = v;
                best = row + cols.start + c;
            }
        }
    }
    best
}

/// `dst[i] = src[i]` where `src[i] > dst[i]`, written as a select so that it vectorises.
#[inline]
fn keep_larger<T: Element>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = if s > *d { s } else { *d };
    }
}

/// One output row's window of rows reduced to a row of the input's width: per column, the
/// largest value. Max pooling is separable (the largest of a window is the largest of its
/// columns' largest): reducing rows first turns the k² comparisons per output into k per
/// input row, vectorised, and k per output.
struct MaxRows<T> {
    values: Vec<T>,
}

impl<T: Element> MaxRows<T> {
    fn new(w: usize) -> Self {
        Self {
            values: vec![T::zero(); w],
        }
    }

    /// The largest value of each column over `rows`.
    fn reduce(&mut self, plane: &[T], w: usize, rows: &Window) {
        self.values.copy_from_slice(&plane[rows.start * w..][..w]);
        for r in rows.start + 1..rows.end {
            keep_larger(&mut self.values, &plane[r * w..][..w]);
        }
    }

    /// The largest of the reduced row's columns `cols`.
    #[inline]
    fn window_max(&self, cols: &Window) -> T {
        let mut best = self.values[cols.start];
        for &v in &self.values[cols.start + 1..cols.end] {
            if v > best {
                best = v;
            }
        }
        best
    }

    /// One output row of max pooling from the reduced row: each output the largest of its
    /// column window. The outputs `inner` ([`PoolGeom::inner_columns`]) take the maximum of
    /// shifted slices, which vectorises.
    fn pool_row(&self, cols: &[Window], inner: &Range<usize>, kernel: usize, out: &mut [T]) {
        for (j, cw) in cols.iter().enumerate() {
            if !inner.contains(&j) {
                out[j] = self.window_max(cw);
            }
        }
        if !inner.is_empty() {
            let start = cols[inner.start].start;
            let inner = &mut out[inner.clone()];
            inner.copy_from_slice(&self.values[start..][..inner.len()]);
            for t in 1..kernel {
                let shifted = &self.values[start + t..][..inner.len()];
                keep_larger(inner, shifted);
            }
        }
    }
}

struct MaxPool2d(PoolGeom);
struct MaxPool2dGrad(PoolGeom);
struct AvgPool2d(PoolGeom);
struct AvgPool2dGrad(PoolGeom);

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::apply1(self, s, l)?, self.0.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CudaOut {
        self.0.cuda(Self::OP, &[(s, l)], self.0.out_shape())
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPool2dGrad(self.0))?;
        Ok(Some(grad))
    }
}

impl Kernel1 for MaxPool2d {
    const OP: &'static str = "max_pool2d";

    fn run<T: Element>(&self, x: &[T]) -> Vec<T> {
        let g = &self.0;
        let (rows, cols) = g.row_col_windows();
        let inner = g.inner_columns(&cols);
        let mut out = vec![T::zero(); g.n * g.c * g.out_plane()];
        out.par_chunks_mut(g.out_plane())
            .zip(x.par_chunks(g.in_plane()))
            .for_each_init(
                || MaxRows::new(g.w),
                |reduced, (out, plane)| {
                    for (rw, out) in rows.iter().zip(out.chunks_exact_mut(g.ow)) {
                        reduced.reduce(plane, g.w, rw);
                        reduced.pool_row(&cols, &inner, g.kernel, out);
                    }
                },
            );
        out
    }
}

/// Gradient of max pooling: arguments (x, dL/dy), result dL/dx. The argmax is recomputed from
/// x rather than stored, which keeps the forward a single-output op.
impl CustomOp2 for MaxPool2dGrad {
    fn name(&self) -> &'static str {
        "max_pool2d_grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::apply2(self, s1, l1, s2, l2)?, self.0.in_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> CudaOut {
        self.0
            .cuda(Self::OP, &[(s1, l1), (s2, l2)], self.0.in_shape())
    }
}

impl Kernel2 for MaxPool2dGrad {
    const OP: &'static str = "max_pool2d_grad";

    fn run<T: Element>(&self, x: &[T], dy: &[T]) -> Vec<T> {
        let g = &self.0;
        let (rows, cols) = g.row_col_windows();
        let mut dx = vec![T::zero(); g.n * g.c * g.in_plane()];
        dx.par_chunks_mut(g.in_plane())
            .zip(x.par_chunks(g.in_plane()))
            .zip(dy.par_chunks(g.out_plane()))
            .for_each_init(
                || vec![T::Acc::zero(); g.in_plane()],
                |acc, ((dx, plane), dy)| {
                    acc.fill(T::Acc::zero());
                    for (rw, dy) in rows.iter().zip(dy.chunks_exact(g.ow)) {
                        for (cw, &d) in cols.iter().zip(dy) {
                            acc[argmax(plane, g.w, rw, cw)] += d.to_acc();
                        }
                    }
                    for (d, &a) in dx.iter_mut().zip(acc.iter()) {
                        *d = T::from_acc(a);
                    }
                },
            );
        dx
    }
}

impl CustomOp1 for AvgPool2d {
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::apply1(self, s, l)?, self.0.out_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CudaOut {
        self.0.cuda(Self::OP, &[(s, l)], self.0.out_shape())
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&AvgPool2dGrad(self.0))?;
        Ok(Some(grad))
    }
}

impl Kernel1 for AvgPool2d {
    const OP: &'static str = "avg_pool2d";

    fn run<T: Element>(&self, x: &[T]) -> Vec<T> {
        let g = &self.0;
        let (rows, cols) = g.row_col_windows();
        let mut out = vec![T::zero(); g.n * g.c * g.out_plane()];
        out.par_chunks_mut(g.out_plane())
            .zip(x.par_chunks(g.in_plane()))
            .for_each(|(out, plane)| {
                for (i, rw) in rows.iter().enumerate() {
                    for (j, cw) in cols.iter().enumerate() {
                        let mut sum = T::Acc::zero();
                        for r in rw.start..rw.end {
                            for &v in &plane[r * g.w + cw.start..r * g.w + cw.end] {
                                sum += v.to_acc();
                            }
                        }
                        let area = T::acc_from_f64((rw.extent * cw.extent) as f64);
                        out[i * g.ow + j] = T::from_acc(sum / area);
                    }
                }
            });
        out
    }
}

/// Gradient of average pooling: argument dL/dy, result dL/dx (each output's gradient spread
/// evenly over its window, divided by the same divisor as the forward).
impl CustomOp1 for AvgPool2dGrad {
    fn name(&self) -> &'static str {
        "avg_pool2d_grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::apply1(self, s, l)?, self.0.in_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> CudaOut {
        self.0.cuda(Self::OP, &[(s, l)], self.0.in_shape())
    }
}

impl Kernel1 for AvgPool2dGrad {
    const OP: &'static str = "avg_pool2d_grad";

    fn run<T: Element>(&self, dy: &[T]) -> Vec<T> {
        let g = &self.0;
        let (rows, cols) = g.row_col_windows();
        let mut dx = vec![T::zero(); g.n * g.c * g.in_plane()];
        dx.par_chunks_mut(g.in_plane())
            .zip(dy.par_chunks(g.out_plane()))
            .for_each(|(dx, dy)| {
                let mut acc = vec![T::Acc::zero(); dx.len()];
                for (i, rw) in rows.iter().enumerate() {
                    for (j, cw) in cols.iter().enumerate() {
                        let area = T::acc_from_f64((rw.extent * cw.extent) as f64);
                        let share = dy[i * g.ow + j].to_acc() / area;
                        for r in rw.start..rw.end {
                            for a in &mut acc[r * g.w + cw.start..r * g.w + cw.end] {
                                *a += share;
                            }
                        }
                    }
                }
                for (d, a) in dx.iter_mut().zip(acc) {
                    *d = T::from_acc(a);
                }
            });
        dx
    }
}

#[cfg(test)]
pub(super) type Nchw = (usize, usize, usize, usize);

/// Test geometries, here and in the CUDA tests: (shape, kernel, stride, pad, ceil), with
/// kernel ≠ stride, padding, ceil mode, odd sizes.
#[cfg(test)]
pub(super) const CASES: [(Nchw, usize, usize, usize, bool); 6] = [
    ((2, 3, 7, 7), 3, 2, 0, true),
    ((1, 2, 9, 8), 3, 2, 1, true),
    ((2, 2, 6, 5), 3, 1, 1, false),
    ((1, 3, 14, 14), 5, 3, 0, true),
    ((1, 1, 5, 7), 2, 2, 1, true),
    ((1, 2, 8, 8), 2, 2, 0, false),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::gradcheck::{assert_gradient_matches, distinct_values};
    use candle_core::Device;

    #[test]
    fn pooled_len_follows_caffe() {
        // GoogLeNet's 3×3/2 ceil pools: 112 → 56, 56 → 28, 28 → 14, 14 → 7.
        for (len, out) in [(112, 56), (56, 28), (28, 14), (14, 7)] {
            assert_eq!(pooled_len(len, 3, 2, 0, true).unwrap(), out);
            assert_eq!(pooled_len(len, 3, 2, 0, false).unwrap(), out - 1);
        }
        // Aux head 5×5/3 on 14: (14 − 5)/3 + 1 = 4.
        assert_eq!(pooled_len(14, 5, 3, 0, true).unwrap(), 4);
        // Padded ceil mode drops a window that would start in the right padding:
        // len 4, k 2, s 2, p 1: ceil(4/2)+1 = 3, last start 4 ≥ 4+1? no → 3.
        assert_eq!(pooled_len(4, 2, 2, 1, true).unwrap(), 3);
        // len 5, k 3, s 3, p 2: ceil(6/3)+1 = 3, last start 6 ≥ 7? no → 3; len 4: ceil(5/3)+1 = 3,
        // last start 6 ≥ 6 → 2.
        assert_eq!(pooled_len(5, 3, 3, 2, true).unwrap(), 3);
        assert_eq!(pooled_len(4, 3, 3, 2, true).unwrap(), 2);
        // Stride beyond the kernel: len 5, k 1, s 3: ceil(4/3)+1 = 3 would start at 6 → 2.
        assert_eq!(pooled_len(5, 1, 3, 0, true).unwrap(), 2);
        assert!(matches!(
            pooled_len(2, 5, 1, 1, false),
            Err(OpError::InputTooSmall { .. })
        ));
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        let x = Tensor::zeros((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let msg = max_pool2d(&x, 2, 2, 2, false).unwrap_err().to_string();
        assert!(
            msg.contains("max_pool2d: pad must be smaller than the kernel, got 2"),
            "{msg}"
        );
        let msg = avg_pool2d(&x, 2, 0, 0, false).unwrap_err().to_string();
        assert!(
            msg.contains("avg_pool2d: stride must be at least 1, got 0"),
            "{msg}"
        );
        let flat = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let msg = max_pool2d(&flat, 2, 2, 0, false).unwrap_err().to_string();
        assert!(
            msg.contains("expected an NCHW tensor of rank 4, got shape [4, 4]"),
            "{msg}"
        );
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        for (shape, k, s, p, ceil) in CASES {
            let x = distinct_values(shape, 7).unwrap();
            assert_gradient_matches(|x| max_pool2d(x, k, s, p, ceil), &x, 1e-6).unwrap();
        }
    }

    #[test]
    fn avg_pool_gradient_matches_finite_differences() {
        for (shape, k, s, p, ceil) in CASES {
            let x = distinct_values(shape, 11).unwrap();
            assert_gradient_matches(|x| avg_pool2d(x, k, s, p, ceil), &x, 1e-6).unwrap();
        }
    }

    #[test]
    fn matches_candle_where_candle_is_right() {
        // kernel = stride, no padding: candle's own pools are correct there.
        let x = distinct_values((2, 3, 8, 6), 3)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let ours = max_pool2d(&x, 2, 2, 0, false).unwrap();
        let theirs = x.max_pool2d(2).unwrap();
        assert_eq!(
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let ours = avg_pool2d(&x, 2, 2, 0, false).unwrap();
        let theirs = x.avg_pool2d(2).unwrap();
        let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_vec0::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn half_precision_agrees_with_f32() {
        let x = distinct_values((2, 4, 9, 9), 5).unwrap();
        let x32 = x.to_dtype(candle_core::DType::F32).unwrap();
        let xb = x.to_dtype(candle_core::DType::BF16).unwrap();
        for op in [max_pool2d, avg_pool2d] {
            let a = op(&x32, 3, 2, 1, true).unwrap();
            let b = op(&xb, 3, 2, 1, true)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_vec0::<f32>().unwrap() < 2e-2);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Any geometry: each output is its window's maximum, the gradient of Σy reaches x in
        /// full through max-pooling (each output routes to one input), and without padding no
        /// average exceeds its window's max.
        #[test]
        fn max_pool_routes_all_gradient_and_bounds_the_average(
            h in 1usize..10,
            w in 1usize..10,
            kernel in 1usize..5,
            stride in 1usize..4,
            pad_seed in 0usize..4,
            ceil_mode: bool,
            seed: u64,
        ) {
            let pad = pad_seed % kernel;
            proptest::prop_assume!(h + 2 * pad >= kernel && w + 2 * pad >= kernel);
            let x = candle_core::Var::from_tensor(&distinct_values((2, 2, h, w), seed).unwrap()).unwrap();
            let y = max_pool2d(x.as_tensor(), kernel, stride, pad, ceil_mode).unwrap();
            let grads = y.sum_all().unwrap().backward().unwrap();
            let routed = grads.get(x.as_tensor()).unwrap().sum_all().unwrap().to_vec0::<f64>().unwrap();
            proptest::prop_assert_eq!(routed, y.elem_count() as f64);
            // The separable forward against each window's maximum taken directly.
            let (windows, planes) = (
                PoolGeom::new("test", x.as_tensor(), kernel, stride, pad, ceil_mode).unwrap(),
                x.as_tensor().reshape((4, h * w)).unwrap().to_vec2::<f64>().unwrap(),
            );
            let (rows, cols) = windows.row_col_windows();
            let ys = y.reshape((4, windows.oh * windows.ow)).unwrap().to_vec2::<f64>().unwrap();
            for (plane, pooled) in planes.iter().zip(&ys) {
                for (i, rw) in rows.iter().enumerate() {
                    for (j, cw) in cols.iter().enumerate() {
                        let direct = (rw.start..rw.end)
                            .flat_map(|r| (cw.start..cw.end).map(move |c| plane[r * w + c]))
                            .fold(f64::NEG_INFINITY, f64::max);
                        proptest::prop_assert_eq!(pooled[i * windows.ow + j], direct);
                    }
                }
            }
            if pad == 0 {
                let avg = avg_pool2d(x.as_tensor(), kernel, stride, 0, ceil_mode).unwrap();
                let excess = (avg - &y).unwrap().max_all().unwrap().to_vec0::<f64>().unwrap();
                proptest::prop_assert!(excess <= 1e-12);
            }
        }
    }
}

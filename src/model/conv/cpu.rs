//! The CPU f32 convolution: the whole batch as one matrix product per pass, optionally with the
//! bias and ReLU applied as the product's result is written out.
//!
//! In: contiguous NCHW f32 input, OIHW kernel, (bias), padding and stride. Out: the NCHW
//! output (`max(conv + bias, 0)` with a bias), and in the backward the gradients asked for.
//!
//! With K = C·kh·kw rows of im2col and N·P columns (P = OH·OW output pixels per image):
//! - forward: `cols = im2col(x)` (K × N·P; for a 1×1 convolution with stride 1 and no padding
//!   this is only the batch's planes regrouped by channel), `prod = W · cols` (O × N·P), then
//!   one pass writes each `(n, o)` plane of the output from row `o`, adding the bias and
//!   clamping at 0;
//! - backward: one pass turns `dy` into `dz` (O × N·P: `dy` where the output is positive, for
//!   the fused op), summing each `(n, o)` plane for the bias gradient (planes in image order,
//!   as `ops::bias_relu`); `dW = dz · colsᵀ` (the input's im2col computed again, not kept),
//!   `dcols = Wᵀ · dz` and `dx = col2im(dcols)` (each input plane gathers its own terms in
//!   a fixed order).
//!
//! One product over the whole batch keeps the small late layers' matrices wide enough for the
//! gemm to run near its peak (GoogLeNet's 5b is 7×7 at 224 px, 2×2 at 64 px). Every pass runs
//! on rayon's pool (the product through the `gemm` crate, on as many threads as the pool
//! has), and gives the same bits on every run. The matrices that live only inside one pass
//! (`cols`, `prod`, `dz`, `dcols`) are scratch buffers the calling thread keeps between calls
//! ([`Scratch`]): no fresh zeroed pages every layer.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor,
};
use gemm::Parallelism;
use rayon::prelude::*;

use super::ConvError;

/// Shapes of one convolution: input N×C×H×W, kernel O×C×kh×kw, output N×O×OH×OW.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    pad: usize,
    stride: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    pub(super) fn new(
        input: &[usize],
        kernel: &[usize],
        pad: usize,
        stride: usize,
    ) -> std::result::Result<Self, ConvError> {
        let bad = || ConvError::Shapes {
            input: input.to_vec(),
            kernel: kernel.to_vec(),
            pad,
            stride,
        };
        let (&[n, c, h, w], &[o, kc, kh, kw]) = (input, kernel) else {
            return Err(bad());
        };
        if c != kc || stride == 0 || h + 2 * pad < kh || w + 2 * pad < kw {
            return Err(bad());
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            pad,
            stride,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (w + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of im2col: one per (input channel, kernel row, kernel column).
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per image.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// Columns of im2col and of the products: one per (image, output pixel).
    fn np(&self) -> usize {
        self.n * self.p()
    }

    fn output_shape(&self) -> Shape {
        Shape::from((self.n, self.o, self.oh, self.ow))
    }

    /// A 1×1 convolution with stride 1 and no padding: im2col only regroups the planes.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.pad == 0 && self.stride == 1
    }

    /// The output columns `ox` whose input column `ox·stride + j − pad` lies inside the image,
    /// for kernel column `j`: `lo..hi`, and that first input column; `None` if there are none.
    fn columns_inside(&self, j: usize) -> Option<(usize, usize, usize)> {
        let (s, pad) = (self.stride, self.pad);
        let lo = pad.saturating_sub(j).div_ceil(s);
        let hi = (self.w + pad).saturating_sub(j).div_ceil(s).min(self.ow);
        (lo < hi).then(|| (lo, hi, lo * s + j - pad))
    }

    /// The input row of output row `oy` for kernel row `i`, if inside the image.
    fn input_row(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.stride + i)
            .checked_sub(self.pad)
            .filter(|&y| y < self.h)
    }
}

thread_local! {
    /// This thread's scratch buffers not in use, each as long as the longest use it has had.
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` elements of one of this thread's scratch buffers, back in the pool when dropped. Its
/// elements hold whatever an earlier pass left: every user writes each element before
/// reading it.
struct Scratch {
    buffer: Vec<f32>,
    len: usize,
}

impl Scratch {
    fn new(len: usize) -> Self {
        let mut buffer = SCRATCH
            .with(|pool| pool.borrow_mut().pop())
            .unwrap_or_default();
        if buffer.len() < len {
            buffer.resize(len, 0.0);
        }
        Self { buffer, len }
    }
}

impl Deref for Scratch {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.buffer[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buffer[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        // A thread being torn down has no pool left; the buffer is then simply freed.
        let _ = SCRATCH.try_with(|pool| pool.borrow_mut().push(buffer));
    }
}

/// `cols[(c, i, j), (n, oy, ox)] = x[n, c, oy·s + i − pad, ox·s + j − pad]`, 0 in the padding.
/// Each element is written once: the padding's zeros only where the window leaves the image.
fn im2col(g: &Geometry, x: &[f32]) -> Scratch {
    let (p, plane) = (g.p(), g.h * g.w);
    let mut cols = Scratch::new(g.k() * g.np());
    cols.par_chunks_mut(g.np().max(1))
        .enumerate()
        .for_each(|(row, out)| {
            let (c, i, j) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
            let Some((lo, hi, first)) = g.columns_inside(j) else {
                out.fill(0.0);
                return;
            };
            for (n, out) in out.chunks_exact_mut(p).enumerate() {
                let x = &x[(n * g.c + c) * plane..][..plane];
                if g.is_pointwise() {
                    out.copy_from_slice(x);
                    continue;
                }
                for (oy, out) in out.chunks_exact_mut(g.ow).enumerate() {
                    let Some(y) = g.input_row(oy, i) else {
                        out.fill(0.0);
                        continue;
                    };
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let x = &x[y * g.w..][..g.w];
                    match g.stride {
                        1 => out[lo..hi].copy_from_slice(&x[first..first + hi - lo]),
                        s => {
                            for (o, v) in out[lo..hi].iter_mut().zip(x[first..].iter().step_by(s)) {
                                *o = *v;
                            }
                        }
                    }
                }
            }
        });
    cols
}

/// The adjoint of [`im2col`]: each input element sums the columns that read it, kernel
/// position by kernel position.
fn col2im(g: &Geometry, cols: &[f32]) -> Vec<f32> {
    let (p, np, plane) = (g.p(), g.np(), g.h * g.w);
    let mut dx = vec![0f32; g.n * g.c * plane];
    dx.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(index, dx)| {
            let (n, c) = (index / g.c, index % g.c);
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = ((c * g.kh + i) * g.kw + j) * np + n * p;
                    let cols = &cols[row..][..p];
                    if g.is_pointwise() {
                        dx.copy_from_slice(cols);
                        continue;
                    }
                    let Some((lo, hi, first)) = g.columns_inside(j) else {
                        continue;
                    };
                    for (oy, cols) in cols.chunks_exact(g.ow).enumerate() {
                        let Some(y) = g.input_row(oy, i) else {
                            continue;
                        };
                        let targets = dx[y * g.w + first..].iter_mut().step_by(g.stride);
                        for (d, v) in targets.zip(&cols[lo..hi]) {
                            *d += v;
                        }
                    }
                }
            }
        });
    dx
}

/// A matrix operand: its elements and the distance between rows and between columns.
struct Matrix<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl Matrix<'_> {
    /// Whether a `rows × cols` matrix with these strides lies inside `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// Row-major `dst` (m × n, overwritten) = `lhs` (m × k) · `rhs` (k × n), on rayon's pool.
fn matmul(dst: &mut [f32], (m, n, k): (usize, usize, usize), lhs: Matrix, rhs: Matrix) {
    assert!(dst.len() == m * n && lhs.holds(m, k) && rhs.holds(k, n));
    let parallelism = match rayon::current_num_threads() {
        1 => Parallelism::None,
        threads => Parallelism::Rayon(threads),
    };
    // SAFETY: the assertion above keeps every element the strides reach inside its slice;
    // `dst` is exclusively borrowed, the operands only read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The output of `x` convolved with `w`: `max(· + bias[o], 0)` with a bias, as is without.
fn forward(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (k, p, np) = (g.k(), g.p(), g.np());
    let cols = im2col(g, x);
    let mut prod = Scratch::new(g.o * np);
    let kernel = Matrix {
        data: w,
        row_stride: k,
        col_stride: 1,
    };
    let cols = Matrix {
        data: &cols,
        row_stride: np,
        col_stride: 1,
    };
    matmul(&mut prod, (g.o, np, k), kernel, cols);
    let mut y = vec![0f32; g.n * g.o * p];
    y.par_chunks_mut(p.max(1))
        .enumerate()
        .for_each(|(index, y)| {
            let (n, o) = (index / g.o, index % g.o);
            let prod = &prod[o * np + n * p..][..p];
            match bias {
                // The same `+` then `f32::max(·, 0)` as `ops::bias_relu`.
                Some(bias) => {
                    for (y, v) in y.iter_mut().zip(prod) {
                        *y = (v + bias[o]).max(0.0);
                    }
                }
                None => y.copy_from_slice(prod),
            }
        });
    y
}

/// What the backward computes: the input gradient only when the input tracks (not for the
/// images), the kernel's when it tracks, the bias's for the fused op.
struct Wanted {
    input: bool,
    kernel: bool,
}

/// `dz` (O × N·P) from `dy` (NCHW): `dy` where `y` > 0 with `y` given (the fused op's ReLU),
/// all of it without; and each channel's sum (planes summed first, then in image order).
fn output_grad(g: &Geometry, dy: &[f32], y: Option<&[f32]>) -> (Scratch, Vec<f32>) {
    let (p, np) = (g.p(), g.np());
    let mut dz = Scratch::new(g.o * np);
    if np == 0 {
        // An empty batch: no rows to split by channel, and every channel sums to 0.
        return (dz, vec![0.0; g.o]);
    }
    let sums = dz
        .par_chunks_mut(np)
        .enumerate()
        .map(|(o, dz)| {
            let mut sum = 0f32;
            for (n, dz) in dz.chunks_exact_mut(p.max(1)).enumerate() {
                let at = (n * g.o + o) * p;
                let dy = &dy[at..][..p];
                match y {
                    Some(y) => {
                        for ((d, &v), &grad) in dz.iter_mut().zip(&y[at..at + p]).zip(dy) {
                            *d = if v > 0.0 { grad } else { 0.0 };
                        }
                    }
                    None => dz.copy_from_slice(dy),
                }
                sum += dz.iter().fold(0f32, |s, &v| s + v);
            }
            sum
        })
        .collect();
    (dz, sums)
}

/// (input grad, kernel grad, bias grad) of the convolution, from its output gradient `dy`
/// (and its output `y` for the fused op).
fn backward(
    g: &Geometry,
    (x, w): (&[f32], &[f32]),
    y: Option<&[f32]>,
    dy: &[f32],
    wanted: Wanted,
) -> (Option<Vec<f32>>, Option<Vec<f32>>, Vec<f32>) {
    let (k, np) = (g.k(), g.np());
    let (dz, bias_grad) = output_grad(g, dy, y);
    let dz_rows = || Matrix {
        data: &dz,
        row_stride: np,
        col_stride: 1,
    };
    let kernel_grad = wanted.kernel.then(|| {
        let cols = im2col(g, x);
        let mut dw = vec![0f32; g.o * k];
        let cols_t = Matrix {
            data: &cols,
            row_stride: 1,
            col_stride: np,
        };
        matmul(&mut dw, (g.o, k, np), dz_rows(), cols_t);
        dw
    });
    let input_grad = wanted.input.then(|| {
        let mut dcols = Scratch::new(k * np);
        let kernel_t = Matrix {
            data: w,
            row_stride: 1,
            col_stride: k,
        };
        matmul(&mut dcols, (k, np, g.o), kernel_t, dz_rows());
        col2im(g, &dcols)
    });
    (input_grad, kernel_grad, bias_grad)
}

/// A contiguous f32 CPU operand's elements.
fn elements<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => Err(ConvError::NotCpuF32.into()),
    }
}

/// [`elements`] of a tensor, read inside `f`.
fn with_elements<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(storage) => f(elements(storage, layout)?),
        _ => Err(ConvError::NotCpuF32.into()),
    }
}

fn cpu_tensor(values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// The convolution as a candle op: (input, kernel) → output, differentiable in both; as a
/// three-operand op, (input, kernel, bias) → `max(output + bias, 0)`, differentiable in all.
pub(super) struct Conv(pub(super) Geometry);

impl Conv {
    /// The gradients the backward passes up, as tensors of their operands' shapes.
    fn gradients(
        &self,
        (input, kernel): (&Tensor, &Tensor),
        y: Option<&Tensor>,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Tensor)> {
        let wanted = Wanted {
            input: input.track_op(),
            kernel: kernel.track_op(),
        };
        let dy = dy.contiguous()?;
        let (dx, dw, db) = with_elements(input, |x| {
            with_elements(kernel, |w| {
                with_elements(&dy, |dy| match y {
                    Some(y) => {
                        with_elements(y, |y| Ok(backward(&self.0, (x, w), Some(y), dy, wanted)))
                    }
                    None => Ok(backward(&self.0, (x, w), None, dy, wanted)),
                })
            })
        })?;
        Ok((
            dx.map(|dx| cpu_tensor(dx, input.dims())).transpose()?,
            dw.map(|dw| cpu_tensor(dw, kernel.dims())).transpose()?,
            cpu_tensor(db, &[self.0.o])?,
        ))
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-cpu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (elements(x, x_layout)?, elements(w, w_layout)?);
        let y = forward(&self.0, x, w, None);
        Ok((CpuStorage::F32(y), self.0.output_shape()))
    }

    fn bwd(
        &self,
        input: &Tensor,
        kernel: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.gradients((input, kernel), None, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-bias-relu-cpu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (elements(x, x_layout)?, elements(w, w_layout)?);
        let y = forward(&self.0, x, w, Some(elements(b, b_layout)?));
        Ok((CpuStorage::F32(y), self.0.output_shape()))
    }

    fn bwd(
        &self,
        input: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.gradients((input, kernel), Some(output), grad)?;
        Ok((dx, dw, bias.track_op().then_some(db)))
    }
}

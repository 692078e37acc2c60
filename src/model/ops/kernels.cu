// CUDA kernels for the custom ops in this folder (pool.rs, lrn.rs, bias_relu.rs), built to
// PTX by build.rs and launched from cuda.rs. Each kernel mirrors its CPU kernel operation for
// operation, so that f32 results agree to rounding (max and average pooling to the bit).
//
// One thread per output element, and every output is gathered from its inputs: no atomics,
// so results are deterministic. bf16 values are widened to f32 for all arithmetic and rounded
// back (to nearest even) once, as the CPU kernels do.
//
// The exception is the bias gradient, a per-channel sum: one block per output element, each
// thread summing a fixed share in a fixed order, then a fixed-order tree in shared memory;
// still no atomics, so the same bits on every run.
//
// Every kernel takes (int total, inputs..., output, params): `total` output elements, inputs
// and output contiguous NCHW. Indices are int: cuda.rs refuses sizes of 2^31 and beyond.

#include <cuda_bf16.h>

// Pooling geometry, as cuda.rs's PoolParams (same field order, all int); the N·C planes
// follow from each thread's index.
struct PoolParams {
    int h, w;    // input plane
    int oh, ow;  // output plane
    int kernel, stride, pad;
};

// LRN constants, as cuda.rs's LrnParams. The float constants are rounded from f64 exactly
// as the CPU kernel rounds them.
struct LrnParams {
    int c;       // channels
    int plane;   // H·W
    int size;    // odd window of channels
    int fast_beta;  // beta == 0.75: use square roots instead of powf
    float coeff;       // alpha / size
    float beta;
    float k;
    float grad_coeff;  // 2·alpha·beta / size
};

// Bias + ReLU geometry, as cuda.rs's BiasParams: x is n×c planes of `plane` elements.
struct BiasParams {
    int c;      // channels
    int plane;  // H·W
    int n;      // images
};

// Threads per block of the REDUCE kernels (a power of two); cuda.rs launches them with as
// many (REDUCE_THREADS there).
#define REDUCE_THREADS 1024

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16(v);  // round to nearest even, like half::bf16::from_f32
}

// This thread's output element, or -1 past the end. Unsigned arithmetic: blockIdx·blockDim
// stays below 2^32 for any total below 2^31.
__device__ __forceinline__ int element_index(int total) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    return i < (unsigned int)total ? (int)i : -1;
}

// Element idx of planes of rows×cols: its plane and its place in the plane. For LRN, the
// image, channel and pixel of an element of images of channels×pixels.
struct Position {
    int plane, row, col;
};

__device__ __forceinline__ Position position(int idx, int rows, int cols) {
    Position at;
    at.col = idx % cols;
    at.row = (idx / cols) % rows;
    at.plane = idx / (cols * rows);
    return at;
}

// One output position's window along one axis, as PoolGeom::windows: inputs start..end,
// divisor extent (the window clipped to the padded input).
struct Window {
    int start, end, extent;
};

__device__ __forceinline__ Window pool_window(int o, int len, const PoolParams& p) {
    int padded_start = o * p.stride - p.pad;
    int padded_end = min(padded_start + p.kernel, len + p.pad);
    Window win;
    win.start = max(padded_start, 0);
    win.end = min(padded_end, len);
    win.extent = padded_end - padded_start;
    return win;
}

// Calls f(index in the plane) for each input of the window at output (i, j), in row-major
// order; padding is never visited.
template <typename F>
__device__ __forceinline__ void for_each_input(int i, int j, const PoolParams& p, F f) {
    Window rows = pool_window(i, p.h, p);
    Window cols = pool_window(j, p.w, p);
    for (int r = rows.start; r < rows.end; ++r) {
        for (int c = cols.start; c < cols.end; ++c) f(r * p.w + c);
    }
}

// The output positions along one axis whose windows contain input i: the inverse of
// pool_window, first..last exclusive (Caffe's phstart/phend).
__device__ __forceinline__ void windows_containing(int i, int out, const PoolParams& p,
                                                   int* first, int* last) {
    *first = i + p.pad < p.kernel ? 0 : (i + p.pad - p.kernel) / p.stride + 1;
    *last = min((i + p.pad) / p.stride + 1, out);
}

// dx of input (row, col): the sum of term(i, j) over the output windows containing it, in
// the order the CPU kernel accumulates them (row-major over outputs).
template <typename F>
__device__ __forceinline__ float gather_windows(int row, int col, const PoolParams& p, F term) {
    int i0, i1, j0, j1;
    windows_containing(row, p.oh, p, &i0, &i1);
    windows_containing(col, p.ow, p, &j0, &j1);
    float acc = 0.0f;
    for (int i = i0; i < i1; ++i) {
        for (int j = j0; j < j1; ++j) acc += term(i, j);
    }
    return acc;
}

// Index in `plane` of the first largest input of output (i, j)'s window, in row-major order
// (the CPU's argmax: padding never wins, a later equal value never displaces).
template <typename T>
__device__ __forceinline__ int window_argmax(const T* plane, int i, int j, const PoolParams& p) {
    int best = -1;
    float best_value = 0.0f;
    for_each_input(i, j, p, [&](int at) {
        float v = to_float(plane[at]);
        if (best < 0 || v > best_value) {
            best_value = v;
            best = at;
        }
    });
    return best;
}

template <typename T>
__device__ void max_pool2d(int idx, const T* x, T* y, PoolParams p) {
    Position at = position(idx, p.oh, p.ow);
    const T* in = x + at.plane * (p.h * p.w);
    y[idx] = in[window_argmax(in, at.row, at.col, p)];
}

// dx of one input: the dy of every window whose argmax it is.
template <typename T>
__device__ void max_pool2d_grad(int idx, const T* x, const T* dy, T* dx, PoolParams p) {
    Position at = position(idx, p.h, p.w);
    const T* in = x + at.plane * (p.h * p.w);
    const T* grad = dy + at.plane * (p.oh * p.ow);
    int own = at.row * p.w + at.col;
    dx[idx] = from_float<T>(gather_windows(at.row, at.col, p, [&](int i, int j) {
        return window_argmax(in, i, j, p) == own ? to_float(grad[i * p.ow + j]) : 0.0f;
    }));
}

__device__ __forceinline__ float window_area(int i, int j, const PoolParams& p) {
    return (float)(pool_window(i, p.h, p).extent * pool_window(j, p.w, p).extent);
}

template <typename T>
__device__ void avg_pool2d(int idx, const T* x, T* y, PoolParams p) {
    Position at = position(idx, p.oh, p.ow);
    const T* in = x + at.plane * (p.h * p.w);
    float sum = 0.0f;
    for_each_input(at.row, at.col, p, [&](int i) { sum += to_float(in[i]); });
    y[idx] = from_float<T>(sum / window_area(at.row, at.col, p));
}

// dx of one input: each containing window's dy divided by that window's divisor.
template <typename T>
__device__ void avg_pool2d_grad(int idx, const T* dy, T* dx, PoolParams p) {
    Position at = position(idx, p.h, p.w);
    const T* grad = dy + at.plane * (p.oh * p.ow);
    dx[idx] = from_float<T>(gather_windows(at.row, at.col, p, [&](int i, int j) {
        return to_float(grad[i * p.ow + j]) / window_area(i, j, p);
    }));
}

// s^-beta, as cpu.rs's pow_neg.
__device__ __forceinline__ float pow_neg(float s, const LrnParams& p) {
    if (p.fast_beta) {
        float r = sqrtf(s);
        return 1.0f / (r * sqrtf(r));
    }
    return powf(s, -p.beta);
}

// The channels whose squares enter channel c's sum, first..last exclusive (LrnGeom::window).
__device__ __forceinline__ void lrn_window(int c, const LrnParams& p, int* first, int* last) {
    int half = p.size / 2;
    *first = max(c - half, 0);
    *last = min(c + half + 1, p.c);
}

// k + alpha/size · Σ x² over channel c's window, at one pixel; `column` points at channel 0
// of that pixel (channels p.plane apart).
template <typename T>
__device__ __forceinline__ float lrn_scale(const T* column, int c, const LrnParams& p) {
    int first, last;
    lrn_window(c, p, &first, &last);
    float scale = p.k;
    for (int n = first; n < last; ++n) {
        float v = to_float(column[n * p.plane]);
        scale += p.coeff * v * v;
    }
    return scale;
}

// One thread per element, its scale summed directly over the window (size reads, mostly
// cache hits): more parallel than Caffe's per-pixel channel loop and free of the sliding
// sum's cancellation.
template <typename T>
__device__ void lrn(int idx, const T* x, T* y, LrnParams p) {
    Position at = position(idx, p.c, p.plane);  // image, channel, pixel
    const T* column = x + at.plane * (p.c * p.plane) + at.col;
    y[idx] = from_float<T>(to_float(x[idx]) * pow_neg(lrn_scale(column, at.row, p), p));
}

// dx_c = dy_c·s_c^-β − 2αβ/size · x_c · Σ_{c' in window(c)} dy_c'·x_c'·s_c'^-β / s_c',
// every scale recomputed from x (size² reads per element).
template <typename T>
__device__ void lrn_grad(int idx, const T* x, const T* dy, T* dx, LrnParams p) {
    Position at = position(idx, p.c, p.plane);  // image, channel, pixel
    int c = at.row;
    int offset = at.plane * (p.c * p.plane) + at.col;
    const T* x_column = x + offset;
    const T* dy_column = dy + offset;
    int first, last;
    lrn_window(c, p, &first, &last);
    float direct = 0.0f;
    float sum = 0.0f;
    for (int n = first; n < last; ++n) {
        float s = lrn_scale(x_column, n, p);
        float t = pow_neg(s, p);
        float grad = to_float(dy_column[n * p.plane]);
        if (n == c) direct = grad * t;
        sum += grad * to_float(x_column[n * p.plane]) * t / s;
    }
    dx[idx] = from_float<T>(direct - p.grad_coeff * to_float(x[idx]) * sum);
}

// y = max(x + bias[channel], 0), as bias_relu.rs (fmaxf, like Rust's f32::max, maps NaN to 0).
template <typename T>
__device__ void bias_relu(int idx, const T* x, const T* bias, T* y, BiasParams p) {
    int channel = (idx / p.plane) % p.c;
    y[idx] = from_float<T>(fmaxf(to_float(x[idx]) + to_float(bias[channel]), 0.0f));
}

// dx = dy where y > 0, else 0.
template <typename T>
__device__ void bias_relu_grad(int idx, const T* y, const T* dy, T* dx, BiasParams) {
    dx[idx] = to_float(y[idx]) > 0.0f ? dy[idx] : from_float<T>(0.0f);
}

// dbias[channel] = Σ dx over the images and pixels of the channel, by one block of
// REDUCE_THREADS threads. Thread t sums elements t, t + blockDim, … of the channel's n·plane
// (consecutive threads read consecutive pixels), stepping (image, pixel) without dividing;
// then a tree halves the partial sums in shared memory, in the same order every run.
template <typename T>
__device__ void bias_grad(int channel, const T* dx, T* dbias, BiasParams p) {
    __shared__ float partial[REDUCE_THREADS];
    int t = threadIdx.x;
    int step = blockDim.x;
    int plane = max(p.plane, 1);  // empty planes: no elements, the loop never runs
    int image = p.plane > 0 ? t / plane : p.n, pixel = t % plane;
    int image_step = step / plane, pixel_step = step % plane;
    float sum = 0.0f;
    while (image < p.n) {
        sum += to_float(dx[(image * p.c + channel) * p.plane + pixel]);
        image += image_step;
        pixel += pixel_step;
        if (pixel >= plane) {
            pixel -= plane;
            ++image;
        }
    }
    partial[t] = sum;
    __syncthreads();
    for (int half = step / 2; half > 0; half /= 2) {
        if (t < half) partial[t] += partial[t + half];
        __syncthreads();
    }
    if (t == 0) dbias[channel] = from_float<T>(partial[0]);
}

// The entry points cuda.rs launches, `<op>_<dtype>`: one thread per output element, those
// past the end idle.
#define UNARY(op, T, dtype, Params)                                                   \
    extern "C" __global__ void op##_##dtype(int total, const T* a, T* out, Params p) { \
        int idx = element_index(total);                                               \
        if (idx >= 0) op<T>(idx, a, out, p);                                          \
    }
#define BINARY(op, T, dtype, Params)                                                             \
    extern "C" __global__ void op##_##dtype(int total, const T* a, const T* b, T* out, Params p) { \
        int idx = element_index(total);                                                          \
        if (idx >= 0) op<T>(idx, a, b, out, p);                                                  \
    }
// One block per output element (cuda.rs's Grid::BlockPerElement); the whole block takes the
// same branch, so every thread reaches the kernel's barriers.
#define REDUCE(op, T, dtype, Params)                                                  \
    extern "C" __global__ void op##_##dtype(int total, const T* a, T* out, Params p) { \
        if (blockIdx.x < (unsigned int)total) op<T>((int)blockIdx.x, a, out, p);     \
    }
#define F32_AND_BF16(ARITY, op, Params) \
    ARITY(op, float, f32, Params)       \
    ARITY(op, __nv_bfloat16, bf16, Params)

F32_AND_BF16(UNARY, max_pool2d, PoolParams)
F32_AND_BF16(BINARY, max_pool2d_grad, PoolParams)
F32_AND_BF16(UNARY, avg_pool2d, PoolParams)
F32_AND_BF16(UNARY, avg_pool2d_grad, PoolParams)
F32_AND_BF16(UNARY, lrn, LrnParams)
F32_AND_BF16(BINARY, lrn_grad, LrnParams)
F32_AND_BF16(BINARY, bias_relu, BiasParams)
F32_AND_BF16(BINARY, bias_relu_grad, BiasParams)
F32_AND_BF16(REDUCE, bias_grad, BiasParams)

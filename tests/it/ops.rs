//! The custom ops, losses and SGD against reference values from an independent numpy
//! implementation of Caffe's layer definitions (script below), against PyTorch where it has
//! the same layer (`ops_match_pytorch`, its script beside it), and all of them together
//! training a small network on the CPU.
//!
//! Reference values: `python3 ref.py` with numpy 2.4.6, float64. The script:
// # Reference values for tests/it/ops.rs (numpy 2.4, float64), written from Caffe's layer
// # definitions (pooling_layer.cpp, lrn_layer.cpp, softmax/sigmoid loss layers, sgd_solver.cpp).
// import math
// import numpy as np
//
// def caffe_pooled(n, k, s, p):
//     out = int(math.ceil((n + 2 * p - k) / s)) + 1
//     if p > 0 and (out - 1) * s >= n + p:
//         out -= 1
//     return out
//
// def pool(x, k, s, p, mode, dy):
//     N, C, H, W = x.shape
//     OH, OW = caffe_pooled(H, k, s, p), caffe_pooled(W, k, s, p)
//     y = np.zeros((N, C, OH, OW)); dx = np.zeros_like(x)
//     for n in range(N):
//         for c in range(C):
//             for i in range(OH):
//                 for j in range(OW):
//                     hs, ws = i * s - p, j * s - p
//                     he, we = min(hs + k, H + p), min(ws + k, W + p)
//                     area = (he - hs) * (we - ws)
//                     hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
//                     win = x[n, c, hs:he, ws:we]
//                     if mode == "max":
//                         a, b = np.unravel_index(np.argmax(win), win.shape)
//                         y[n, c, i, j] = win[a, b]
//                         dx[n, c, hs + a, ws + b] += dy[n, c, i, j]
//                     else:
//                         y[n, c, i, j] = win.sum() / area
//                         dx[n, c, hs:he, ws:we] += dy[n, c, i, j] / area
//     return y, dx
//
// def lrn(x, size, alpha, beta, k, dy):
//     N, C, H, W = x.shape
//     pre = (size - 1) // 2
//     scale = np.full_like(x, k)
//     for c in range(C):
//         for cc in range(max(0, c - pre), min(C, c - pre + size)):
//             scale[:, c] += alpha / size * x[:, cc] ** 2
//     y = x * scale ** -beta
//     dx = dy * scale ** -beta
//     ratio = dy * y / scale
//     for c in range(C):
//         for cc in range(max(0, c - pre), min(C, c - pre + size)):
//             dx[:, cc] -= 2 * alpha * beta / size * x[:, cc] * ratio[:, c]
//     return y, dx
//
// def pattern(shape, a, b):
//     return np.sin(a * np.arange(np.prod(shape)) + b).reshape(shape)
//
// def show(name, v):
//     print(f"const {name.upper()}: &[f64] = &[{', '.join(repr(float(e)) for e in np.ravel(v))}];")
//
// x = pattern((1, 2, 5, 6), 0.37, 0.1)
// for (k, s, p) in [(3, 2, 1), (2, 2, 1), (3, 1, 0)]:
//     for mode in ["max", "avg"]:
//         OH, OW = caffe_pooled(5, k, s, p), caffe_pooled(6, k, s, p)
//         dy = pattern((1, 2, OH, OW), 0.11, 0.5)
//         y, dx = pool(x, k, s, p, mode, dy)
//         show(f"{mode}_k{k}s{s}p{p}_y", y); show(f"{mode}_k{k}s{s}p{p}_dx", dx)
//
// xl = 2 * pattern((1, 6, 2, 2), 0.37, 0.1)
// dyl = pattern((1, 6, 2, 2), 0.11, 0.5)
// y, dx = lrn(xl, 5, 0.5, 0.75, 1.0, dyl); show("lrn_y", y); show("lrn_dx", dx)
//
// logits = 3 * pattern((3, 4), 0.37, 0.1)
// labels = np.array([2, 0, 3]); lam = np.array([0.5, 1.0, 0.25])
// z = logits - logits.max(1, keepdims=True)
// logp = z - np.log(np.exp(z).sum(1, keepdims=True))
// loss = -(lam * logp[np.arange(3), labels]).mean()
// onehot = np.eye(4)[labels]
// grad = lam[:, None] * (np.exp(logp) - onehot) / 3
// show("wce_loss", loss); show("wce_grad", grad)
//
// sl = 4 * pattern((2, 3), 0.37, 0.1)
// t = (pattern((2, 3), 0.11, 0.5) + 1) / 2
// sig = 1 / (1 + np.exp(-sl))
// loss = -(t * np.log(sig) + (1 - t) * np.log(1 - sig)).sum() / 2
// show("sce_loss", loss); show("sce_grad", (sig - t) / 2)
//
// # SGD: Caffe's update on 1/2|w - 3|^2 + 1/2|b + 1|^2, momentum 0.9, decay 5e-3, bias 2x lr and
// # no decay, clip 2.0, lr per step below.
// w = np.array([1.0, -2.0, 0.5]); b = np.array([0.25]); vw = np.zeros(3); vb = np.zeros(1)
// for lr in [0.1, 0.1, 0.05, 0.05, 0.025]:
//     gw, gb = w - 3, b + 1
//     norm = math.sqrt((gw ** 2).sum() + (gb ** 2).sum())
//     if norm > 2.0:
//         gw, gb = gw * 2.0 / norm, gb * 2.0 / norm
//     vw = 0.9 * vw + lr * (gw + 5e-3 * w); vb = 0.9 * vb + 2 * lr * gb
//     w, b = w - vw, b - vb
// show("sgd_w", w); show("sgd_b", b)

use candle_core::{DType, Device, Module, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use websieve::model::conv::conv2d_bias_relu;
use websieve::model::ops::{avg_pool2d, lrn, max_pool2d};
use websieve::recipe::params::{LrPolicy, Schedule, SgdParams};
use websieve::recipe::Recipe;
use websieve::train::loss::{sigmoid_cross_entropy, weighted_softmax_cross_entropy};
use websieve::train::optim::Sgd;
use websieve::train::schedule::learning_rate;

/// `sin(a·i + b)` over the flat index i, the script's `pattern`.
fn pattern(shape: &[usize], a: f64, b: f64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|i| (a * i as f64 + b).sin()).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &[f64], tol: f64) {
    let got = got
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// Output of `f(x)` and the gradient of `sum(f(x) · dy)` with respect to x.
fn forward_backward(
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    x: &Tensor,
    dy: impl Fn(&[usize]) -> Tensor,
) -> (Tensor, Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let y = f(var.as_tensor()).unwrap();
    let objective = (&y * dy(y.dims())).unwrap().sum_all().unwrap();
    let grads = objective.backward().unwrap();
    (y, grads.get(var.as_tensor()).unwrap().clone())
}

#[test]
fn pooling_matches_reference() {
    type Pool = fn(&Tensor, usize, usize, usize, bool) -> candle_core::Result<Tensor>;
    type Expected = (&'static [f64], &'static [f64]);
    // (what, op, [kernel, stride, pad], expected y, expected dx)
    let cases: [(&str, Pool, [usize; 3], Expected); 6] = [
        (
            "max 3/2 pad 1",
            max_pool2d,
            [3, 2, 1],
            (MAX_K3S2P1_Y, MAX_K3S2P1_DX),
        ),
        (
            "avg 3/2 pad 1",
            avg_pool2d,
            [3, 2, 1],
            (AVG_K3S2P1_Y, AVG_K3S2P1_DX),
        ),
        (
            "max 2/2 pad 1",
            max_pool2d,
            [2, 2, 1],
            (MAX_K2S2P1_Y, MAX_K2S2P1_DX),
        ),
        (
            "avg 2/2 pad 1",
            avg_pool2d,
            [2, 2, 1],
            (AVG_K2S2P1_Y, AVG_K2S2P1_DX),
        ),
        (
            "max 3/1",
            max_pool2d,
            [3, 1, 0],
            (MAX_K3S1P0_Y, MAX_K3S1P0_DX),
        ),
        (
            "avg 3/1",
            avg_pool2d,
            [3, 1, 0],
            (AVG_K3S1P0_Y, AVG_K3S1P0_DX),
        ),
    ];
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
        let x = pattern(&[1, 2, 5, 6], 0.37, 0.1, dtype);
        for (what, pool, [k, s, p], (want_y, want_dx)) in cases {
            let (y, dx) = forward_backward(
                |x| pool(x, k, s, p, true),
                &x,
                |dims| pattern(dims, 0.11, 0.5, dtype),
            );
            assert_close(what, &y, want_y, tol);
            assert_close(what, &dx, want_dx, tol);
        }
    }
}

#[test]
fn lrn_matches_reference() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let x = (pattern(&[1, 6, 2, 2], 0.37, 0.1, dtype) * 2.0).unwrap();
        let (y, dx) = forward_backward(
            |x| lrn(x, 5, 0.5, 0.75, 1.0),
            &x,
            |dims| pattern(dims, 0.11, 0.5, dtype),
        );
        assert_close("lrn y", &y, LRN_Y, tol);
        assert_close("lrn dx", &dx, LRN_DX, tol);
    }
}

#[test]
fn losses_match_reference() {
    let dev = Device::Cpu;
    let logits =
        Var::from_tensor(&(pattern(&[3, 4], 0.37, 0.1, DType::F64) * 3.0).unwrap()).unwrap();
    let labels = Tensor::new(&[2u32, 0, 3], &dev).unwrap();
    let lambda = Tensor::new(&[0.5f32, 1.0, 0.25], &dev).unwrap();
    let loss = weighted_softmax_cross_entropy(logits.as_tensor(), &labels, &lambda).unwrap();
    assert_close("wce loss", &loss, WCE_LOSS, 1e-12);
    let grad = loss.backward().unwrap();
    assert_close(
        "wce grad",
        grad.get(logits.as_tensor()).unwrap(),
        WCE_GRAD,
        1e-12,
    );

    let logits =
        Var::from_tensor(&(pattern(&[2, 3], 0.37, 0.1, DType::F64) * 4.0).unwrap()).unwrap();
    let targets = ((pattern(&[2, 3], 0.11, 0.5, DType::F64) + 1.0).unwrap() / 2.0).unwrap();
    let loss = sigmoid_cross_entropy(logits.as_tensor(), &targets).unwrap();
    assert_close("sce loss", &loss, SCE_LOSS, 1e-12);
    let grad = loss.backward().unwrap();
    assert_close(
        "sce grad",
        grad.get(logits.as_tensor()).unwrap(),
        SCE_GRAD,
        1e-12,
    );
}

#[test]
fn sgd_matches_reference_over_five_steps() {
    let dev = Device::Cpu;
    let w = Var::new(&[1.0f64, -2.0, 0.5], &dev).unwrap();
    let b = Var::new(&[0.25f64], &dev).unwrap();
    let settings = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-3,
        bias_lr_mult: 2.0,
        clip_grad_norm: Some(2.0),
    };
    let schedule = Schedule {
        policy: LrPolicy::Step {
            gamma: 0.5,
            step_size: 2,
        },
        warmup_iterations: 0,
        warmup_start_factor: 1.0,
    };
    let vars = vec![
        ("fc.weight".to_string(), w.clone()),
        ("fc.bias".to_string(), b.clone()),
    ];
    let mut sgd = Sgd::new(vars, &settings).unwrap();
    let mut clipped = 0;
    for iter in 0..5 {
        let loss = ((w.as_tensor() - 3.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            + (b.as_tensor() + 1.0)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap())
        .unwrap();
        let grads = (loss * 0.5).unwrap().backward().unwrap();
        let lr = learning_rate(&schedule, settings.lr, iter, 5);
        clipped += usize::from(sgd.step(&grads, lr).unwrap().clipped);
    }
    assert!(clipped > 0, "the reference run clips at least once");
    assert_close("sgd w", w.as_tensor(), SGD_W, 1e-12);
    assert_close("sgd b", b.as_tensor(), SGD_B, 1e-12);
}

/// Reference values from PyTorch 2.15 (CPU, float64), stronger than the numpy ones where
/// PyTorch has Caffe's layer: ceil-mode max and average pooling (no padding, GoogLeNet's
/// pool1–4; with padding Caffe and PyTorch divide differently), LRN, convolution + bias + ReLU
/// with stride and padding (our CPU op), both losses, and one SGD step with Caffe's multipliers
/// (from zero momentum PyTorch's and Caffe's momentum forms take the same step).
/// `python3 torch_ref.py` with torch 2.15.0, numpy 2.4.6; the script:
// import numpy as np, torch, torch.nn.functional as F
// torch.set_default_dtype(torch.float64)
// def pattern(shape, a, b):
//     return torch.sin(a * torch.arange(int(np.prod(shape)), dtype=torch.float64) + b).reshape(shape)
// def show(name, v):
//     v = v.detach().reshape(-1).tolist() if torch.is_tensor(v) else [v]
//     print(f"const TORCH_{name.upper()}: &[f64] = &[{', '.join(repr(float(e)) for e in v)}];")
// def fwd_bwd(f, x, a=0.11, b=0.5):
//     x = x.clone().requires_grad_(True); y = f(x)
//     (y * pattern(y.shape, a, b)).sum().backward()
//     return y, x.grad
// x = pattern((1, 2, 5, 6), 0.37, 0.1)
// y, dx = fwd_bwd(lambda t: F.max_pool2d(t, 3, 2, ceil_mode=True), x); show("max_k3s2_y", y); show("max_k3s2_dx", dx)
// y, dx = fwd_bwd(lambda t: F.avg_pool2d(t, 3, 2, ceil_mode=True), x); show("avg_k3s2_y", y); show("avg_k3s2_dx", dx)
// xl = 2 * pattern((1, 6, 2, 2), 0.37, 0.1)
// y, dx = fwd_bwd(lambda t: F.local_response_norm(t, 5, alpha=0.5, beta=0.75, k=1.0), xl); show("lrn_y", y); show("lrn_dx", dx)
// xc = pattern((1, 2, 5, 5), 0.37, 0.1).requires_grad_(True)
// wc = (0.5 * pattern((3, 2, 3, 3), 0.23, 0.7)).requires_grad_(True)
// bc = torch.tensor([0.1, -0.2, 0.05], requires_grad=True)
// yc = F.relu(F.conv2d(xc, wc, bc, stride=2, padding=1))
// (yc * pattern(yc.shape, 0.11, 0.5)).sum().backward()
// show("conv_y", yc); show("conv_dx", xc.grad); show("conv_dw", wc.grad); show("conv_db", bc.grad)
// logits = (3 * pattern((3, 4), 0.37, 0.1)).requires_grad_(True)
// labels = torch.tensor([2, 0, 3]); lam = torch.tensor([0.5, 1.0, 0.25])
// loss = (F.cross_entropy(logits, labels, reduction="none") * lam).mean(); loss.backward()
// show("wce_loss", loss.item()); show("wce_grad", logits.grad)
// sl = (4 * pattern((2, 3), 0.37, 0.1)).requires_grad_(True); t = (pattern((2, 3), 0.11, 0.5) + 1) / 2
// loss = F.binary_cross_entropy_with_logits(sl, t, reduction="sum") / 2; loss.backward()
// show("sce_loss", loss.item()); show("sce_grad", sl.grad)
// # One SGD step with Caffe's multipliers (bias: 2x lr, no decay) on 1/2|w - 3|^2 + 1/2|b + 1|^2.
// w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True); b = torch.tensor([0.25], requires_grad=True)
// opt = torch.optim.SGD([{"params": [w], "lr": 0.1, "weight_decay": 5e-3},
//                        {"params": [b], "lr": 0.2, "weight_decay": 0.0}], lr=0.1, momentum=0.9)
// (0.5 * ((w - 3) ** 2).sum() + 0.5 * ((b + 1) ** 2).sum()).backward(); opt.step()
// show("sgd_w", w); show("sgd_b", b)
#[test]
fn ops_match_pytorch() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
        let x = pattern(&[1, 2, 5, 6], 0.37, 0.1, dtype);
        let dy = |dims: &[usize]| pattern(dims, 0.11, 0.5, dtype);
        let (y, dx) = forward_backward(|x| max_pool2d(x, 3, 2, 0, true), &x, dy);
        assert_close("max 3/2 ceil", &y, TORCH_MAX_K3S2_Y, tol);
        assert_close("max 3/2 ceil dx", &dx, TORCH_MAX_K3S2_DX, tol);
        let (y, dx) = forward_backward(|x| avg_pool2d(x, 3, 2, 0, true), &x, dy);
        assert_close("avg 3/2 ceil", &y, TORCH_AVG_K3S2_Y, tol);
        assert_close("avg 3/2 ceil dx", &dx, TORCH_AVG_K3S2_DX, tol);
        let xl = (pattern(&[1, 6, 2, 2], 0.37, 0.1, dtype) * 2.0).unwrap();
        let (y, dx) = forward_backward(|x| lrn(x, 5, 0.5, 0.75, 1.0), &xl, dy);
        assert_close("lrn", &y, TORCH_LRN_Y, tol * 10.0);
        assert_close("lrn dx", &dx, TORCH_LRN_DX, tol * 10.0);
    }
    // The CPU convolution runs in f32.
    let f32_var = |t: Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
    let x = f32_var(pattern(&[1, 2, 5, 5], 0.37, 0.1, DType::F32));
    let w = f32_var((pattern(&[3, 2, 3, 3], 0.23, 0.7, DType::F32) * 0.5).unwrap());
    let b = f32_var(Tensor::new(&[0.1f32, -0.2, 0.05], &Device::Cpu).unwrap());
    let y = conv2d_bias_relu(&x, &w, &b, 1, 2).unwrap();
    let grads = (&y * pattern(y.dims(), 0.11, 0.5, DType::F32))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_close("conv", &y, TORCH_CONV_Y, 1e-6);
    for (what, var, want) in [
        ("conv dx", &x, TORCH_CONV_DX),
        ("conv dw", &w, TORCH_CONV_DW),
        ("conv db", &b, TORCH_CONV_DB),
    ] {
        assert_close(what, grads.get(var).unwrap(), want, 1e-6);
    }

    let logits =
        Var::from_tensor(&(pattern(&[3, 4], 0.37, 0.1, DType::F64) * 3.0).unwrap()).unwrap();
    let labels = Tensor::new(&[2u32, 0, 3], &Device::Cpu).unwrap();
    let lambda = Tensor::new(&[0.5f64, 1.0, 0.25], &Device::Cpu).unwrap();
    let loss = weighted_softmax_cross_entropy(logits.as_tensor(), &labels, &lambda).unwrap();
    assert_close("wce loss", &loss, TORCH_WCE_LOSS, 1e-12);
    let grad = loss.backward().unwrap();
    let grad = grad.get(logits.as_tensor()).unwrap();
    assert_close("wce grad", grad, TORCH_WCE_GRAD, 1e-12);
    let logits =
        Var::from_tensor(&(pattern(&[2, 3], 0.37, 0.1, DType::F64) * 4.0).unwrap()).unwrap();
    let targets = ((pattern(&[2, 3], 0.11, 0.5, DType::F64) + 1.0).unwrap() / 2.0).unwrap();
    let loss = sigmoid_cross_entropy(logits.as_tensor(), &targets).unwrap();
    assert_close("sce loss", &loss, TORCH_SCE_LOSS, 1e-12);
    let grad = loss.backward().unwrap();
    let grad = grad.get(logits.as_tensor()).unwrap();
    assert_close("sce grad", grad, TORCH_SCE_GRAD, 1e-12);

    let w = Var::new(&[1.0f64, -2.0, 0.5], &Device::Cpu).unwrap();
    let b = Var::new(&[0.25f64], &Device::Cpu).unwrap();
    let settings = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-3,
        bias_lr_mult: 2.0,
        clip_grad_norm: None,
    };
    let vars = vec![
        ("fc.weight".to_string(), w.clone()),
        ("fc.bias".to_string(), b.clone()),
    ];
    let mut sgd = Sgd::new(vars, &settings).unwrap();
    let half_square = |t: Tensor| t.sqr().unwrap().sum_all().unwrap();
    let loss = (half_square((w.as_tensor() - 3.0).unwrap())
        + half_square((b.as_tensor() + 1.0).unwrap()))
    .unwrap();
    let grads = (loss * 0.5).unwrap().backward().unwrap();
    sgd.step(&grads, settings.lr).unwrap();
    assert_close("sgd w", w.as_tensor(), TORCH_SGD_W, 1e-12);
    assert_close("sgd b", b.as_tensor(), TORCH_SGD_B, 1e-12);
}

/// conv → LRN → ceil max-pool → conv → padded avg-pool → fc, trained with the weighted loss
/// and SGD: every custom piece in one graph, in f32. Memorising 16 random images' labels must
/// drive the loss below 5% of its start (it reaches < 0.1% in 80 steps).
#[test]
fn small_network_with_all_pieces_learns() {
    let dev = Device::Cpu;
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let conv = |c_in, c_out, name| {
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        candle_nn::conv2d(c_in, c_out, 3, cfg, vb.pp(name)).unwrap()
    };
    let (conv1, conv2) = (conv(3, 8, "conv1"), conv(8, 8, "conv2"));
    let fc = candle_nn::linear(8 * 4 * 4, 4, vb.pp("fc")).unwrap();
    let forward = |x: &Tensor| -> candle_core::Result<Tensor> {
        let h = conv1.forward(x)?.relu()?;
        let h = max_pool2d(&lrn(&h, 5, 1e-4, 0.75, 1.0)?, 3, 2, 0, true)?; // 15 → 7
        let h = avg_pool2d(&conv2.forward(&h)?.relu()?, 3, 2, 1, true)?; // 7 → 4 (ceil, pad 1)
        fc.forward(&h.flatten_from(1)?)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let pixels: Vec<f32> = (0..16 * 3 * 15 * 15)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let images = Tensor::from_vec(pixels, (16, 3, 15, 15), &dev).unwrap();
    let labels = Tensor::new((0..16u32).map(|i| i % 4).collect::<Vec<_>>(), &dev).unwrap();
    let lambda = Tensor::ones(16, DType::F32, &dev).unwrap();
    let vars = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let settings = SgdParams {
        lr: 0.05,
        weight_decay: 1e-4,
        clip_grad_norm: Some(10.0),
        ..Recipe::default().train.optimizer
    };
    let mut sgd = Sgd::new(vars, &settings).unwrap();
    let loss_at = || weighted_softmax_cross_entropy(&forward(&images)?, &labels, &lambda);
    let first = loss_at().unwrap().to_vec0::<f32>().unwrap();
    for _ in 0..80 {
        let loss = loss_at().unwrap();
        sgd.step(&loss.backward().unwrap(), settings.lr).unwrap();
    }
    let last = loss_at().unwrap().to_vec0::<f32>().unwrap();
    assert!(last < 0.05 * first, "loss {first} → {last}");
}

/// Every way the public API refuses input, one message per line (the first line of each: candle
/// appends a backtrace when RUST_BACKTRACE is set). A label beyond the classes is the trainer's
/// to refuse (`a_label_beyond_the_classes_is_named_with_its_sample` in train.rs).
#[test]
fn error_messages() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 4, 4), DType::F32, &dev).unwrap();
    let first_line = |e: candle_core::Error| e.to_string().lines().next().unwrap().to_string();
    let logits = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let ones = Tensor::ones(2, DType::F32, &dev).unwrap();
    let settings = SgdParams {
        weight_decay: -1.0,
        ..Recipe::default().train.optimizer
    };
    let messages = [
        first_line(max_pool2d(&x, 0, 1, 0, false).unwrap_err()),
        first_line(max_pool2d(&x, 3, 2, 3, true).unwrap_err()),
        first_line(avg_pool2d(&x, 7, 1, 1, false).unwrap_err()),
        first_line(avg_pool2d(&x.flatten_all().unwrap(), 2, 2, 0, false).unwrap_err()),
        first_line(max_pool2d(&x.to_dtype(DType::U8).unwrap(), 2, 2, 0, false).unwrap_err()),
        first_line(lrn(&x, 2, 1e-4, 0.75, 1.0).unwrap_err()),
        first_line(lrn(&x, 5, 1e-4, 0.75, 0.0).unwrap_err()),
        first_line(weighted_softmax_cross_entropy(&logits, &ones, &ones).unwrap_err()),
        first_line(sigmoid_cross_entropy(&ones, &ones).unwrap_err()),
        Sgd::new(Vec::new(), &settings).err().unwrap().to_string(),
    ];
    insta::assert_snapshot!(messages.join("\n"));
}

// ---- reference values printed by the script above ----
const MAX_K3S2P1_Y: &[f64] = &[
    0.7322314440302514,
    0.9356160015533859,
    0.9999576464987401,
    0.9289597150038692,
    0.7491743483316894,
    0.999871708718139,
    0.999871708718139,
    0.7275732909714597,
    0.7491743483316894,
    0.999871708718139,
    0.999871708718139,
    0.7275732909714597,
    0.9403403914098841,
    0.999739337036853,
    0.9238282533851275,
    0.4649953737342197,
    0.9403403914098841,
    0.999739337036853,
    0.9238282533851275,
    0.758132221587245,
    0.9995605376022044,
    0.9995605376022044,
    0.758132221587245,
    0.758132221587245,
];
const MAX_K3S2P1_DX: &[f64] = &[
    0.0,
    0.0,
    0.0,
    0.5728674601004813,
    0.6593846719714731,
    0.7379313711099628,
    0.479425538604203,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.789411630777474,
    0.0,
    3.780537689450432,
    0.0,
    1.9454276597408504,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.8368987907984977,
    0.0,
    1.7408617909005821,
    1.633454790576244,
    1.5063029087590913,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.8551891425990431,
    0.0,
    0.7529292147513897,
    0.0,
    0.0,
    0.0,
    0.0,
];
const AVG_K3S2P1_Y: &[f64] = &[
    0.19126113646847492,
    0.2629578809208052,
    0.12353019837909028,
    0.012080290139811342,
    0.04567113128909213,
    0.05611998165855598,
    0.017315282140213988,
    -0.003715498235386453,
    0.1903435088680761,
    0.20595202108159733,
    0.021147454954993854,
    -0.043125095607589724,
    -0.013852337130559826,
    0.13162486611663138,
    0.2661793753546714,
    0.1481818699843851,
    0.005333429680545867,
    0.041437084542181944,
    0.06571991271099153,
    0.034076080020995415,
    0.05841575135363301,
    0.21460224725195326,
    0.28294264710805217,
    0.13654044942918084,
];
const AVG_K3S2P1_DX: &[f64] = &[
    0.05326950428935589,
    0.11692144430052048,
    0.06365194001116459,
    0.1369169035635505,
    0.0732649635523859,
    0.19625352540404636,
    0.14299818211214635,
    0.3030304805226462,
    0.16003229841049982,
    0.3351642740486376,
    0.1751319756381378,
    0.45730401342058036,
    0.08972867782279047,
    0.18610903622212568,
    0.09638035839933522,
    0.19824737048508712,
    0.10186701208575188,
    0.26105048801653397,
    0.19882351453083041,
    0.40595251204607047,
    0.20712899751524005,
    0.4200597432722703,
    0.21293074575703025,
    0.537168689047172,
    0.10909483670803996,
    0.21984347582394478,
    0.11074863911590482,
    0.2218123727871832,
    0.11106373367127835,
    0.276118201030638,
    0.10767879209782848,
    0.21169846457741803,
    0.10401967247958957,
    0.20312285591885398,
    0.0991031834392644,
    0.23858631523901402,
    0.19342908787784246,
    0.3749240646085362,
    0.18149497673069376,
    0.34886196659281504,
    0.16736698986212126,
    0.3941908452764169,
    0.08575029578001399,
    0.1632256000311182,
    0.0774753042511042,
    0.14573911067396106,
    0.06826380642285686,
    0.15560453003740288,
    0.1332369491393284,
    0.2468844016701615,
    0.1136474525308331,
    0.20633166031203629,
    0.09268420778120318,
    0.1985851295101909,
    0.04748665335931442,
    0.08365880163904332,
    0.036172148279728894,
    0.06059254963807522,
    0.024420401358346326,
    0.042980599472788,
];
const MAX_K2S2P1_Y: &[f64] = &[
    0.09983341664682815,
    0.7446431199708593,
    0.9999576464987401,
    0.9289597150038692,
    0.7322314440302514,
    0.4363990821601263,
    -0.2601574914304689,
    0.10661169378122266,
    0.4589514863776903,
    0.9379999767747389,
    0.999871708718139,
    0.7275732909714597,
    -0.9791777291513174,
    -0.5862082407117828,
    0.11338501988364243,
    0.4649953737342197,
    0.7536707851417809,
    0.999739337036853,
    0.9238282533851275,
    0.4240958461720909,
    0.9426371367702988,
    0.9995605376022044,
    0.7181558375448988,
    0.758132221587245,
];
const MAX_K2S2P1_DX: &[f64] = &[
    0.479425538604203,
    0.0,
    0.5728674601004813,
    0.0,
    0.6593846719714731,
    0.7379313711099628,
    0.8075581004051142,
    0.867423225594017,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.916803108771767,
    0.9551008555846923,
    0.9818535303723597,
    0.0,
    0.9967377520431434,
    0.9995736030415051,
    0.0,
    0.990326804156158,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.9691091288804563,
    0.0,
    0.9361770523163061,
    0.0,
    0.8919286509533796,
    0.8368987907984977,
    0.7717526620201259,
    0.0,
    0.6972777382599378,
    0.6143742578057118,
    0.0,
    0.5240443416872761,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.11136118868665001,
    0.4273798802338298,
    0.32554933451756,
    0.0,
    0.21978361222511694,
    0.0,
    0.0,
];
const AVG_K2S2P1_Y: &[f64] = &[
    0.02495835416170704,
    0.2993823513374819,
    0.4838934120130315,
    0.2322399287509673,
    -0.06323658436840196,
    -0.3264562264325227,
    -0.4370391688851652,
    -0.1874665700959446,
    0.22230223527286513,
    0.36773258123236846,
    0.11226941706012072,
    -0.06468764341138458,
    -0.24479443228782935,
    -0.35642818057179215,
    -0.03504661115284284,
    0.11624884343355492,
    0.20539543617953657,
    0.2550083097505123,
    -0.051037003225054334,
    -0.13841893536531813,
    0.02671372548632228,
    0.2732778268302243,
    0.43181028184934617,
    0.20481067414377124,
];
const AVG_K2S2P1_DX: &[f64] = &[
    0.11985638465105075,
    0.14321686502512032,
    0.14321686502512032,
    0.16484616799286828,
    0.16484616799286828,
    0.1844828427774907,
    0.20188952510127856,
    0.21685580639850424,
    0.21685580639850424,
    0.22920077719294174,
    0.22920077719294174,
    0.23877521389617307,
    0.20188952510127856,
    0.21685580639850424,
    0.21685580639850424,
    0.22920077719294174,
    0.22920077719294174,
    0.23877521389617307,
    0.24546338259308992,
    0.24918443801078585,
    0.24918443801078585,
    0.24989340076037628,
    0.24989340076037628,
    0.2475817010390395,
    0.24546338259308992,
    0.24918443801078585,
    0.24918443801078585,
    0.24989340076037628,
    0.24989340076037628,
    0.2475817010390395,
    0.24227728222011408,
    0.23404426307907653,
    0.23404426307907653,
    0.2229821627383449,
    0.2229821627383449,
    0.20922469769962443,
    0.19293816550503148,
    0.17431943456498444,
    0.17431943456498444,
    0.15359356445142794,
    0.15359356445142794,
    0.13101108542181902,
    0.19293816550503148,
    0.17431943456498444,
    0.17431943456498444,
    0.15359356445142794,
    0.15359356445142794,
    0.13101108542181902,
    0.10684497005845744,
    0.08138733362939,
    0.08138733362939,
    0.054945903056279236,
    0.054945903056279236,
    0.027840297171662504,
    0.10684497005845744,
    0.08138733362939,
    0.08138733362939,
    0.054945903056279236,
    0.054945903056279236,
    0.027840297171662504,
];
const MAX_K3S1P0_Y: &[f64] = &[
    0.7446431199708593,
    0.9356160015533859,
    0.9999576464987401,
    0.9999576464987401,
    0.9379999767747389,
    0.999871708718139,
    0.999871708718139,
    0.999871708718139,
    0.9379999767747389,
    0.999871708718139,
    0.999871708718139,
    0.999871708718139,
    0.999739337036853,
    0.999739337036853,
    0.999739337036853,
    0.9238282533851275,
    0.999739337036853,
    0.999739337036853,
    0.999739337036853,
    0.9238282533851275,
    0.9995605376022044,
    0.9995605376022044,
    0.92119810882011,
    0.758132221587245,
];
const MAX_K3S1P0_DX: &[f64] = &[
    0.0,
    0.0,
    0.479425538604203,
    0.5728674601004813,
    1.3973160430814358,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.789411630777474,
    5.7259653491912825,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    4.880619490235918,
    1.3609431324857737,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.11136118868665001,
    0.0,
    0.7529292147513897,
    0.21978361222511694,
    0.0,
    0.0,
    0.0,
];
const AVG_K3S1P0_Y: &[f64] = &[
    -0.029045380134104785,
    -0.005424532443805524,
    0.01893050026513075,
    0.04072337857017287,
    0.06526161869782444,
    0.05611998165855598,
    0.039382768372537263,
    0.017315282140213988,
    -0.049862739459267884,
    -0.06243039228301339,
    -0.06654838438546262,
    -0.06165936485392352,
    -0.06258616307981006,
    -0.0665395741336568,
    -0.0614871659797661,
    -0.04811275835984907,
    0.019798378865974284,
    0.041437084542181944,
    0.05746747521575631,
    0.06571991271099153,
    0.03864785326642931,
    0.01643780700166512,
    -0.00799701932753593,
    -0.03134948660646833,
];
const AVG_K3S1P0_DX: &[f64] = &[
    0.05326950428935589,
    0.11692144430052048,
    0.1901864078529064,
    0.21890927813132413,
    0.15525733812015954,
    0.08199237456777364,
    0.14299818211214635,
    0.3030304805226462,
    0.47816245616078396,
    0.5232789659035992,
    0.3632466674930994,
    0.18811469185496166,
    0.2520930188201863,
    0.522873956346591,
    0.809069665656007,
    0.8551276502636889,
    0.5843467127372842,
    0.2981510034278681,
    0.19882351453083041,
    0.40595251204607047,
    0.6188832578031007,
    0.6362183721323647,
    0.4290893746171247,
    0.21615862886009446,
    0.10909483670803996,
    0.21984347582394478,
    0.3309072094952231,
    0.33184868436008963,
    0.2211000452441848,
    0.11003631157290644,
    0.10767879209782848,
    0.21169846457741803,
    0.3108016480166824,
    0.2961116104520204,
    0.1920919379724308,
    0.0929887545331664,
    0.19342908787784246,
    0.3749240646085362,
    0.5422910544706575,
    0.5000778702023455,
    0.31858289347165164,
    0.1512159036095304,
    0.2409157412371569,
    0.4585828662475795,
    0.6503702574680472,
    0.5730438852500486,
    0.3553767602396258,
    0.1635893690191582,
    0.1332369491393284,
    0.2468844016701615,
    0.3395686094513647,
    0.27693227479802807,
    0.16328482226719498,
    0.0706006144859918,
    0.04748665335931442,
    0.08365880163904332,
    0.10807920299738966,
    0.072966015047703,
    0.03679386676797411,
    0.01237346540962778,
];
const LRN_Y: &[f64] = &[
    0.15458796888774837,
    0.6820974730475811,
    1.0537767825042064,
    1.24603021459141,
    1.2897107096688427,
    1.1740216729062254,
    0.9156469719834469,
    0.5480420848145519,
    0.10394495016512091,
    -0.358794749166562,
    -0.7402502846082633,
    -0.9874725987748694,
    -1.1020981579854292,
    -1.0981579398217045,
    -0.9750118144435481,
    -0.7182944950638882,
    -0.3390823980369587,
    0.135998301600934,
    0.5759260953008221,
    0.9370871447724132,
    1.2239427094531046,
    1.2927417772839436,
    1.2379969544389484,
    1.0343735015138005,
];
const LRN_DX: &[f64] = &[
    0.35055015402842393,
    0.3462838445192984,
    0.3529943966699322,
    0.39400251503031203,
    0.46175202706402096,
    0.5057746164086414,
    0.5535645227920132,
    0.5947461796333455,
    0.6249145784922814,
    0.6460872738650689,
    0.6559784262862207,
    0.6481454378823749,
    0.6284268143897932,
    0.5747032268685669,
    0.5157862466957222,
    0.4793941597894602,
    0.4804581628376643,
    0.4569128932912262,
    0.4472224133561873,
    0.4271718933521209,
    0.3756571976229612,
    0.2666085152457881,
    0.16627112844300418,
    0.0733111089318563,
];
const WCE_LOSS: &[f64] = &[0.7674305922688406];
const WCE_GRAD: &[f64] = &[
    0.007222394267256221,
    0.020828976539336838,
    -0.11668703159625031,
    0.08863566078965723,
    -0.19674700711716783,
    0.11038376277746055,
    0.061177424075927134,
    0.025185820263780075,
    0.054878786313458855,
    0.018308094326939434,
    0.006855469081559099,
    -0.08004234972195738,
];
const SCE_LOSS: &[f64] = &[1.4497681956484367];
const SCE_GRAD: &[f64] = &[
    -0.07059260673732487,
    0.03655739243446793,
    0.060952162719801695,
    0.05394357818006623,
    0.03911587364059366,
    0.021265746400252916,
];
const SGD_W: &[f64] = &[1.6613523963936205, -0.32512746594191294, 1.3302724193376982];
const SGD_B: &[f64] = &[-0.5402458400487298];

// ---- PyTorch's reference values, printed by ops_match_pytorch's script ----
const TORCH_MAX_K3S2_Y: &[f64] = &[
    0.7446431199708593,
    0.9999576464987401,
    0.9999576464987401,
    0.9379999767747389,
    0.999871708718139,
    0.9264154954967662,
    0.999739337036853,
    0.999739337036853,
    0.722881349511976,
    0.9995605376022044,
    0.92119810882011,
    0.758132221587245,
];
const TORCH_MAX_K3S2_DX: &[f64] = &[
    0.0,
    0.0,
    0.479425538604203,
    0.0,
    1.2322521320719544,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.7379313711099628,
    0.8075581004051142,
    0.867423225594017,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.8719039643564592,
    0.0,
    0.9818535303723597,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.990326804156158,
    0.0,
    0.9967377520431434,
    0.9995736030415051,
    0.0,
    0.0,
    0.0,
];
const TORCH_AVG_K3S2_Y: &[f64] = &[
    -0.02904538013410475,
    0.01893050026513076,
    0.05117261645760712,
    -0.04986273945926789,
    -0.06654838438546265,
    -0.057642761309867264,
    -0.06258616307981003,
    -0.06148716597976608,
    -0.03997302355347495,
    0.038647853266429326,
    -0.007997019327535944,
    -0.04283680409949861,
];
const TORCH_AVG_K3S2_DX: &[f64] = &[
    0.05326950428935589,
    0.05326950428935589,
    0.11692144430052048,
    0.06365194001116459,
    0.17354938533974346,
    0.10989744532857885,
    0.05326950428935589,
    0.05326950428935589,
    0.11692144430052048,
    0.06365194001116459,
    0.17354938533974346,
    0.10989744532857885,
    0.13526187885712954,
    0.13526187885712954,
    0.2886424966910846,
    0.15338061783395507,
    0.40784860076153673,
    0.25446798292758166,
    0.08199237456777364,
    0.08199237456777364,
    0.17172105239056412,
    0.08972867782279047,
    0.23429921542179327,
    0.14457053759900282,
    0.08199237456777364,
    0.08199237456777364,
    0.17172105239056412,
    0.08972867782279047,
    0.23429921542179327,
    0.14457053759900282,
    0.10186701208575188,
    0.10186701208575188,
    0.2079893293729399,
    0.10612231728718803,
    0.269764572349248,
    0.16364225506205995,
    0.10186701208575188,
    0.10186701208575188,
    0.2079893293729399,
    0.10612231728718803,
    0.269764572349248,
    0.16364225506205995,
    0.2126156512016567,
    0.2126156512016567,
    0.4298017021601231,
    0.21718605095846638,
    0.545882773379886,
    0.3286967224214196,
    0.11074863911590482,
    0.11074863911590482,
    0.2218123727871832,
    0.11106373367127835,
    0.276118201030638,
    0.16505446735935966,
    0.11074863911590482,
    0.11074863911590482,
    0.2218123727871832,
    0.11106373367127835,
    0.276118201030638,
    0.16505446735935966,
];
const TORCH_LRN_Y: &[f64] = &[
    0.15458796888774837,
    0.6820974730475811,
    1.0537767825042064,
    1.24603021459141,
    1.2897107096688427,
    1.1740216729062254,
    0.915646971983447,
    0.548042084814552,
    0.1039449501651209,
    -0.35879474916656195,
    -0.7402502846082633,
    -0.9874725987748693,
    -1.1020981579854294,
    -1.0981579398217045,
    -0.9750118144435481,
    -0.7182944950638882,
    -0.3390823980369587,
    0.135998301600934,
    0.5759260953008221,
    0.9370871447724132,
    1.2239427094531046,
    1.2927417772839436,
    1.2379969544389486,
    1.0343735015138007,
];
const TORCH_LRN_DX: &[f64] = &[
    0.35055015402842393,
    0.3462838445192984,
    0.35299439666993215,
    0.39400251503031203,
    0.46175202706402096,
    0.5057746164086415,
    0.5535645227920132,
    0.5947461796333455,
    0.6249145784922814,
    0.6460872738650688,
    0.6559784262862207,
    0.6481454378823748,
    0.6284268143897933,
    0.5747032268685668,
    0.5157862466957224,
    0.4793941597894603,
    0.4804581628376642,
    0.45691289329122625,
    0.44722241335618734,
    0.42717189335212086,
    0.3756571976229612,
    0.26660851524578816,
    0.16627112844300418,
    0.07331110893185631,
];
const TORCH_CONV_Y: &[f64] = &[
    1.881006152750617,
    2.9149308415744817,
    1.4354201608077524,
    0.0,
    0.0,
    0.0,
    1.2965950051139643,
    2.371217570619381,
    1.3050839157674698,
    0.0,
    0.0,
    0.0,
    0.0,
    0.8551284561412134,
    1.0209880923393793,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.4213174749235076,
    1.6319125314813099,
    0.7478873159681779,
    0.0,
    0.0,
    0.10534079976274457,
    0.9595347537603175,
];
const TORCH_CONV_DX: &[f64] = &[
    0.23942265535785484,
    0.5121950346065038,
    0.28608707175818515,
    0.5477823856591091,
    0.23152250594120405,
    0.21184124729452275,
    -0.03371661118986244,
    -0.20337791305799685,
    -0.5555743285382004,
    -0.37046089089871714,
    -0.07447525286822644,
    -0.4523462527632269,
    -0.28415607840336843,
    -0.5115356253852622,
    -0.22282245538413215,
    0.2178940973847833,
    0.4263723136205666,
    0.34802956952246167,
    0.7528398405483963,
    0.4444955065574162,
    0.457846770911566,
    0.9235501520198118,
    0.5017240480586435,
    1.003349936234487,
    0.5399009311450584,
    -0.12496916805276959,
    -0.25798275911320556,
    -0.1493261500037927,
    -0.4614940677429054,
    -0.29189562982830364,
    -0.382827076532704,
    -0.45764660274294067,
    -0.022469782780432324,
    -0.012651269742670779,
    0.04537386825085654,
    -0.09142130125709358,
    0.3139385301209294,
    0.40623393274533304,
    0.8504811189637683,
    0.4458360903959941,
    0.07990786536915857,
    0.6480613214548563,
    0.49764246714935384,
    1.0229774365836573,
    0.5239208384491189,
    -0.23897792784457253,
    -0.43157666965633884,
    -0.21857725065965458,
    -0.38993790836487124,
    -0.19508720307117922,
];
const TORCH_CONV_DW: &[f64] = &[
    0.20214649451756905,
    0.294917714888459,
    0.19983176039748,
    2.5457233951115756,
    3.3010325750780907,
    2.3647005773667127,
    0.47321283715073215,
    0.5078198903334818,
    0.39774038510876597,
    0.11298689477825463,
    0.1163182010833348,
    0.10470297338856649,
    -2.4974372710000554,
    -3.2637484321383914,
    -2.335671900605057,
    -0.6481259370404333,
    -0.7304980919916868,
    -0.5477427290591395,
    0.7581923791548875,
    0.15485936429110775,
    0.07630044419236498,
    -1.6763853155800845,
    -1.6743641365902215,
    -0.9179575469298051,
    0.16579850663252066,
    0.7680174870629147,
    0.4296598496732534,
    -1.0120924852148838,
    -0.4476633550099451,
    -0.23738778618247086,
    1.5972654522392549,
    1.7043139835584804,
    0.9359330256318191,
    0.13171092476111512,
    -0.49172126778075703,
    -0.27848024090770407,
    0.08963689633332388,
    0.2244733049619363,
    0.20663397882344456,
    -0.05420462361105337,
    -0.18181379927245658,
    -0.573051995608144,
    -0.022345973355910126,
    -0.2907589372926768,
    0.016175917307228352,
    -0.16594110447007718,
    -0.32005944120625773,
    -0.2968466734268403,
    0.0860358502159559,
    0.16812301147194522,
    0.5555109166605035,
    -0.015162025125226145,
    0.2987177344923285,
    0.07268610986072281,
];
const TORCH_CONV_DB: &[f64] = &[4.565435165404976, 1.8281057032696857, 0.6478426120590187];
const TORCH_WCE_LOSS: &[f64] = &[0.7674305922688406];
const TORCH_WCE_GRAD: &[f64] = &[
    0.007222394267256221,
    0.020828976539336838,
    -0.1166870315962503,
    0.08863566078965723,
    -0.1967470071171678,
    0.11038376277746055,
    0.061177424075927134,
    0.025185820263780072,
    0.054878786313458855,
    0.018308094326939434,
    0.006855469081559099,
    -0.08004234972195738,
];
const TORCH_SCE_LOSS: &[f64] = &[1.449768195648437];
const TORCH_SCE_GRAD: &[f64] = &[
    -0.07059260673732487,
    0.03655739243446793,
    0.060952162719801695,
    0.05394357818006623,
    0.03911587364059366,
    0.021265746400252916,
];
const TORCH_SGD_W: &[f64] = &[1.1995, -1.4989999999999999, 0.74975];
const TORCH_SGD_B: &[f64] = &[-1.3877787807814457e-17];

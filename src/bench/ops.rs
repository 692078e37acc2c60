//! Throughput of the custom ops (forward, and forward + backward) on the CPU or a GPU, each
//! next to a reference measured in the same run: candle's own pooling where candle is right
//! (kernel = stride, no padding), LRN written with candle ops (squares summed over shifted
//! channel slices), and a convolution's bias + ReLU as candle's two ops, the approaches the
//! custom ops replace. In: the input's shape, element type and device. Out: median seconds
//! per op and pass.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};

use super::BenchError;
use crate::model::ops::{avg_pool2d, bias_relu, lrn, max_pool2d};

/// The NCHW input every op runs on, and how often each is timed.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    pub batch: usize,
    pub channels: usize,
    /// Height and width.
    pub size: usize,
    /// Timed repetitions per measurement (the median is reported, after one warm-up).
    pub iters: usize,
    pub device: Device,
    pub dtype: DType,
}

/// One op's median seconds, forward and forward + backward, and its reference's.
#[derive(Debug, Clone)]
pub struct OpTiming {
    pub name: &'static str,
    pub forward: f64,
    pub forward_backward: f64,
    /// The reference's name, and its seconds (forward + backward only where it is right).
    pub reference: Option<(&'static str, f64, Option<f64>)>,
}

type Op = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;

struct Case {
    name: &'static str,
    ours: Op,
    /// The reference, and whether its backward can be timed (candle's pooling backward is
    /// wrong for kernel ≠ stride, so only its forward is a fair comparison there).
    reference: Option<(&'static str, Op, bool)>,
}

/// Times every op on a random input of `settings`' shape.
pub fn measure(settings: &OpsSettings) -> Result<Vec<OpTiming>, BenchError> {
    let dev = &settings.device;
    let shape = (
        settings.batch,
        settings.channels,
        settings.size,
        settings.size,
    );
    let x = Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(settings.dtype)?;
    let median_secs = |f: &mut dyn FnMut() -> candle_core::Result<()>| {
        median_secs(settings.iters, || {
            f()?;
            dev.synchronize()
        })
    };
    let bias = Tensor::randn(0f32, 1.0, settings.channels, dev)?.to_dtype(settings.dtype)?;
    let mut timings = Vec::new();
    for case in cases(&bias) {
        let forward = median_secs(&mut || (case.ours)(&x).map(drop))?;
        let both = median_secs(&mut || forward_backward(&case.ours, &x))?;
        let reference = match &case.reference {
            Some((name, op, with_backward)) => {
                let f = median_secs(&mut || op(&x).map(drop))?;
                let b = match with_backward {
                    true => Some(median_secs(&mut || forward_backward(op, &x))?),
                    false => None,
                };
                Some((*name, f, b))
            }
            None => None,
        };
        timings.push(OpTiming {
            name: case.name,
            forward,
            forward_backward: both,
            reference,
        });
    }
    Ok(timings)
}

/// The ops at the input's shape; `bias` has one value per channel, and its gradient is part
/// of the backward (as a convolution's bias is).
fn cases(bias: &Tensor) -> Vec<Case> {
    let bias = Var::from_tensor(bias)
        .expect("a fresh tensor")
        .as_tensor()
        .clone();
    let fused_bias = bias.clone();
    vec![
        Case {
            name: "bias + relu",
            ours: Box::new(move |x| bias_relu(x, &fused_bias)),
            reference: Some((
                "candle broadcast_add + relu",
                Box::new(move |x| x.broadcast_add(&bias.reshape((1, (), 1, 1))?)?.relu()),
                true,
            )),
        },
        Case {
            name: "max_pool2d 2x2/2",
            ours: Box::new(|x| max_pool2d(x, 2, 2, 0, false)),
            reference: Some(("candle max_pool2d", Box::new(|x| x.max_pool2d(2)), true)),
        },
        Case {
            name: "avg_pool2d 2x2/2",
            ours: Box::new(|x| avg_pool2d(x, 2, 2, 0, false)),
            reference: Some(("candle avg_pool2d", Box::new(|x| x.avg_pool2d(2)), true)),
        },
        Case {
            name: "max_pool2d 3x3/2 ceil",
            ours: Box::new(|x| max_pool2d(x, 3, 2, 0, true)),
            reference: Some((
                "candle max_pool2d_with_stride(3, 2) (floor, forward only)",
                Box::new(|x| x.max_pool2d_with_stride(3, 2)),
                false,
            )),
        },
        Case {
            name: "max_pool2d 3x3/1 pad 1",
            ours: Box::new(|x| max_pool2d(x, 3, 1, 1, false)),
            reference: None,
        },
        Case {
            name: "avg_pool2d 5x5/3",
            ours: Box::new(|x| avg_pool2d(x, 5, 3, 0, true)),
            reference: None,
        },
        Case {
            name: "lrn 5",
            ours: Box::new(|x| lrn(x, 5, 1e-4, 0.75, 1.0)),
            reference: Some((
                "candle ops over 5 shifted slices",
                Box::new(lrn_by_slices),
                true,
            )),
        },
    ]
}

/// LRN from candle ops: zero-pad the squares along channels and add 5 shifted slices.
fn lrn_by_slices(x: &Tensor) -> candle_core::Result<Tensor> {
    let channels = x.dim(1)?;
    let padded = x.sqr()?.pad_with_zeros(1, 2, 2)?;
    let mut sum = padded.narrow(1, 0, channels)?;
    for shift in 1..5 {
        sum = (sum + padded.narrow(1, shift, channels)?)?;
    }
    let scale = ((sum * (1e-4 / 5.0))? + 1.0)?;
    x * scale.powf(-0.75)?
}

fn forward_backward(op: &Op, x: &Tensor) -> candle_core::Result<()> {
    let var = Var::from_tensor(x)?;
    let grads = op(var.as_tensor())?
        .to_dtype(DType::F32)?
        .sum_all()?
        .backward()?;
    drop(grads);
    Ok(())
}

fn median_secs(
    iters: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    f()?;
    let mut times = (0..iters.max(1))
        .map(|_| {
            let start = Instant::now();
            f().map(|()| start.elapsed().as_secs_f64())
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

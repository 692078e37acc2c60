//! `runner bench ops`: throughput of the custom ops (forward, and forward + backward) on the
//! CPU or a GPU, each next to a reference measured in the same run: candle's own pooling where
//! candle is right (kernel = stride, no padding), LRN written with candle ops (squares summed
//! over shifted channel slices), and a convolution's bias + ReLU as candle's two ops, the
//! approaches the custom ops replace.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor, Var};

use crate::model::ops::{avg_pool2d, bias_relu, lrn, max_pool2d};

#[derive(Debug, Clone, clap::Args)]
pub struct OpsBenchArgs {
    /// Batch size N of the NCHW input.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Channels C.
    #[arg(long, default_value_t = 64)]
    pub channels: usize,
    /// Height and width.
    #[arg(long, default_value_t = 56)]
    pub size: usize,
    /// Timed repetitions per measurement (the median is reported, after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// `cpu` or `cuda:<ordinal>`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Element type: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

type Op = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;

struct Case {
    name: &'static str,
    ours: Op,
    /// The reference, and whether its backward can be timed (candle's pooling backward is
    /// wrong for kernel ≠ stride, so only its forward is a fair comparison there).
    reference: Option<(&'static str, Op, bool)>,
}

pub fn run(args: &OpsBenchArgs) -> Result<()> {
    let dev = super::train::device(&args.device)?;
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => anyhow::bail!("--dtype {other}: expected f32 or bf16"),
    };
    let shape = (args.batch, args.channels, args.size, args.size);
    let x = Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(dtype)?;
    let elems = x.elem_count() as f64;
    println!(
        "ops bench: input {:?} {dtype:?} on {} ({} rayon threads), median of {} runs",
        x.dims(),
        args.device,
        rayon::current_num_threads(),
        args.iters
    );
    let median_secs = |f: &mut dyn FnMut() -> candle_core::Result<()>| {
        median_secs(args.iters, || {
            f()?;
            dev.synchronize()
        })
    };
    println!(
        "{:<24} {:>10} {:>10} {:>8} {:>12} {:>12} {:>8}  reference",
        "op", "fwd ms", "ref ms", "ratio", "fwd+bwd ms", "ref ms", "ratio"
    );
    for case in cases(&Tensor::randn(0f32, 1.0, args.channels, &dev)?.to_dtype(dtype)?) {
        let fwd = median_secs(&mut || (case.ours)(&x).map(drop))?;
        let both = median_secs(&mut || forward_backward(&case.ours, &x))?;
        let (ref_name, ref_fwd, ref_both) = match &case.reference {
            Some((name, op, with_bwd)) => {
                let f = median_secs(&mut || op(&x).map(drop))?;
                let b = if *with_bwd {
                    Some(median_secs(&mut || forward_backward(op, &x))?)
                } else {
                    None
                };
                (*name, Some(f), b)
            }
            None => ("none", None, None),
        };
        let ms = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.2}", s * 1e3));
        let ratio =
            |ours: f64, r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.2}x", r / ours));
        println!(
            "{:<24} {:>10} {:>10} {:>8} {:>12} {:>12} {:>8}  {ref_name}",
            case.name,
            ms(Some(fwd)),
            ms(ref_fwd),
            ratio(fwd, ref_fwd),
            ms(Some(both)),
            ms(ref_both),
            ratio(both, ref_both),
        );
        println!(
            "{:<24} forward {:.0} M input elements/s",
            "",
            elems / fwd / 1e6
        );
    }
    println!("ratio = reference time / our time (above 1: ours is faster)");
    Ok(())
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

fn median_secs(iters: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> Result<f64> {
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

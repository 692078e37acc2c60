//! `runner bench ops`: throughput of the custom ops (forward, and forward + backward) on the
//! CPU or a GPU, each next to the reference the library measures in the same run
//! ([`websieve::bench::ops`]), as a table of milliseconds and ratios.

use candle_core::DType;
use websieve::bench::ops::{measure, OpsSettings};

use super::{device, parse_dtype};

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
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: DType,
}

pub(super) fn run(args: &OpsBenchArgs) -> anyhow::Result<()> {
    let settings = OpsSettings {
        batch: args.batch,
        channels: args.channels,
        size: args.size,
        iters: args.iters,
        device: device(&args.device)?,
        dtype: args.dtype,
    };
    let dims = [args.batch, args.channels, args.size, args.size];
    let elems = dims.iter().product::<usize>() as f64;
    println!(
        "ops bench: input {dims:?} {:?} on {} ({} rayon threads), median of {} runs",
        args.dtype,
        args.device,
        rayon::current_num_threads(),
        args.iters
    );
    println!(
        "{:<24} {:>10} {:>10} {:>8} {:>12} {:>12} {:>8}  reference",
        "op", "fwd ms", "ref ms", "ratio", "fwd+bwd ms", "ref ms", "ratio"
    );
    for op in measure(&settings)? {
        let (ref_name, ref_fwd, ref_both) = match op.reference {
            Some((name, forward, both)) => (name, Some(forward), both),
            None => ("none", None, None),
        };
        let ms = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.2}", s * 1e3));
        let ratio =
            |ours: f64, r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.2}x", r / ours));
        println!(
            "{:<24} {:>10} {:>10} {:>8} {:>12} {:>12} {:>8}  {ref_name}",
            op.name,
            ms(Some(op.forward)),
            ms(ref_fwd),
            ratio(op.forward, ref_fwd),
            ms(Some(op.forward_backward)),
            ms(ref_both),
            ratio(op.forward_backward, ref_both),
        );
        println!(
            "{:<24} forward {:.0} M input elements/s",
            "",
            elems / op.forward / 1e6
        );
    }
    println!("ratio = reference time / our time (above 1: ours is faster)");
    Ok(())
}

//! Test support: compare a function's autograd gradient with central finite differences, in f64.

use candle_core::{Device, Result, Shape, Tensor, Var};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// f64 values uniform in [−1, 1).
pub(crate) fn random_values(shape: impl Into<Shape>, seed: u64) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f64> = (0..shape.elem_count())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// f64 values in [−1, 1], shuffled, no two closer than 2/n: a max stays the max under a
/// finite-difference nudge.
pub(crate) fn distinct_values(shape: impl Into<Shape>, seed: u64) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    let mut data: Vec<f64> = (0..n)
        .map(|i| -1.0 + 2.0 * i as f64 / n.max(2) as f64)
        .collect();
    data.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Panics unless the gradient of `sum(f(x) · r)` (r fixed random weights) from candle's
/// autograd equals central finite differences within `tol · (1 + |fd|)` at every element.
pub(crate) fn assert_gradient_matches(
    f: impl Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    tol: f64,
) -> Result<()> {
    const EPS: f64 = 1e-5;
    let weights = random_values(f(x)?.shape(), 99)?;
    let objective = |x: &Tensor| -> Result<Tensor> { (f(x)? * &weights)?.sum_all() };

    let var = Var::from_tensor(x)?;
    let grads = objective(var.as_tensor())?.backward()?;
    let analytic = grads
        .get(var.as_tensor())
        .expect("the objective depends on x")
        .flatten_all()?
        .to_vec1::<f64>()?;

    let base = x.flatten_all()?.to_vec1::<f64>()?;
    for (i, &a) in analytic.iter().enumerate() {
        let at = |delta: f64| -> Result<f64> {
            let mut nudged = base.clone();
            nudged[i] += delta;
            objective(&Tensor::from_vec(nudged, x.shape(), &Device::Cpu)?)?.to_vec0::<f64>()
        };
        let fd = (at(EPS)? - at(-EPS)?) / (2.0 * EPS);
        assert!(
            (a - fd).abs() <= tol * (1.0 + fd.abs()),
            "element {i} of shape {:?}: autograd {a} vs finite differences {fd}",
            x.dims()
        );
    }
    Ok(())
}

/// The first CUDA device, for tests that compare a CUDA result with the CPU's; `None` (the
/// test then prints "skipped" and passes) in a CPU build or where no GPU is visible.
pub(crate) fn cuda_device() -> Option<Device> {
    #[cfg(feature = "cuda")]
    if let Ok(device) = Device::new_cuda(0) {
        return Some(device);
    }
    eprintln!("skipped: no CUDA device");
    None
}

/// Largest `|a − b|` over the elements, divided by the largest `|a|` (at least 1e-12): the
/// relative error the CUDA-vs-CPU tests bound.
pub(crate) fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let values = |t: &Tensor| -> Result<Vec<f64>> {
        t.to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()
    };
    let (a, b) = (values(a)?, values(b)?);
    assert_eq!(a.len(), b.len(), "element counts differ");
    let scale = a.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
    Ok(worst / scale)
}

//! SGD with momentum and weight decay in Caffe's form, per-parameter multipliers, global
//! gradient-norm clipping, and a divergence guard on the loss. In: the trainable `Var`s by name,
//! each step's `GradStore` and lr. Out: updated `Var`s, step statistics, and momentum state for
//! checkpoints.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::update::{update, Coefficients};
use crate::recipe::check_optimizer;
use crate::recipe::params::SgdParams;

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("sgd: {0}")]
    BadSetting(String),
    #[error("sgd: parameter {name:?} is listed twice")]
    DuplicateParameter { name: String },
    #[error("sgd: no parameter named {name:?}")]
    UnknownParameter { name: String },
    #[error(
        "sgd: gradient of {param:?} is NaN or infinite at step {step}; weights left unchanged"
    )]
    NonFiniteGradient { step: u64, param: String },
    #[error("sgd state: momentum for {name:?} {problem}")]
    StateMismatch { name: String, problem: String },
}

pub type Result<T> = std::result::Result<T, OptimError>;

/// What one step did, for the metrics log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the raw gradients (before clipping and decay).
    pub grad_norm: f64,
    /// Whether clipping scaled the gradients down.
    pub clipped: bool,
}

/// The optimizer's resumable state: steps taken and each parameter's momentum buffer.
#[derive(Debug, Clone)]
pub struct SgdState {
    pub step: u64,
    pub momentum: HashMap<String, Tensor>,
}

struct Param {
    name: String,
    var: Var,
    lr_mult: f64,
    decay_mult: f64,
    history: Tensor,
}

/// Caffe's SGD: per parameter, `v ← m·v + lr·lr_mult·(g + wd·decay_mult·w)`, `w ← w − v`, after
/// scaling all gradients by `clip/‖g‖` when the global norm exceeds `clip` (Caffe's
/// `clip_gradients`, applied before decay).
pub struct Sgd {
    params: Vec<Param>,
    momentum: f64,
    weight_decay: f64,
    clip_grad_norm: Option<f64>,
    step: u64,
}

impl Sgd {
    /// Momentum buffers start at zero. Multipliers follow [`Sgd::default_multipliers`].
    pub fn new(vars: Vec<(String, Var)>, params: &SgdParams) -> Result<Sgd> {
        // Recipes are checked when they load; settings built in code get the same checks.
        check_optimizer(params).map_err(OptimError::BadSetting)?;
        let mut seen = std::collections::HashSet::new();
        let params_out = vars
            .into_iter()
            .map(|(name, var)| {
                if !seen.insert(name.clone()) {
                    return Err(OptimError::DuplicateParameter { name });
                }
                let (lr_mult, decay_mult) = Self::default_multipliers(&name, params.bias_lr_mult);
                let history = var.as_tensor().zeros_like()?;
                Ok(Param {
                    name,
                    var,
                    lr_mult,
                    decay_mult,
                    history,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Sgd {
            params: params_out,
            momentum: params.momentum,
            weight_decay: params.weight_decay,
            clip_grad_norm: params.clip_grad_norm,
            step: 0,
        })
    }

    /// (lr multiplier, decay multiplier) by name: a parameter whose last `.`-separated segment
    /// is `bias` gets `(bias_lr_mult, 0)` (Caffe's GoogLeNet prototxt), every other `(1, 1)`.
    pub fn default_multipliers(name: &str, bias_lr_mult: f64) -> (f64, f64) {
        if name.rsplit('.').next() == Some("bias") {
            (bias_lr_mult, 0.0)
        } else {
            (1.0, 1.0)
        }
    }

    /// Overrides one parameter's multipliers (e.g. no decay for batch-norm scales).
    pub fn set_multipliers(&mut self, name: &str, lr_mult: f64, decay_mult: f64) -> Result<()> {
        let param = self
            .params
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| OptimError::UnknownParameter { name: name.into() })?;
        param.lr_mult = lr_mult;
        param.decay_mult = decay_mult;
        Ok(())
    }

    /// Steps taken so far (the index of the next step).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update at learning rate `lr`. Parameters without a gradient in `grads` are left
    /// alone (momentum and decay included): they took no part in this step's graph. A NaN or
    /// infinite gradient is an error naming the step and the first such parameter, and nothing
    /// is updated.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepStats> {
        let squares = match self.gradient_squares(grads)? {
            Some(squares) => squares.to_vec1::<f64>()?,
            None => Vec::new(),
        };
        self.apply(grads, lr, &squares)
    }

    /// The squared L2 norm of each present gradient, in parameter order, as one f64 tensor on
    /// the gradients' device (`None` when no parameter has a gradient): what [`Sgd::apply`]
    /// needs, left on the device so that a trainer can fetch it with its other statistics in
    /// one copy.
    pub fn gradient_squares(&self, grads: &GradStore) -> Result<Option<Tensor>> {
        let squares = self
            .params
            .iter()
            .filter_map(|p| grads.get(p.var.as_tensor()))
            .map(|g| g.sqr()?.sum_all()?.to_dtype(DType::F64))
            .collect::<candle_core::Result<Vec<_>>>()?;
        match squares.is_empty() {
            true => Ok(None),
            false => Ok(Some(Tensor::stack(&squares, 0)?)),
        }
    }

    /// [`Sgd::step`] with the values of [`Sgd::gradient_squares`] already fetched.
    pub fn apply(&mut self, grads: &GradStore, lr: f64, squares: &[f64]) -> Result<StepStats> {
        let present: Vec<(usize, &Tensor)> = self
            .params
            .iter()
            .enumerate()
            .filter_map(|(i, p)| grads.get(p.var.as_tensor()).map(|g| (i, g)))
            .collect();
        assert_eq!(
            squares.len(),
            present.len(),
            "one square per present gradient"
        );
        if let Some(k) = squares.iter().position(|s| !s.is_finite()) {
            return Err(OptimError::NonFiniteGradient {
                step: self.step,
                param: self.params[present[k].0].name.clone(),
            });
        }
        let grad_norm = squares.iter().sum::<f64>().sqrt();
        let clip_scale = self
            .clip_grad_norm
            .filter(|&clip| grad_norm > clip)
            .map(|clip| clip / grad_norm);
        for &(i, grad) in &present {
            let param = &mut self.params[i];
            let k = Coefficients {
                clip: clip_scale,
                decay: self.weight_decay * param.decay_mult,
                momentum: self.momentum,
                lr: lr * param.lr_mult,
            };
            param.history = update(&param.var, &param.history, grad, k)?;
        }
        self.step += 1;
        Ok(StepStats {
            grad_norm,
            clipped: clip_scale.is_some(),
        })
    }

    /// The momentum buffers by parameter name, and the step count.
    pub fn state(&self) -> SgdState {
        SgdState {
            step: self.step,
            momentum: self
                .params
                .iter()
                .map(|p| (p.name.clone(), p.history.clone()))
                .collect(),
        }
    }

    /// Restores a state from [`Sgd::state`] (e.g. read from a checkpoint): every parameter must
    /// have a buffer of its shape and no other names may appear. Buffers move to each
    /// parameter's device and dtype.
    pub fn load_state(&mut self, state: &SgdState) -> Result<()> {
        let mismatch = |name: &str, problem: String| OptimError::StateMismatch {
            name: name.into(),
            problem,
        };
        if let Some(extra) = state
            .momentum
            .keys()
            .find(|k| !self.params.iter().any(|p| &p.name == *k))
        {
            return Err(mismatch(extra, "belongs to no parameter".into()));
        }
        let mut restored = Vec::with_capacity(self.params.len());
        for param in &self.params {
            let buffer = state
                .momentum
                .get(&param.name)
                .ok_or_else(|| mismatch(&param.name, "is missing".into()))?;
            let weights = param.var.as_tensor();
            if buffer.dims() != weights.dims() {
                return Err(mismatch(
                    &param.name,
                    format!(
                        "has shape {:?}, the parameter {:?}",
                        buffer.dims(),
                        weights.dims()
                    ),
                ));
            }
            restored.push(
                buffer
                    .to_device(weights.device())?
                    .to_dtype(weights.dtype())?,
            );
        }
        for (param, buffer) in self.params.iter_mut().zip(restored) {
            param.history = buffer;
        }
        self.step = state.step;
        Ok(())
    }
}

/// Why training should stop or roll back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Divergence {
    #[error("loss is {loss} at step {step}")]
    NonFiniteLoss { step: u64, loss: f64 },
    #[error("loss {loss} at step {step} is more than {factor}× its running mean {running_mean}")]
    LossSpike {
        step: u64,
        loss: f64,
        running_mean: f64,
        factor: f64,
    },
}

/// Watches the loss of each step for NaN/Inf and for spikes above `spike_factor` times an
/// exponential running mean of the healthy losses (weight 1/20 per step, so about the last 20
/// steps). The first [`DivergenceGuard::WARMUP_STEPS`] steps only feed the mean: early losses
/// swing too much to judge.
#[derive(Debug, Clone)]
pub struct DivergenceGuard {
    spike_factor: f64,
    running_mean: Option<f64>,
    seen: u64,
}

impl DivergenceGuard {
    pub const WARMUP_STEPS: u64 = 20;
    const MEAN_WEIGHT: f64 = 1.0 / 20.0;

    pub fn new(spike_factor: f64) -> Self {
        Self {
            spike_factor,
            running_mean: None,
            seen: 0,
        }
    }

    /// Judges step `step`'s loss; a healthy loss updates the running mean.
    pub fn check(&mut self, step: u64, loss: f64) -> std::result::Result<(), Divergence> {
        if !loss.is_finite() {
            return Err(Divergence::NonFiniteLoss { step, loss });
        }
        if let Some(mean) = self.running_mean {
            if self.seen >= Self::WARMUP_STEPS && loss > self.spike_factor * mean {
                return Err(Divergence::LossSpike {
                    step,
                    loss,
                    running_mean: mean,
                    factor: self.spike_factor,
                });
            }
        }
        self.running_mean = Some(match self.running_mean {
            Some(mean) => mean + Self::MEAN_WEIGHT * (loss - mean),
            None => loss,
        });
        self.seen += 1;
        Ok(())
    }

    /// Forgets the history, e.g. after rolling back to a checkpoint.
    pub fn reset(&mut self) {
        *self = Self::new(self.spike_factor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn settings(momentum: f64, weight_decay: f64, clip: Option<f64>) -> SgdParams {
        SgdParams {
            lr: 0.1,
            momentum,
            weight_decay,
            clip_grad_norm: clip,
            ..crate::recipe::Recipe::default().train.optimizer
        }
    }

    fn vars() -> Vec<(String, Var)> {
        let dev = Device::Cpu;
        vec![
            (
                "fc.weight".into(),
                Var::new(&[1.0f64, -2.0, 0.5], &dev).unwrap(),
            ),
            ("fc.bias".into(), Var::new(&[0.25f64], &dev).unwrap()),
        ]
    }

    /// Gradients of `½‖w − 3‖² + ½‖b + 1‖²`.
    fn grads(vars: &[(String, Var)]) -> GradStore {
        let w = vars[0].1.as_tensor();
        let b = vars[1].1.as_tensor();
        let loss = ((w - 3.0).unwrap().sqr().unwrap().sum_all().unwrap()
            + (b + 1.0).unwrap().sqr().unwrap().sum_all().unwrap())
        .unwrap()
            * 0.5;
        loss.unwrap().backward().unwrap()
    }

    fn values(vars: &[(String, Var)]) -> Vec<Vec<f64>> {
        vars.iter()
            .map(|(_, v)| v.as_tensor().to_vec1::<f64>().unwrap())
            .collect()
    }

    /// A momentum buffer that tracked the graph would keep every earlier step's activations
    /// alive (it did: 24 GB after 600 steps of a small GoogLeNet).
    #[test]
    fn momentum_buffers_hold_no_graph() {
        let vars = vars();
        let mut sgd = Sgd::new(vars.clone(), &settings(0.9, 0.1, None)).unwrap();
        for _ in 0..3 {
            sgd.step(&grads(&vars), 0.1).unwrap();
        }
        for (name, buffer) in sgd.state().momentum {
            assert!(
                !buffer.track_op(),
                "{name}'s momentum buffer tracks a graph"
            );
        }
    }

    #[test]
    fn biases_get_double_lr_and_no_decay() {
        assert_eq!(
            Sgd::default_multipliers("inception_3a.1x1.bias", 2.0),
            (2.0, 0.0)
        );
        assert_eq!(
            Sgd::default_multipliers("inception_3a.1x1.weight", 2.0),
            (1.0, 1.0)
        );
        assert_eq!(Sgd::default_multipliers("biased.weight", 2.0), (1.0, 1.0));
    }

    #[test]
    fn first_step_without_momentum_is_plain_gradient_descent_with_decay() {
        let vars = vars();
        let mut sgd = Sgd::new(vars.clone(), &settings(0.9, 0.1, None)).unwrap();
        let stats = sgd.step(&grads(&vars), 0.1).unwrap();
        // weight: w − 0.1·((w − 3) + 0.1·w); bias: b − 0.2·(b + 1).
        let w = [1.0, -2.0, 0.5].map(|w: f64| w - 0.1 * ((w - 3.0) + 0.1 * w));
        let got = values(&vars);
        for (g, want) in got[0].iter().zip(w) {
            assert!((g - want).abs() < 1e-15);
        }
        assert!((got[1][0] - (0.25 - 0.2 * 1.25)).abs() < 1e-15);
        let norm = (4.0f64 + 25.0 + 6.25 + 1.5625).sqrt();
        assert!((stats.grad_norm - norm).abs() < 1e-12);
        assert!(!stats.clipped);
    }

    #[test]
    fn clipping_scales_the_gradient_to_the_bound() {
        let vars = vars();
        let mut sgd = Sgd::new(vars.clone(), &settings(0.0, 0.0, Some(1.0))).unwrap();
        let stats = sgd.step(&grads(&vars), 1.0).unwrap();
        assert!(stats.clipped);
        let scale = 1.0 / stats.grad_norm;
        let got = values(&vars);
        assert!((got[0][0] - (1.0 - (1.0 - 3.0) * scale)).abs() < 1e-15);
        assert!((got[1][0] - (0.25 - 2.0 * 1.25 * scale)).abs() < 1e-15);
    }

    #[test]
    fn resuming_from_state_is_bit_identical() {
        let straight = vars();
        let mut sgd = Sgd::new(straight.clone(), &settings(0.9, 0.01, Some(5.0))).unwrap();
        for _ in 0..5 {
            sgd.step(&grads(&straight), 0.1).unwrap();
        }

        let resumed = vars();
        let mut first = Sgd::new(resumed.clone(), &settings(0.9, 0.01, Some(5.0))).unwrap();
        for _ in 0..3 {
            first.step(&grads(&resumed), 0.1).unwrap();
        }
        let state = first.state();
        assert_eq!(state.step, 3);
        let mut second = Sgd::new(resumed.clone(), &settings(0.9, 0.01, Some(5.0))).unwrap();
        second.load_state(&state).unwrap();
        for _ in 0..2 {
            second.step(&grads(&resumed), 0.1).unwrap();
        }
        assert_eq!(values(&straight), values(&resumed));
        assert_eq!(second.step_count(), 5);
    }

    #[test]
    fn non_finite_gradient_names_step_and_parameter_and_changes_nothing() {
        let vars = vars();
        let mut sgd = Sgd::new(vars.clone(), &settings(0.9, 0.0, None)).unwrap();
        sgd.step(&grads(&vars), 0.1).unwrap();
        let before = values(&vars);
        let mut bad = grads(&vars);
        let b = vars[1].1.as_tensor();
        bad.insert(b, Tensor::new(&[f64::NAN], &Device::Cpu).unwrap());
        let err = sgd.step(&bad, 0.1).unwrap_err().to_string();
        assert_eq!(
            err,
            "sgd: gradient of \"fc.bias\" is NaN or infinite at step 1; weights left unchanged"
        );
        assert_eq!(values(&vars), before);
    }

    #[test]
    fn parameters_without_gradient_are_left_alone() {
        let mut all = vars();
        all.push((
            "unused.weight".into(),
            Var::new(&[7.0f64], &Device::Cpu).unwrap(),
        ));
        let mut sgd = Sgd::new(all.clone(), &settings(0.9, 0.5, None)).unwrap();
        sgd.step(&grads(&all), 0.1).unwrap();
        assert_eq!(all[2].1.as_tensor().to_vec1::<f64>().unwrap(), vec![7.0]);
    }

    #[test]
    fn bad_settings_and_states_are_rejected() {
        let err = Sgd::new(vars(), &settings(1.0, 0.0, None)).err().unwrap();
        assert_eq!(
            err.to_string(),
            "sgd: `train.optimizer.momentum`: 1 is out of range: expected [0, 1)"
        );
        let mut twice = vars();
        twice.push(twice[0].clone());
        let err = Sgd::new(twice, &settings(0.9, 0.0, None)).err().unwrap();
        assert_eq!(
            err.to_string(),
            "sgd: parameter \"fc.weight\" is listed twice"
        );

        let mut sgd = Sgd::new(vars(), &settings(0.9, 0.0, None)).unwrap();
        let mut state = sgd.state();
        state.momentum.insert(
            "fc.bias".into(),
            Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap(),
        );
        let err = sgd.load_state(&state).unwrap_err().to_string();
        assert_eq!(
            err,
            "sgd state: momentum for \"fc.bias\" has shape [2], the parameter [1]"
        );
        state.momentum.remove("fc.bias");
        let err = sgd.load_state(&state).unwrap_err().to_string();
        assert_eq!(err, "sgd state: momentum for \"fc.bias\" is missing");
    }

    #[test]
    fn guard_flags_nan_and_spikes_after_warmup() {
        let mut guard = DivergenceGuard::new(3.0);
        // A spike during warm-up only feeds the mean.
        guard.check(0, 1.0).unwrap();
        guard.check(1, 5.0).unwrap();
        for step in 2..DivergenceGuard::WARMUP_STEPS {
            guard.check(step, 1.0).unwrap();
        }
        guard.check(20, 2.0).unwrap();
        assert!(matches!(
            guard.check(21, 10.0),
            Err(Divergence::LossSpike { step: 21, .. })
        ));
        assert_eq!(
            guard.check(22, f64::NAN).unwrap_err().to_string(),
            "loss is NaN at step 22"
        );
        guard.reset();
        guard.check(0, 10.0).unwrap();
    }
}

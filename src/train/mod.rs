//! Training: losses, SGD with momentum and weight decay, schedules, checkpoints and resume: the `train` stage. In: batches, labels, λ, topic vectors. Out: checkpoints and metrics.

pub mod loss;
pub mod optim;
pub mod schedule;

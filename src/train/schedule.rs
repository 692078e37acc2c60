//! Learning-rate schedules in iterations: Caffe's `lr_policy` formulas (fixed, step,
//! multistep, poly), cosine annealing, and a linear warm-up (Goyal et al. 2017). In: the
//! recipe's schedule, base lr, iteration, total iterations. Out: the lr for that iteration.

use crate::recipe::params::{LrPolicy, Schedule};

/// The lr at iteration `iter` (0-based) of `max_iter`: the policy's value, times the warm-up
/// factor during the first `warmup_iterations`, which rises linearly from
/// `warmup_start_factor` at iteration 0 to 1 at `warmup_iterations` (as Detectron's
/// `WarmupMultiStepLR`, so warm-up composes with any policy). Poly and cosine hold their final
/// value past `max_iter`.
pub fn learning_rate(schedule: &Schedule, base_lr: f64, iter: u64, max_iter: u64) -> f64 {
    policy_rate(&schedule.policy, base_lr, iter, max_iter) * warmup_factor(schedule, iter)
}

fn policy_rate(policy: &LrPolicy, base_lr: f64, iter: u64, max_iter: u64) -> f64 {
    let progress = iter.min(max_iter) as f64 / max_iter.max(1) as f64;
    match policy {
        LrPolicy::Fixed => base_lr,
        LrPolicy::Step { gamma, step_size } => {
            base_lr * gamma.powf((iter / (*step_size).max(1)) as f64)
        }
        LrPolicy::Multistep { gamma, steps } => {
            let passed = steps.iter().filter(|&&s| iter >= s).count();
            base_lr * gamma.powi(passed as i32)
        }
        LrPolicy::Poly { power } => base_lr * (1.0 - progress).powf(*power),
        LrPolicy::Cosine { min_lr } => {
            min_lr + (base_lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
        }
    }
}

fn warmup_factor(schedule: &Schedule, iter: u64) -> f64 {
    if iter >= schedule.warmup_iterations {
        return 1.0;
    }
    let alpha = iter as f64 / schedule.warmup_iterations as f64;
    schedule.warmup_start_factor * (1.0 - alpha) + alpha
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(policy: LrPolicy) -> Schedule {
        Schedule {
            policy,
            warmup_start_factor: 1.0,
            ..crate::recipe::Recipe::default().train.schedule
        }
    }

    fn assert_rates(s: &Schedule, max_iter: u64, expected: &[(u64, f64)]) {
        for &(iter, want) in expected {
            let got = learning_rate(s, 0.01, iter, max_iter);
            assert!((got - want).abs() < 1e-15, "iter {iter}: {got} vs {want}");
        }
    }

    // Expected values are Caffe's formulas (sgd_solver.cpp GetLearningRate) worked by hand
    // for base_lr = 0.01.

    #[test]
    fn fixed_never_changes() {
        assert_rates(
            &schedule(LrPolicy::Fixed),
            100,
            &[(0, 0.01), (99, 0.01), (1000, 0.01)],
        );
    }

    #[test]
    fn step_is_gamma_to_the_floor_of_iter_over_step_size() {
        let s = schedule(LrPolicy::Step {
            gamma: 0.1,
            step_size: 100,
        });
        assert_rates(
            &s,
            1000,
            &[(0, 0.01), (99, 0.01), (100, 0.001), (250, 0.0001)],
        );
    }

    #[test]
    fn multistep_counts_the_steps_passed() {
        let s = schedule(LrPolicy::Multistep {
            gamma: 0.5,
            steps: vec![10, 20],
        });
        assert_rates(
            &s,
            100,
            &[
                (9, 0.01),
                (10, 0.005),
                (19, 0.005),
                (20, 0.0025),
                (99, 0.0025),
            ],
        );
    }

    #[test]
    fn poly_is_one_minus_progress_to_the_power() {
        let s = schedule(LrPolicy::Poly { power: 0.5 });
        // (1 − 75/100)^0.5 = 0.5; Caffe's quick_solver uses power 0.5 for GoogLeNet.
        assert_rates(&s, 100, &[(0, 0.01), (75, 0.005), (100, 0.0), (150, 0.0)]);
        let linear = schedule(LrPolicy::Poly { power: 1.0 });
        assert_rates(&linear, 400, &[(100, 0.0075), (300, 0.0025)]);
    }

    #[test]
    fn cosine_anneals_to_min_lr() {
        let s = schedule(LrPolicy::Cosine { min_lr: 0.001 });
        // At half way cos(π/2) = 0: min + (base − min)/2.
        assert_rates(
            &s,
            100,
            &[(0, 0.01), (50, 0.0055), (100, 0.001), (200, 0.001)],
        );
        let quarter = 0.001 + 0.009 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0;
        assert_rates(&s, 100, &[(25, quarter)]);
    }

    #[test]
    fn warmup_ramps_linearly_then_hands_over() {
        let s = Schedule {
            policy: LrPolicy::Step {
                gamma: 0.1,
                step_size: 20,
            },
            warmup_iterations: 10,
            warmup_start_factor: 0.1,
        };
        assert_rates(
            &s,
            100,
            &[
                (0, 0.001),
                (5, 0.0055),
                (9, 0.0091),
                (10, 0.01),
                (20, 0.001),
            ],
        );
    }

    /// The schedules side by side over a 1000-iteration run at base lr 0.01, for the docs.
    /// Step: γ 0.1 every 300; multistep: γ 0.1 at 500 and 800; poly: power 0.5 (Caffe's
    /// GoogLeNet quick_solver); cosine to 1e-4; the last column is poly with 100 iterations of
    /// warm-up from 0.1·lr.
    #[test]
    fn schedule_table() {
        let policies = [
            LrPolicy::Fixed,
            LrPolicy::Step {
                gamma: 0.1,
                step_size: 300,
            },
            LrPolicy::Multistep {
                gamma: 0.1,
                steps: vec![500, 800],
            },
            LrPolicy::Poly { power: 0.5 },
            LrPolicy::Cosine { min_lr: 1e-4 },
        ];
        let warm_poly = Schedule {
            policy: LrPolicy::Poly { power: 0.5 },
            warmup_iterations: 100,
            warmup_start_factor: 0.1,
        };
        let mut table =
            String::from("iter  fixed     step      multistep poly      cosine    warm+poly\n");
        for iter in [0, 50, 100, 299, 300, 500, 750, 800, 999, 1000] {
            table += &format!("{iter:<5}");
            for policy in &policies {
                table += &format!(
                    " {:<9.3e}",
                    learning_rate(&schedule(policy.clone()), 0.01, iter, 1000)
                );
            }
            table += &format!(" {:.3e}\n", learning_rate(&warm_poly, 0.01, iter, 1000));
        }
        insta::assert_snapshot!(table);
    }
}

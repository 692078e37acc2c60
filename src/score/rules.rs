//! The numbers of the `score` stage, on plain vectors: class means, similarities, which
//! samples the cleaning rule discards, λ maps, and noise-detection metrics.

use super::{ScoreError, TopicRows};
use crate::recipe::params::{
    Calibration, ClassMean, CleanParams, CleanRule, LabelParams, LambdaMap, Similarity,
};

/// Mean topic vector of each class over the samples `include` holds (all without it; a class
/// without samples gets zeros), in one pass over the topic vectors; every vector must have as
/// many topics as the first.
pub fn class_means(
    topics: &dyn TopicRows,
    labels: &[u32],
    classes: usize,
    include: Option<&[bool]>,
) -> Result<Vec<Vec<f64>>, ScoreError> {
    let mut sums: Vec<Vec<f64>> = Vec::new();
    let mut counts = vec![0usize; classes];
    let mut mismatch = None;
    topics.for_each_row(&mut |i, theta| {
        if sums.is_empty() {
            sums = vec![vec![0.0f64; theta.len()]; classes];
        }
        if theta.len() != sums[0].len() {
            mismatch.get_or_insert((i, theta.len(), sums[0].len()));
            return;
        }
        if include.is_some_and(|inc| !inc[i]) {
            return;
        }
        let label = labels[i] as usize;
        counts[label] += 1;
        for (s, &t) in sums[label].iter_mut().zip(theta) {
            *s += t as f64;
        }
    })?;
    if let Some((id, found, k)) = mismatch {
        return Err(ScoreError::Inputs(format!(
            "sample {id} has {found} topics, sample 0 has {k}"
        )));
    }
    for (sum, &n) in sums.iter_mut().zip(&counts) {
        sum.iter_mut().for_each(|s| *s /= n.max(1) as f64);
    }
    Ok(sums)
}

/// Similarity of a topic vector to its class mean. Cosine of a zero vector is 0.
pub fn similarity(kind: Similarity, theta: &[f32], mean: &[f64]) -> f64 {
    let dot: f64 = theta.iter().zip(mean).map(|(&t, &m)| t as f64 * m).sum();
    match kind {
        Similarity::Dot => dot,
        Similarity::Cosine => {
            let norm_t = theta
                .iter()
                .map(|&t| (t as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm_m = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
            if norm_t == 0.0 || norm_m == 0.0 {
                0.0
            } else {
                dot / (norm_t * norm_m)
            }
        }
    }
}

/// Every sample's similarity to the mean of its (given) class, the means estimated as `mean`
/// says: two passes over the topic vectors, and two more per round of a trimmed mean.
pub fn scores(
    topics: &dyn TopicRows,
    labels: &[u32],
    classes: usize,
    kind: Similarity,
    mean: ClassMean,
) -> Result<Vec<f64>, ScoreError> {
    let score_all = |means: &[Vec<f64>]| -> Result<Vec<f64>, ScoreError> {
        let mut scores = Vec::with_capacity(labels.len());
        topics.for_each_row(&mut |i, theta| {
            scores.push(similarity(kind, theta, &means[labels[i] as usize]))
        })?;
        Ok(scores)
    };
    let mut means = class_means(topics, labels, classes, None)?;
    if let ClassMean::Trimmed { share, rounds } = mean {
        for _ in 0..rounds {
            let scores = score_all(&means)?;
            let mut include = vec![true; scores.len()];
            for members in by_class_ascending(&scores, labels, classes) {
                let left_out = (share * members.len() as f64).floor() as usize;
                for &i in &members[..left_out] {
                    include[i] = false;
                }
            }
            means = class_means(topics, labels, classes, Some(&include))?;
        }
    }
    score_all(&means)
}

/// Puts every class's scores on one scale, as `calibration` says; within a class the order is
/// kept, so rules that cut each class by its own ranks decide the same.
pub fn calibrate(scores: &mut [f64], labels: &[u32], classes: usize, calibration: Calibration) {
    if calibration == Calibration::None {
        return;
    }
    for members in by_class_ascending(scores, labels, classes) {
        let median = |sorted: &[f64]| match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        let values: Vec<f64> = members.iter().map(|&i| scores[i]).collect();
        let center = median(&values);
        let mut deviations: Vec<f64> = values.iter().map(|v| (v - center).abs()).collect();
        deviations.sort_by(f64::total_cmp);
        // 1.4826 · MAD estimates the standard deviation of normal scores; a class whose
        // scores mostly tie has no spread to measure, and keeps its differences as they are.
        let spread = 1.4826 * median(&deviations);
        let scale = if spread > 0.0 { spread } else { 1.0 };
        for &i in &members {
            scores[i] = (scores[i] - center) / scale;
        }
    }
}

/// Sample indices of each class, lowest score first (ties by index).
pub fn by_class_ascending(scores: &[f64], labels: &[u32], classes: usize) -> Vec<Vec<usize>> {
    let mut members = vec![Vec::new(); classes];
    for (i, &label) in labels.iter().enumerate() {
        members[label as usize].push(i);
    }
    for m in &mut members {
        m.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    }
    members
}

/// Which samples the cleaning rule keeps. Each class discards its lowest-scored samples:
/// as many as score below the threshold, or the rule's fraction of the class; a class with
/// fewer than `small_class` samples discards `small_class_factor` times that many.
pub fn kept(scores: &[f64], labels: &[u32], classes: usize, clean: &CleanParams) -> Vec<bool> {
    let mut keep = vec![true; scores.len()];
    if clean.rule == CleanRule::Oracle {
        // Not a rule on scores: [`oracle_kept`] decides from the truth file.
        return keep;
    }
    for members in by_class_ascending(scores, labels, classes) {
        let n = members.len();
        let by_rule = match clean.rule {
            CleanRule::None => 0.0,
            CleanRule::Threshold(t) => members.iter().filter(|&&i| scores[i] < t).count() as f64,
            CleanRule::Fraction(f) => f * n as f64,
            CleanRule::Oracle => 0.0,
        };
        let factor = if n < clean.small_class {
            clean.small_class_factor
        } else {
            1.0
        };
        let discard = ((by_rule * factor).round() as usize).min(n);
        for &i in &members[..discard] {
            keep[i] = false;
        }
    }
    keep
}

/// The oracle's choice: the samples the truth file says are labelled correctly (`noisy` is
/// `Some(false)`); a sample the truth file does not list is discarded with the noisy ones.
pub fn oracle_kept(noisy: &[Option<bool>]) -> Vec<bool> {
    noisy.iter().map(|n| *n == Some(false)).collect()
}

/// Loss weight λ ∈ [0, 1] of every sample (1 everywhere for hard labels).
pub fn lambdas(scores: &[f64], labels: &[u32], classes: usize, mode: &LabelParams) -> Vec<f64> {
    let map = match mode {
        LabelParams::Hard => return vec![1.0; scores.len()],
        LabelParams::Soft { lambda } => *lambda,
    };
    match map {
        LambdaMap::Ratio { s0 } => scores.iter().map(|&s| (s / s0).clamp(0.0, 1.0)).collect(),
        LambdaMap::Sigmoid { center, scale } => scores
            .iter()
            .map(|&s| 1.0 / (1.0 + (-(s - center) / scale).exp()))
            .collect(),
        LambdaMap::Rank { min } => {
            let mut out = vec![1.0; scores.len()];
            for members in by_class_ascending(scores, labels, classes) {
                let ranks = tied_ranks(&members.iter().map(|&i| scores[i]).collect::<Vec<_>>());
                let top = (members.len().max(2) - 1) as f64;
                for (&i, r) in members.iter().zip(ranks) {
                    // Clamped: min + (1 − min) can round to just above 1.
                    out[i] = (min + (1.0 - min) * r / top).min(1.0);
                }
                if members.len() == 1 {
                    out[members[0]] = 1.0;
                }
            }
            out
        }
    }
}

/// Each value's rank within its class, in [0, 1]: 0 the class's lowest, 1 its highest, ties
/// sharing their mean rank, a class of one at 1.
pub fn class_ranks(values: &[f64], labels: &[u32], classes: usize) -> Vec<f64> {
    let mut out = vec![0.0; labels.len()];
    for members in by_class_ascending(values, labels, classes) {
        let sorted: Vec<f64> = members.iter().map(|&i| values[i]).collect();
        let top = members.len().saturating_sub(1) as f64;
        for (&i, rank) in members.iter().zip(tied_ranks(&sorted)) {
            out[i] = if top > 0.0 { rank / top } else { 1.0 };
        }
    }
    out
}

/// Signals combined into one score: the weighted mean of their [`class_ranks`]. Every class
/// is on one scale, and a monotone rescaling of any signal changes nothing. Signals of
/// weight 0 are not read.
pub fn combine(signals: &[(&[f64], f64)], labels: &[u32], classes: usize) -> Vec<f64> {
    let total: f64 = signals.iter().map(|(_, w)| w).sum();
    let mut out = vec![0.0; labels.len()];
    for &(values, weight) in signals.iter().filter(|(_, w)| *w > 0.0) {
        for (o, rank) in out.iter_mut().zip(class_ranks(values, labels, classes)) {
            *o += weight / total * rank;
        }
    }
    out
}

/// 0-based ranks of ascending values, ties sharing their mean rank.
fn tied_ranks(sorted: &[f64]) -> Vec<f64> {
    let mut ranks = vec![0.0; sorted.len()];
    let mut start = 0;
    while start < sorted.len() {
        let mut end = start + 1;
        while end < sorted.len() && sorted[end] == sorted[start] {
            end += 1;
        }
        let mean = (start + end - 1) as f64 / 2.0;
        ranks[start..end].iter_mut().for_each(|r| *r = mean);
        start = end;
    }
    ranks
}

/// Area under the ROC curve of detecting `positive` samples by LOW score (Mann–Whitney U,
/// ties counted half): 1 when every positive scores below every negative, 0.5 for chance.
/// `None` without both classes.
pub fn auc_low_is_positive(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let ranks = tied_ranks(&order.iter().map(|&i| scores[i]).collect::<Vec<_>>());
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    // Sum of the negatives' (1-based) ranks: how often a negative outranks a positive.
    let rank_sum_neg: f64 = order
        .iter()
        .zip(&ranks)
        .filter(|(&i, _)| !positive[i])
        .map(|(_, r)| r + 1.0)
        .sum();
    Some((rank_sum_neg - n_neg * (n_neg + 1.0) / 2.0) / (n_pos * n_neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(rule: CleanRule, small_class: usize, factor: f64) -> CleanParams {
        CleanParams {
            rule,
            small_class,
            small_class_factor: factor,
            ..crate::recipe::Recipe::default().clean
        }
    }

    #[test]
    fn dot_and_cosine_on_hand_made_vectors() {
        // Class 0: (1,0) and (0.5,0.5) → mean (0.75, 0.25).
        let topics = vec![vec![1.0, 0.0], vec![0.5, 0.5], vec![0.0, 1.0]];
        let labels = [0, 0, 1];
        let dot = scores(&topics, &labels, 2, Similarity::Dot, ClassMean::All).unwrap();
        assert_eq!(dot, [0.75, 0.5, 1.0]);
        let cos = scores(&topics, &labels, 2, Similarity::Cosine, ClassMean::All).unwrap();
        let norm = (0.75f64 * 0.75 + 0.25 * 0.25).sqrt();
        assert!((cos[0] - 0.75 / norm).abs() < 1e-12);
        assert!((cos[1] - 0.5 / (norm * 0.5f64.sqrt())).abs() < 1e-12);
        assert!((cos[2] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_trimmed_mean_leaves_the_lowest_scored_share_out() {
        // Class 0: 7 samples at (1,0), 3 at (0,1); class 1: one at (0,1). The plain mean of
        // class 0 is (0.7, 0.3); left without its lowest-scored 30% (the three at (0,1)) it is
        // (1, 0), where those three score 0.
        let mut topics = vec![vec![1.0f32, 0.0]; 7];
        topics.extend(vec![vec![0.0, 1.0]; 4]);
        let mut labels = vec![0u32; 10];
        labels.push(1);
        let plain = scores(&topics, &labels, 2, Similarity::Dot, ClassMean::All).unwrap();
        assert!((plain[0] - 0.7).abs() < 1e-12 && (plain[7] - 0.3).abs() < 1e-12);
        let trimmed = ClassMean::Trimmed {
            share: 0.3,
            rounds: 1,
        };
        let robust = scores(&topics, &labels, 2, Similarity::Dot, trimmed).unwrap();
        assert_eq!(robust[..7], [1.0; 7]);
        assert_eq!(robust[7..10], [0.0; 3]);
        // A share that leaves nobody out is the plain mean.
        let none_out = ClassMean::Trimmed {
            share: 0.05,
            rounds: 2,
        };
        assert_eq!(
            scores(&topics, &labels, 2, Similarity::Dot, none_out).unwrap(),
            plain
        );
    }

    #[test]
    fn class_z_centres_each_class_on_its_median_in_robust_deviations() {
        // Class 0: 1, 2, 3, 4, 10 (median 3, MAD 1); class 1: 0.5 ×3 (no spread: shifted only).
        let mut scores = vec![1.0, 2.0, 3.0, 4.0, 10.0, 0.5, 0.5, 0.5];
        let labels = [0, 0, 0, 0, 0, 1, 1, 1];
        let raw = scores.clone();
        calibrate(&mut scores, &labels, 2, Calibration::None);
        assert_eq!(scores, raw);
        calibrate(&mut scores, &labels, 2, Calibration::ClassZ);
        let z = |v: f64| (v - 3.0) / 1.4826;
        for (got, want) in scores.iter().zip([z(1.0), z(2.0), 0.0, z(4.0), z(10.0)]) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        assert_eq!(scores[5..], [0.0; 3]);
    }

    #[test]
    fn threshold_fraction_and_small_class_leniency() {
        // Class 0 has 10 samples scoring 0.0..0.9, class 1 has 4 scoring 0.0..0.3.
        let scores: Vec<f64> = (0..10)
            .map(|i| i as f64 / 10.0)
            .chain((0..4).map(|i| i as f64 / 10.0))
            .collect();
        let labels: Vec<u32> = [0; 10].into_iter().chain([1; 4]).collect();
        let discarded = |keep: Vec<bool>| {
            keep.iter()
                .enumerate()
                .filter(|(_, k)| !**k)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            discarded(kept(&scores, &labels, 2, &clean(CleanRule::None, 0, 1.0))),
            Vec::<usize>::new()
        );
        // Threshold 0.25: class 0 loses 0.0, 0.1, 0.2; class 1 (small: < 5) loses half of 3 → 2.
        assert_eq!(
            discarded(kept(
                &scores,
                &labels,
                2,
                &clean(CleanRule::Threshold(0.25), 5, 0.5)
            )),
            [0, 1, 2, 10, 11]
        );
        // Fraction 0.2: class 0 loses 2, class 1 loses round(0.8) = 1.
        assert_eq!(
            discarded(kept(
                &scores,
                &labels,
                2,
                &clean(CleanRule::Fraction(0.2), 0, 1.0)
            )),
            [0, 1, 10]
        );
        // Leniency 0 keeps the whole small class.
        assert_eq!(
            discarded(kept(
                &scores,
                &labels,
                2,
                &clean(CleanRule::Fraction(0.2), 5, 0.0)
            )),
            [0, 1]
        );
    }

    #[test]
    fn lambda_maps() {
        let scores = [0.0, 0.05, 0.1, 0.3];
        let labels = [0, 0, 0, 0];
        let soft = |lambda| LabelParams::Soft { lambda };
        assert_eq!(lambdas(&scores, &labels, 1, &LabelParams::Hard), [1.0; 4]);
        assert_eq!(
            lambdas(&scores, &labels, 1, &soft(LambdaMap::Ratio { s0: 0.1 })),
            [0.0, 0.5, 1.0, 1.0]
        );
        let rank = lambdas(&scores, &labels, 1, &soft(LambdaMap::Rank { min: 0.4 }));
        for (got, want) in rank.iter().zip([0.4, 0.6, 0.8, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{rank:?}");
        }
        let sig = lambdas(
            &scores,
            &labels,
            1,
            &soft(LambdaMap::Sigmoid {
                center: 0.1,
                scale: 0.05,
            }),
        );
        assert!((sig[2] - 0.5).abs() < 1e-12);
        assert!((sig[0] - 1.0 / (1.0 + 2f64.exp())).abs() < 1e-12);
        // Ties share a rank; a lone sample gets 1.
        let tied = lambdas(
            &[0.2, 0.2, 0.5],
            &[0, 0, 1],
            2,
            &soft(LambdaMap::Rank { min: 0.0 }),
        );
        assert_eq!(tied, [0.5, 0.5, 1.0]);
    }

    #[test]
    fn auc_of_perfect_reversed_chance_and_tied_detectors() {
        let positive = [true, true, false, false];
        assert_eq!(
            auc_low_is_positive(&[0.1, 0.2, 0.8, 0.9], &positive),
            Some(1.0)
        );
        assert_eq!(
            auc_low_is_positive(&[0.8, 0.9, 0.1, 0.2], &positive),
            Some(0.0)
        );
        assert_eq!(auc_low_is_positive(&[0.5; 4], &positive), Some(0.5));
        assert_eq!(
            auc_low_is_positive(&[0.1, 0.9, 0.2, 0.8], &positive),
            Some(0.5)
        );
        assert_eq!(
            auc_low_is_positive(&[0.1, 0.8, 0.2, 0.9], &positive),
            Some(0.75)
        );
        assert_eq!(auc_low_is_positive(&[0.1, 0.2], &[false, false]), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]

        #[test]
        fn fraction_rule_drops_each_class_lowest_share_and_lambdas_are_weights(
            samples in proptest::collection::vec((0u32..4, 0.0f64..1.0), 1..60),
            fraction in 0.0f64..1.0,
            s0 in 0.01f64..2.0,
            min in 0.0f64..1.0,
        ) {
            let labels: Vec<u32> = samples.iter().map(|s| s.0).collect();
            let scores: Vec<f64> = samples.iter().map(|s| s.1).collect();
            let keep = kept(&scores, &labels, 4, &clean(CleanRule::Fraction(fraction), 0, 1.0));
            for class in 0..4u32 {
                let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
                let dropped: Vec<usize> = members.iter().copied().filter(|&i| !keep[i]).collect();
                proptest::prop_assert_eq!(dropped.len(), (fraction * members.len() as f64).round() as usize);
                for &d in &dropped {
                    proptest::prop_assert!(members.iter().all(|&m| !keep[m] || scores[m] >= scores[d]));
                }
            }
            for map in [LambdaMap::Ratio { s0 }, LambdaMap::Rank { min }, LambdaMap::Sigmoid { center: 0.5, scale: s0 }] {
                let lambda = lambdas(&scores, &labels, 4, &LabelParams::Soft { lambda: map });
                proptest::prop_assert!(lambda.iter().all(|l| (0.0..=1.0).contains(l)), "{:?}", map);
                // Every map is monotone in the score within a class.
                for i in 0..scores.len() {
                    for j in 0..scores.len() {
                        if labels[i] == labels[j] && scores[i] < scores[j] {
                            proptest::prop_assert!(lambda[i] <= lambda[j] + 1e-12, "{:?}", map);
                        }
                    }
                }
            }
            let positive: Vec<bool> = scores.iter().map(|s| *s < 0.3).collect();
            if let Some(auc) = auc_low_is_positive(&scores, &positive) {
                let negated: Vec<f64> = scores.iter().map(|s| -s).collect();
                let flipped = auc_low_is_positive(&negated, &positive).unwrap();
                proptest::prop_assert!((auc + flipped - 1.0).abs() < 1e-9);
            }
        }

        #[test]
        fn a_combined_score_ignores_monotone_rescaling_of_any_signal(
            samples in proptest::collection::vec((0u32..3, 0.0f64..1.0, -5.0f64..5.0, 0u8..5), 1..50),
            weights in proptest::collection::vec(0.0f64..2.0, 3),
            which in 0usize..3,
            scale in 0.1f64..10.0,
            shift in -3.0f64..3.0,
        ) {
            let labels: Vec<u32> = samples.iter().map(|s| s.0).collect();
            let signals: [Vec<f64>; 3] = [
                samples.iter().map(|s| s.1).collect(),
                samples.iter().map(|s| s.2).collect(),
                // Few distinct values: ties must rank alike after rescaling too.
                samples.iter().map(|s| s.3 as f64 / 4.0).collect(),
            ];
            let mut weights = weights;
            weights[0] += 0.01;
            let combined = |signals: &[Vec<f64>; 3]| {
                let pairs: Vec<(&[f64], f64)> =
                    signals.iter().zip(&weights).map(|(s, &w)| (s.as_slice(), w)).collect();
                combine(&pairs, &labels, 3)
            };
            let before = combined(&signals);
            let mut rescaled = signals.clone();
            rescaled[which] = rescaled[which].iter().map(|v| (v * scale + shift).exp()).collect();
            proptest::prop_assert_eq!(&before, &combined(&rescaled));
            proptest::prop_assert!(before.iter().all(|s| (-1e-12..=1.0 + 1e-12).contains(s)));
            // One signal alone keeps its order within each class.
            let alone = combine(&[(signals[1].as_slice(), 1.0)], &labels, 3);
            for i in 0..labels.len() {
                for j in 0..labels.len() {
                    if labels[i] == labels[j] && signals[1][i] < signals[1][j] {
                        proptest::prop_assert!(alone[i] < alone[j]);
                    }
                }
            }
        }
    }
}

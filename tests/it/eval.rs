//! The eval library (multi-crop probabilities, top-k, ensembles, per-class numbers, saved
//! outputs, tables) and `report` (the table over run folders).

use std::path::Path;

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use websieve::eval::{
    confusion_png_size, ensemble, evaluate, load_predictions, metrics, render_table, write_outputs,
    EvalError, Evaluation, Predictions, PROBABILITIES_FILE,
};
use websieve::sample::{Batch, Pixels};

const CLASSES: usize = 6;

/// Three samples of two crops each (sample-major). Reference probabilities: the mean over
/// crops of each crop's softmax, from this independent script (Python 3, no numpy):
///
/// ```python
/// import math
/// def softmax(x):
///     m = max(x); e = [math.exp(v - m) for v in x]; s = sum(e); return [v / s for v in e]
/// samples = {  # id: (label, crops)
///     10: (2, [[1.0, 2.0, 0.5, -1.0, 0.0, 3.0], [2.0, 0.0, 1.5, 0.0, -2.0, 1.0]]),
///     11: (5, [[0.0] * 6, [0.0] * 6]),
///     12: (0, [[5.0, 0, 0, 0, 0, 0], [-2.0, 4.0, 4.0, 0, 0, 0]]),
/// }
/// for id, (label, crops) in samples.items():
///     probs = [sum(c) / len(crops) for c in zip(*map(softmax, crops))]
///     order = sorted(range(6), key=lambda c: (-probs[c], c))
///     print(id, label, [f"{p:.7f}" for p in probs], order[:5])
/// ```
/// Sample 12 is where averaging probabilities and averaging logits disagree (the mean logits
/// would rank class 1 first); sample 11 is a six-way tie.
const IDS: [u64; 3] = [10, 11, 12];
const LABELS: [u32; 3] = [2, 5, 0];
#[rustfmt::skip]
const LOGITS: [f32; 36] = [
    1.0, 2.0, 0.5, -1.0, 0.0, 3.0,   2.0, 0.0, 1.5, 0.0, -2.0, 1.0,
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0,    0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    5.0, 0.0, 0.0, 0.0, 0.0, 0.0,    -2.0, 4.0, 4.0, 0.0, 0.0, 0.0,
];
#[rustfmt::skip]
const REFERENCE: [[f32; 6]; 3] = [
    [0.2618333, 0.1411457, 0.1588099, 0.0354353, 0.0191020, 0.3836738],
    [0.1666667, 0.1666667, 0.1666667, 0.1666667, 0.1666667, 0.1666667],
    [0.4843065, 0.2462813, 0.2462813, 0.0077103, 0.0077103, 0.0077103],
];
const REFERENCE_TOP5: [[usize; 5]; 3] = [[5, 0, 2, 1, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]];

fn class_names(n: usize) -> Vec<String> {
    (0..n).map(|c| format!("class-{c}")).collect()
}

/// The fixture with ids and labels repeated per crop, as `Batch` carries them.
fn fixture() -> Predictions {
    let mut e = Evaluation::new(CLASSES, 2);
    let per_image = |v: &[u64]| v.iter().flat_map(|&x| [x, x]).collect::<Vec<_>>();
    let labels: Vec<u32> = LABELS.iter().flat_map(|&l| [l, l]).collect();
    e.add_batch(&per_image(&IDS[..1]), &labels[..2], &LOGITS[..12])
        .unwrap();
    e.add_batch(&per_image(&IDS[1..]), &labels[2..], &LOGITS[12..])
        .unwrap();
    e.finish()
}

fn redact(text: String, dir: &Path) -> String {
    text.replace(&dir.display().to_string(), "<dir>")
}

#[test]
fn multi_crop_probabilities_match_the_reference() {
    let p = fixture();
    assert_eq!((p.len(), p.num_classes()), (3, CLASSES));
    assert_eq!((p.ids(), p.labels()), (&IDS[..], &LABELS[..]));
    for (i, reference) in REFERENCE.iter().enumerate() {
        for (got, want) in p.row(i).iter().zip(reference) {
            assert!((got - want).abs() < 1e-6, "sample {i}: {got} vs {want}");
        }
        assert_eq!(p.top_k(i, 5), REFERENCE_TOP5[i]);
    }
}

#[test]
fn per_sample_ids_give_the_same_predictions_as_per_image_ids() {
    let mut e = Evaluation::new(CLASSES, 2);
    e.add_batch(&IDS, &LABELS, &LOGITS).unwrap();
    assert_eq!(e.finish(), fixture());
}

#[test]
fn top_k_and_per_class_numbers() {
    let m = metrics(&fixture(), &class_names(CLASSES)).unwrap();
    // Sample 10: top-1 is 5, label 2 is 3rd. Sample 11: a tie ranks label 5 sixth. Sample 12:
    // right.
    assert_eq!((m.samples, m.top1, m.top5), (3, 1.0 / 3.0, 2.0 / 3.0));
    let class = |c: usize| {
        let c = &m.per_class[c];
        (c.samples, c.top1, c.top5)
    };
    assert_eq!(class(0), (1, Some(1.0), Some(1.0)));
    assert_eq!(class(2), (1, Some(0.0), Some(1.0)));
    assert_eq!(class(5), (1, Some(0.0), Some(0.0)));
    assert_eq!(class(1), (0, None, None));
    assert_eq!(
        (m.mean_class_top1, m.mean_class_top5),
        (1.0 / 3.0, 2.0 / 3.0)
    );
}

#[test]
fn the_mean_of_classes_weighs_every_class_alike() {
    // Class 0: 3 samples, all right; class 1: 1 sample, wrong.
    let mut e = Evaluation::new(2, 1);
    e.add_batch(
        &[1, 2, 3, 4],
        &[0, 0, 0, 1],
        &[1., 0., 1., 0., 1., 0., 1., 0.],
    )
    .unwrap();
    let m = metrics(&e.finish(), &class_names(2)).unwrap();
    assert_eq!((m.top1, m.mean_class_top1), (0.75, 0.5));
    assert_eq!(m.top5, 1.0, "with fewer than 5 classes top-5 is top-all");
}

#[test]
fn tensor_logits_on_a_device_give_the_same_predictions() {
    let device = Device::Cpu;
    let logits = Tensor::from_slice(&LOGITS, (6, CLASSES), &device).unwrap();
    let mut e = Evaluation::new(CLASSES, 2);
    e.add_tensor(&IDS, &LABELS, &logits).unwrap();
    assert_eq!(e.finish(), fixture());
    let wrong = Tensor::zeros((2, 3, 6), candle_core::DType::F32, &device).unwrap();
    let err = Evaluation::new(CLASSES, 2)
        .add_tensor(&IDS, &LABELS, &wrong)
        .unwrap_err();
    insta::assert_snapshot!(err.to_string(), @"logits tensor has shape [2, 3, 6], expected [images, 6]");
}

fn batch(ids: &[u64], labels: &[u32], crops: usize) -> Batch {
    let repeat = |v: &[u64]| v.iter().flat_map(|&x| vec![x; crops]).collect::<Vec<_>>();
    let n = ids.len() * crops;
    Batch {
        ids: repeat(ids),
        labels: labels.iter().flat_map(|&l| vec![l; crops]).collect(),
        pixels: Pixels::F32(vec![0.0; n * 3]),
        shape: [n, 3, 1, 1],
    }
}

#[test]
fn evaluate_runs_the_prediction_closure_over_every_batch() {
    let batches = vec![
        Ok::<_, std::io::Error>(batch(&IDS[..2], &LABELS[..2], 2)),
        Ok(batch(&IDS[2..], &LABELS[2..], 2)),
    ];
    // The "model" looks up each image's logits by its position in the fixture.
    let mut seen = 0;
    let p = evaluate(batches, CLASSES, 2, 3, false, |b: &Batch| {
        let rows = &LOGITS[seen * CLASSES..(seen + b.ids.len()) * CLASSES];
        seen += b.ids.len();
        Ok::<_, std::io::Error>(rows.to_vec())
    })
    .unwrap();
    assert_eq!(p, fixture());

    let failing = vec![
        Ok(batch(&[1], &[0], 2)),
        Err(std::io::Error::other("store record 7: truncated JPEG")),
    ];
    let err = evaluate(failing, CLASSES, 2, 2, false, |b: &Batch| {
        Ok::<_, std::io::Error>(vec![0.0; b.ids.len() * CLASSES])
    })
    .unwrap_err();
    insta::assert_snapshot!(err.to_string(), @"batch 1: store record 7: truncated JPEG");
}

#[test]
fn bad_batches_are_refused_with_what_is_wrong() {
    let errors: Vec<String> = [
        Evaluation::new(CLASSES, 2).add_batch(&IDS, &LABELS, &LOGITS[..30]),
        Evaluation::new(CLASSES, 2).add_batch(&[10, 10, 11, 12, 12, 12], &[2; 6], &LOGITS),
        Evaluation::new(CLASSES, 2).add_batch(&IDS[..2], &LABELS, &LOGITS),
        Evaluation::new(CLASSES, 2).add_batch(&IDS, &[2, 6, 0], &LOGITS),
        Evaluation::new(CLASSES, 2).add_batch(&[10, 11, 10], &LABELS, &LOGITS),
        Evaluation::new(CLASSES, 2).add_batch(&IDS, &LABELS, &{
            let mut l = LOGITS;
            l[15] = f32::NAN;
            l
        }),
    ]
    .into_iter()
    .map(|r| r.unwrap_err().to_string())
    .collect();
    insta::assert_snapshot!(errors.join("\n"));
}

#[test]
fn ensemble_is_the_mean_of_probabilities_in_any_sample_order() {
    let a = fixture();
    // Member b: the same samples in reverse order, each sample's logits shifted to its
    // other crop only (different probabilities).
    let mut e = Evaluation::new(CLASSES, 1);
    for s in (0..3).rev() {
        let crop = &LOGITS[(2 * s + 1) * CLASSES..(2 * s + 2) * CLASSES];
        e.add_batch(&[IDS[s]], &[LABELS[s]], crop).unwrap();
    }
    let b = e.finish();
    let mean = ensemble(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(mean.ids(), a.ids());
    for i in 0..3 {
        let j = 2 - i;
        for c in 0..CLASSES {
            let want = (a.row(i)[c] + b.row(j)[c]) / 2.0;
            assert!((mean.row(i)[c] - want).abs() < 1e-7);
        }
    }
    assert_eq!(ensemble(std::slice::from_ref(&a)).unwrap(), a);
}

#[test]
fn ensemble_members_must_cover_the_same_samples() {
    let a = fixture();
    let one = |ids: &[u64], labels: &[u32], classes: usize| {
        let mut e = Evaluation::new(classes, 1);
        e.add_batch(ids, labels, &vec![0.0; ids.len() * classes])
            .unwrap();
        e.finish()
    };
    let errors: Vec<String> = [
        ensemble(&[]),
        ensemble(&[a.clone(), one(&IDS, &[2, 3, 0], 4)]),
        ensemble(&[a.clone(), one(&[10, 12], &[2, 0], CLASSES)]),
        ensemble(&[a.clone(), one(&[10, 11, 12, 13], &[2, 5, 0, 1], CLASSES)]),
        ensemble(&[a.clone(), one(&IDS, &[2, 4, 0], CLASSES)]),
    ]
    .into_iter()
    .map(|r| r.unwrap_err().to_string())
    .collect();
    insta::assert_snapshot!(errors.join("\n"));
}

#[test]
fn terminal_table() {
    let m = metrics(&fixture(), &class_names(CLASSES)).unwrap();
    insta::assert_snapshot!(render_table(&m, true));
    insta::assert_snapshot!("terminal_table_summary", render_table(&m, false));
}

#[test]
fn outputs_are_written_and_predictions_load_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval");
    let p = fixture();
    let names = class_names(CLASSES);
    let m = metrics(&p, &names).unwrap();
    write_outputs(&out, &p, &m, &names).unwrap();

    assert_eq!(load_predictions(&out).unwrap(), p);
    let json = std::fs::read_to_string(out.join("metrics.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<websieve::eval::EvalMetrics>(&json).unwrap(),
        m
    );
    insta::assert_snapshot!(std::fs::read_to_string(out.join("predictions.tsv")).unwrap());
    insta::assert_snapshot!(std::fs::read_to_string(out.join("per_class.tsv")).unwrap());

    let png = image::open(out.join("confusion.png")).unwrap();
    assert_eq!((png.width(), png.height()), confusion_png_size(CLASSES));
    // With DejaVu installed the labels are drawn: the title band is no longer blank.
    if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        let rgb = png.to_rgb8();
        assert!(rgb.rows().take(30).flatten().any(|px| px.0 != [255; 3]));
    }
}

#[test]
fn the_png_grows_with_the_classes_and_stays_readable_for_webvision() {
    assert_eq!(confusion_png_size(6), (180 + 6 * 32 + 20, 40 + 6 * 32 + 50));
    assert_eq!(
        confusion_png_size(96),
        (180 + 96 * 10 + 20, 40 + 96 * 10 + 50)
    );
    // Cells too small for names: no margin for them.
    assert_eq!(confusion_png_size(97), (20 + 97 * 9 + 20, 40 + 97 * 9 + 50));
    assert_eq!(confusion_png_size(1000), (20 + 1000 + 20, 40 + 1000 + 50));
    let dir = tempfile::tempdir().unwrap();
    let classes = 1000;
    let mut e = Evaluation::new(classes, 1);
    let ids: Vec<u64> = (0..2000).collect();
    let labels: Vec<u32> = ids.iter().map(|&i| (i % 1000) as u32).collect();
    let logits: Vec<f32> = ids
        .iter()
        .flat_map(|&i| (0..classes).map(move |c| ((c as u64 * 7 + i) % 13) as f32))
        .collect();
    e.add_batch(&ids, &labels, &logits).unwrap();
    let p = e.finish();
    let names = class_names(classes);
    write_outputs(dir.path(), &p, &metrics(&p, &names).unwrap(), &names).unwrap();
    let png = image::open(dir.path().join("confusion.png")).unwrap();
    assert_eq!((png.width(), png.height()), confusion_png_size(classes));
}

#[test]
fn damaged_probability_files_are_refused_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = fixture();
    let names = class_names(CLASSES);
    write_outputs(dir.path(), &p, &metrics(&p, &names).unwrap(), &names).unwrap();
    let file = dir.path().join(PROBABILITIES_FILE);
    let good = std::fs::read(&file).unwrap();
    let mut errors = Vec::new();
    let mut try_bytes = |bytes: Vec<u8>| {
        std::fs::write(&file, bytes).unwrap();
        errors.push(redact(
            load_predictions(dir.path()).unwrap_err().to_string(),
            dir.path(),
        ));
    };
    try_bytes(good[..good.len() - 4].to_vec());
    try_bytes(b"PK\x03\x04 this is a zip file".to_vec());
    let mut label = good.clone();
    label[24 + 8 * 3 + 4] = 9; // the second label
    try_bytes(label);
    let mut prob = good.clone();
    let at = 24 + 12 * 3 + 4 * 7; // sample 1, class 1
    prob[at..at + 4].copy_from_slice(&1.5f32.to_le_bytes());
    try_bytes(prob);
    let mut id = good.clone();
    id[24 + 8..24 + 16].copy_from_slice(&10u64.to_le_bytes());
    try_bytes(id);
    std::fs::remove_file(&file).unwrap();
    errors.push(redact(
        load_predictions(dir.path()).unwrap_err().to_string(),
        dir.path(),
    ));
    insta::assert_snapshot!(errors.join("\n"));
}

#[test]
fn metrics_need_a_name_per_class_and_some_samples() {
    let errors = [
        metrics(&fixture(), &class_names(5)).unwrap_err(),
        metrics(&Evaluation::new(3, 1).finish(), &class_names(3)).unwrap_err(),
    ];
    assert!(matches!(
        errors[0],
        EvalError::ClassNames {
            expected: 6,
            found: 5
        }
    ));
    assert!(matches!(errors[1], EvalError::NoSamples));
}

/// Random evaluations: `samples` samples of `crops` crops over `classes` classes.
fn evaluations() -> impl Strategy<Value = (usize, usize, Vec<u32>, Vec<f32>)> {
    (1usize..8, 1usize..4, 1usize..12).prop_flat_map(|(classes, crops, samples)| {
        (
            Just(classes),
            Just(crops),
            prop::collection::vec(0..classes as u32, samples),
            prop::collection::vec(-30f32..30.0, samples * crops * classes),
        )
    })
}

fn evaluated(classes: usize, crops: usize, labels: &[u32], logits: &[f32]) -> Predictions {
    let ids: Vec<u64> = (0..labels.len() as u64).map(|i| i * 3 + 1).collect();
    let mut e = Evaluation::new(classes, crops);
    e.add_batch(&ids, labels, logits).unwrap();
    e.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn probabilities_are_distributions_and_top1_never_beats_top5(
        (classes, crops, labels, logits) in evaluations()
    ) {
        let p = evaluated(classes, crops, &labels, &logits);
        for i in 0..p.len() {
            let sum: f32 = p.row(i).iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-5);
            let top = p.top_k(i, 5);
            let ranked = top.windows(2).all(|w| {
                let (a, b) = (p.row(i)[w[0]], p.row(i)[w[1]]);
                a > b || (a == b && w[0] < w[1])
            });
            prop_assert!(ranked, "row {} ranked {:?}", i, top);
        }
        let m = metrics(&p, &class_names(classes)).unwrap();
        prop_assert!(m.top1 <= m.top5);
        // Overall accuracy is the sample-weighted mean of the per-class accuracies.
        let weighted: f64 = m.per_class.iter().filter_map(|c| Some(c.top1? * c.samples as f64)).sum();
        prop_assert!((weighted / m.samples as f64 - m.top1).abs() < 1e-12);
    }

    #[test]
    fn crop_order_within_a_sample_does_not_matter(
        (classes, crops, labels, logits) in evaluations()
    ) {
        let reversed: Vec<f32> = logits
            .chunks(crops * classes)
            .flat_map(|sample| sample.chunks(classes).rev().flatten().copied().collect::<Vec<_>>())
            .collect();
        let (a, b) = (evaluated(classes, crops, &labels, &logits), evaluated(classes, crops, &labels, &reversed));
        for (x, y) in a.probabilities().iter().zip(b.probabilities()) {
            prop_assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn saved_predictions_load_back_bit_for_bit_and_ensemble_with_themselves(
        (classes, crops, labels, logits) in evaluations()
    ) {
        let p = evaluated(classes, crops, &labels, &logits);
        let dir = tempfile::tempdir().unwrap();
        let names = class_names(classes);
        write_outputs(dir.path(), &p, &metrics(&p, &names).unwrap(), &names).unwrap();
        let loaded = load_predictions(dir.path()).unwrap();
        prop_assert_eq!(&loaded, &p);
        prop_assert_eq!(ensemble(&[p.clone(), loaded]).unwrap(), p);
    }
}

/// Evaluation split over the ranks of a data-parallel run ([`evaluate_sharded`]), with
/// threads as ranks.
mod sharded {
    use std::sync::Mutex;
    use std::time::Duration;

    use candle_core::Device;
    use websieve::eval::{evaluate_sharded, ClassHits, EvalError, Evaluation, Predictions};
    use websieve::runtime::{SingleProcess, ThreadGroupMember};

    const CLASSES: usize = 4;
    /// Long enough for any rank to arrive; a rank left waiting fails the test, never hangs it.
    const WAIT: Duration = Duration::from_secs(20);

    /// Sample `id`'s label and one-crop logits: right for about half of the samples, and
    /// per class differently often, so that a sample counted twice or missed changes the
    /// per-class numbers.
    fn sample(id: u64) -> (u32, [f32; CLASSES]) {
        let label = (id % CLASSES as u64) as u32;
        let guess = match id % 3 {
            0 => label as usize,
            _ => (id as usize * 7) % CLASSES,
        };
        let mut logits = [0.0; CLASSES];
        logits[guess] = 2.0;
        logits[(guess + 1) % CLASSES] = 1.0;
        (label, logits)
    }

    /// The predictions of `ids`, as a model evaluating them would give them.
    fn predict(ids: &[u64]) -> Result<Predictions, EvalError> {
        let mut evaluation = Evaluation::new(CLASSES, 1);
        for &id in ids {
            let (label, logits) = sample(id);
            evaluation.add_batch(&[id], &[label], &logits)?;
        }
        Ok(evaluation.finish())
    }

    /// What one rank got: each round's result, and the ids it was asked to predict.
    struct RankOutcome {
        results: Vec<Result<ClassHits, EvalError>>,
        asked: Vec<Vec<u64>>,
    }

    /// Each of `world` thread ranks evaluates `ids` `rounds` times in a row.
    fn on_ranks(ids: &[u64], world: usize, rounds: usize) -> Vec<RankOutcome> {
        std::thread::scope(|scope| {
            let ranks: Vec<_> = ThreadGroupMember::group(world)
                .into_iter()
                .map(|member| {
                    scope.spawn(move || {
                        let mut member = member.with_timeout(WAIT);
                        let asked = Mutex::new(Vec::new());
                        let results = (0..rounds)
                            .map(|_| {
                                evaluate_sharded(ids, CLASSES, &mut member, &Device::Cpu, |share| {
                                    asked.lock().unwrap().push(share.to_vec());
                                    predict(share)
                                })
                            })
                            .collect();
                        RankOutcome {
                            results,
                            asked: asked.into_inner().unwrap(),
                        }
                    })
                })
                .collect();
            ranks.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// 10 samples on 1 to 12 ranks: every rank gets the one-process numbers, and the shares
    /// the ranks predicted are disjoint and cover the samples (nothing padded, as PyTorch's
    /// DistributedSampler pads 10 samples on 4 ranks to 12).
    #[test]
    fn ranks_score_each_sample_exactly_once() {
        let ids: Vec<u64> = (100..110).collect();
        let one =
            evaluate_sharded(&ids, CLASSES, &mut SingleProcess, &Device::Cpu, predict).unwrap();
        assert_eq!(one, ClassHits::of(&predict(&ids).unwrap()));
        assert_eq!(one.samples(), 10);
        assert!(one.top1() > 0.0 && one.top1() < 1.0, "{one:?}");
        for world in [2, 3, 4, 7, 12] {
            let ranks = on_ranks(&ids, world, 1);
            let mut predicted: Vec<u64> = Vec::new();
            let mut sizes = Vec::new();
            for RankOutcome { results, asked } in ranks {
                assert_eq!(results[0].as_ref().unwrap(), &one, "{world} ranks");
                let share: Vec<u64> = asked.concat();
                sizes.push(share.len());
                predicted.extend(share);
            }
            predicted.sort_unstable();
            assert_eq!(predicted, ids, "{world} ranks: each sample once");
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "{world} ranks: shares {sizes:?}");
        }
    }

    /// Shares of different lengths, some empty (2 samples on 4 ranks, 5 on 3), evaluated in
    /// several rounds as at the ends of several epochs: each rank makes one collective call
    /// per evaluation whatever its share, so none is left waiting and the rounds stay in step.
    #[test]
    fn ranks_with_shorter_or_empty_shares_meet_at_one_collective() {
        for (samples, world) in [(2u64, 4), (5, 3)] {
            let ids: Vec<u64> = (0..samples).collect();
            let expected = ClassHits::of(&predict(&ids).unwrap());
            for (rank, outcome) in on_ranks(&ids, world, 3).into_iter().enumerate() {
                let RankOutcome { results, asked } = outcome;
                for result in results {
                    assert_eq!(result.unwrap(), expected, "rank {rank} of {world}");
                }
                let empty = asked.is_empty();
                assert_eq!(
                    empty,
                    rank as u64 >= samples,
                    "rank {rank}: share asked for"
                );
            }
        }
    }

    /// A rank whose predictions are not exactly its share (padded with a sample of another
    /// share) is refused.
    #[test]
    fn a_share_padded_with_another_sample_is_refused() {
        let ids: Vec<u64> = (0..4).collect();
        let padded = |share: &[u64]| predict(&[share, &[3]].concat());
        let err = evaluate_sharded(&ids[..2], CLASSES, &mut SingleProcess, &Device::Cpu, padded)
            .unwrap_err();
        insta::assert_snapshot!(err.to_string(), @"rank 0: its share of the samples: 3 samples predicted for a share of 2, or other ids");
    }
}

mod report {
    use std::path::{Path, PathBuf};

    use websieve::eval::EvalMetrics;
    use websieve::recipe;
    use websieve::report::{find_runs, load_run, report, report_with, ReportFormat, ReportOptions};
    use websieve::stage::{RunFolder, RunState, RunStatus, StageKind};
    use websieve::train::BestEpoch;

    /// A run folder as a run leaves it: the quickstart recipe with `sets`, resolved, and
    /// (with `top1`) evaluation results.
    fn write_run(root: &Path, folder: &str, sets: &[&str], top1: Option<f64>) -> PathBuf {
        let dir = root.join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let r = &recipe::load_file(Path::new("recipes/quickstart.toml"), &sets).unwrap()[0];
        std::fs::write(dir.join(RunFolder::RECIPE), r.resolved_toml()).unwrap();
        if let Some(top1) = top1 {
            let results = EvalMetrics {
                samples: 500,
                top1,
                top5: 0.8,
                mean_class_top1: top1,
                mean_class_top5: 0.8,
                per_class: Vec::new(),
            };
            let json = serde_json::to_string(&results).unwrap();
            std::fs::write(dir.join(RunFolder::EVAL_METRICS), json).unwrap();
        }
        dir
    }

    #[test]
    fn the_table_shows_only_the_settings_that_differ() {
        let root = tempfile::tempdir().unwrap();
        let runs = vec![
            write_run(root.path(), "clean", &["name=clean"], Some(0.6123)),
            write_run(
                root.path(),
                "clean-lr",
                &["name=clean/lr=0.001", "train.optimizer.lr=0.001"],
                Some(0.5),
            ),
            write_run(
                root.path(),
                "noisy",
                &[
                    "name=noisy",
                    "clean.rule=none",
                    "train.optimizer.clip_grad_norm=40.0",
                    // The default, spelt out: not a difference.
                    "train.optimizer.momentum=0.9",
                ],
                Some(0.55),
            ),
        ];
        insta::assert_snapshot!(report(&runs).unwrap());
        // One run: nothing differs, the results remain.
        insta::assert_snapshot!("one_run", report(&runs[..1]).unwrap());
    }

    #[test]
    fn a_sweep_folder_stands_for_the_runs_below_it() {
        let root = tempfile::tempdir().unwrap();
        let base = write_run(root.path(), "base", &["name=base"], Some(0.5));
        let sweep = root.path().join("clean");
        for (i, lr) in ["0.1", "0.01"].iter().enumerate() {
            write_run(
                &sweep,
                &format!("lr={lr}"),
                &[
                    &format!("name=clean/lr={lr}"),
                    &format!("train.optimizer.lr={lr}"),
                ],
                Some(0.4 + 0.1 * i as f64),
            );
        }
        let found = find_runs(&[sweep.clone(), base.clone()]).unwrap();
        assert_eq!(found, [sweep.join("lr=0.01"), sweep.join("lr=0.1"), base]);
        insta::assert_snapshot!(report(&[sweep]).unwrap());
    }

    #[test]
    fn runs_without_results_are_listed_with_their_state() {
        let root = tempfile::tempdir().unwrap();
        let done = write_run(root.path(), "done", &["name=done"], Some(0.5));
        let failed = write_run(root.path(), "failed", &["name=failed"], None);
        let mut status = RunStatus::new(StageKind::Eval);
        status.state = RunState::Failed;
        status.error = Some("train failed: loss is NaN at step 12".into());
        RunFolder::new(&failed).write_status(&status).unwrap();
        let stopped = write_run(root.path(), "stopped", &["name=stopped"], None);
        let mut status = RunStatus::new(StageKind::Score);
        status.state = RunState::Finished;
        RunFolder::new(&stopped).write_status(&status).unwrap();
        let old = write_run(root.path(), "old", &["name=old"], None);
        let text = report(&[done, failed, stopped, old])
            .unwrap()
            .replace(&root.path().display().to_string(), "<runs>");
        insta::assert_snapshot!(text);
    }

    /// Three seeds of two settings: `--group-by-seed` folds each setting's seeds into one
    /// row of mean ± standard deviation, in every format.
    #[test]
    fn seeds_fold_into_mean_and_spread_in_every_format() {
        let root = tempfile::tempdir().unwrap();
        let mut runs = Vec::new();
        for (name, rule, top1s) in [
            ("clean", "fraction", [0.60, 0.62, 0.64]),
            ("noisy", "none", [0.50, 0.50, 0.56]),
        ] {
            for (seed, top1) in top1s.into_iter().enumerate() {
                runs.push(write_run(
                    root.path(),
                    &format!("{name}-{seed}"),
                    &[
                        &format!("name={name}/train.seed={seed}"),
                        &format!("clean.rule={rule}"),
                        &format!("train.seed={seed}"),
                    ],
                    Some(top1),
                ));
            }
        }
        let options = |format, group_by_seed| ReportOptions {
            format,
            group_by_seed,
        };
        let text = report_with(&runs, &options(ReportFormat::Text, true)).unwrap();
        insta::assert_snapshot!("grouped_text", text);
        let md = report_with(&runs, &options(ReportFormat::Markdown, true)).unwrap();
        insta::assert_snapshot!("grouped_markdown", md);
        let csv = report_with(&runs, &options(ReportFormat::Csv, false)).unwrap();
        insta::assert_snapshot!("ungrouped_csv", csv);

        let json = report_with(&runs, &options(ReportFormat::Json, true)).unwrap();
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(rows.len(), 2);
        let noisy = &rows[1];
        assert_eq!(noisy["seeds"], serde_json::json!(["0", "1", "2"]));
        assert_eq!(noisy["settings"]["clean.rule"], "none");
        let top1 = &noisy["top1_last"];
        assert!(
            (top1["mean"].as_f64().unwrap() - 0.52).abs() < 1e-12,
            "{top1}"
        );
        // Sample standard deviation of 0.50, 0.50, 0.56: sqrt((2 · 0.02² + 0.04²) / 2).
        assert!(
            (top1["sd"].as_f64().unwrap() - 0.0012f64.sqrt()).abs() < 1e-12,
            "{top1}"
        );
        assert_eq!(top1["runs"], 3);
    }

    /// Results of one evaluation, as `metrics.json` holds them (no per-class part).
    fn results(top1: f64, top5: f64) -> String {
        let metrics = EvalMetrics {
            samples: 500,
            top1,
            top5,
            mean_class_top1: top1,
            mean_class_top5: top5,
            per_class: Vec::new(),
        };
        serde_json::to_string(&metrics).unwrap()
    }

    /// Runs with a holdout and a second validation set: the last epoch's and the best epoch's
    /// accuracies on each set are columns of their own, named by which weights and which set
    /// they are of; a run without a holdout shows `-` for the best epoch's.
    #[test]
    fn the_last_and_the_best_epoch_are_columns_of_their_own_on_each_val_set() {
        let root = tempfile::tempdir().unwrap();
        let second = "dataset.second_val={ name = \"ILSVRC2012 val\", root = \"val\" }";
        let plain = write_run(root.path(), "plain", &["name=plain", second], Some(0.5));
        let held = write_run(
            root.path(),
            "held",
            &["name=held", second, "train.holdout=0.1"],
            Some(0.55),
        );
        for (dir, last, best) in [(&plain, 0.41, None), (&held, 0.43, Some((7, 0.62, 0.47)))] {
            std::fs::write(dir.join(RunFolder::SECOND_VAL_METRICS), results(last, 0.7)).unwrap();
            let Some((epoch, val, second_val)) = best else {
                continue;
            };
            let best = BestEpoch {
                epoch,
                step: 700,
                top1: 0.58,
                top5: 0.9,
            };
            let json = serde_json::to_string(&best).unwrap();
            std::fs::write(dir.join(RunFolder::BEST_EPOCH), json).unwrap();
            std::fs::write(dir.join(RunFolder::BEST_METRICS), results(val, 0.85)).unwrap();
            let path = dir.join(RunFolder::BEST_SECOND_VAL_METRICS);
            std::fs::write(path, results(second_val, 0.75)).unwrap();
        }
        let runs = [plain, held];
        insta::assert_snapshot!(report(&runs).unwrap());
        let csv = report_with(
            &runs,
            &ReportOptions {
                format: ReportFormat::Csv,
                group_by_seed: false,
            },
        )
        .unwrap();
        insta::assert_snapshot!("last_and_best_csv", csv);
    }

    #[test]
    fn unreadable_run_folders_name_the_file() {
        let root = tempfile::tempdir().unwrap();
        let good = write_run(root.path(), "good", &["name=good"], Some(0.5));
        let bad_toml = write_run(root.path(), "bad-toml", &[], Some(0.5));
        std::fs::write(
            bad_toml.join(RunFolder::RECIPE),
            "name = \"x\"\n[train\nlr = 1\n",
        )
        .unwrap();
        let bad_json = write_run(root.path(), "bad-json", &[], None);
        std::fs::write(
            bad_json.join(RunFolder::EVAL_METRICS),
            r#"{"samples": 3, "top5": 0.5}"#,
        )
        .unwrap();
        let missing = root.path().join("missing");
        let empty = root.path().join("empty/sweep");
        std::fs::create_dir_all(&empty).unwrap();
        let errors: Vec<String> = [
            bad_toml,
            bad_json,
            missing,
            empty.parent().unwrap().to_path_buf(),
        ]
        .iter()
        .map(|dir| {
            let err = report(&[good.clone(), dir.clone()]).unwrap_err();
            err.to_string()
                .replace(&root.path().display().to_string(), "<runs>")
        })
        .collect();
        insta::assert_snapshot!(errors.join("\n---\n"));
        assert!(load_run(&good).is_ok());
        assert!(report(&[]).is_err());
    }
}

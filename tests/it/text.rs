//! Text supervision end to end: planted topics are recovered by the `lda` stage, inference
//! invariants hold, training is independent of the thread count, one update matches gensim,
//! and the `score` stage finds planted label noise from text alone.

use std::path::Path;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use websieve::lda::{self, EStepSettings, LdaModel, OnlineLda, OnlineSettings};
use websieve::recipe::params::{
    Calibration, ClassMean, CleanParams, CleanRule, LabelParams, LambdaMap, LdaParams, Similarity,
    TextField, TextParams,
};
use websieve::recipe::Recipe;
use websieve::sample::{SampleText, Source};
use websieve::score::{self, ScoreInputs, ScoreTable};
use websieve::text::{MemorySource, SparseDoc, Vocabulary};

fn text_params() -> TextParams {
    TextParams {
        other_fields: vec![TextField::Title, TextField::Description],
        stemming: false,
        min_count: 2,
        max_doc_freq: 0.9,
        ..Recipe::default().text
    }
}

fn lda_params(topics: usize) -> LdaParams {
    LdaParams {
        topics,
        passes: 4,
        batch_size: 100,
        e_step_iterations: 100,
        seed: 7,
        ..Recipe::default().lda
    }
}

/// Letters-only names so the tokenizer keeps them: "qaa", "qab", ...
fn word(i: usize) -> String {
    format!(
        "q{}{}",
        (b'a' + (i / 26) as u8) as char,
        (b'a' + (i % 26) as u8) as char
    )
}

/// Planted topics: topic t puts 95% of its mass on words [20t, 20t + 20), the rest evenly.
fn planted_topics(k: usize, v: usize) -> Vec<Vec<f64>> {
    (0..k)
        .map(|t| (0..v).map(|w| if w / 20 == t { 0.95 / 20.0 } else { 0.05 / (v - 20) as f64 } + 0.0).collect())
        .collect()
}

fn draw(rng: &mut ChaCha8Rng, p: &[f64]) -> usize {
    let mut u: f64 = rng.random();
    for (i, &pi) in p.iter().enumerate() {
        u -= pi;
        if u <= 0.0 {
            return i;
        }
    }
    p.len() - 1
}

/// A document of `len` words: mostly topic `main`, a fifth of it topic `other`.
fn planted_doc(
    rng: &mut ChaCha8Rng,
    topics: &[Vec<f64>],
    main: usize,
    other: usize,
    len: usize,
) -> Vec<usize> {
    (0..len)
        .map(|_| {
            let topic = if rng.random::<f64>() < 0.8 {
                main
            } else {
                other
            };
            draw(rng, &topics[topic])
        })
        .collect()
}

fn sample(words: &[usize]) -> (Source, SampleText) {
    let text = words.iter().map(|&w| word(w)).collect::<Vec<_>>().join(" ");
    (
        Source::Other,
        SampleText {
            title: Some(text),
            description: None,
            tags: vec![],
        },
    )
}

fn planted_corpus(k: usize, docs: usize, seed: u64) -> (MemorySource, Vec<Vec<f64>>) {
    let topics = planted_topics(k, 20 * k + 20);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut source = MemorySource::default();
    for d in 0..docs {
        let len = rng.random_range(20..60);
        let other = rng.random_range(0..k);
        let words = planted_doc(&mut rng, &topics, d % k, other, len);
        source.train.push(sample(&words));
    }
    source.val = source.train[..10].to_vec();
    (source, topics)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt()
        * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

/// Best one-to-one matching of learned to planted topics (all permutations: K is small).
fn best_matching(sim: &[Vec<f64>]) -> Vec<f64> {
    fn go(
        sim: &[Vec<f64>],
        row: usize,
        used: &mut Vec<bool>,
        cur: &mut Vec<f64>,
        best: &mut Vec<f64>,
    ) {
        if row == sim.len() {
            if cur.iter().sum::<f64>() > best.iter().sum::<f64>() {
                *best = cur.clone();
            }
            return;
        }
        for c in 0..sim.len() {
            if !used[c] {
                used[c] = true;
                cur.push(sim[row][c]);
                go(sim, row + 1, used, cur, best);
                cur.pop();
                used[c] = false;
            }
        }
    }
    let mut best = vec![f64::NEG_INFINITY; sim.len()];
    go(
        sim,
        0,
        &mut vec![false; sim.len()],
        &mut Vec::new(),
        &mut best,
    );
    best
}

fn topics_file(path: &Path) -> Vec<Vec<f32>> {
    lda::read_topics(path).unwrap()
}

#[test]
fn lda_stage_recovers_planted_topics() {
    let k = 4;
    let (source, planted) = planted_corpus(k, 1200, 1);
    let dir = tempfile::tempdir().unwrap();
    let summary =
        lda::run_stage(&source, &text_params(), &lda_params(k), dir.path(), false).unwrap();
    assert_eq!(
        (summary.train_docs, summary.val_docs, summary.updates),
        (1200, 10, 48)
    );

    let model = LdaModel::load(dir.path()).unwrap();
    let v = model.vocab().len();
    // Learned topics as distributions over the planted word ids.
    let learned: Vec<Vec<f64>> = model
        .lambda()
        .chunks(v)
        .map(|row| {
            let mut p = vec![0.0; planted[0].len()];
            for (id, &l) in row.iter().enumerate() {
                let w = model.vocab().word(id as u32);
                p[planted[0]
                    .iter()
                    .enumerate()
                    .position(|(i, _)| word(i) == w)
                    .unwrap()] = l as f64;
            }
            p
        })
        .collect();
    let sim: Vec<Vec<f64>> = learned
        .iter()
        .map(|l| planted.iter().map(|p| cosine(l, p)).collect())
        .collect();
    let matched = best_matching(&sim);
    assert!(
        matched.iter().all(|&c| c >= 0.9),
        "matched cosines {matched:?}"
    );

    let train = topics_file(&dir.path().join(lda::TOPICS_TRAIN_FILE));
    assert_eq!((train.len(), train[0].len()), (1200, k));
    assert!(train
        .iter()
        .all(|t| (t.iter().sum::<f32>() - 1.0).abs() < 1e-4));
    assert_eq!(
        topics_file(&dir.path().join(lda::TOPICS_VAL_FILE)),
        train[..10].to_vec()
    );
    // θ saved by the stage is what the saved model infers.
    let again = model
        .infer(&[model.vocab().doc(&text_tokens(&source.train[3].1))])
        .unwrap();
    assert_eq!(again[0], train[3]);
}

fn text_tokens(text: &SampleText) -> Vec<String> {
    text.title
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn empty_vocabulary_is_a_clear_error() {
    let source = MemorySource {
        train: vec![sample(&[1, 2])],
        val: vec![],
    };
    let dir = tempfile::tempdir().unwrap();
    let err =
        lda::run_stage(&source, &text_params(), &lda_params(2), dir.path(), false).unwrap_err();
    insta::assert_snapshot!(err.to_string(), @"the vocabulary is empty: no word of the 1 training documents occurs at least min_count = 2 times in at most max_doc_freq = 0.9 of them");
}

fn planted_docs(docs: usize, seed: u64) -> (Vec<SparseDoc>, usize) {
    let k = 3;
    let topics = planted_topics(k, 80);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let docs = (0..docs)
        .map(|d| {
            let words = planted_doc(&mut rng, &topics, d % k, (d / k) % k, 30);
            SparseDoc::from_pairs(words.into_iter().map(|w| (w as u32, 1.0)))
        })
        .collect();
    (docs, 80)
}

fn settings(k: usize, docs: u64, learn_alpha: bool) -> OnlineSettings {
    OnlineSettings {
        topics: k,
        alpha: vec![1.0 / k as f64; k],
        learn_alpha,
        eta: 0.05,
        tau0: 1.0,
        kappa: 0.6,
        e_step: EStepSettings {
            iterations: 50,
            tolerance: 1e-3,
        },
        corpus_docs: docs,
    }
}

/// λ, α and γ of 50 documents after training on `threads` threads.
fn train_with_threads(
    threads: usize,
    docs: &[SparseDoc],
    v: usize,
) -> (Vec<f32>, Vec<f64>, Vec<Vec<f32>>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        // 20 topics for 3 planted ones: documents end with few live topics, so the E-step's
        // pruned (indexed) path runs as well as the dense one.
        let mut lda = OnlineLda::new(settings(20, docs.len() as u64, true), v, 11).unwrap();
        for _pass in 0..3 {
            for batch in docs.chunks(150) {
                lda.update(batch);
            }
        }
        let (lambda, alpha, updates) = lda.into_parts();
        let vocab = Vocabulary::new((0..v).map(word).collect());
        let model = LdaModel::new(
            vocab,
            lambda.clone(),
            alpha.clone(),
            0.05,
            EStepSettings {
                iterations: 50,
                tolerance: 1e-3,
            },
            updates,
        );
        (
            lambda,
            alpha,
            model.inferencer().unwrap().gamma(&docs[..50]),
        )
    })
}

#[test]
fn training_and_inference_do_not_depend_on_the_thread_count() {
    let (docs, v) = planted_docs(600, 2);
    let one = train_with_threads(1, &docs, v);
    let three = train_with_threads(3, &docs, v);
    assert!(one == three, "λ, α or γ differ between 1 and 3 threads");
    // Pruned topics keep γ = α exactly; most topics of some documents were pruned.
    let (_, alpha, gammas) = &one;
    let at_prior = |gamma: &Vec<f32>| {
        gamma
            .iter()
            .zip(alpha)
            .filter(|(&g, &a)| g == a as f32)
            .count()
    };
    let most = gammas.iter().map(at_prior).max().unwrap();
    assert!(
        most * 4 > 3 * 20,
        "at most {most} of 20 topics at the prior"
    );
}

// Reference: gensim 4.x (float64) from the same λ, one update on the whole corpus with
// offset 4 (ρ = 0.5), E-step run to convergence. /tmp/benchvenv/bin/python <<'EOF'
// import numpy as np
// from gensim.corpora import Dictionary
// from gensim.models import LdaModel
// V, K = 6, 2
// dic = Dictionary([[f"w{i}" for i in range(V)]])
// corpus = [[(0, 3), (1, 1), (4, 1)], [(2, 2), (3, 1), (5, 2)], [(0, 1), (2, 1), (5, 1)], [(1, 2), (3, 3)]]
// lam = np.array([[3.0, 2.0, 0.5, 0.4, 1.0, 0.3], [0.2, 0.6, 2.5, 1.5, 0.7, 2.0]])
// eta = 0.3
// for alpha in ("fixed", "auto"):
//     m = LdaModel(id2word=dic, num_topics=K, alpha=(np.array([0.5, 0.5]) if alpha == "fixed" else "auto"),
//                  eta=np.full(V, eta), iterations=1000, gamma_threshold=1e-12, offset=4.0, decay=0.5,
//                  chunksize=len(corpus), passes=1, update_every=1, random_state=1, dtype=np.float64)
//     m.state.sstats = lam - eta
//     m.sync_state()
//     gamma, _ = m.inference(corpus)
//     m.update(corpus)
//     print(alpha, gamma.tolist(), m.state.get_lambda().tolist(), m.alpha.tolist())
// EOF
const GENSIM_GAMMA: [[f64; 2]; 4] = [
    [5.480371655778808, 0.5196283442211868],
    [0.5076832105759835, 5.49231678942401],
    [1.5459209965101395, 2.4540790034898556],
    [2.209916443195075, 3.790083556804913],
];
const GENSIM_LAMBDA: [[f64; 6]; 2] = [
    [
        3.648164925294303,
        2.444079497904982,
        0.42123299497325767,
        0.4099414951404864,
        1.142342413998217,
        0.30618482571862893,
    ],
    [
        0.25183507470569483,
        0.655920502095015,
        2.8787670050267407,
        2.8400585048595093,
        0.5076575860017815,
        2.643815174281369,
    ],
];
const GENSIM_AUTO_ALPHA: [f64; 2] = [0.49357176979377115, 0.5266345138367323];

#[test]
fn one_update_matches_gensim() {
    let corpus: Vec<SparseDoc> = [
        vec![(0, 3.0), (1, 1.0), (4, 1.0)],
        vec![(2, 2.0), (3, 1.0), (5, 2.0)],
        vec![(0, 1.0), (2, 1.0), (5, 1.0)],
        vec![(1, 2.0), (3, 3.0)],
    ]
    .into_iter()
    .map(SparseDoc::from_pairs)
    .collect();
    let lambda: Vec<f32> = vec![3.0, 2.0, 0.5, 0.4, 1.0, 0.3, 0.2, 0.6, 2.5, 1.5, 0.7, 2.0];
    for learn_alpha in [false, true] {
        let s = OnlineSettings {
            topics: 2,
            alpha: vec![0.5, 0.5],
            learn_alpha,
            eta: 0.3,
            tau0: 4.0,
            kappa: 0.5,
            e_step: EStepSettings {
                iterations: 1000,
                tolerance: 1e-7,
            },
            corpus_docs: 4,
        };
        let mut lda = OnlineLda::with_lambda(s, 6, lambda.clone());
        let (gamma, stats) = lda.update(&corpus);
        assert_eq!(stats.rho, 0.5);
        for (ours, theirs) in gamma.iter().flatten().zip(GENSIM_GAMMA.iter().flatten()) {
            assert!((*ours as f64 - theirs).abs() < 1e-4, "γ {gamma:?}");
        }
        for (ours, theirs) in lda.lambda().iter().zip(GENSIM_LAMBDA.iter().flatten()) {
            assert!((*ours as f64 - theirs).abs() < 1e-4, "λ {:?}", lda.lambda());
        }
        let want_alpha = if learn_alpha {
            GENSIM_AUTO_ALPHA
        } else {
            [0.5, 0.5]
        };
        for (ours, theirs) in lda.alpha().iter().zip(want_alpha) {
            assert!((ours - theirs).abs() < 1e-5, "α {:?}", lda.alpha());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn topic_vectors_are_distributions(
        k in 1usize..6,
        lambda_seed in any::<u64>(),
        docs in prop::collection::vec(prop::collection::vec((0u32..12, 1u32..5), 0..10), 1..8),
        alpha in 0.001f64..2.0,
    ) {
        let v = 12;
        let mut rng = ChaCha8Rng::seed_from_u64(lambda_seed);
        let lambda: Vec<f32> = (0..k * v).map(|_| rng.random_range(0.001f32..50.0)).collect();
        let vocab = Vocabulary::new((0..v).map(word).collect());
        let e_step = EStepSettings { iterations: 30, tolerance: 1e-3 };
        let model = LdaModel::new(vocab, lambda.clone(), vec![alpha; k], 0.1, e_step, 0);
        let docs: Vec<SparseDoc> = docs.into_iter().map(|d| SparseDoc::from_pairs(d.into_iter().map(|(w, c)| (w, c as f32)))).collect();
        for theta in model.infer(&docs).unwrap() {
            prop_assert_eq!(theta.len(), k);
            prop_assert!(theta.iter().all(|t| t.is_finite() && *t >= 0.0), "{:?}", theta);
            prop_assert!((theta.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{:?}", theta);
        }
        // An online update keeps λ finite and positive.
        let mut lda = OnlineLda::with_lambda(settings(k, 100, true), v, lambda);
        lda.update(&docs);
        prop_assert!(lda.lambda().iter().all(|l| l.is_finite() && *l > 0.0));
        prop_assert!(lda.alpha().iter().all(|a| a.is_finite() && *a > 0.0));
    }
}

/// A text-only noisy dataset: `classes` classes, each with its own 15-word vocabulary plus
/// 30 shared words; a noisy sample's text follows another (its true) class.
fn noisy_text_dataset(
    classes: usize,
    per_class: usize,
    noise: f64,
    seed: u64,
) -> (MemorySource, Vec<u32>, Vec<String>, String) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shared = classes * 15;
    let (mut source, mut labels, mut paths) = (MemorySource::default(), Vec::new(), Vec::new());
    let mut truth = String::from("path\tgiven_label\ttrue_label\tnoise_kind\n");
    for class in 0..classes {
        for i in 0..per_class {
            let true_class = if rng.random::<f64>() < noise {
                (class + rng.random_range(1..classes)) % classes
            } else {
                class
            };
            let words: Vec<usize> = (0..rng.random_range(8..25))
                .map(|_| {
                    if rng.random::<f64>() < 0.6 {
                        true_class * 15 + rng.random_range(0..15)
                    } else {
                        shared + rng.random_range(0..30)
                    }
                })
                .collect();
            source.train.push(sample(&words));
            let path = format!("c{class}/{i}.jpg");
            let kind = if true_class == class {
                "clean"
            } else {
                "cross"
            };
            truth.push_str(&format!("{path}\t{class}\t{true_class}\t{kind}\n"));
            labels.push(class as u32);
            paths.push(path);
        }
    }
    (source, labels, paths, truth)
}

#[test]
fn score_stage_detects_planted_noise_from_text() {
    let classes = 4;
    let (source, labels, paths, truth) = noisy_text_dataset(classes, 150, 0.3, 5);
    let dir = tempfile::tempdir().unwrap();
    let lda_dir = dir.path().join("lda");
    let mut params = lda_params(8);
    params.passes = 3;
    lda::run_stage(&source, &text_params(), &params, &lda_dir, false).unwrap();
    let topics = topics_file(&lda_dir.join(lda::TOPICS_TRAIN_FILE));

    let truth_path = dir.path().join("truth.tsv");
    std::fs::write(&truth_path, truth).unwrap();
    let class_names: Vec<String> = (0..classes).map(|c| format!("class {c}")).collect();
    let image = |id: u64| {
        Some(image::RgbImage::from_pixel(
            24,
            16,
            image::Rgb([(id % 255) as u8, 90, 160]),
        ))
    };
    let inputs = ScoreInputs {
        topics: &topics,
        labels: &labels,
        paths: &paths,
        class_names: &class_names,
        image: Some(&image),
        probe: None,
        search: None,
    };
    let clean = CleanParams {
        similarity: Similarity::Cosine,
        rule: CleanRule::Fraction(0.1),
        small_class_factor: 1.0,
        truth: Some(truth_path),
        ..Recipe::default().clean
    };
    let soft = LabelParams::Soft {
        lambda: LambdaMap::Ratio { s0: 0.5 },
    };
    let score_dir = dir.path().join("score");
    let summary = score::run_stage(&inputs, &clean, &soft, &score_dir).unwrap();
    let noise = summary.noise.clone().unwrap();
    assert_eq!((noise.matched, noise.unmatched), (600, 0));
    assert!(noise.auc.unwrap() > 0.8, "AUC {:?}", noise.auc);
    // 10% discarded per class; with AUC well above chance most of them are noisy.
    assert_eq!(noise.discarded, 60);
    let precision = noise.precision.expect("10% discarded");
    assert!(precision > 0.6, "precision {precision}");

    let table = ScoreTable::load(&score_dir).unwrap();
    assert_eq!(table.len(), 600);
    assert_eq!(table.kept_ids().len(), 540);
    assert!(table.rows().iter().all(|r| (0.0..=1.0).contains(&r.lambda)));
    for name in [
        score::CLASSES_FILE,
        score::SUMMARY_FILE,
        score::HISTOGRAM_FILE,
    ] {
        assert!(score_dir.join(name).is_file(), "{name}");
    }
    let sheets = std::fs::read_dir(score_dir.join(score::LOWEST_DIR))
        .unwrap()
        .count();
    assert_eq!(sheets, classes);

    // Dot scores the same data, and with hard labels every λ is 1.
    let dot = CleanParams {
        similarity: Similarity::Dot,
        ..clean
    };
    let summary = score::run_stage(
        &ScoreInputs {
            image: None,
            probe: None,
            search: None,
            ..inputs
        },
        &dot,
        &LabelParams::Hard,
        &score_dir,
    )
    .unwrap();
    assert!(summary.noise.unwrap().auc.unwrap() > 0.7);
    assert!(ScoreTable::load(&score_dir)
        .unwrap()
        .rows()
        .iter()
        .all(|r| r.lambda == 1.0));
}

#[test]
fn score_tables_on_hand_made_vectors() {
    // Class 0: three samples near topic 0 and one near topic 1 (noisy); class 1: two on topic 1.
    let topics = vec![
        vec![0.9, 0.1],
        vec![0.8, 0.2],
        vec![1.0, 0.0],
        vec![0.1, 0.9],
        vec![0.0, 1.0],
        vec![0.2, 0.8],
    ];
    let labels = [0, 0, 0, 0, 1, 1];
    let paths: Vec<String> = (0..6).map(|i| format!("s/{i}.jpg")).collect();
    let names = vec!["tench".to_string(), "golf ball".to_string()];
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.tsv");
    std::fs::write(
        &truth,
        "path\tgiven_label\ttrue_label\ns/0.jpg\t0\t0\ns/1.jpg\t0\t0\ns/2.jpg\t0\t0\ns/3.jpg\t0\t-1\ns/4.jpg\t1\t1\n",
    )
    .unwrap();
    let inputs = ScoreInputs {
        topics: &topics,
        labels: &labels,
        paths: &paths,
        class_names: &names,
        image: None,
        probe: None,
        search: None,
    };
    let clean = CleanParams {
        similarity: Similarity::Cosine,
        mean: ClassMean::All,
        calibration: Calibration::None,
        rule: CleanRule::Threshold(0.5),
        small_class: 3,
        small_class_factor: 0.0,
        truth: Some(truth),
        ..Recipe::default().clean
    };
    let labels_mode = LabelParams::Soft {
        lambda: LambdaMap::Rank { min: 0.2 },
    };
    let summary = score::run_stage(&inputs, &clean, &labels_mode, dir.path()).unwrap();
    let noise = summary.noise.unwrap();
    assert_eq!(
        (
            noise.matched,
            noise.unmatched,
            noise.noisy,
            noise.noisy_discarded
        ),
        (5, 1, 1, 1)
    );
    insta::assert_snapshot!(std::fs::read_to_string(dir.path().join(score::CLASSES_FILE)).unwrap(), @r"
    label	name	samples	kept	mean_score	median_score	noisy	noisy_discarded	auc
    0	tench	4	3	0.839106	0.957024	1	1	1.0000
    1	golf ball	2	2	0.992438	0.993884	0	0
    ");
    insta::assert_snapshot!(std::fs::read_to_string(dir.path().join(score::SCORES_FILE)).unwrap(), @r"
    id	path	label	score	lambda	kept
    0	s/0.jpg	0	0.9570244070548726	0.7333333333333334	1
    1	s/1.jpg	0	0.9872411214285625	1	1
    2	s/2.jpg	0	0.9191450317891348	0.4666666666666667	1
    3	s/3.jpg	0	0.4930125720217687	0.2	0
    4	s/4.jpg	1	0.9938837345732799	1	1
    5	s/5.jpg	1	0.9909924305320021	0.2	1
    ");
    // What training reads back is what was written (λ stays within [0, 1] after rounding).
    let table = ScoreTable::load(dir.path()).unwrap();
    assert_eq!(table.kept_ids(), [0, 1, 2, 4, 5]);
    assert_eq!(table.get(1).unwrap().lambda, 1.0);
}

/// One class ("tench") of samples `s/<i>.jpg` with the given topic vectors, and a truth file
/// with the given rows (path, given label, true label) in a temporary folder.
struct OneClass {
    topics: Vec<Vec<f32>>,
    labels: Vec<u32>,
    paths: Vec<String>,
    names: Vec<String>,
    dir: tempfile::TempDir,
    truth: std::path::PathBuf,
}

impl OneClass {
    fn new(topics: Vec<Vec<f32>>, truth_rows: &str) -> OneClass {
        let dir = tempfile::tempdir().unwrap();
        let truth = dir.path().join("truth.tsv");
        let text = format!("path\tgiven_label\ttrue_label\n{truth_rows}");
        std::fs::write(&truth, text).unwrap();
        OneClass {
            labels: vec![0; topics.len()],
            paths: (0..topics.len()).map(|i| format!("s/{i}.jpg")).collect(),
            names: vec!["tench".to_string()],
            topics,
            dir,
            truth,
        }
    }

    fn inputs(&self) -> ScoreInputs<'_> {
        ScoreInputs {
            topics: &self.topics,
            labels: &self.labels,
            paths: &self.paths,
            class_names: &self.names,
            image: None,
            probe: None,
            search: None,
        }
    }
}

/// Precision and recall of the discarding are undefined where nothing is discarded (rule
/// "none"): `None`, `null` in summary.json and "n/a" where shown, not a misleading 0.
#[test]
fn noise_precision_and_recall_are_undefined_when_nothing_is_discarded() {
    let class = OneClass::new(
        vec![vec![0.9, 0.1], vec![1.0, 0.0], vec![0.1, 0.9]],
        "s/0.jpg\t0\t0\ns/1.jpg\t0\t0\ns/2.jpg\t0\t-1\n",
    );
    let (inputs, dir) = (class.inputs(), class.dir.path());
    let noise = |rule| {
        let clean = CleanParams {
            similarity: Similarity::Cosine,
            rule,
            truth: Some(class.truth.clone()),
            ..Recipe::default().clean
        };
        let summary = score::run_stage(&inputs, &clean, &LabelParams::Hard, dir).unwrap();
        summary.noise.unwrap()
    };
    let kept_all = noise(CleanRule::None);
    assert_eq!((kept_all.precision, kept_all.recall), (None, None));
    assert_eq!(score::or_na(kept_all.precision), "n/a");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(score::SUMMARY_FILE)).unwrap())
            .unwrap();
    assert!(json["noise"]["precision"].is_null(), "{json}");
    let cleaned = noise(CleanRule::Threshold(0.8));
    assert_eq!((cleaned.precision, cleaned.recall), (Some(1.0), Some(1.0)));
    assert_eq!(score::or_na(cleaned.precision), "1");
}

/// The oracle keeps exactly what the truth file says is labelled correctly, whatever the
/// scores say (here the best-scored sample is the mislabelled one), and discards a sample the
/// truth file does not list; without a truth file it is an error, not a silent "keep all".
#[test]
fn the_oracle_keeps_exactly_the_correctly_labelled_samples() {
    // s/2.jpg (the best score) is mislabelled; s/3.jpg is not listed.
    let class = OneClass::new(
        vec![
            vec![0.9, 0.1],
            vec![0.5, 0.5],
            vec![1.0, 0.0],
            vec![0.8, 0.2],
        ],
        "s/0.jpg\t0\t0\ns/1.jpg\t0\t0\ns/2.jpg\t0\t4\n",
    );
    let (inputs, dir) = (class.inputs(), class.dir.path());
    let oracle = CleanParams {
        rule: CleanRule::Oracle,
        truth: Some(class.truth.clone()),
        ..Recipe::default().clean
    };
    let summary = score::run_stage(&inputs, &oracle, &LabelParams::Hard, dir).unwrap();
    assert_eq!(ScoreTable::load(dir).unwrap().kept_ids(), [0, 1]);
    let noise = summary.noise.unwrap();
    assert_eq!(noise.unmatched, 1);
    assert_eq!((noise.precision, noise.recall), (Some(1.0), Some(1.0)));

    let blind = CleanParams {
        truth: None,
        ..oracle
    };
    let err = score::run_stage(&inputs, &blind, &LabelParams::Hard, dir).unwrap_err();
    assert!(err.to_string().contains("needs a truth file"), "{err}");
}

/// λ and the trainer's other [K, V] matrices are reserved up front: where they cannot be had
/// (here 32 PiB each, past any address space), the stage gets an error, not an abort.
#[test]
fn lda_matrices_that_cannot_be_allocated_are_an_error_not_an_abort() {
    let err = OnlineLda::new(settings(8, 1, false), 1 << 50, 0)
        .err()
        .expect("32 PiB cannot be reserved");
    assert!(matches!(err, lda::LdaError::Memory { .. }), "{err}");
    assert!(
        err.to_string().starts_with(
            "cannot allocate LDA's [8 topics, 1125899906842624 words] f32 matrices (32.0 PiB each): "
        ),
        "{err}"
    );
}

/// `text.max_words` caps the vocabulary the stage builds, keeping the most frequent words.
#[test]
fn the_lda_stage_keeps_at_most_max_words_words() {
    let source = MemorySource {
        train: (0..6).map(|d| sample(&[0, 0, 1, 2, d % 2 + 3])).collect(),
        val: vec![],
    };
    let text = TextParams {
        max_words: 2,
        max_doc_freq: 1.0,
        ..text_params()
    };
    let dir = tempfile::tempdir().unwrap();
    let summary = lda::run_stage(&source, &text, &lda_params(2), dir.path(), false).unwrap();
    assert_eq!(summary.vocabulary, 2);
    let vocab = std::fs::read_to_string(dir.path().join(lda::VOCAB_FILE)).unwrap();
    // Word 0 twice per document; words 1 and 2 once each, the tie broken alphabetically.
    assert_eq!(vocab, format!("{}\n{}\n", word(0), word(1)));
}

//! Scores every training label from its page text alone and prints the least plausible
//! samples: LDA topics of each page, compared with the mean topics of its class. No image is
//! read.
//!
//! ```sh
//! cargo run --release --example score_text -- DATASET_ROOT [jsonl|webvision|imagefolder]
//! ```
//!
//! Without arguments it generates the quickstart's noisy dataset and scores that. The text,
//! LDA and cleaning settings are `recipes/quickstart.toml`'s.

use std::path::PathBuf;

use websieve::recipe::{self, DatasetFormat, Recipe};
use websieve::score::{self, ScoreInputs, ScoreRow, ScoreSummary};
use websieve::text::MemorySource;
use websieve::{dataset, lda};

/// The least plausible samples, least first, and what the scoring found.
struct Scored {
    lowest: Vec<Lowest>,
    summary: ScoreSummary,
}

struct Lowest {
    row: ScoreRow,
    sample: dataset::DatasetSample,
    title: String,
    /// Whether its label is wrong, where the dataset comes with a truth file.
    mislabelled: Option<bool>,
}

fn score_dataset(root: Option<PathBuf>, format: DatasetFormat) -> anyhow::Result<Scored> {
    let mut recipe: Recipe = recipe::load_file("recipes/quickstart.toml".as_ref(), &[])?.remove(0);
    recipe.dataset.root = root;
    recipe.dataset.format = format;
    let work = tempfile::tempdir()?;
    let index = dataset::read(&recipe.dataset, work.path())?;

    let documents = MemorySource {
        train: index
            .train
            .iter()
            .map(|s| Ok((s.source, index.text(s)?)))
            .collect::<Result<_, dataset::DatasetError>>()?,
        val: Vec::new(),
    };
    let lda_dir = work.path().join("lda");
    lda::run_stage(&documents, &recipe.text, &recipe.lda, &lda_dir, false)?;
    let topics = lda::read_topics(&lda_dir.join(lda::TOPICS_TRAIN_FILE))?;

    let labels: Vec<u32> = index.train.iter().map(|s| s.label).collect();
    let paths: Vec<String> = index.train.iter().map(|s| s.path.clone()).collect();
    let class_names: Vec<String> = index.classes.iter().map(|c| c.name.clone()).collect();
    let inputs = ScoreInputs {
        topics: &topics,
        labels: &labels,
        paths: &paths,
        class_names: &class_names,
        image: None,
        probe: None,
        search: None,
    };
    // A dataset that knows its noise (the generated one) also gets the detection's AUC.
    let clean = recipe::CleanParams {
        truth: index.truth.clone(),
        ..recipe.clean
    };
    let score_dir = work.path().join("score");
    let summary = score::run_stage(&inputs, &clean, &recipe.labels, &score_dir)?;
    let mislabelled = match &index.truth {
        Some(truth) => score::read_truth(truth)?.noisy_by_sample(&paths),
        None => vec![None; labels.len()],
    };
    let mut rows = score::ScoreTable::load(&score_dir)?.rows().to_vec();
    rows.sort_by(|a, b| a.score.total_cmp(&b.score));
    let lowest = rows
        .into_iter()
        .take(10)
        .map(|row| {
            let sample = index.train[row.id as usize].clone();
            Ok(Lowest {
                title: index.text(&sample)?.title.unwrap_or_default(),
                sample,
                mislabelled: mislabelled[row.id as usize],
                row,
            })
        })
        .collect::<Result<_, dataset::DatasetError>>()?;
    Ok(Scored { lowest, summary })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (root, format) = match args.next() {
        Some(root) => {
            let format = match args.next().as_deref() {
                None | Some("jsonl") => DatasetFormat::Jsonl,
                Some("webvision") => DatasetFormat::Webvision,
                Some("imagefolder") => DatasetFormat::Imagefolder,
                Some(other) => anyhow::bail!("unknown format {other:?}"),
            };
            (Some(PathBuf::from(root)), format)
        }
        None => (None, DatasetFormat::Synthetic),
    };
    let scored = score_dataset(root, format)?;
    let s = &scored.summary;
    println!("{} samples scored, {} kept", s.samples, s.kept);
    if let Some(noise) = &s.noise {
        println!(
            "noise detection AUC against the truth file: {}",
            noise.auc.map_or("n/a".into(), |auc| format!("{auc:.3}"))
        );
    }
    println!("\nleast plausible:\n score  label  truth    path  title");
    for Lowest {
        row,
        sample,
        title,
        mislabelled,
    } in &scored.lowest
    {
        let truth = match mislabelled {
            Some(true) => "wrong",
            Some(false) => "right",
            None => "",
        };
        println!(
            "{:6.3}  {:5}  {truth:7}  {}  {title}",
            row.score, row.label, sample.path
        );
    }
    Ok(())
}

/// The text alone finds the noise: the least plausible samples of the generated dataset
/// (30% wrong labels) are mostly the wrong ones, and the AUC is far above chance.
#[test]
fn the_least_plausible_samples_are_mostly_mislabelled() {
    let scored = score_dataset(None, DatasetFormat::Synthetic).unwrap();
    let noise = scored
        .summary
        .noise
        .expect("the generated dataset has a truth file");
    let auc = noise
        .auc
        .expect("the generated dataset has noisy and clean samples");
    assert!(auc > 0.8, "AUC {auc}");
    let wrong = scored
        .lowest
        .iter()
        .filter(|l| l.mislabelled == Some(true))
        .count();
    assert!(
        wrong >= 7,
        "{wrong} of the 10 least plausible are mislabelled"
    );
}

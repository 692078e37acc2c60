//! Memory that must not grow with the sample count: each stage of `runner bench scale` runs
//! at two sizes in its own process, and its peak anonymous memory (the process's own, not the
//! store's pages LMDB maps) may grow by at most a small
//! budget per added sample (the compact arrays a stage may hold: a label, a score, λ, a
//! sampler entry), far below what holding a sample's topic vector or page text would take.

use std::path::Path;
use std::process::Command;

use websieve::bench::scale::{measure, ScaleStage, Usage};

/// Topics: a topic vector per sample would be 4 bytes each.
const TOPICS: usize = 500;

/// Training samples at the two sizes.
const SIZES: [usize; 2] = [4_000, 40_000];
/// Bytes a stage may add per added sample. Each stage's own arrays: ingest its work list (each
/// sample's path as listed, its file's path and where its page text lies in the index's
/// text file, and the fingerprint's copy of the paths: measured 361 to 471 bytes, as the
/// decoded chunks in flight vary; the texts held in memory took about 1.4 kB a sample more,
/// and the page files held parsed several kB), LDA
/// no array per sample (its matrices are [topics, max_words]), but it counts every distinct
/// word before keeping the `max_words` most frequent, and the generated pages draw from 300k
/// Zipf words, of which ten times the pages show more (measured: 300 bytes per added sample
/// from 4,000 to 40,000 samples; the count stops growing with the language's vocabulary, not
/// with the samples); score a label, score, λ, kept and noisy flag, their sort orders and the
/// histogram's copy (about 70 bytes), the sampler its kept samples twice, their weights,
/// cumulative weights and the epoch permutations (about 80 bytes). A topic vector held per
/// sample at [`TOPICS`] topics is 2,000 bytes.
const BUDGET: [(ScaleStage, u64); 4] = [
    (ScaleStage::Ingest, 700),
    (ScaleStage::Lda, 600),
    (ScaleStage::Score, 150),
    (ScaleStage::Sampler, 150),
];

fn run(stage: ScaleStage, samples: usize, work: &Path) -> Usage {
    let (usage, _) = measure(
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(["bench", "scale", "--stage", stage.name()])
            .args(["--recipe", "recipes/scale.toml"])
            .arg("--work")
            .arg(work)
            .args(["--samples", &samples.to_string()])
            .args(["--set", &format!("lda.topics={TOPICS}")])
            .args(["--set", "text.max_words=2000"])
            // The sampler's workers decode batches ahead, and how many are in flight at its peak
            // varies from run to run: at the recipe's 80 images (1 MB a batch) that swung the
            // peak by 3 MB, as much as the budget allows 36,000 added samples.
            .args(["--set", "train.batch_per_device=4"])
            .env("RUST_LOG", "error"),
    )
    .unwrap_or_else(|e| panic!("{} at {samples} samples: {e}", stage.name()));
    usage
}

#[test]
fn stage_memory_does_not_grow_with_the_sample_count() {
    let work = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for samples in SIZES {
        run(ScaleStage::Generate, samples, work.path());
        let peak: Vec<u64> = BUDGET
            .iter()
            .map(|&(stage, _)| run(stage, samples, work.path()).max_anon)
            .collect();
        peaks.push(peak);
    }
    let added = (SIZES[1] - SIZES[0]) as u64;
    let grown: Vec<String> = BUDGET
        .iter()
        .enumerate()
        .filter_map(|(i, &(stage, budget))| {
            let per_sample = peaks[1][i].saturating_sub(peaks[0][i]) / added;
            (per_sample > budget).then(|| {
                format!(
                    "{}: {} → {} bytes peak, {per_sample} bytes per added sample (budget {budget})",
                    stage.name(),
                    peaks[0][i],
                    peaks[1][i]
                )
            })
        })
        .collect();
    assert!(grown.is_empty(), "{grown:#?}");
}

//! The field's evaluation protocols: a class subset and a source filter honoured by every
//! stage (mini-WebVision: Google images of the first 50 classes).

use std::path::Path;

use crate::cli::{runner, stage_dir, SMALL};
use websieve::dataset::{self, synthetic};
use websieve::recipe::{self, ClassSubset, DatasetFormat, Recipe};
use websieve::sample::{Source, Split};
use websieve::store::Store;

/// A generated WebVision-layout dataset of `classes` classes, 2–4 training images and one
/// validation image each, in `dir/synthetic`.
fn generated(dir: &Path, classes: usize) -> std::path::PathBuf {
    let params = websieve::recipe::SyntheticParams {
        classes,
        min_per_class: 2,
        max_per_class: 4,
        val_per_class: 1,
        ..Recipe::default().dataset.synthetic
    };
    synthetic::generate(&params, dir).unwrap().root
}

/// `(path, label)` of the lines of an `info/` list, for the lines whose label passes `keep`.
fn listed(root: &Path, list: &str, keep: impl Fn(u32) -> bool) -> Vec<(String, u32)> {
    std::fs::read_to_string(root.join("info").join(list))
        .unwrap()
        .lines()
        .map(|l| {
            let (path, label) = l.split_once(' ').unwrap();
            (path.to_string(), label.parse().unwrap())
        })
        .filter(|(_, label)| keep(*label))
        .collect()
}

/// Google images of the first 50 of 60 classes, through every stage: the store holds exactly
/// those (labels unchanged, since the first 50 keep their places), LDA and the scores cover
/// exactly its training samples, and evaluation scores the 50 classes' validation images.
#[test]
fn a_class_subset_and_a_source_filter_hold_from_ingest_to_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let root = generated(tmp.path(), 60);
    let root_set = format!("dataset.root={:?}", root.display().to_string());
    let mut args = vec![
        "recipes/quickstart.toml",
        "--set",
        "dataset.format=\"webvision\"",
        "--set",
        &root_set,
        "--set",
        "dataset.classes=\"first:50\"",
        "--set",
        "dataset.sources=[\"google\"]",
        "--set",
        "text.min_count=1",
    ];
    args.extend(SMALL);
    let out = runner(tmp.path(), &args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ingest = stage_dir(tmp.path(), "quickstart", "ingest");
    let store = Store::open(&ingest).unwrap();
    let header = store.header();
    assert_eq!(header.classes.len(), 50);
    assert_eq!(header.classes[49].id, "s0049");
    let expected = listed(&root, "train_filelist_google.txt", |l| l < 50);
    assert!(expected.len() < listed(&root, "train_filelist_all.txt", |_| true).len());
    let reader = store.reader().unwrap();
    let stored: Vec<(String, u32)> = (0..store.len(Split::Train))
        .map(|id| {
            let meta = reader.meta(Split::Train, id).unwrap();
            assert_eq!(meta.source, Source::Google);
            (meta.path, meta.label)
        })
        .collect();
    assert_eq!(stored, expected);
    assert_eq!(store.len(Split::Val), 50);
    assert!(header.queries.iter().all(|q| q.label < 50));

    let topics = websieve::lda::read_topics(
        &stage_dir(tmp.path(), "quickstart", "lda").join(websieve::lda::TOPICS_TRAIN_FILE),
    )
    .unwrap();
    assert_eq!(topics.len(), expected.len());
    let scores =
        websieve::score::ScoreTable::load(&stage_dir(tmp.path(), "quickstart", "score")).unwrap();
    assert_eq!(scores.len(), expected.len());
    let metrics: websieve::eval::EvalMetrics = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("runs/quickstart/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metrics.samples, 50);
    assert_eq!(metrics.per_class.len(), 50);
    assert!(metrics.per_class.iter().all(|c| c.samples == 1));
}

/// A list of class ids keeps those classes in the dataset's order, relabelled 0..; a class
/// that is not there, or more classes than there are, is an error naming the class list.
#[test]
fn a_list_of_class_ids_relabels_in_dataset_order_and_unknown_ones_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = generated(tmp.path(), 6);
    let params = |classes| recipe::DatasetParams {
        format: DatasetFormat::Webvision,
        root: Some(root.clone()),
        classes,
        ..Recipe::default().dataset
    };
    let ids = |ids: &[&str]| ClassSubset::Ids(ids.iter().map(|s| s.to_string()).collect());
    let index = dataset::read(&params(ids(&["s0004", "s0001"])), tmp.path()).unwrap();
    let class_ids: Vec<&str> = index.classes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(class_ids, ["s0001", "s0004"]);
    let expected: Vec<(String, u32)> =
        listed(&root, "train_filelist_all.txt", |l| l == 1 || l == 4)
            .into_iter()
            .map(|(path, label)| (path, u32::from(label == 4)))
            .collect();
    let read: Vec<(String, u32)> = index
        .train
        .iter()
        .map(|s| (s.path.clone(), s.label))
        .collect();
    assert_eq!(read, expected);
    assert_eq!(index.val.len(), 2);
    assert!(index.queries.iter().all(|q| q.label < 2));

    let error = |classes| {
        dataset::read(&params(classes), tmp.path())
            .unwrap_err()
            .to_string()
            .replace(&root.display().to_string(), "<root>")
    };
    insta::assert_snapshot!(error(ids(&["s0001", "n01440764"])), @r#"<root>/info/synsets.txt: dataset.classes: "n01440764" is not one of its classes"#);
    insta::assert_snapshot!(error(ClassSubset::First(7)), @r#"<root>/info/synsets.txt: dataset.classes: "first:7" but the dataset has 6 classes"#);
}

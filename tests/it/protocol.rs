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
    let labels = imagenet_labels(&root, &tmp.path().join("val_labels.txt"));
    let expected = listed(&root, "train_filelist_google.txt", |l| l < 50);
    let sets = [
        "dataset.format=\"webvision\"".to_string(),
        format!("dataset.root={:?}", root.display().to_string()),
        "dataset.classes=\"first:50\"".into(),
        "dataset.sources=[\"google\"]".into(),
        "text.min_count=1".into(),
        format!(
            "dataset.second_val={{ name = \"ImageNet-style\", root = {:?}, labels = {:?} }}",
            root.join("val_images_256").display().to_string(),
            labels.display().to_string()
        ),
        format!(
            "dataset.expect={{ classes = 50, train = {}, val = 50, second_val = 50 }}",
            expected.len()
        ),
    ];
    let mut args = vec!["recipes/quickstart.toml"];
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    args.extend(SMALL);
    let out = runner(tmp.path(), &args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\nImageNet-style:\n"), "{stdout}");

    let ingest = stage_dir(tmp.path(), "quickstart", "ingest");
    let store = Store::open(&ingest).unwrap();
    let header = store.header();
    assert_eq!(header.classes.len(), 50);
    assert_eq!(header.classes[49].id, "s0049");
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
    // The second validation set: its 60 images mapped by wnid, the 50 kept classes' scored.
    let second: websieve::eval::EvalMetrics = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("runs/quickstart/metrics_second_val.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(second.samples, 50);
    assert!(second.per_class.iter().all(|c| c.samples == 1));

    // Counts other than the expected ones stop the run before any image is ingested.
    let mut args = vec!["recipes/quickstart.toml", "--until", "ingest"];
    let sets = [
        sets[1].clone(),
        sets[0].clone(),
        "dataset.classes=\"first:50\"".into(),
        "dataset.expect={ classes = 50, train = 65944, val = 2500 }".into(),
    ];
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    let out = runner(tmp.path(), &args, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap()
        .replace(&root.display().to_string(), "<root>");
    insta::assert_snapshot!(error, @"error: stage `ingest` of run quickstart: <root>: not the counts dataset.expect asks for: train: 65944 expected, 145 listed; val: 2500 expected, 50 listed; another release of the dataset (WebVision 2.0 read as 1.0), other lists or another validation set?");
    let refused = std::fs::read_dir(tmp.path().join("cache/ingest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "partial"))
        .expect("the refused ingest's partial folder");
    assert!(
        !refused.join("store").exists(),
        "the counts are checked before the store is opened"
    );
}

/// An ILSVRC2012-style label file (`<image> <wnid>`) for the generated validation images.
fn imagenet_labels(root: &Path, to: &Path) -> std::path::PathBuf {
    let lines: String = listed(root, "val_filelist.txt", |_| true)
        .into_iter()
        .map(|(name, label)| format!("{name} s{label:04}\n"))
        .collect();
    std::fs::write(to, lines).unwrap();
    to.to_path_buf()
}

/// Without a label file, the second validation set is one folder per wnid; folders of
/// classes the run leaves out are passed over, and a set with none of its classes is named.
#[test]
fn a_second_val_set_in_wnid_folders_is_mapped_by_class_id() {
    let tmp = tempfile::tempdir().unwrap();
    let root = generated(tmp.path(), 6);
    let folders = tmp.path().join("val");
    for (name, label) in listed(&root, "val_filelist.txt", |_| true) {
        let dir = folders.join(format!("s{label:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(root.join("val_images_256").join(&name), dir.join(&name)).unwrap();
    }
    let mut params = recipe::DatasetParams {
        format: DatasetFormat::Webvision,
        root: Some(root.clone()),
        classes: ClassSubset::Ids(vec!["s0002".into(), "s0005".into()]),
        second_val: Some(recipe::SecondVal {
            name: "folders".into(),
            root: folders.clone(),
            labels: None,
        }),
        ..Recipe::default().dataset
    };
    let index = dataset::read(&params, tmp.path()).unwrap();
    let second = dataset::read_second_val(&params, &index.classes).unwrap();
    let read: Vec<(&str, u32)> = second.iter().map(|s| (&s.path[..5], s.label)).collect();
    assert_eq!(read, [("s0002", 0), ("s0005", 1)]);

    params.classes = ClassSubset::First(1);
    std::fs::remove_dir_all(folders.join("s0000")).unwrap();
    let index = dataset::read(&params, tmp.path()).unwrap();
    let error = dataset::read_second_val(&params, &index.classes)
        .unwrap_err()
        .to_string()
        .replace(&folders.display().to_string(), "<val>");
    insta::assert_snapshot!(error, @"<val>: dataset.second_val has no image of the 1 class(es) the run keeps (matched by class id: a label file of `<image> <wnid>` lines, or `<wnid>/` folders)");
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

/// A Clothing1M-layout dataset in `root`: 3 classes, 12 training images (noisy labels, every
/// third one wrong), the first 6 also with a clean label, and 3 clean test images.
fn clothing1m(root: &Path) {
    let names = "T-Shirt\nShirt\nKnitwear\n";
    std::fs::write(root.join("category_names_eng.txt"), names).unwrap();
    let (mut noisy, mut clean, mut train, mut test) = Default::default();
    let image = |i: usize, class: usize| {
        let path = format!("images/{}/{i:02}/{i}.jpg", i % 2);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(i as u64);
        let pixels = synthetic::class_image(class, 3, 32, &mut rng);
        let mut bytes = Vec::new();
        websieve::store::jpeg::encode_rgb(pixels.as_raw(), 32, 32, 90, &mut bytes);
        let file = root.join(&path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
        path
    };
    let add = |list: &mut String, line: String| list.push_str(&(line + "\n"));
    for i in 0..12 {
        let truth = i % 3;
        let given = if i % 3 == 2 { (truth + 1) % 3 } else { truth };
        let path = image(i, truth);
        add(&mut noisy, format!("{path} {given}"));
        add(&mut train, path.clone());
        if i < 6 {
            add(&mut clean, format!("{path} {truth}"));
        }
    }
    for i in 12..15 {
        let path = image(i, i % 3);
        add(&mut clean, format!("{path} {}", i % 3));
        add(&mut test, path);
    }
    for (name, text) in [
        ("noisy_label_kv.txt", noisy),
        ("clean_label_kv.txt", clean),
        ("noisy_train_key_list.txt", train),
        ("clean_test_key_list.txt", test),
    ] {
        std::fs::write(root.join(name), text).unwrap();
    }
}

/// Clothing1M: noisy labels to train on, the clean test list to validate on, and the training
/// images with a clean label as the truth file the ingest keeps for the score stage's AUC.
#[test]
fn clothing1m_reads_noisy_labels_and_its_clean_labels_become_the_truth_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("clothing1m");
    std::fs::create_dir_all(&root).unwrap();
    clothing1m(&root);
    let params = recipe::DatasetParams {
        format: DatasetFormat::Clothing1m,
        root: Some(root.clone()),
        ..Recipe::default().dataset
    };
    let work = tmp.path().join("ingest");
    let index = dataset::read(&params, &work).unwrap();
    assert_eq!(index.classes[2].name, "Knitwear");
    let given: Vec<u32> = index.train.iter().map(|s| s.label).collect();
    assert_eq!(given, [0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0]);
    let val: Vec<u32> = index.val.iter().map(|s| s.label).collect();
    assert_eq!(val, [0, 1, 2]);
    let truth = websieve::score::read_truth(index.truth.as_ref().unwrap()).unwrap();
    let paths: Vec<String> = index.train.iter().map(|s| s.path.clone()).collect();
    let noisy = truth.noisy_by_sample(&paths);
    let expected: Vec<Option<bool>> = (0..12).map(|i| (i < 6).then_some(i % 3 == 2)).collect();
    assert_eq!(noisy, expected);

    websieve::store::ingest(&params, &work, false).unwrap();
    let store = Store::open(&work).unwrap();
    assert_eq!(store.len(Split::Train), 12);
    assert_eq!(store.len(Split::Val), 3);
    assert!(store.truth_file().unwrap().is_file());
}

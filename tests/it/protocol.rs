//! The field's evaluation protocols: a class subset and a source filter honoured by every
//! stage (mini-WebVision: Google images of the first 50 classes).

use std::path::Path;

use crate::cli::{runner, runner_stdout, stage_dir, SMALL};
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

/// A Clothing1M-layout dataset in `root` (made here): 3 classes, 12 training images (noisy labels, every
/// third one wrong), the first 6 also with a clean label, and 3 clean test images.
fn clothing1m(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
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

/// Clothing1M carries no page text: it trains through `runner` on its labels as given (the
/// topic vectors uniform, so every score ties and the noise AUC is 0.5, its clean labels still
/// the truth), the settings that act on the text score are refused where they are written,
/// and a dataset found to have no text at all is refused at the score stage, not cleaned at
/// random.
#[test]
fn a_dataset_without_page_text_trains_on_its_labels_and_text_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("clothing1m");
    clothing1m(&root);
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/quickstart.toml");
    let with_text = tmp.path().join("clothing1m.toml");
    std::fs::write(
        &with_text,
        format!(
            "extends = {:?}\n[dataset]\nformat = \"clothing1m\"\nroot = {:?}\n",
            quickstart.display().to_string(),
            root.display().to_string()
        ),
    )
    .unwrap();
    let refused = runner(tmp.path(), &["validate", with_text.to_str().unwrap()], &[]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr)
        .replace(&tmp.path().display().to_string(), "<tmp>");
    for key in ["`clean.rule`", "`labels.mode`"] {
        assert!(stderr.contains(key), "{key} refused: {stderr}");
    }
    assert!(
        stderr.contains("Clothing1M lists carry no page text"),
        "{stderr}"
    );

    let labels_only = tmp.path().join("clothing1m-labels.toml");
    std::fs::write(
        &labels_only,
        "extends = \"clothing1m.toml\"\n[clean]\nrule = \"none\"\n[labels]\nmode = \"hard\"\n",
    )
    .unwrap();
    let mut args = vec![labels_only.to_str().unwrap()];
    args.extend(SMALL);
    let out = runner(tmp.path(), &args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = |stage: &str, file: &str| -> serde_json::Value {
        let dir = stage_dir(tmp.path(), "clothing1m-labels", stage);
        serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap()
    };
    assert_eq!(json("lda", "summary.json")["vocabulary"], 0);
    let score = json("score", "summary.json");
    assert_eq!(score["kept"], 12);
    assert_eq!(score["noise"]["auc"], 0.5);
    assert!(tmp
        .path()
        .join("runs/clothing1m-labels/metrics.json")
        .is_file());

    // The generated WebVision-layout data with every text field switched off: no word at all.
    let no_fields: Vec<String> = ["google", "flickr", "other"]
        .iter()
        .map(|source| format!("text.{source}_fields=[]"))
        .collect();
    let mut args = vec![quickstart.to_str().unwrap()];
    args.extend(crate::cli::TINY);
    args.extend(SMALL);
    for set in &no_fields {
        args.extend(["--set", set.as_str()]);
    }
    let out = runner(tmp.path(), &args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("stage `score` of run quickstart: no training sample has page text")
            && stderr.contains("clean.rule, labels.mode = \"soft\" would act on ties"),
        "{stderr}"
    );
}

/// The classes of the Food-101N fixture.
const FOOD_CLASSES: [&str; 3] = ["apple_pie", "baby_back_ribs", "baklava"];

/// A Food-101N-layout dataset in `root`, with the release's header lines: 3 classes of 10
/// images each in the image list, every fifth of them showing another class (a wrong label);
/// `verified_train.tsv` checks 15 of the training images (those wrong among them marked 0),
/// `verified_val.tsv` 4 others, one of them wrong. Returns the paths verified wrong in
/// training.
fn food101n(root: &Path) -> Vec<String> {
    let meta = root.join("meta");
    std::fs::create_dir_all(&meta).unwrap();
    let classes = std::iter::once("class_name")
        .chain(FOOD_CLASSES)
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(meta.join("classes.txt"), classes + "\n").unwrap();
    let (mut list, mut train, mut val) = (
        String::from("class_name/key\n"),
        String::from("class_name/key\tverification_label\n"),
        String::from("class_name/key\tverification_label\n"),
    );
    let mut wrong_in_training = Vec::new();
    for i in 0..30usize {
        let given = i % 3;
        let wrong = i % 5 == 4;
        let shown = if wrong { (given + 1) % 3 } else { given };
        let path = format!("{}/{i:032x}.jpg", FOOD_CLASSES[given]);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(i as u64);
        let pixels = synthetic::class_image(shown, 3, 32, &mut rng);
        let mut bytes = Vec::new();
        websieve::store::jpeg::encode_rgb(pixels.as_raw(), 32, 32, 90, &mut bytes);
        let file = root.join("images").join(&path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
        list.push_str(&format!("{path}\n"));
        let verdict = format!("{path}\t{}\n", u8::from(!wrong));
        match i {
            0..15 => {
                train.push_str(&verdict);
                if wrong {
                    wrong_in_training.push(path);
                }
            }
            26..30 => val.push_str(&verdict),
            _ => {}
        }
    }
    for (name, text) in [
        ("imagelist.tsv", list),
        ("verified_train.tsv", train),
        ("verified_val.tsv", val),
    ] {
        std::fs::write(meta.join(name), text).unwrap();
    }
    wrong_in_training
}

/// Each stored image's mean colour as a distribution over R, G, B: an image signal for the
/// score stage (Food-101N has no page text to fit topics on). The fixture's classes differ
/// in colour, so a wrongly labelled image sits far from its given class's mean.
fn mean_colours(store: &Store) -> Vec<Vec<f32>> {
    let reader = store.reader().unwrap();
    (0..store.len(Split::Train))
        .map(|id| {
            let image = reader.image(Split::Train, id).unwrap();
            let mut sum = [0f64; 3];
            for pixel in image.pixels() {
                (0..3).for_each(|c| sum[c] += f64::from(pixel[c]));
            }
            let total: f64 = sum.iter().sum();
            sum.iter().map(|&s| (s / total) as f32).collect()
        })
        .collect()
}

/// Food-101N: the image list to train on (less the verified validation images), the images
/// verified right in `verified_val.tsv` to validate on, and `verified_train.tsv` as the truth
/// file: through the ingest into the score stage, whose noise AUC is computed from the
/// verification labels. The cleaned list is the image list in its own format.
#[test]
fn food101n_reads_its_lists_and_its_verification_labels_are_the_noise_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Food-101N_release");
    let wrong = food101n(&root);
    let params = recipe::DatasetParams {
        format: DatasetFormat::Food101n,
        root: Some(root.clone()),
        resize: 32,
        ..Recipe::default().dataset
    };
    let work = tmp.path().join("ingest");
    let index = dataset::read(&params, &work).unwrap();
    let ids: Vec<&str> = index.classes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, FOOD_CLASSES);
    assert_eq!(index.classes[1].name, "baby back ribs");
    assert_eq!(
        index.train.len(),
        26,
        "30 listed, the 4 verified val images left out"
    );
    assert!(index.train.iter().all(|s| s.label as usize == {
        let class = s.path.split('/').next().unwrap();
        FOOD_CLASSES.iter().position(|c| *c == class).unwrap()
    }));
    let val: Vec<&str> = index.val.iter().map(|s| &s.path[..]).collect();
    assert_eq!(
        val.len(),
        3,
        "the verified val images but the wrong one: {val:?}"
    );
    assert!(index.train.iter().all(|s| !val.contains(&s.path.as_str())));

    websieve::store::ingest(&params, &work, false).unwrap();
    let store = Store::open(&work).unwrap();
    assert_eq!((store.len(Split::Train), store.len(Split::Val)), (26, 3));
    let reader = store.reader().unwrap();
    let (labels, paths): (Vec<u32>, Vec<String>) = (0..store.len(Split::Train))
        .map(|id| {
            let meta = reader.meta(Split::Train, id).unwrap();
            (meta.label, meta.path)
        })
        .unzip();
    let topics = mean_colours(&store);
    let class_names = store.header().class_names();
    let inputs = websieve::score::ScoreInputs {
        topics: &topics,
        labels: &labels,
        paths: &paths,
        class_names: &class_names,
        image: None,
        probe: None,
        search: None,
    };
    let clean = recipe::CleanParams {
        similarity: recipe::Similarity::Cosine,
        truth: store.truth_file(),
        ..Recipe::default().clean
    };
    let summary = websieve::score::run_stage(
        &inputs,
        &clean,
        &recipe::LabelParams::Hard,
        &tmp.path().join("score"),
    )
    .unwrap();
    let noise = summary.noise.unwrap();
    assert_eq!((noise.matched, noise.unmatched), (15, 11));
    assert_eq!(noise.noisy, wrong.len());
    assert_eq!(noise.noisy, 3);
    let auc = noise.auc.unwrap();
    assert!(auc > 0.9, "the wrong labels score lowest: AUC {auc}");

    let keep: std::collections::HashSet<&str> = paths[..5].iter().map(String::as_str).collect();
    let lists = dataset::clean_lists(&params, &work, &keep).unwrap();
    assert_eq!(lists[0].name, "imagelist_clean.tsv");
    let expected = format!("class_name/key\n{}\n", paths[..5].join("\n"));
    assert_eq!(lists[0].text, expected);
}

/// `train.holdout` through the runner, with a second validation set: a quarter of each
/// class's kept training samples held out (only the train stage runs again), evaluated at the
/// end of each of 3 epochs; the best epoch on it (never on val) is evaluated beside the last
/// on both validation sets, and the report's tables (text, CSV, HTML) say which is which.
#[test]
fn a_holdout_chooses_the_best_epoch_and_reports_show_last_best_and_ensemble_results() {
    let tmp = tempfile::tempdir().unwrap();
    let params = websieve::recipe::SyntheticParams {
        min_per_class: 10,
        max_per_class: 20,
        val_per_class: 4,
        ..Recipe::default().dataset.synthetic
    };
    let root = synthetic::generate(&params, tmp.path()).unwrap().root;
    let labels = imagenet_labels(&root, &tmp.path().join("val_labels.txt"));
    let sets = [
        "dataset.format=\"webvision\"".to_string(),
        format!("dataset.root={:?}", root.display().to_string()),
        format!(
            "dataset.second_val={{ name = \"ImageNet-style\", root = {:?}, labels = {:?} }}",
            root.join("val_images_256").display().to_string(),
            labels.display().to_string()
        ),
        "text.min_count=1".into(),
        "lda.topics=8".into(),
        "lda.batch_size=32".into(),
        "train.epochs=3".into(),
        "eval.batch_size=16".into(),
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["recipes/quickstart.toml"];
        for set in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
            args.extend(["--set", set]);
        }
        let out = runner(tmp.path(), &args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&[]);
    let stdout = run(&["train.holdout=0.25", "train.eval_every=1"]);
    let stages = crate::cli::stages_json(tmp.path(), "quickstart");
    for (stage, reused) in [
        ("ingest", true),
        ("lda", true),
        ("score", true),
        ("train", false),
    ] {
        assert_eq!(stages["stages"][stage]["reused"], reused, "{stage}");
    }

    let folder = tmp.path().join("runs/quickstart");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(folder.join(name)).unwrap()).unwrap()
    };
    let evaluated: Vec<serde_json::Value> = std::fs::read_to_string(folder.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"] == "holdout")
        .collect();
    let epochs: Vec<u64> = evaluated
        .iter()
        .map(|l| l["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [1, 2, 3]);
    // A quarter of each class's kept samples, rounded.
    let scores =
        websieve::score::ScoreTable::load(&stage_dir(tmp.path(), "quickstart", "score")).unwrap();
    let mut kept = std::collections::BTreeMap::<u32, usize>::new();
    for row in scores.rows().iter().filter(|r| r.kept) {
        *kept.entry(row.label).or_default() += 1;
    }
    let held: usize = kept
        .values()
        .map(|&n| (0.25 * n as f64).round() as usize)
        .sum();
    assert!(
        evaluated.iter().all(|l| l["holdout_samples"] == held),
        "{held}"
    );
    let top1: Vec<f64> = evaluated
        .iter()
        .map(|l| l["holdout_top1"].as_f64().unwrap())
        .collect();
    let highest = top1.iter().cloned().fold(f64::MIN, f64::max);
    let best = read("best_epoch.json");
    assert_eq!(best["top1"], highest);
    let best_epoch = top1.iter().position(|&t| t == highest).unwrap() + 1;
    assert_eq!(
        best["epoch"], best_epoch,
        "the first epoch of the highest holdout top-1"
    );
    for name in ["metrics.json", "metrics_best.json"] {
        assert_eq!(read(name)["samples"], 40, "{name}");
    }
    for name in ["metrics_second_val.json", "metrics_best_second_val.json"] {
        assert_eq!(read(name)["samples"], 40, "{name}");
    }
    let heading = format!("best epoch on the holdout (epoch {best_epoch}, holdout top-1 ");
    for part in [
        "last epoch:\n",
        &heading,
        "ImageNet-style, last epoch:\n",
        "ImageNet-style, best epoch",
    ] {
        assert!(stdout.contains(part), "{part}: {stdout}");
    }

    let folder_arg = folder.to_str().unwrap();
    let report = |args: &[&str]| runner_stdout(&[&["report"], args, &[folder_arg]].concat());
    let text = report(&[]);
    for column in [
        "top-1 last",
        "best epoch",
        "top-1 best",
        "ImageNet-style top-1 last",
        "ImageNet-style top-5 best",
    ] {
        assert!(text.contains(column), "{column}: {text}");
    }
    let csv = report(&["--format", "csv"]);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let value = |key: &str| {
        row[header.iter().position(|h| *h == key).unwrap()]
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(value("best_epoch"), best_epoch as f64);
    assert_eq!(
        value("top1_last"),
        read("metrics.json")["top1"].as_f64().unwrap()
    );
    assert_eq!(
        value("top1_best"),
        read("metrics_best.json")["top1"].as_f64().unwrap()
    );
    assert_eq!(
        value("second_val_top5_last"),
        read("metrics_second_val.json")["top5"].as_f64().unwrap()
    );
    assert_eq!(
        value("second_val_top1_best"),
        read("metrics_best_second_val.json")["top1"]
            .as_f64()
            .unwrap()
    );

    // A recipe that averages its predictions with another run's (training reused from the
    // first run): the report shows the ensemble's accuracy beside the run's own.
    run(&["name=\"averaged\"", "eval.ensemble=[\"quickstart\"]"]);
    let averaged = tmp.path().join("runs/averaged");
    let csv = runner_stdout(&["report", "--format", "csv", averaged.to_str().unwrap()]);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let ensemble: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(averaged.join("ensemble/metrics.json")).unwrap(),
    )
    .unwrap();
    for (column, key) in [("top1_ensemble", "top1"), ("top5_ensemble", "top5")] {
        let at = header.iter().position(|h| *h == column).expect(column);
        assert_eq!(
            row[at].parse::<f64>().unwrap(),
            ensemble[key].as_f64().unwrap()
        );
    }

    let page = tmp.path().join("page");
    report(&["--html", page.to_str().unwrap()]);
    let html = std::fs::read_to_string(page.join("index.html")).unwrap();
    for cell in [
        "<th>top-1 best</th>",
        "<th>ImageNet-style top-1 last</th>",
        "accuracy.png",
    ] {
        assert!(html.contains(cell), "{cell}");
    }
}

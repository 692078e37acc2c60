//! `runner export`: one verdict per training sample, and a cleaned file list that reads back
//! as exactly the samples the cleaning kept.

use std::path::Path;

use crate::cli::{runner, stage_dir, SMALL, TINY};
use websieve::recipe::DatasetParams;
use websieve::sample::Split;
use websieve::store::Store;

/// The training paths of the store in `stage_dir`, in id order.
fn stored_paths(stage_dir: &Path) -> Vec<String> {
    let store = Store::open(stage_dir).unwrap();
    let reader = store.reader().unwrap();
    (0..store.len(Split::Train))
        .map(|id| reader.meta(Split::Train, id).unwrap().path)
        .collect()
}

/// A copy of the WebVision-layout dataset at `root` in `to` whose `all` lists are `files`
/// and `metas` (the images and pages linked, not copied).
fn with_lists(root: &Path, to: &Path, files: &str, metas: &str) {
    std::fs::create_dir_all(to.join("info")).unwrap();
    for entry in std::fs::read_dir(root).unwrap() {
        let name = entry.unwrap().file_name();
        if name != "info" {
            std::os::unix::fs::symlink(root.join(&name), to.join(&name)).unwrap();
        }
    }
    for entry in std::fs::read_dir(root.join("info")).unwrap() {
        let name = entry.unwrap().file_name();
        std::fs::copy(root.join("info").join(&name), to.join("info").join(&name)).unwrap();
    }
    std::fs::write(to.join("info/train_filelist_all.txt"), files).unwrap();
    std::fs::write(to.join("info/train_meta_list_all.txt"), metas).unwrap();
}

#[test]
fn export_rows_are_the_training_samples_and_the_clean_list_reingests_to_the_kept_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec![
        "recipes/quickstart.toml",
        "--until",
        "score",
        "--set",
        "clean.rule=\"fraction\"",
        "--set",
        "clean.fraction=0.25",
    ];
    args.extend(TINY);
    args.extend(SMALL);
    let out = runner(tmp.path(), &args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = tmp.path().join("runs/quickstart");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["export", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("samples.csv, samples.jsonl, classes.csv, train_filelist_clean.txt"),
        "{said}"
    );
    let export = run.join("export");

    // One row per training sample, in store order, with the store's paths.
    let ingest = stage_dir(tmp.path(), "quickstart", "ingest");
    let stored = stored_paths(&ingest);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(export.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let paths: Vec<&str> = rows.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, stored);
    let csv = std::fs::read_to_string(export.join("samples.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "id,path,label,wnid,source,text_score,search,confidence,margin,knn,combined_score,rank,class_samples,kept,lambda"
    );
    assert_eq!(csv.lines().count(), rows.len() + 1);
    // The scores and verdicts are the score stage's; each class ranks 1..=n, best first.
    let scores =
        websieve::score::ScoreTable::load(&stage_dir(tmp.path(), "quickstart", "score")).unwrap();
    for (row, scored) in rows.iter().zip(scores.rows()) {
        assert_eq!(row["text_score"].as_f64().unwrap(), scored.score);
        assert_eq!(row["combined_score"].as_f64().unwrap(), scored.score);
        assert_eq!(row["kept"].as_bool().unwrap(), scored.kept);
        for signal in ["search", "confidence", "margin", "knn"] {
            assert!(row[signal].is_null(), "the text alone: {row}");
        }
        assert_eq!(
            row["wnid"].as_str().unwrap(),
            format!("s{:04}", scored.label)
        );
    }
    let class0: Vec<&serde_json::Value> = rows.iter().filter(|r| r["label"] == 0).collect();
    let mut ranks: Vec<u64> = class0.iter().map(|r| r["rank"].as_u64().unwrap()).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, (1..=class0.len() as u64).collect::<Vec<_>>());
    let best = class0.iter().find(|r| r["rank"] == 1).unwrap();
    assert!(class0
        .iter()
        .all(|r| r["combined_score"].as_f64() <= best["combined_score"].as_f64()));
    let kept: Vec<&str> = rows
        .iter()
        .filter(|r| r["kept"].as_bool().unwrap())
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(
        kept.len() < rows.len(),
        "a quarter of each class is discarded"
    );

    // Per class: names, not only indices, and the truth file's AUC.
    let classes = std::fs::read_to_string(export.join("classes.csv")).unwrap();
    assert!(classes
        .starts_with("label,wnid,name,samples,kept,discarded,mean_score,noisy,auc\n0,s0000,"));
    assert_eq!(classes.lines().count(), 11);

    // The cleaned lists, put in place of the dataset's, ingest to exactly the kept samples.
    let root = ingest.join("synthetic");
    let copy = tmp.path().join("cleaned");
    with_lists(
        &root,
        &copy,
        &std::fs::read_to_string(export.join("train_filelist_clean.txt")).unwrap(),
        &std::fs::read_to_string(export.join("train_meta_list_clean.txt")).unwrap(),
    );
    let params = DatasetParams {
        format: websieve::recipe::DatasetFormat::Webvision,
        root: Some(copy),
        val: false,
        ..websieve::recipe::Recipe::default().dataset
    };
    let reingested = tmp.path().join("reingested");
    websieve::store::ingest(&params, &reingested, false).unwrap();
    assert_eq!(stored_paths(&reingested), kept);
}

//! The stage graph and its cache as a sweep sees it: changing a setting re-keys exactly the
//! stages that read it and everything downstream; the rest is reused.

use websieve::recipe::{self, Recipe};
use websieve::stage::{StageKind, Workspace};

fn recipe_with(sets: &[&str]) -> Recipe {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    recipe::load(&["recipes/softlabel.toml".to_string()], &sets)
        .unwrap()
        .remove(0)
}

fn keys(ws: &Workspace, r: &Recipe) -> Vec<String> {
    ws.plan(r, StageKind::Eval)
        .unwrap()
        .stages
        .iter()
        .map(|s| s.key.clone())
        .collect()
}

/// Which stages of `changed` got a different key than in `base`.
fn rekeyed(sets: &[&str]) -> Vec<StageKind> {
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspace::new(tmp.path().join("cache"), tmp.path().join("runs"));
    let base = keys(&ws, &recipe_with(&[]));
    let changed = keys(&ws, &recipe_with(sets));
    StageKind::ALL
        .into_iter()
        .zip(base.iter().zip(&changed))
        .filter(|(_, (a, b))| a != b)
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn a_train_setting_reuses_ingest_lda_and_score() {
    assert_eq!(
        rekeyed(&["train.optimizer.lr=0.02"]),
        [StageKind::Train, StageKind::Eval]
    );
}

#[test]
fn an_lda_setting_rebuilds_lda_and_everything_downstream() {
    assert_eq!(
        rekeyed(&["lda.topics=100"]),
        [
            StageKind::Lda,
            StageKind::Score,
            StageKind::Train,
            StageKind::Eval
        ]
    );
}

#[test]
fn a_dataset_setting_rebuilds_everything() {
    assert_eq!(
        rekeyed(&[
            "dataset.resize=128",
            "train.augmentation.crop=112",
            "model.input_size=112"
        ])
        .len(),
        5
    );
}

#[test]
fn settings_that_cannot_change_results_keep_every_key() {
    assert!(rekeyed(&[
        "train.workers=3",
        "train.checkpoint_every=7",
        "eval.ensemble=[\"other\"]"
    ])
    .is_empty());
}

#[test]
fn plan_says_why_each_stage_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspace::new(tmp.path().join("cache"), tmp.path().join("runs"));
    let text = ws
        .plan(&recipe_with(&[]), StageKind::Score)
        .unwrap()
        .describe();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].contains("ingest") && lines[1].contains("no output with these inputs yet"),
        "{text}"
    );
    assert!(
        lines[3].contains("score") && lines[3].contains("an upstream stage runs first"),
        "{text}"
    );
}

//! The stage graph and its cache as a sweep sees it: changing a setting re-keys exactly the
//! stages that read it and everything downstream; the rest is reused.

use crate::cli::{runner, runner_stdout, stage_dir, stages_json, SMALL, TINY};
use websieve::recipe::{self, Recipe};
use websieve::score::Signal;
use websieve::stage::{StageKind, Workspace};

fn recipe_with(sets: &[&str]) -> Recipe {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    recipe::load(&["recipes/softlabel.toml".to_string()], &sets)
        .unwrap()
        .remove(0)
}

fn keys(ws: &Workspace, r: &Recipe) -> Vec<(StageKind, String)> {
    ws.plan(r, StageKind::Eval)
        .unwrap()
        .stages
        .iter()
        .map(|s| (s.kind, s.key.clone()))
        .collect()
}

/// Which stages got a different key with `sets` than without.
fn rekeyed(sets: &[&str]) -> Vec<StageKind> {
    rekeyed_from(&[], sets)
}

/// Which stages got a different key with `base` and `sets` than with `base` alone.
fn rekeyed_from(base: &[&str], sets: &[&str]) -> Vec<StageKind> {
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspace::new(tmp.path().join("cache"), tmp.path().join("runs"));
    let changed = keys(&ws, &recipe_with(&[base, sets].concat()));
    let base = keys(&ws, &recipe_with(base));
    // A stage the recipe does not run (the probe, without image signals) is in neither plan.
    assert_eq!(
        base.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        changed.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        "the settings changed which stages run"
    );
    base.iter()
        .zip(&changed)
        .filter(|((_, a), (_, b))| a != b)
        .map(|((k, _), _)| *k)
        .collect()
}

#[test]
fn a_train_setting_reuses_ingest_lda_and_score() {
    assert_eq!(
        rekeyed(&["train.optimizer.lr=0.02"]),
        [StageKind::Train, StageKind::Eval]
    );
}

/// The holdout changes what is trained on and which epoch is kept, and so does how often it
/// is evaluated: train and eval only. No holdout, spelt out, is the default: keys hold.
#[test]
fn a_holdout_rebuilds_train_and_eval_only() {
    let downstream = [StageKind::Train, StageKind::Eval];
    assert_eq!(rekeyed(&["train.holdout=0.1"]), downstream);
    let holdout = ["train.holdout=0.1"];
    assert_eq!(rekeyed_from(&holdout, &["train.eval_every=2"]), downstream);
    assert_eq!(rekeyed_from(&holdout, &["train.holdout=0.2"]), downstream);
    assert!(rekeyed(&["train.holdout=0.0"]).is_empty());
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
fn a_class_subset_or_a_source_filter_rebuilds_everything() {
    for set in [
        "dataset.classes=\"first:50\"",
        "dataset.sources=[\"google\"]",
    ] {
        assert_eq!(rekeyed(&[set]).len(), 5, "{set}");
    }
    // Every class, spelt out, is the default: no stage is rebuilt.
    assert!(rekeyed(&["dataset.classes=\"all\""]).is_empty());
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

#[test]
fn settings_training_cannot_honour_are_refused_before_any_work() {
    let no_gpu = "no GPU is visible";
    let cpu_hint = "--set train.devices=cpu) runs on the CPU";
    for (set, says) in [
        ("train.devices=\"cuda\"", no_gpu),
        ("train.devices=\"cuda:0,1\"", no_gpu),
        ("train.devices=\"cuda\"", cpu_hint),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut args = vec!["recipes/quickstart.toml", "--set", set];
        args.extend(TINY);
        let out = runner(tmp.path(), &args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{set}: {stderr}");
        assert!(stderr.contains(says), "{set}: {stderr}");
        assert!(
            !tmp.path().join("cache").join("ingest").exists(),
            "{set}: ingest ran"
        );
        // Up to a stage before training, the same recipe runs.
        args.extend(["--until", "ingest"]);
        assert!(
            runner(tmp.path(), &args, &[]).status.success(),
            "{set} --until ingest"
        );
    }
}

/// The headline recipe on a machine without the data or a GPU: both problems in one message,
/// with the way to run on the CPU, before any work.
#[test]
fn the_headline_recipe_names_every_preflight_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = runner(tmp.path(), &["recipes/softlabel.toml"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for says in [
        "dataset.root",
        "does not exist",
        "no GPU is visible",
        "--set train.devices=cpu",
    ] {
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    assert!(!tmp.path().join("cache").exists(), "work started");
}

#[test]
fn a_second_run_reuses_the_stage_and_an_upstream_change_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["recipes/quickstart.toml", "--until", "ingest"];
    args.extend(TINY);
    let first = runner(tmp.path(), &args, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        stages_json(tmp.path(), "quickstart")["stages"]["ingest"]["reused"],
        false
    );
    let run_dir = tmp.path().join("runs/quickstart");
    for file in [
        "recipe.resolved.toml",
        "command.txt",
        "version.json",
        "log.jsonl",
    ] {
        assert!(run_dir.join(file).is_file(), "run folder lacks {file}");
    }
    let second = runner(tmp.path(), &args, &[]);
    assert!(second.status.success());
    assert_eq!(
        stages_json(tmp.path(), "quickstart")["stages"]["ingest"]["reused"],
        true
    );
    let mut rebuild = args.clone();
    rebuild.extend(["--rebuild", "ingest"]);
    assert!(runner(tmp.path(), &rebuild, &[]).status.success());
    assert_eq!(
        stages_json(tmp.path(), "quickstart")["stages"]["ingest"]["reused"],
        false,
        "--rebuild ingest builds it again"
    );
    args.extend(["--set", "dataset.synthetic.seed=7"]);
    let changed = runner(tmp.path(), &args, &[]);
    assert!(changed.status.success());
    assert_eq!(
        stages_json(tmp.path(), "quickstart")["stages"]["ingest"]["reused"],
        false
    );
}

#[test]
fn a_stage_killed_mid_way_is_not_reused_but_finished_on_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["recipes/quickstart.toml", "--until", "ingest"];
    args.extend(TINY);
    let killed = runner(
        tmp.path(),
        &args,
        &[(websieve::failpoint::ABORT_AFTER_COMMITS_ENV, "1")],
    );
    assert!(
        !killed.status.success(),
        "the failpoint must kill the runner"
    );
    let plan = runner(
        tmp.path(),
        &[
            "plan",
            "recipes/quickstart.toml",
            "--until",
            "ingest",
            TINY[0],
            TINY[1],
            TINY[2],
            TINY[3],
            TINY[4],
            TINY[5],
        ],
        &[],
    );
    let plan = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(
        plan.contains("resume"),
        "the killed stage must not look complete:\n{plan}"
    );
    let finished = runner(tmp.path(), &args, &[]);
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let dir = stages_json(tmp.path(), "quickstart")["stages"]["ingest"]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    let store = websieve::store::Store::open(std::path::Path::new(&dir)).unwrap();
    assert!(store.len(websieve::sample::Split::Train) >= 100);
}

/// The whole pipeline through the `runner` binary on a tiny generated dataset: every stage
/// runs, the run folder holds the results, and a second recipe point reuses the upstream.
#[test]
fn quickstart_runs_end_to_end_and_a_two_headed_sweep_point_reuses_ingest_and_lda() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["recipes/quickstart.toml"];
    args.extend(TINY);
    args.extend(SMALL);
    let out = runner(tmp.path(), &args, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("top-1") && stdout.contains("top-5"),
        "{stdout}"
    );
    let run = tmp.path().join("runs/quickstart");
    for file in ["metrics.json", "metrics.jsonl", "stages.json"] {
        assert!(run.join(file).is_file(), "run folder lacks {file}");
    }
    let stages = stages_json(tmp.path(), "quickstart");
    let score_dir = std::path::PathBuf::from(stages["stages"]["score"]["dir"].as_str().unwrap());
    assert!(score_dir.join("scores.tsv").is_file());
    // The generated dataset's truth file is picked up: its noise is detectable from the text.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(score_dir.join("summary.json")).unwrap())
            .unwrap();
    let auc = summary["noise"]["auc"]
        .as_f64()
        .expect("noise metrics from the synthetic truth file");
    assert!(
        auc > 0.65,
        "noise-detection AUC on the synthetic dataset: {auc}"
    );

    args.extend([
        "--set",
        "model.heads=[\"classification\", \"regression\"]",
        "--set",
        "train.sampler=\"weighted\"",
    ]);
    let twohead = runner(tmp.path(), &args, &[]);
    assert!(
        twohead.status.success(),
        "{}",
        String::from_utf8_lossy(&twohead.stderr)
    );
    let stages = stages_json(tmp.path(), "quickstart");
    for (stage, reused) in [
        ("ingest", true),
        ("lda", true),
        ("score", true),
        ("train", false),
        ("eval", false),
    ] {
        assert_eq!(stages["stages"][stage]["reused"], reused, "{stage}");
    }

    // Fine-tuning from the run's own result: init is resolved before the run rewrites its
    // pointers, and the init checkpoint's key goes into the new train key.
    let pretrained = stages["stages"]["train"]["dir"]
        .as_str()
        .unwrap()
        .to_string();
    args.extend(["--set", "train.init=\"quickstart\""]);
    let finetune = runner(tmp.path(), &args, &[]);
    assert!(
        finetune.status.success(),
        "{}",
        String::from_utf8_lossy(&finetune.stderr)
    );
    let stages = stages_json(tmp.path(), "quickstart");
    let train_dir = std::path::PathBuf::from(stages["stages"]["train"]["dir"].as_str().unwrap());
    let inputs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(train_dir.join("stage.json")).unwrap())
            .unwrap();
    assert_eq!(
        inputs["settings"]["train"]["init"].as_str(),
        std::path::Path::new(&pretrained)
            .file_name()
            .and_then(|n| n.to_str())
    );
}

/// The run folder's contract, through the binary: the resolved recipe loads back with the
/// same stage keys, the log brackets the run with each stage's duration, `version.json`
/// names the build and the recipe's git state, a second runner is turned away from a busy
/// folder, and another recipe's run into the same folder keeps the earlier one.
#[test]
fn the_run_folder_holds_a_loadable_recipe_a_timed_log_and_is_not_shared() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["recipes/quickstart.toml", "--until", "ingest"];
    args.extend(TINY);
    let out = runner(tmp.path(), &args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = tmp.path().join("runs/quickstart");
    let resolved = run.join("recipe.resolved.toml");
    let resolved_arg = resolved.to_str().unwrap();

    let plan = |recipe: &str, sets: &[&str]| {
        let mut args = vec!["plan", recipe, "--until", "ingest"];
        args.extend(sets);
        let out = runner(tmp.path(), &args, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let from_recipe = plan("recipes/quickstart.toml", &TINY);
    assert_eq!(plan(resolved_arg, &[]), from_recipe);
    assert!(from_recipe.contains("cached"), "{from_recipe}");
    // From another working folder too: paths in the resolved recipe are absolute.
    let elsewhere = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["validate", resolved_arg])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        elsewhere.status.success(),
        "{}",
        String::from_utf8_lossy(&elsewhere.stderr)
    );

    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let message = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or("").to_string();
    assert_eq!(message(&events[0]), "run started", "{log}");
    let finished = events
        .iter()
        .find(|e| message(e) == "run finished")
        .expect(&log);
    assert!(
        finished["fields"]["stage_seconds"]
            .as_str()
            .unwrap()
            .contains("\"ingest\""),
        "{log}"
    );

    let version: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("version.json")).unwrap()).unwrap();
    assert_eq!(
        version["websieve_commit"].as_str().map(str::len),
        Some(40),
        "{version}"
    );
    let state = version["recipe_git_state"].as_str().unwrap();
    assert!(["committed", "modified"].contains(&state), "{version}");

    // A runner holding the folder turns a second one away, before any work.
    let lock = websieve::stage::RunFolder::new(&run).lock().unwrap();
    let busy = runner(tmp.path(), &args, &[]);
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(busy.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("in use by another runner"), "{stderr}");
    drop(lock);

    // Another recipe under the same name: the earlier run moves aside, whole.
    let mut other = args.clone();
    other.extend(["--set", "lda.topics=9"]);
    let out = runner(tmp.path(), &other, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kept = tmp.path().join("runs/quickstart.1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("quickstart.1"));
    assert_eq!(
        std::fs::read_to_string(kept.join("recipe.resolved.toml")).unwrap(),
        std::fs::read_to_string(&resolved)
            .unwrap()
            .replace("topics = 9", "topics = 20")
    );
}

/// A tiny WebVision-layout dataset generated into `dir/synthetic` (rewritten in place when
/// `seed` or `classes` differ from what is there).
fn webvision_data(dir: &std::path::Path, seed: u64, classes: usize) -> std::path::PathBuf {
    let mut params = recipe::load_file(std::path::Path::new("recipes/quickstart.toml"), &[])
        .unwrap()
        .remove(0)
        .dataset
        .synthetic;
    params.seed = seed;
    params.classes = classes;
    params.min_per_class = 10;
    params.max_per_class = 12;
    params.val_per_class = 2;
    websieve::dataset::synthetic::generate(&params, dir)
        .unwrap()
        .root
}

/// `runner` arguments running the quickstart recipe on the dataset at `root`.
fn on_data(root: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "recipes/quickstart.toml",
        "--set",
        "dataset.format=webvision",
    ]
    .map(String::from)
    .to_vec();
    args.push("--set".into());
    args.push(format!("dataset.root={:?}", root.display().to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_ok(dir: &std::path::Path, args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = runner(dir, &args, &[]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn ingest_line(plan: &str) -> &str {
    plan.lines()
        .find(|l| l.trim_start().starts_with("ingest"))
        .expect(plan)
}

#[test]
fn an_edited_file_list_or_a_restored_image_rebuilds_the_store_and_plan_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = webvision_data(&tmp.path().join("gen"), 0, 3);
    let list = root.join("info/train_filelist_google.txt");
    let text = std::fs::read_to_string(&list).unwrap();
    let first = text.lines().next().unwrap();
    let image = first.split_whitespace().next().unwrap().to_string();
    let hidden = tmp.path().join("hidden.jpg");
    std::fs::rename(root.join(&image), &hidden).unwrap();

    let ingest = on_data(&root, &["--until", "ingest"]);
    run_ok(tmp.path(), &ingest);
    let mut plan_args = vec!["plan".to_string()];
    plan_args.extend(ingest.clone());
    assert!(ingest_line(&run_ok(tmp.path(), &plan_args)).contains("cached"));

    // The missing image comes back: its folder's images changed.
    std::fs::rename(&hidden, root.join(&image)).unwrap();
    let plan = run_ok(tmp.path(), &plan_args);
    assert!(ingest_line(&plan).contains(" run "), "{plan}");
    let folder = std::path::Path::new(&image)
        .parent()
        .unwrap()
        .display()
        .to_string();
    assert!(
        plan.contains(&format!("images in {folder} changed")),
        "{plan}"
    );
    run_ok(tmp.path(), &ingest);
    assert_eq!(
        stages_json(tmp.path(), "quickstart")["stages"]["ingest"]["reused"],
        false
    );

    // A label edited in place (same size, same paths).
    let (path, label) = first.rsplit_once(' ').unwrap();
    let relabelled = if label == "0" { "1" } else { "0" };
    std::fs::write(
        &list,
        text.replacen(first, &format!("{path} {relabelled}"), 1),
    )
    .unwrap();
    let plan = run_ok(tmp.path(), &plan_args);
    assert!(ingest_line(&plan).contains(" run "), "{plan}");
    assert!(
        plan.contains("info/train_filelist_google.txt changed"),
        "{plan}"
    );
    run_ok(tmp.path(), &ingest);
    assert_eq!(
        stages_json(tmp.path(), "quickstart")["stages"]["ingest"]["reused"],
        false
    );
}

#[test]
fn a_dataset_rebuilt_in_place_is_not_served_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let gen = tmp.path().join("gen");
    let root = webvision_data(&gen, 0, 3);
    let ingest = on_data(&root, &["--until", "lda"]);
    run_ok(tmp.path(), &ingest);
    // Other classes, same paths.
    assert_eq!(webvision_data(&gen, 1, 4), root);
    let mut plan_args = vec!["plan".to_string()];
    plan_args.extend(ingest.clone());
    let plan = run_ok(tmp.path(), &plan_args);
    assert!(ingest_line(&plan).contains(" run "), "{plan}");
    assert!(plan.contains("info/synsets.txt changed"), "{plan}");
    run_ok(tmp.path(), &ingest);
    let stages = stages_json(tmp.path(), "quickstart");
    assert_eq!(stages["stages"]["ingest"]["reused"], false);
    assert_eq!(stages["stages"]["lda"]["reused"], false);
}

/// Two checkouts whose recipes both say `root = "../data"` over different data, sharing a
/// cache; and one recipe planned from three working folders.
#[test]
fn the_ingest_key_follows_the_data_not_the_path_as_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let quickstart = std::fs::canonicalize("recipes/quickstart.toml").unwrap();
    let checkout = |name: &str, seed: u64| {
        let dir = tmp.path().join(name);
        let generated = webvision_data(&dir.join("gen"), seed, 3);
        std::fs::rename(generated, dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("recipes")).unwrap();
        let recipe = format!(
            "extends = {:?}\n[dataset]\nformat = \"webvision\"\nroot = \"../data\"\n",
            quickstart.display().to_string()
        );
        std::fs::write(dir.join("recipes/r.toml"), recipe).unwrap();
        dir
    };
    let (a, b) = (checkout("a", 0), checkout("b", 1));
    let plan_from = |cwd: &std::path::Path, recipe: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(["plan", recipe, "--until", "ingest", "--cache"])
            .arg(tmp.path().join("cache"))
            .arg("--runs")
            .arg(tmp.path().join("runs"))
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan = String::from_utf8_lossy(&out.stdout).to_string();
        ingest_line(&plan)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    let key_a = plan_from(&a, "recipes/r.toml");
    assert_eq!(plan_from(&a.join("recipes"), "r.toml"), key_a);
    assert_eq!(plan_from(tmp.path(), "a/recipes/r.toml"), key_a);
    assert_ne!(plan_from(&b, "recipes/r.toml"), key_a);
}

/// `runner --nproc-per-node 2` on the CPU: two worker processes, ranks of one world through
/// the real launcher path (environment, TCP rendezvous, collective), train the quickstart
/// network to the weights one process reaches with the same global batch.
#[test]
fn two_worker_processes_or_two_thread_ranks_train_to_the_weights_of_one() {
    let train = |workers: &str, batch_per_device: &str, cpu_ranks: &str| {
        let tmp = tempfile::tempdir().unwrap();
        let mut args = vec!["recipes/quickstart.toml", "--until", "train"];
        args.extend(TINY);
        let batch = format!("train.batch_per_device={batch_per_device}");
        let ranks = format!("train.cpu_ranks={cpu_ranks}");
        args.extend([
            "--set",
            "lda.topics=8",
            "--set",
            "train.iterations=5",
            "--set",
            &batch,
            "--set",
            &ranks,
            "--nproc-per-node",
            workers,
        ]);
        let out = runner(tmp.path(), &args, &[]);
        assert!(
            out.status.success(),
            "{workers} worker(s), {cpu_ranks} rank(s): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = stages_json(tmp.path(), "quickstart")["stages"]["train"]["dir"]
            .as_str()
            .unwrap()
            .to_string();
        let weights = candle_core::safetensors::load(
            std::path::Path::new(&dir).join("final.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        (tmp, dir, weights)
    };
    let (_one_tmp, one_dir, one) = train("1", "16", "1");
    let key = |dir: &str| std::path::Path::new(dir).file_name().unwrap().to_owned();
    // Two processes of 8 rows each, or two threads sharing each batch of 16 in one process.
    for (workers, batch, ranks) in [("2", "8", "1"), ("1", "16", "2")] {
        let (_tmp, dir, two) = train(workers, batch, ranks);
        // The world size and the thread ranks enter the train key: the runs differ in
        // summation order.
        assert_ne!(key(&one_dir), key(&dir));
        assert_eq!(one.len(), two.len());
        let mut worst = 0f32;
        for (name, a) in &one {
            let b = &two[name];
            let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
            let diff = diff.max(0).unwrap().to_scalar::<f32>().unwrap();
            worst = worst.max(diff);
        }
        assert!(
            worst < 1e-4,
            "{workers} worker(s), {ranks} rank(s): largest weight difference {worst}"
        );
    }
}

/// Many errors show their source in their own message (`cannot read recipe X: <io error>`);
/// the runner prints each cause once, not again after it.
#[test]
fn each_cause_of_an_error_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.toml");
    let out = runner(tmp.path(), &["validate", missing.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let cause = std::fs::read(&missing).unwrap_err().to_string();
    assert_eq!(
        stderr.matches(&cause).count(),
        1,
        "the cause must be printed once: {stderr}"
    );
    assert!(stderr.starts_with("error: cannot read recipe "), "{stderr}");
}

/// Logs into a pipe or file carry no colour codes, and a metric that is undefined (precision
/// and recall where rule = "none" discards nothing) reads "n/a" in the score stage's line.
#[test]
fn logs_off_a_terminal_are_plain_and_undefined_metrics_read_n_a() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec![
        "recipes/quickstart.toml",
        "--until",
        "score",
        "--set",
        "clean.rule=none",
    ];
    args.extend(TINY);
    let out = runner(tmp.path(), &args, &[("WEBSIEVE_LOG", "info")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("scored"), "no log lines: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in logs: {stderr:?}"
    );
    assert!(
        stderr.contains("precision=n/a recall=n/a"),
        "the score stage's noise line: {stderr}"
    );
}

/// Two recipes of one call (a glob), one made to fail in its score stage (a truth file
/// without the `true_label` column): the other run finishes, the failure is listed with its
/// error and the call exits non-zero; run again with `--jobs 2`, the finished run is skipped
/// and the failure listed again; `runner report` shows the finished run's results and the
/// failed run with its state, and its page (`--html`) every section.
#[test]
fn a_sweep_keeps_going_past_a_failed_run_and_lists_it() {
    let tmp = tempfile::tempdir().unwrap();
    let recipes = tmp.path().join("recipes");
    std::fs::create_dir(&recipes).unwrap();
    let quickstart =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/quickstart.toml");
    let bad_truth = tmp.path().join("truth.tsv");
    std::fs::write(&bad_truth, "path\tgiven_label\nx.jpg\t0\n").unwrap();
    std::fs::write(
        recipes.join("good.toml"),
        format!("extends = {:?}\n", quickstart.display().to_string()),
    )
    .unwrap();
    std::fs::write(
        recipes.join("broken.toml"),
        format!(
            "extends = {:?}\n[clean]\ntruth = {:?}\n",
            quickstart.display().to_string(),
            bad_truth.display().to_string()
        ),
    )
    .unwrap();
    // Runs that start from another run of the sweep: "a-tuned" sorts before "good", which it
    // starts from, and "zz-after-broken" starts from the run that fails.
    for (name, init) in [("a-tuned", "good"), ("zz-after-broken", "broken")] {
        std::fs::write(
            recipes.join(format!("{name}.toml")),
            format!(
                "extends = {:?}\n[train]\ninit = {init:?}\n",
                quickstart.display().to_string()
            ),
        )
        .unwrap();
    }
    let glob = recipes.join("*.toml").display().to_string();
    let mut args = vec![glob.as_str()];
    args.extend(TINY);
    args.extend(SMALL);

    let check_failed = |out: &std::process::Output| {
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("2 of 4 runs failed"), "{stderr}");
        let listed = |run: &str| {
            stderr
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{run}:")))
                .unwrap_or_else(|| panic!("the failure of {run} is listed: {stderr}"))
                .to_string()
        };
        assert!(listed("broken").contains("true_label"), "{stderr}");
        assert!(
            listed("zz-after-broken").ends_with("not run: it waits for run broken, which failed"),
            "{stderr}"
        );
    };
    let first = runner(tmp.path(), &args, &[]);
    check_failed(&first);
    let status_of = |run: &str| -> serde_json::Value {
        let path = tmp.path().join(format!("runs/{run}/status.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    assert_eq!(status_of("good")["state"], "finished");
    assert_eq!(status_of("a-tuned")["state"], "finished");
    assert!(!tmp.path().join("runs/zz-after-broken").exists());
    let good_status = tmp.path().join("runs/good/status.json");
    let written = std::fs::metadata(&good_status).unwrap().modified().unwrap();

    args.extend(["--jobs", "2"]);
    let second = runner(tmp.path(), &args, &[]);
    check_failed(&second);
    assert_eq!(
        std::fs::metadata(&good_status).unwrap().modified().unwrap(),
        written,
        "the finished run was skipped, its folder untouched"
    );

    let report = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["report", "--format", "csv"])
        .arg(tmp.path().join("runs"))
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    // Accuracies and AUC depend on float rounding, times on the machine, folders on the
    // temporary folder: masked. The state (last column) may hold commas.
    let csv = String::from_utf8_lossy(&report.stdout);
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert_eq!(
        header,
        "run,clean.truth,train.init,images,top1_last,top5_last,noise_auc,seconds,state"
    );
    let columns: Vec<&str> = header.split(',').collect();
    let masked = ["top1_last", "top5_last", "noise_auc", "seconds"];
    let mut text = format!("{header}\n");
    for line in lines {
        let fields: Vec<String> = line
            .replace(&tmp.path().display().to_string(), "<tmp>")
            .splitn(columns.len(), ',')
            .enumerate()
            .map(
                |(i, f)| match masked.contains(&columns[i]) && !f.is_empty() {
                    true => "x".to_string(),
                    false => f.to_string(),
                },
            )
            .collect();
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    insta::assert_snapshot!(text);
    crate::report::check_report_page(&tmp.path().join("runs"), &tmp.path().join("page"), "good");
}

/// Image signals through the runner: the probe stage runs only when a recipe weighs one, it
/// is deterministic for a seed (a second cache builds the same `probe.tsv`), and the score
/// combines its evidence with the text (`signals.tsv`, an AUC per signal).
#[test]
fn image_signals_add_a_deterministic_probe_stage_whose_evidence_the_score_combines() {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["recipes/quickstart.toml", "--until", "score"];
    args.extend(TINY);
    args.extend(SMALL);
    let text_only = runner(tmp.path(), &args, &[]);
    assert!(
        text_only.status.success(),
        "{}",
        String::from_utf8_lossy(&text_only.stderr)
    );
    assert!(stages_json(tmp.path(), "quickstart")["stages"]["probe"].is_null());
    let text_score = stage_dir(tmp.path(), "quickstart", "score");

    // The search standing needs no probe: the score reads it from the generated lists.
    let mut with_search = args.clone();
    with_search.extend([
        "--set",
        "clean.signals={ text = 1, search = 1 }",
        "--set",
        "labels.lambda=\"rank\"",
    ]);
    let searched = runner(tmp.path(), &with_search, &[]);
    assert!(
        searched.status.success(),
        "{}",
        String::from_utf8_lossy(&searched.stderr)
    );
    assert!(stages_json(tmp.path(), "quickstart")["stages"]["probe"].is_null());
    let search_score = stage_dir(tmp.path(), "quickstart", "score");
    let signals = websieve::score::Signals::load(&search_score)
        .unwrap()
        .unwrap();
    let search = signals.get(Signal::Search).unwrap();
    // Each sample's standing from the lists themselves: its row r of the n its meta file has.
    let info = stage_dir(tmp.path(), "quickstart", "ingest").join("synthetic/info");
    let read = |name: &str| std::fs::read_to_string(info.join(name)).unwrap();
    let (files, metas) = (
        read("train_filelist_all.txt"),
        read("train_meta_list_all.txt"),
    );
    let mut of: std::collections::HashMap<&str, f64> = Default::default();
    let mut standing: std::collections::HashMap<&str, (&str, f64)> = Default::default();
    for (file, meta) in files.lines().zip(metas.lines()) {
        let (meta, row) = meta.split_once(' ').unwrap();
        let row: f64 = row.parse().unwrap();
        let n = of.entry(meta).or_default();
        *n = n.max(row);
        standing.insert(file.split_once(' ').unwrap().0, (meta, row));
    }
    let scores = std::fs::read_to_string(search_score.join("scores.tsv")).unwrap();
    let mut firsts = 0;
    for (i, line) in scores.lines().skip(1).enumerate() {
        let path = line.split('\t').nth(1).unwrap();
        let (meta, row) = standing[path];
        assert_eq!(search[i], 1.0 - (row - 1.0) / of[meta], "{path}");
        firsts += usize::from(row == 1.0);
    }
    assert!(firsts > 1, "every query's first result stands at 1");
    // Without a truth file's help, how well each weighed signal agrees with the other.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(search_score.join("summary.json")).unwrap())
            .unwrap();
    let agreement: Vec<(&str, f64)> = summary["agreement"]
        .as_array()
        .expect("two weighed signals")
        .iter()
        .map(|a| {
            (
                a["signal"].as_str().unwrap(),
                a["agreement"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(agreement.len(), 2, "{agreement:?}");
    assert_eq!((agreement[0].0, agreement[1].0), ("text", "search"));
    // Against one other signal, each agrees as much as the other does.
    assert!(
        (agreement[0].1 - agreement[1].1).abs() < 1e-12,
        "{agreement:?}"
    );
    // The report page shows the agreement, and each image's rank by every signal measured.
    let page = tmp.path().join("page");
    let run = tmp.path().join("runs").join("quickstart");
    runner_stdout(&[
        "report",
        "--html",
        page.to_str().unwrap(),
        run.to_str().unwrap(),
    ]);
    let html = std::fs::read_to_string(page.join("index.html")).unwrap();
    assert!(
        html.contains("Agreement of each weighed signal with the others"),
        "no agreement on the page"
    );
    assert!(
        html.contains("class rank by text ") && html.contains(" · search standing "),
        "no signal ranks in the captions"
    );

    args.extend([
        "--set",
        "clean.signals={ text = 1, search = 1, confidence = 1, knn = 1 }",
        "--set",
        "probe.folds=2",
        "--set",
        "probe.epochs=2",
        "--set",
        "probe.neighbours=3",
        "--set",
        "labels.lambda=\"rank\"",
    ]);
    let combined = runner(tmp.path(), &args, &[]);
    assert!(
        combined.status.success(),
        "{}",
        String::from_utf8_lossy(&combined.stderr)
    );
    let stages = stages_json(tmp.path(), "quickstart");
    assert_eq!(stages["stages"]["ingest"]["reused"], true);
    assert_eq!(stages["stages"]["probe"]["reused"], false);
    let probe = stage_dir(tmp.path(), "quickstart", "probe");
    let score = stage_dir(tmp.path(), "quickstart", "score");
    assert_ne!(score, text_score, "the combined score is another stage");
    let rows = std::fs::read_to_string(probe.join("probe.tsv")).unwrap();
    let samples = std::fs::read_to_string(score.join("scores.tsv"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(rows.lines().count(), samples, "a probe row per sample");
    for fold in ["fold-0", "fold-1"] {
        assert!(
            probe.join(fold).join("metrics.jsonl").is_file(),
            "{fold} trained"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(score.join("summary.json")).unwrap())
            .unwrap();
    let signals: Vec<&str> = summary["noise"]["signals"]
        .as_array()
        .expect("an AUC per signal")
        .iter()
        .map(|s| s["signal"].as_str().unwrap())
        .collect();
    assert_eq!(signals, ["text", "search", "confidence", "margin", "knn"]);
    let table = std::fs::read_to_string(score.join("signals.tsv")).unwrap();
    assert_eq!(
        table.lines().next(),
        Some("id\ttext\tsearch\tconfidence\tmargin\tknn\tscore")
    );
    // Ranks within the class: every combined score lies in [0, 1].
    for line in table.lines().skip(1) {
        let score: f64 = line.rsplit('\t').next().unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&score), "{line}");
    }
    // Each signal's AUC per class, beside the combined score's.
    let classes = std::fs::read_to_string(score.join("classes.tsv")).unwrap();
    assert!(
        classes
            .lines()
            .next()
            .unwrap()
            .ends_with("\tauc\tauc_text\tauc_search\tauc_confidence\tauc_margin\tauc_knn"),
        "{classes}"
    );
    let per_class = summary["classes"][0]["signals"].as_array().unwrap();
    assert_eq!(per_class.len(), 5);

    // The export gives each sample's signals beside the combined score it ranks by.
    let run = tmp.path().join("runs").join("quickstart");
    websieve::export::export(&run, None).unwrap();
    let exported = std::fs::read_to_string(run.join("export").join("samples.jsonl")).unwrap();
    let signals = websieve::score::Signals::load(&score).unwrap().unwrap();
    let scores = websieve::score::ScoreTable::load(&score).unwrap();
    for (i, line) in exported.lines().enumerate() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        for (column, signal) in [
            ("text_score", Signal::Text),
            ("search", Signal::Search),
            ("confidence", Signal::Confidence),
            ("knn", Signal::Knn),
        ] {
            assert_eq!(row[column].as_f64(), Some(signals.get(signal).unwrap()[i]));
        }
        assert_eq!(row["combined_score"].as_f64(), Some(scores.rows()[i].score));
    }
    let classes_csv = std::fs::read_to_string(run.join("export").join("classes.csv")).unwrap();
    assert!(classes_csv.lines().next().unwrap().ends_with(",auc_knn"));

    let again = tempfile::tempdir().unwrap();
    let rerun = runner(again.path(), &args, &[]);
    assert!(rerun.status.success());
    let probe_again = stage_dir(again.path(), "quickstart", "probe");
    assert_eq!(probe_again.file_name(), probe.file_name(), "the same key");
    assert_eq!(
        std::fs::read_to_string(probe_again.join("probe.tsv")).unwrap(),
        rows,
        "the probe is deterministic for a seed"
    );
}

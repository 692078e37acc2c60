//! Recipes as users write them: every shipped recipe validates; bad ones are rejected with
//! file:line:col, the line, a caret and a suggestion; inheritance, overrides, sweeps, globs
//! and the schema behave as documented.

use std::path::{Path, PathBuf};

use websieve::recipe::{self, LrPolicy, Recipe};

fn load(pattern: &str, sets: &[&str]) -> Result<Vec<Recipe>, recipe::RecipeError> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    recipe::load(&[pattern.to_string()], &sets)
}

fn error(pattern: &str, sets: &[&str]) -> String {
    load(pattern, sets)
        .expect_err("the recipe must be rejected")
        .to_string()
}

const FIXTURES: &str = "tests/fixtures/recipes";

#[test]
fn every_shipped_recipe_validates() {
    let recipes = load("recipes/**/*.toml", &[]).unwrap();
    let names: Vec<&str> = recipes.iter().map(|r| r.name.as_str()).collect();
    for expected in [
        "base",
        "quickstart",
        "clean",
        "softlabel",
        "twohead",
        "ablation/discard-20",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        recipes
            .iter()
            .filter(|r| r.path.starts_with("recipes/ablation"))
            .count()
            >= 3
    );
}

#[test]
fn every_shipped_recipe_extends_base_and_names_the_schema() {
    for entry in glob::glob("recipes/**/*.toml").unwrap() {
        let path = entry.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#:schema "),
            "{} lacks the #:schema line",
            path.display()
        );
        let schema = path
            .parent()
            .unwrap()
            .join(text.lines().next().unwrap()["#:schema ".len()..].trim());
        assert!(
            schema.is_file(),
            "{}: schema path {} does not exist",
            path.display(),
            schema.display()
        );
        if path != Path::new("recipes/base.toml") {
            assert!(
                text.contains("extends = "),
                "{} does not extend base",
                path.display()
            );
        }
    }
}

#[test]
fn unknown_key_points_at_it_and_suggests_the_right_one() {
    insta::assert_snapshot!(error(&format!("{FIXTURES}/unknown-key.toml"), &[]));
}

#[test]
fn wrong_type_says_what_was_expected() {
    insta::assert_snapshot!(error(&format!("{FIXTURES}/wrong-type.toml"), &[]));
}

#[test]
fn misspelt_enum_value_gets_a_suggestion() {
    insta::assert_snapshot!(error(&format!("{FIXTURES}/bad-enum.toml"), &[]));
}

#[test]
fn every_range_error_is_reported_at_its_key() {
    insta::assert_snapshot!(error(&format!("{FIXTURES}/out-of-range.toml"), &[]));
}

/// A curriculum table needs its sampler and a share in (0, 1]; its ramp is half the
/// training by default.
#[test]
fn curriculum_settings_are_checked_at_their_keys() {
    insta::assert_snapshot!(
        "curriculum_without_its_sampler",
        error("recipes/quickstart.toml", &["train.curriculum.start=0.3"])
    );
    insta::assert_snapshot!(
        "curriculum_out_of_range",
        error(
            "recipes/quickstart.toml",
            &[
                "train.sampler=curriculum",
                "train.curriculum.start=0",
                "train.curriculum.ramp_epochs=-1"
            ]
        )
    );
    let r = &load(
        "recipes/quickstart.toml",
        &["train.sampler=curriculum", "train.epochs=9"],
    )
    .unwrap()[0];
    assert_eq!(
        r.train.sampler,
        recipe::SamplerKind::Curriculum {
            start: 0.5,
            ramp_epochs: 4.5
        }
    );
}

#[test]
fn extends_merges_deeply_and_resolves_paths_against_the_file_that_set_them() {
    let r = &load(&format!("{FIXTURES}/chain/child.toml"), &[]).unwrap()[0];
    assert_eq!(r.lda.topics, 60, "the child wins");
    assert_eq!(r.lda.batch_size, 100, "the parent's other keys stay");
    assert_eq!(r.dataset.resize, 300);
    let root = r.dataset.root.as_ref().unwrap();
    assert!(root.ends_with("chain/data/here"), "{}", root.display());
}

#[test]
fn an_extends_cycle_names_the_chain() {
    let msg = error(&format!("{FIXTURES}/cycle-a.toml"), &[]);
    assert!(msg.contains("cycle"), "{msg}");
    assert!(
        msg.contains("cycle-a.toml → ") && msg.contains("cycle-b.toml → "),
        "{msg}"
    );
}

#[test]
fn set_overrides_are_type_checked_like_the_file() {
    let r = &load(
        "recipes/softlabel.toml",
        &["train.optimizer.lr=0.02", "clean.similarity=cosine"],
    )
    .unwrap()[0];
    assert_eq!(r.train.optimizer.lr, 0.02);
    assert_eq!(r.clean.similarity, recipe::Similarity::Cosine);
    insta::assert_snapshot!(
        "set_wrong_type",
        error("recipes/softlabel.toml", &["train.optimizer.lr=fast"])
    );
    insta::assert_snapshot!(
        "set_unknown_key",
        error("recipes/softlabel.toml", &["train.optimiser.lr=0.1"])
    );
    insta::assert_snapshot!(
        "set_out_of_range",
        error("recipes/softlabel.toml", &["train.optimizer.lr=-1"])
    );
    assert!(error("recipes/softlabel.toml", &["train.optimizer.lr"]).contains("KEY=VALUE"));
}

#[test]
fn a_sweep_expands_to_one_named_run_per_combination() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.toml");
    let base = std::fs::canonicalize("recipes/base.toml").unwrap();
    std::fs::write(
        &path,
        format!(
            "extends = {:?}\n[sweep]\n\"train.optimizer.lr\" = [0.01, 0.02]\n\"clean.similarity\" = [\"dot\", \"cosine\"]\n\"lda.topics\" = [50, 100, 200]\n",
            base.to_str().unwrap()
        ),
    )
    .unwrap();
    let runs = load(path.to_str().unwrap(), &[]).unwrap();
    assert_eq!(runs.len(), 12);
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names[0], "grid/similarity=dot,topics=50,lr=0.01");
    assert_eq!(names[11], "grid/similarity=cosine,topics=200,lr=0.02");
    let unique: std::collections::HashSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), 12);
    let last = runs.last().unwrap();
    assert_eq!((last.lda.topics, last.train.optimizer.lr), (200, 0.02));
}

#[test]
fn a_bad_sweep_value_is_rejected_at_the_sweep_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.toml");
    std::fs::write(
        &path,
        "[sweep]\n\"clean.similarity\" = [\"dot\", \"cosin\"]\n",
    )
    .unwrap();
    let msg = error(path.to_str().unwrap(), &[]);
    assert!(msg.contains("grid.toml:2:1"), "{msg}");
    assert!(msg.contains("did you mean `cosine`"), "{msg}");
}

#[test]
fn globs_expand_in_sorted_order_and_all_recipes_are_validated_first() {
    let runs = load("recipes/ablation/*.toml", &[]).unwrap();
    let files: Vec<PathBuf> = runs.iter().map(|r| r.path.clone()).collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    let two_bad = recipe::load(
        &[
            format!("{FIXTURES}/wrong-type.toml"),
            format!("{FIXTURES}/bad-enum.toml"),
        ],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        two_bad.contains("wrong-type.toml:4:") && two_bad.contains("bad-enum.toml:2:"),
        "{two_bad}"
    );
    assert!(error("recipes/nothing-*.toml", &[]).contains("no recipe matches"));
}

#[test]
fn the_committed_schema_is_fresh() {
    let committed = std::fs::read_to_string("schemas/recipe.schema.json").unwrap();
    assert!(
        committed == recipe::schema_json(),
        "schemas/recipe.schema.json is stale: run `cargo run -- schema -o schemas/recipe.schema.json`"
    );
}

#[test]
fn defaults_are_the_original_pipeline() {
    let r = &load("recipes/base.toml", &[]).unwrap()[0];
    assert_eq!(r.lda.topics, 500);
    assert_eq!(r.model.task_weights, [0.75, 0.25]);
    assert_eq!(r.model.aux_weights, [0.3, 0.3]);
    assert_eq!(r.train.batch_per_device, 80);
    assert_eq!(
        (
            r.train.optimizer.lr,
            r.train.optimizer.momentum,
            r.train.optimizer.weight_decay
        ),
        (0.01, 0.9, 0.0002)
    );
    assert_eq!(r.train.schedule.policy, LrPolicy::Poly { power: 0.5 });
}

#[test]
fn every_resolved_recipe_loads_back_as_the_same_recipe() {
    // Every shipped recipe and sweep point, and overrides that reach the alternatives,
    // enums with data and optional settings.
    let mut recipes = load("recipes/**/*.toml", &[]).unwrap();
    recipes.extend(
        load(
            "recipes/quickstart.toml",
            &[
                "train.epochs=3",
                "train.init=\"x.safetensors\"",
                "train.holdout=0.1",
                "train.eval_every=2",
                "clean.mean=\"trimmed\"",
                "clean.trim=0.25",
                "train.cpu_ranks=2",
            ],
        )
        .unwrap(),
    );
    recipes.extend(
        load(
            "recipes/quickstart.toml",
            &["clean.calibration=\"class-z\"", "labels.lambda=\"sigmoid\""],
        )
        .unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    for (i, original) in recipes.iter().enumerate() {
        let path = tmp.path().join(format!("{i}/recipe.resolved.toml"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, original.resolved_toml()).unwrap();
        let loaded = recipe::load_file(&path, &[])
            .unwrap_or_else(|e| panic!("{}: resolved recipe does not load: {e}", original.name));
        assert_eq!(loaded.len(), 1, "{}", original.name);
        let mut loaded = loaded.into_iter().next().unwrap();
        assert_eq!(loaded.path, path);
        loaded.path = original.path.clone();
        assert_eq!(&loaded, original, "{}", original.name);
    }
}

#[test]
fn calibrated_scores_refuse_the_ratio_lambda() {
    // quickstart.toml has soft labels with lambda = "ratio".
    let message = error(
        "recipes/quickstart.toml",
        &["clean.calibration=\"class-z\""],
    );
    assert!(
        message.contains("`labels.lambda`: \"ratio\" (min(1, s / s0)) reads raw similarities"),
        "{message}"
    );
}

#[test]
fn the_search_standing_is_refused_where_the_lists_keep_no_search_order() {
    let set = "clean.signals={ text = 1, search = 1 }";
    let imagefolder = error(
        "recipes/quickstart.toml",
        &[set, "dataset.format=\"imagefolder\"", "dataset.root=\"x\""],
    );
    assert!(
        imagefolder.contains("`clean.signals.search`: weighs where each image stood"),
        "{imagefolder}"
    );
    // The generated dataset keeps each query's results in order; its score is a rank mean.
    let synthetic = load("recipes/quickstart.toml", &[set, "labels.lambda=\"rank\""]).unwrap();
    assert!(synthetic[0].clean.signals.reads_search());
    let ratio = error("recipes/quickstart.toml", &["clean.signals={ search = 1 }"]);
    assert!(
        ratio.contains("with several signals the score is a weighted mean of ranks"),
        "{ratio}"
    );
}

#[test]
fn thread_ranks_are_for_the_cpu_and_need_a_row_each() {
    let on_gpu = error(
        "recipes/quickstart.toml",
        &["train.cpu_ranks=2", "train.devices=\"cuda\""],
    );
    assert!(
        on_gpu.contains("`train.cpu_ranks`: ranks of threads are for the CPU"),
        "{on_gpu}"
    );
    let too_many = error(
        "recipes/quickstart.toml",
        &["train.cpu_ranks=4", "train.batch_per_device=3"],
    );
    assert!(
        too_many.contains("4 ranks share each batch of train.batch_per_device = 3"),
        "{too_many}"
    );
}

#[test]
fn an_empty_recipe_is_reported_with_its_file_name() {
    insta::assert_snapshot!(error(&format!("{FIXTURES}/empty.toml"), &[]));
}

/// Type errors say what a recipe may hold (a table, a whole number, true or false), never
/// the Rust type the value was read into.
#[test]
fn type_errors_name_what_a_recipe_may_write() {
    let errors: Vec<String> = [
        "train=5",
        "lda.topics=1.5",
        "train.augmentation.mirror=1",
        "clean.similarity=5",
        "model.heads=5",
        "model.task_weights=[1]",
    ]
    .iter()
    .map(|set| error("recipes/quickstart.toml", &[set]))
    .collect();
    insta::assert_snapshot!(errors.join("\n\n"));
}

#[test]
fn no_error_names_a_rust_type() {
    let recipe = &load("recipes/quickstart.toml", &[]).unwrap()[0];
    let mut keys: Vec<String> = recipe.settings().into_keys().collect();
    // Their tables too.
    for key in keys.clone() {
        let mut parts: Vec<&str> = key.split('.').collect();
        while parts.pop().is_some() && !parts.is_empty() {
            keys.push(parts.join("."));
        }
    }
    keys.sort();
    keys.dedup();
    let rust_words = [
        "Raw", "struct", "enum", "variant", "usize", "u8", "u32", "u64", "i64", "f32", "f64",
        "sequence", "map", "wanted", "Option",
    ];
    for key in keys.iter().filter(|k| k.as_str() != "name") {
        for value in ["5", "1.5", "\"x\"", "true", "[true]", "{ a = 1 }"] {
            let set = format!("{key}={value}");
            let Err(e) = load("recipes/quickstart.toml", &[&set]) else {
                continue;
            };
            // Without what is quoted: keys and values, such as "f32" for `train.precision`.
            let message: String = e.to_string().split('`').step_by(2).collect();
            for word in rust_words {
                assert!(!message.contains(word), "--set {set}: {message}");
            }
        }
    }
}

/// Raw integers are read as i64 and ranges checked in validation: a negative value and zero,
/// both below `batch_per_device`'s range, get the same words.
#[test]
fn values_outside_a_range_get_the_same_words_on_either_side() {
    let below_zero = error("recipes/quickstart.toml", &["train.batch_per_device=-32"]);
    let zero = error("recipes/quickstart.toml", &["train.batch_per_device=0"]);
    insta::assert_snapshot!(format!("{below_zero}\n\n{zero}"));
    let expected = |m: &str| {
        m.lines()
            .next()
            .unwrap()
            .split("expected")
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(expected(&below_zero), expected(&zero));
}

/// The oracle reads the truth file: refused at `clean.rule` where there is none (web data
/// without `clean.truth`); the generated dataset brings its own.
#[test]
fn the_oracle_needs_a_truth_file() {
    let msg = error(
        "recipes/quickstart.toml",
        &[
            "dataset.format=\"webvision\"",
            "dataset.root=\".\"",
            "clean.rule=\"oracle\"",
        ],
    );
    assert!(
        msg.contains("clean.rule") && msg.contains("clean.truth"),
        "{msg}"
    );
    let recipes = recipe::load(
        &["recipes/quickstart.toml".into()],
        &["clean.rule=\"oracle\"".into()],
    )
    .unwrap();
    assert_eq!(recipes[0].clean.rule, recipe::CleanRule::Oracle);
}

/// A holdout is a share of the training samples below one half (every class keeps most of
/// its samples), refused at its key otherwise; `eval_every` without a holdout is refused too:
/// epochs are compared on held-out training samples, never on the validation set.
#[test]
fn a_holdout_is_a_share_below_half_and_eval_every_needs_one() {
    insta::assert_snapshot!(error(&format!("{FIXTURES}/holdout.toml"), &[]));
    insta::assert_snapshot!(
        "holdout_of_half",
        error("recipes/quickstart.toml", &["train.holdout=0.5"])
    );
    let holdout = |sets: &[&str]| {
        load("recipes/quickstart.toml", sets).unwrap()[0]
            .train
            .holdout
    };
    assert_eq!(holdout(&[]), None);
    assert_eq!(
        holdout(&["train.holdout=0.1"]),
        Some(recipe::Holdout {
            share: 0.1,
            eval_every: 1
        })
    );
    assert_eq!(
        holdout(&["train.holdout=0.2", "train.eval_every=3"]),
        Some(recipe::Holdout {
            share: 0.2,
            eval_every: 3
        })
    );
}

/// Every size that drives an allocation is held to the memory budget at validation, with
/// what it would take: `lda.topics = 100000000` used to pass and then abort on a 53 GB
/// allocation.
#[test]
fn sizes_past_the_memory_budget_are_refused_with_what_they_would_take() {
    insta::assert_snapshot!(error(
        "recipes/quickstart.toml",
        &[
            "lda.topics=100000000",
            "train.batch_per_device=10000000",
            "eval.batch_size=1000000",
            "eval.crops=ten",
            "dataset.resize=200000",
        ]
    ));
    // Where only the vocabulary cap is set, the error is at it.
    let msg = error("recipes/quickstart.toml", &["text.max_words=100000000000"]);
    assert!(msg.contains("`--set text.max_words="), "{msg}");
}

fn committed_schema() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string("schemas/recipe.schema.json").unwrap()).unwrap()
}

/// What an editor's schema check (Taplo) says about a recipe: every error's message.
fn schema_errors(toml_text: &str) -> Vec<String> {
    let schema = committed_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let table: toml::Table = toml::from_str(toml_text).unwrap();
    let instance = serde_json::to_value(table).unwrap();
    validator
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn every_shipped_recipe_is_valid_under_the_schema() {
    for entry in glob::glob("recipes/**/*.toml").unwrap() {
        let path = entry.unwrap();
        let errors = schema_errors(&std::fs::read_to_string(&path).unwrap());
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
}

/// TOML has no null: optional fields are their plain type in the schema, so an editor names
/// a misspelt key instead of "not valid under any of the schemas listed in the 'anyOf'".
#[test]
fn the_schema_names_a_misspelt_key() {
    let errors = schema_errors("[train]\nbatch_per_devise = 80\n");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("'batch_per_devise'"), "{errors:#?}");
    assert!(!errors.iter().any(|e| e.contains("anyOf")), "{errors:#?}");
}

/// Every `default` in the schema (from "Default: X" in the doc comments) is what validation
/// fills in: a recipe that writes them all out is the recipe that leaves them all out.
#[test]
fn the_schema_defaults_are_the_validated_defaults() {
    fn defaults(
        schema: &serde_json::Value,
        defs: &serde_json::Value,
        out: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        let Some(properties) = schema["properties"].as_object() else {
            return;
        };
        for (key, property) in properties {
            if let Some(default) = property.get("default") {
                out.insert(key.clone(), default.clone());
            } else if let Some(name) = property["$ref"].as_str() {
                let def = &defs[name.trim_start_matches("#/$defs/")];
                let mut inner = serde_json::Map::new();
                defaults(def, defs, &mut inner);
                if !inner.is_empty() {
                    out.insert(key.clone(), inner.into());
                }
            }
        }
    }
    let schema = committed_schema();
    let mut all = serde_json::Map::new();
    defaults(&schema, &schema["$defs"], &mut all);
    assert!(all["train"]["optimizer"]["lr"].is_number(), "{all:#?}");
    // The one setting without a default that validation needs (for the default format).
    all["dataset"]["root"] = "data".into();
    let written: toml::Table = serde_json::from_value(all.into()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, "[dataset]\nroot = \"data\"\n").unwrap();
    let left_out = recipe::load_file(&path, &[]).unwrap();
    let text = toml::to_string(&written).unwrap();
    std::fs::write(&path, &text).unwrap();
    let spelt_out = recipe::load_file(&path, &[]).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(spelt_out, left_out, "{text}");
}

#[test]
fn the_default_recipe_is_what_a_recipe_that_sets_only_the_root_means() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bare.toml");
    std::fs::write(&file, "[dataset]\nroot = \"data\"\n").unwrap();
    let mut bare = load(file.to_str().unwrap(), &[]).unwrap().remove(0);
    assert!(bare.dataset.root.take().unwrap().ends_with("data"));
    let defaults = Recipe::default();
    assert_eq!(defaults.dataset.root, None);
    assert_eq!(
        Recipe {
            name: bare.name.clone(),
            path: bare.path.clone(),
            ..defaults
        },
        bare
    );
}

/// `dataset.classes`: "all", "first:N" or a list of distinct class ids, else an error at
/// the key saying what is allowed.
#[test]
fn a_class_subset_is_all_first_n_or_distinct_ids() {
    for (set, message) in [
        (
            "dataset.classes=\"first:0\"",
            "\"first:0\": expected \"all\", \"first:N\" (N ≥ 1) or a list of class ids",
        ),
        ("dataset.classes=\"top:50\"", "\"top:50\": expected"),
        ("dataset.classes=[]", "an empty list keeps no class"),
        (
            "dataset.classes=[\"n01\", \"n02\", \"n01\"]",
            "\"n01\" is listed twice",
        ),
    ] {
        let msg = error("recipes/quickstart.toml", &[set]);
        assert!(
            msg.contains("dataset.classes") && msg.contains(message),
            "{set}: {msg}"
        );
    }
    let ok = recipe::load(
        &["recipes/quickstart.toml".into()],
        &["dataset.classes=\"first:5\"".into()],
    )
    .unwrap();
    assert_eq!(ok[0].dataset.classes, recipe::ClassSubset::First(5));
}

//! Loads a recipe, runs its data stages, then changes a setting in code and prints the plan of
//! each variant: the stages the cache already holds are reused, the rest would run.
//!
//! ```sh
//! cargo run --release --example plan_variants -- [RECIPE]    # default recipes/quickstart.toml
//! ```
//!
//! The cache and the run folders go to a temporary folder.

use websieve::recipe::{self, Recipe};
use websieve::stage::{Plan, RunContext, StageKind, Workspace};

/// The plans of `recipe` with LDA at each of `topics`, after the recipe itself ran up to its
/// ingest stage in `workspace`.
fn plans(workspace: &Workspace, recipe: &Recipe, topics: &[usize]) -> anyhow::Result<Vec<Plan>> {
    let context = RunContext {
        command_line: "examples/plan_variants".into(),
        progress: false,
        rebuild_from: None,
    };
    workspace.run(recipe, StageKind::Ingest, &context)?;
    topics
        .iter()
        .map(|&k| {
            // Fields set in code skip the recipe's validation; `recipe::load_file(path,
            // &["lda.topics=50"])` is the validated way to vary a setting.
            let variant = Recipe {
                name: format!("{}/lda.topics={k}", recipe.name),
                lda: recipe::LdaParams {
                    topics: k,
                    ..recipe.lda.clone()
                },
                ..recipe.clone()
            };
            Ok(workspace.plan(&variant, StageKind::Eval)?)
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "recipes/quickstart.toml".into());
    let recipe = recipe::load_file(path.as_ref(), &[])?.remove(0);
    let temp = tempfile::tempdir()?;
    let workspace = Workspace::new(temp.path().join("cache"), temp.path().join("runs"));
    for plan in plans(&workspace, &recipe, &[20, 50])? {
        print!("{}", plan.describe());
    }
    Ok(())
}

/// Every variant reuses the one ingest and needs its own LDA and everything after it.
#[test]
fn variants_share_the_ingest_and_differ_from_lda_on() {
    let recipe = recipe::load_file("recipes/quickstart.toml".as_ref(), &[])
        .unwrap()
        .remove(0);
    let temp = tempfile::tempdir().unwrap();
    let workspace = Workspace::new(temp.path().join("cache"), temp.path().join("runs"));
    let plans = plans(&workspace, &recipe, &[20, 50]).unwrap();
    let stage = |plan: &Plan, kind| plan.stage(kind).unwrap().clone();
    for plan in &plans {
        assert!(stage(plan, StageKind::Ingest).cached, "{}", plan.describe());
        assert!(!stage(plan, StageKind::Lda).cached, "{}", plan.describe());
    }
    assert_eq!(
        stage(&plans[0], StageKind::Ingest).key,
        stage(&plans[1], StageKind::Ingest).key
    );
    assert_ne!(
        stage(&plans[0], StageKind::Lda).key,
        stage(&plans[1], StageKind::Lda).key
    );
}

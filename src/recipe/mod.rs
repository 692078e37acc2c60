//! Recipes: TOML files → raw serde structs (`deny_unknown_fields`) → a validated [`Recipe`]
//! with defaults filled in and paths resolved. In: recipe files or globs, `--set` overrides,
//! `[sweep]` grids. Out: one `Recipe` per run, or errors that name file, line and column.
//!
//! Parse, then validate: each file of an `extends` chain and each `--set` is type-checked on
//! its own (so errors point at its text), the layers are deep-merged, the sweep is expanded,
//! and [`validate`] turns the merged raw recipe into settings the stages take.

mod diag;
mod load;
pub mod params;
pub mod raw;
mod resolved;
mod schema;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use diag::{Diagnostic, Location, Origin, Place, RecipeError};
pub use params::*;
pub use schema::schema_json;
pub use validate::{check_optimizer, MEMORY_BUDGET};

/// One run's validated settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recipe {
    /// Run name: the recipe's file stem, plus `/key=value,...` for a sweep point.
    pub name: String,
    /// The recipe file named on the command line.
    pub path: PathBuf,
    pub dataset: DatasetParams,
    pub text: TextParams,
    pub lda: LdaParams,
    pub clean: CleanParams,
    pub probe: ProbeParams,
    pub labels: LabelParams,
    pub model: ModelParams,
    pub train: TrainParams,
    pub eval: EvalParams,
}

impl Default for Recipe {
    /// Every setting at its default, as an empty recipe would have it (`dataset.root` unset):
    /// the base that code building settings by hand (benchmarks, tests) varies with
    /// struct-update syntax, e.g. `LdaParams { topics: 50, ..Recipe::default().lda }`.
    fn default() -> Self {
        validate::defaults()
    }
}

impl Recipe {
    /// Every setting with its value, as a recipe that loads back as this one from any folder
    /// (written to `recipe.resolved.toml`).
    pub fn resolved_toml(&self) -> String {
        let body = toml::to_string_pretty(&resolved::to_table(self))
            .expect("resolved recipes serialize to TOML");
        // Nothing here may depend on where or by which build the recipe was loaded: a run
        // folder holding other text is taken for another run's (see `RunFolder`).
        format!(
            "# Every setting of run `{}`, defaults and all. It loads back as the same recipe\n\
             # from any folder: `runner runs/{}/recipe.resolved.toml`.\n\n{body}",
            self.name, self.name,
        )
    }

    /// Every setting as in its resolved recipe, by dotted key (`train.optimizer.lr`), values
    /// as TOML writes them (strings bare): what `runner report` compares between runs.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        flatten("", &resolved::to_table(self), &mut out);
        out
    }
}

/// Tables become dotted keys; every other value is shown as TOML writes it (strings bare).
fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            toml::Value::String(s) => {
                out.insert(key, s.clone());
            }
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}

/// Loads every recipe that the arguments (paths or globs) name, with the overrides, expanding
/// sweeps. All are validated before any is returned; every error is reported.
pub fn load(patterns: &[String], sets: &[String]) -> Result<Vec<Recipe>, RecipeError> {
    let files = load::expand_patterns(patterns)?;
    collect_all(files.iter().map(|path| load_file(path, sets)))
}

/// Loads one recipe file: one `Recipe` per sweep point (one without a sweep).
pub fn load_file(path: &Path, sets: &[String]) -> Result<Vec<Recipe>, RecipeError> {
    let mut points = Vec::new();
    for merged in load::load_merged(path, sets)? {
        // Each layer was type-checked on its own; this can only fail if merging broke that.
        let raw: raw::RawRecipe =
            toml::Value::Table(merged.table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    Diagnostic::placed(
                        diag::plain_words(e.message()),
                        Place::In(Origin::File(diag::display_path(path))),
                    )
                })?;
        points.push(
            validate::validate(merged.name, raw, &merged.sources).map(|mut r| {
                r.path = path.to_path_buf();
                vec![r]
            }),
        );
    }
    collect_all(points)
}

/// Every recipe of `results`, or every error among them (one error as itself, several as
/// `Many`, with nested `Many`s flattened).
fn collect_all(
    results: impl IntoIterator<Item = Result<Vec<Recipe>, RecipeError>>,
) -> Result<Vec<Recipe>, RecipeError> {
    let mut recipes = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(mut r) => recipes.append(&mut r),
            Err(RecipeError::Many(mut e)) => errors.append(&mut e),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(recipes),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(RecipeError::Many(errors)),
    }
}

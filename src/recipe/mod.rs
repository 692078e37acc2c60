//! Recipes: TOML files → raw serde structs (`deny_unknown_fields`) → a validated [`Recipe`]
//! with defaults filled in and paths resolved. In: recipe files, `--set` overrides, sweeps.
//! Out: one `Recipe` per run, or errors that name file, line and column.

pub mod params;

pub use params::*;

/// One run's validated settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recipe {
    /// Run name: the recipe's file stem, plus `/key=value` parts for a sweep point.
    pub name: String,
    pub dataset: DatasetParams,
    pub text: TextParams,
    pub lda: LdaParams,
    pub clean: CleanParams,
    pub labels: LabelParams,
    pub model: ModelParams,
    pub train: TrainParams,
    pub eval: EvalParams,
}

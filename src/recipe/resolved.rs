//! The inverse of validation: a [`Recipe`] written back as recipe TOML (`recipe.resolved.toml`)
//! with every setting explicit, paths absolute, no `extends` and no `[sweep]`, so that it loads
//! back as the same recipe from any folder (`runner validate runs/x/recipe.resolved.toml`).
//!
//! Most settings are spelt alike in both forms and are copied from the serialized
//! parameters; the few the validator folds (an enum with its data, `heads`, the run length)
//! are unfolded here. `every_resolved_recipe_loads_back_as_the_same_recipe` keeps the two
//! directions together.

use serde::Serialize;

use super::params::*;
use super::Recipe;

/// `recipe` as a recipe file's TOML table.
pub(super) fn to_table(recipe: &Recipe) -> toml::Table {
    let mut out = toml::Table::new();
    out.insert("name".into(), recipe.name.clone().into());
    out.insert("dataset".into(), dataset(&recipe.dataset).into());
    out.insert("text".into(), serialized(&recipe.text).into());
    out.insert("lda".into(), lda(&recipe.lda).into());
    out.insert("clean".into(), clean(&recipe.clean).into());
    out.insert("probe".into(), serialized(&recipe.probe).into());
    out.insert("labels".into(), labels(&recipe.labels).into());
    out.insert("model".into(), model(&recipe.model).into());
    out.insert("train".into(), train(&recipe.train).into());
    out.insert("eval".into(), serialized(&recipe.eval).into());
    out
}

/// A parameter struct as TOML: its fields under their recipe names (unset options absent).
fn serialized(params: &impl Serialize) -> toml::Table {
    match toml::Table::try_from(params) {
        Ok(table) => table,
        Err(e) => unreachable!("parameter structs serialize to tables: {e}"),
    }
}

fn path(p: &std::path::Path) -> toml::Value {
    p.to_string_lossy().into_owned().into()
}

fn dataset(d: &DatasetParams) -> toml::Table {
    let mut t = serialized(d);
    match d.encoding {
        StoreEncoding::Raw => t.insert("encoding".into(), "raw".into()),
        StoreEncoding::Jpeg { quality } => {
            t.insert("jpeg_quality".into(), i64::from(quality).into());
            t.insert("encoding".into(), "jpeg".into())
        }
    };
    if let Some(root) = &d.root {
        t.insert("root".into(), path(root));
    }
    t
}

fn lda(l: &LdaParams) -> toml::Table {
    let mut t = serialized(l);
    let kind = match l.alpha {
        Alpha::Symmetric(value) => {
            if let Some(value) = value {
                t.insert("alpha_value".into(), value.into());
            }
            "symmetric"
        }
        Alpha::Learned => "auto",
    };
    t.insert("alpha".into(), kind.into());
    t
}

fn clean(c: &CleanParams) -> toml::Table {
    let mut t = serialized(c);
    t.remove("mean");
    match c.mean {
        ClassMean::All => t.insert("mean".into(), "all".into()),
        ClassMean::Trimmed { share, rounds } => {
            t.insert("trim".into(), share.into());
            t.insert("trim_rounds".into(), i64::from(rounds).into());
            t.insert("mean".into(), "trimmed".into())
        }
    };
    let (kind, value) = match c.rule {
        CleanRule::None => ("none", None),
        CleanRule::Threshold(v) => ("threshold", Some(v)),
        CleanRule::Fraction(v) => ("fraction", Some(v)),
        CleanRule::Oracle => ("oracle", None),
    };
    t.insert("rule".into(), kind.into());
    if let Some(value) = value {
        t.insert(kind.into(), value.into());
    }
    if let Some(truth) = &c.truth {
        t.insert("truth".into(), path(truth));
    }
    t
}

fn labels(l: &LabelParams) -> toml::Table {
    let mut t = toml::Table::new();
    let LabelParams::Soft { lambda } = l else {
        t.insert("mode".into(), "hard".into());
        return t;
    };
    t.insert("mode".into(), "soft".into());
    let kind = match *lambda {
        LambdaMap::Ratio { s0 } => {
            t.insert("s0".into(), s0.into());
            "ratio"
        }
        LambdaMap::Rank { min } => {
            t.insert("lambda_min".into(), min.into());
            "rank"
        }
        LambdaMap::Sigmoid { center, scale } => {
            t.insert("sigmoid_center".into(), center.into());
            t.insert("sigmoid_scale".into(), scale.into());
            "sigmoid"
        }
    };
    t.insert("lambda".into(), kind.into());
    t
}

fn model(m: &ModelParams) -> toml::Table {
    let mut t = serialized(m);
    t.remove("classification");
    t.remove("regression");
    let heads: Vec<toml::Value> = [
        (m.classification, "classification"),
        (m.regression, "regression"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, head)| head.into())
    .collect();
    t.insert("heads".into(), heads.into());
    t
}

fn train(tp: &TrainParams) -> toml::Table {
    let mut t = serialized(tp);
    t.insert("devices".into(), tp.devices.to_string().into());
    t.remove("length");
    match tp.length {
        TrainLength::Iterations(n) => t.insert("iterations".into(), toml_int(n)),
        TrainLength::Epochs(n) => t.insert("epochs".into(), toml_int(n)),
    };
    t.insert("schedule".into(), schedule(&tp.schedule).into());
    // The curriculum's settings sit in their own table beside `sampler`, as in a recipe.
    if let SamplerKind::Curriculum { start, ramp_epochs } = tp.sampler {
        t.insert("sampler".into(), "curriculum".into());
        let mut curriculum = toml::Table::new();
        curriculum.insert("start".into(), start.into());
        curriculum.insert("ramp_epochs".into(), ramp_epochs.into());
        t.insert("curriculum".into(), curriculum.into());
    }
    t.remove("on_divergence");
    let mut divergence = toml::Table::new();
    match tp.on_divergence {
        OnDivergence::Stop => {
            divergence.insert("action".into(), "stop".into());
        }
        OnDivergence::Rollback {
            lr_factor,
            max_rollbacks,
        } => {
            divergence.insert("action".into(), "rollback".into());
            divergence.insert("lr_factor".into(), lr_factor.into());
            divergence.insert("max_rollbacks".into(), i64::from(max_rollbacks).into());
        }
    }
    t.insert("divergence".into(), divergence.into());
    t
}

fn schedule(s: &Schedule) -> toml::Table {
    // The policy's fields sit beside `policy` in a recipe.
    let mut t = serialized(s);
    let mut policy = serialized(&s.policy);
    let kind = policy
        .remove("kind")
        .expect("policies are tagged with `kind`");
    t.insert("policy".into(), kind);
    t.extend(policy);
    t
}

fn toml_int(n: u64) -> toml::Value {
    i64::try_from(n)
        .expect("validated counts fit TOML integers")
        .into()
}

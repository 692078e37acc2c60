//! Top-1/top-5 accuracy overall and per class: the content of `metrics.json`, and as a
//! terminal table.

use serde::{Deserialize, Serialize};

use super::{EvalError, Predictions};
use crate::table::{percent, Align, TextTable};

/// Accuracies of one evaluation, as fractions in [0, 1]. With fewer than 5 classes, top-5
/// means top-all and is 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub samples: usize,
    pub top1: f64,
    pub top5: f64,
    /// Mean of the per-class top-1 over the classes that have samples: on a long-tailed
    /// split the small classes weigh as much as the large ones.
    pub mean_class_top1: f64,
    pub mean_class_top5: f64,
    pub per_class: Vec<ClassMetrics>,
}

/// One class's share of an evaluation. Accuracies are `None` for a class without samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: usize,
    pub name: String,
    pub samples: usize,
    pub top1: Option<f64>,
    pub top5: Option<f64>,
}

/// Per class: its samples, top-1 hits and top-5 hits. [`EvalMetrics`] are computed from
/// these, and ranks that each evaluated a share of the samples sum them
/// ([`super::evaluate_sharded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassHits(Vec<[u64; 3]>);

impl ClassHits {
    /// No samples of `classes` classes.
    pub fn zero(classes: usize) -> ClassHits {
        ClassHits(vec![[0; 3]; classes])
    }

    /// The hits of `p`'s samples, by their labels.
    pub fn of(p: &Predictions) -> ClassHits {
        let mut hits = ClassHits::zero(p.num_classes());
        for (i, &label) in p.labels().iter().enumerate() {
            let ranked = p.top_k(i, 5);
            let count = &mut hits.0[label as usize];
            count[0] += 1;
            count[1] += u64::from(ranked[0] == label as usize);
            count[2] += u64::from(ranked.contains(&(label as usize)));
        }
        hits
    }

    /// Per class `[samples, top-1 hits, top-5 hits]`.
    pub fn per_class(&self) -> &[[u64; 3]] {
        &self.0
    }

    /// From per-class `[samples, top-1 hits, top-5 hits]`.
    pub fn from_per_class(per_class: Vec<[u64; 3]>) -> ClassHits {
        ClassHits(per_class)
    }

    pub fn samples(&self) -> u64 {
        self.total(0)
    }

    /// Top-1 accuracy over all samples (0 without samples).
    pub fn top1(&self) -> f64 {
        share(self.total(1), self.samples())
    }

    pub fn top5(&self) -> f64 {
        share(self.total(2), self.samples())
    }

    fn total(&self, k: usize) -> u64 {
        self.0.iter().map(|c| c[k]).sum()
    }

    /// Top-1/top-5 overall and per class; `class_names[c]` names class `c`.
    pub fn metrics(&self, class_names: &[String]) -> Result<EvalMetrics, EvalError> {
        let classes = self.0.len();
        if class_names.len() != classes {
            return Err(EvalError::ClassNames {
                expected: classes,
                found: class_names.len(),
            });
        }
        if self.samples() == 0 {
            return Err(EvalError::NoSamples);
        }
        let present: Vec<&[u64; 3]> = self.0.iter().filter(|c| c[0] > 0).collect();
        let class_mean = |k: usize| {
            present.iter().map(|c| share(c[k], c[0])).sum::<f64>() / present.len() as f64
        };
        Ok(EvalMetrics {
            samples: self.samples() as usize,
            top1: self.top1(),
            top5: self.top5(),
            mean_class_top1: class_mean(1),
            mean_class_top5: class_mean(2),
            per_class: self
                .0
                .iter()
                .zip(class_names)
                .enumerate()
                .map(|(class, (c, name))| ClassMetrics {
                    class,
                    name: name.clone(),
                    samples: c[0] as usize,
                    top1: (c[0] > 0).then(|| share(c[1], c[0])),
                    top5: (c[0] > 0).then(|| share(c[2], c[0])),
                })
                .collect(),
        })
    }
}

fn share(hits: u64, of: u64) -> f64 {
    match of {
        0 => 0.0,
        of => hits as f64 / of as f64,
    }
}

/// Top-1/top-5 of `p` overall and per class; `class_names[c]` names class `c`.
pub fn metrics(p: &Predictions, class_names: &[String]) -> Result<EvalMetrics, EvalError> {
    ClassHits::of(p).metrics(class_names)
}

/// Renders `m`: one row per class when `per_class` is set, then the overall accuracy and the
/// mean over classes.
pub fn render_table(m: &EvalMetrics, per_class: bool) -> String {
    let mut out = String::new();
    if per_class {
        let mut classes = TextTable::new([
            ("class", Align::Right),
            ("name", Align::Left),
            ("samples", Align::Right),
            ("top-1", Align::Right),
            ("top-5", Align::Right),
        ]);
        for c in &m.per_class {
            classes.push_row(vec![
                c.class.to_string(),
                c.name.clone(),
                c.samples.to_string(),
                percent(c.top1),
                percent(c.top5),
            ]);
        }
        out += &classes.render();
        out.push('\n');
    }
    let mut summary = TextTable::new([
        ("", Align::Left),
        ("top-1", Align::Right),
        ("top-5", Align::Right),
    ]);
    let classes_with_samples = m.per_class.iter().filter(|c| c.samples > 0).count();
    summary.push_row(vec![
        format!("all {} samples", m.samples),
        percent(Some(m.top1)),
        percent(Some(m.top5)),
    ]);
    summary.push_row(vec![
        format!("mean of {classes_with_samples} classes"),
        percent(Some(m.mean_class_top1)),
        percent(Some(m.mean_class_top5)),
    ]);
    out + &summary.render()
}

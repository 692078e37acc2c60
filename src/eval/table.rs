//! The evaluation as a terminal table: top-1/top-5 per class and overall, in percent.

use super::EvalMetrics;
use crate::report::table::{Align, TextTable};

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

/// `0.6167` → `61.67%`; no value → `-`.
pub(crate) fn percent(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v))
}

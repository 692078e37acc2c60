//! The confusion matrix of top-1 predictions and its PNG: one cell per (true, predicted) class
//! pair, shaded by the share of the true class's samples (row-normalised), so small classes
//! show as clearly as large ones.
//!
//! Labels use DejaVu Sans from `/usr/share/fonts/truetype/dejavu` when it is there; without a
//! font the same picture is drawn without text.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{EvalError, Predictions};

/// Counts of top-1 predictions: `count(t, p)` samples of true class `t` were predicted `p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    /// `[classes, classes]`, row = true class.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn from_predictions(p: &Predictions) -> Self {
        let classes = p.num_classes();
        let mut counts = vec![0; classes * classes];
        for (i, &label) in p.labels().iter().enumerate() {
            counts[label as usize * classes + p.top_k(i, 1)[0]] += 1;
        }
        ConfusionMatrix { classes, counts }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn count(&self, true_class: usize, predicted: usize) -> u64 {
        self.counts[true_class * self.classes + predicted]
    }

    /// The share of true class `t`'s samples predicted as `p`; 0 for a class without samples.
    pub fn row_share(&self, true_class: usize, predicted: usize) -> f64 {
        let row = &self.counts[true_class * self.classes..(true_class + 1) * self.classes];
        let total: u64 = row.iter().sum();
        if total == 0 {
            0.0
        } else {
            row[predicted] as f64 / total as f64
        }
    }
}

/// Geometry of the picture: square cells of `cell` pixels (32 for a few classes down to 1 for
/// 960 and more), the matrix at `(left, top)`, margins for the title and, when the cells are
/// tall enough to label, the class names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    cell: u32,
    left: u32,
    top: u32,
    width: u32,
    height: u32,
}

impl Layout {
    /// The smallest cell that gets a class name and index.
    const LABELLED_CELL: u32 = 10;
    const LEFT_NAMES: u32 = 180;
    const LEFT: u32 = 20;
    const TOP: u32 = 40;
    const RIGHT: u32 = 20;
    const BOTTOM: u32 = 50;

    fn new(classes: usize) -> Self {
        let classes = classes as u32;
        let cell = (960 / classes).clamp(1, 32);
        let side = cell * classes;
        let left = if cell >= Self::LABELLED_CELL {
            Self::LEFT_NAMES
        } else {
            Self::LEFT
        };
        Layout {
            cell,
            left,
            top: Self::TOP,
            width: left + side + Self::RIGHT,
            height: Self::TOP + side + Self::BOTTOM,
        }
    }
}

/// The size in pixels (width, height) of the PNG for `classes` classes.
pub fn confusion_png_size(classes: usize) -> (u32, u32) {
    let layout = Layout::new(classes);
    (layout.width, layout.height)
}

/// Draws `matrix` to the PNG file `path`; `class_names` label the rows when there is room.
pub fn write_confusion_png(
    path: &Path,
    matrix: &ConfusionMatrix,
    class_names: &[String],
) -> Result<(), EvalError> {
    draw(path, matrix, class_names, label_font().is_some())
}

const FONT_NAME: &str = "websieve-sans";
const FONT_DIR: &str = "/usr/share/fonts/truetype/dejavu";

/// DejaVu Sans, registered with plotters once per process; `None` when no font loads.
fn label_font() -> Option<&'static str> {
    static FONT: OnceLock<Option<&'static str>> = OnceLock::new();
    *FONT.get_or_init(|| {
        let bytes = std::fs::read(Path::new(FONT_DIR).join("DejaVuSans.ttf")).ok()?;
        // plotters keeps registered fonts for the whole process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT_NAME, FontStyle::Normal, bytes).ok()?;
        Some(FONT_NAME)
    })
}

fn draw(
    path: &Path,
    matrix: &ConfusionMatrix,
    class_names: &[String],
    with_text: bool,
) -> Result<(), EvalError> {
    let plot_error = |e: &dyn std::fmt::Display| EvalError::Plot {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let layout = Layout::new(matrix.classes);
    let area = BitMapBackend::new(path, (layout.width, layout.height)).into_drawing_area();
    area.fill(&WHITE).map_err(|e| plot_error(&e))?;
    let cell = layout.cell as i32;
    let (left, top) = (layout.left as i32, layout.top as i32);
    for t in 0..matrix.classes {
        for p in 0..matrix.classes {
            let share = matrix.row_share(t, p);
            if share == 0.0 {
                continue;
            }
            let (x, y) = (left + p as i32 * cell, top + t as i32 * cell);
            area.draw(&Rectangle::new(
                [(x, y), (x + cell - 1, y + cell - 1)],
                shade(share).filled(),
            ))
            .map_err(|e| plot_error(&e))?;
        }
    }
    let side = cell * matrix.classes as i32;
    area.draw(&Rectangle::new(
        [(left - 1, top - 1), (left + side, top + side)],
        BLACK.stroke_width(1),
    ))
    .map_err(|e| plot_error(&e))?;
    if with_text {
        draw_labels(&area, matrix, class_names, layout).map_err(|e| plot_error(&e))?;
    }
    area.present().map_err(|e| plot_error(&e))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Title, axis names, class names beside the rows and indices under the columns (when cells
/// are tall/wide enough to read), and counts inside cells (when they fit).
fn draw_labels<'a>(
    area: &Area<'a>,
    matrix: &ConfusionMatrix,
    class_names: &[String],
    layout: Layout,
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>> {
    let cell = layout.cell as i32;
    let (left, top) = (layout.left as i32, layout.top as i32);
    let side = cell * matrix.classes as i32;
    let style = |size: i32, h: HPos, v: VPos| {
        TextStyle::from((FONT_NAME, size as f64).into_font()).pos(Pos::new(h, v))
    };
    area.draw_text(
        "rows: true class, columns: predicted (top-1), shade: share of the row",
        &style(14, HPos::Left, VPos::Center),
        (8, top / 2),
    )?;
    area.draw_text(
        "predicted class",
        &style(14, HPos::Center, VPos::Bottom),
        (left + side / 2, layout.height as i32 - 4),
    )?;
    if layout.cell < Layout::LABELLED_CELL {
        return Ok(());
    }
    let size = (cell - 2).min(14);
    for (class, name) in class_names.iter().enumerate().take(matrix.classes) {
        let centre = top + class as i32 * cell + cell / 2;
        let label: String = format!("{class} {name}").chars().take(24).collect();
        area.draw_text(
            &label,
            &style(size, HPos::Right, VPos::Center),
            (left - 6, centre),
        )?;
    }
    for class in 0..matrix.classes {
        let centre = left + class as i32 * cell + cell / 2;
        area.draw_text(
            &class.to_string(),
            &style(size.min(cell / 2 + 2), HPos::Center, VPos::Top),
            (centre, top + side + 4),
        )?;
    }
    if cell < 28 {
        return Ok(());
    }
    for t in 0..matrix.classes {
        for p in 0..matrix.classes {
            let count = matrix.count(t, p);
            if count == 0 {
                continue;
            }
            let colour = if matrix.row_share(t, p) > 0.5 {
                WHITE
            } else {
                BLACK
            };
            area.draw_text(
                &count.to_string(),
                &style(10, HPos::Center, VPos::Center).color(&colour),
                (
                    left + p as i32 * cell + cell / 2,
                    top + t as i32 * cell + cell / 2,
                ),
            )?;
        }
    }
    Ok(())
}

/// White (share 0) to dark blue (share 1).
fn shade(share: f64) -> RGBColor {
    let mix = |from: u8, to: u8| (from as f64 + (to as f64 - from as f64) * share).round() as u8;
    RGBColor(mix(255, 8), mix(255, 48), mix(255, 107))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Evaluation;

    fn predictions() -> Predictions {
        // Three samples of class 0 (two right), one of class 1 (predicted 2), none of class 2.
        let mut e = Evaluation::new(3, 1);
        let logits = [5., 0., 0., 5., 0., 0., 0., 5., 0., 0., 0., 5.];
        e.add_batch(&[1, 2, 3, 4], &[0, 0, 0, 1], &logits).unwrap();
        e.finish()
    }

    #[test]
    fn counts_top1_by_true_class() {
        let m = ConfusionMatrix::from_predictions(&predictions());
        assert_eq!((m.count(0, 0), m.count(0, 1), m.count(1, 2)), (2, 1, 1));
        assert_eq!(m.row_share(0, 0), 2.0 / 3.0);
        assert_eq!(m.row_share(2, 2), 0.0);
    }

    #[test]
    fn draws_without_text_when_there_is_no_font() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let m = ConfusionMatrix::from_predictions(&predictions());
        draw(&path, &m, &[], false).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), confusion_png_size(3));
        // Cell (0, 0) is 2/3 dark, cell (2, 2) is blank.
        let layout = Layout::new(3);
        let centre = |t: u32, p: u32| {
            let at = |o: u32, i: u32| o + i * layout.cell + layout.cell / 2;
            image.get_pixel(at(layout.left, p), at(layout.top, t)).0
        };
        assert_eq!(centre(0, 0), <[u8; 3]>::from(shade(2.0 / 3.0).rgb()));
        assert_eq!(centre(2, 2), [255, 255, 255]);
        // Without text the title band stays white.
        assert!(image
            .rows()
            .take(layout.top as usize - 2)
            .flatten()
            .all(|p| p.0 == [255; 3]));
    }
}

//! Shared PNG helpers: an overlaid histogram (with an optional cut line), line charts, image
//! thumbnails and a contact sheet (grid with captions), all written with PNG's best
//! compression. Text uses DejaVu Sans from /usr/share/fonts when it is installed; without it
//! the same pictures are drawn without any text.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::{imageops, Rgb, RgbImage};
use plotters::prelude::*;

const FONT: &str = "sans-serif";
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
/// Series colours, in order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Save {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

fn draw_error(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    }
}

/// Registers DejaVu Sans once; false when no font file is found (then no text is drawn).
pub fn font_available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        FONT_PATHS.iter().any(|path| match std::fs::read(path) {
            // plotters keeps a &'static reference to the font: leak it once per process.
            Ok(bytes) => plotters::style::register_font(
                FONT,
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .is_ok(),
            Err(_) => false,
        })
    })
}

/// A vertical line across a histogram at `at`, named in the legend by `label`.
pub struct Cut {
    pub at: f64,
    pub label: String,
}

/// Histograms of several series over one shared range, overlaid semi-transparently, with
/// `cut` drawn as a dashed vertical line.
pub fn histogram(
    path: &Path,
    title: &str,
    series: &[(&str, &[f64])],
    bins: usize,
    cut: Option<&Cut>,
) -> Result<(), PlotError> {
    let err = draw_error(path);
    let values = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let width = (hi - lo) / bins as f64;
    let counts: Vec<Vec<u32>> = series
        .iter()
        .map(|(_, v)| {
            let mut c = vec![0u32; bins];
            for &x in v.iter().filter(|x| x.is_finite()) {
                c[(((x - lo) / width) as usize).min(bins - 1)] += 1;
            }
            c
        })
        .collect();
    let top = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let with_text = font_available();
    let (canvas_w, canvas_h) = (900, 540);
    let mut raw = vec![255u8; (canvas_w * canvas_h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut raw, (canvas_w, canvas_h)).into_drawing_area();
        let mut builder = ChartBuilder::on(&root);
        builder.margin(16);
        if with_text {
            builder
                .caption(title, (FONT, 22))
                .x_label_area_size(36)
                .y_label_area_size(56);
        }
        let mut chart = builder
            .build_cartesian_2d(lo..hi, 0u32..top + top / 10 + 1)
            .map_err(|e| err(e.to_string()))?;
        if with_text {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc("score")
                .y_desc("samples")
                .label_style((FONT, 14))
                .draw()
                .map_err(|e| err(e.to_string()))?;
        }
        for (i, ((name, _), c)) in series.iter().zip(&counts).enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let bars = c.iter().enumerate().map(move |(b, &n)| {
                let x0 = lo + b as f64 * width;
                Rectangle::new([(x0, 0), (x0 + width, n)], colour.mix(0.5).filled())
            });
            let drawn = chart.draw_series(bars).map_err(|e| err(e.to_string()))?;
            if with_text {
                drawn
                    .label(format!("{name} ({})", c.iter().sum::<u32>()))
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                    });
            }
        }
        if let Some(cut) = cut.filter(|c| c.at.is_finite()) {
            let at = cut.at.clamp(lo, hi);
            let y_top = top + top / 10;
            let dashes = (0..20u32).map(|k| {
                let (a, b) = (y_top * k / 20, (y_top * k / 20 + y_top / 40).min(y_top));
                PathElement::new(vec![(at, a), (at, b)], BLACK.stroke_width(2))
            });
            let drawn = chart.draw_series(dashes).map_err(|e| err(e.to_string()))?;
            if with_text {
                drawn.label(cut.label.clone()).legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], BLACK.stroke_width(2))
                });
            }
        }
        if with_text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 14))
                .draw()
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    save_png(
        path,
        &RgbImage::from_raw(canvas_w, canvas_h, raw).expect("buffer keeps its size"),
    )
}

/// One line of a [`lines`] chart: its name and its (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Line charts of `series` over shared axes (`log_y`: a logarithmic y axis, for losses;
/// points with y ≤ 0 are then left out).
pub fn lines(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[Series],
    log_y: bool,
) -> Result<(), PlotError> {
    let err = draw_error(path);
    let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
    let points = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().filter(|p| usable(p)))
    };
    let bounds = |f: fn(&(f64, f64)) -> f64| {
        points()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let widen = |(lo, hi): (f64, f64)| match (lo.is_finite(), hi > lo) {
        (true, true) => (lo, hi),
        (true, false) => (lo - 0.5 * lo.abs().max(1e-3), hi + 0.5 * hi.abs().max(1e-3)),
        _ => (0.0, 1.0),
    };
    let (x0, x1) = widen(bounds(|p| p.0));
    let (y0, y1) = widen(bounds(|p| p.1));
    let with_text = font_available();
    let (width, height) = (640, 360);
    let mut raw = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut raw, (width, height)).into_drawing_area();
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if with_text {
            builder
                .caption(title, (FONT, 18))
                .x_label_area_size(32)
                .y_label_area_size(60);
        }
        // One drawing routine for both axis kinds: plotters types them differently.
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart.map_err(|e| err(e.to_string()))?;
                if with_text {
                    chart
                        .configure_mesh()
                        .x_desc(x_desc)
                        .y_desc(y_desc)
                        .x_label_formatter(&|x| format!("{x}"))
                        .label_style((FONT, 12))
                        .draw()
                        .map_err(|e| err(e.to_string()))?;
                }
                for (i, s) in series.iter().enumerate() {
                    let colour = COLOURS[i % COLOURS.len()];
                    let line = LineSeries::new(
                        s.points.iter().copied().filter(|p| usable(p)),
                        colour.stroke_width(2),
                    );
                    let drawn = chart.draw_series(line).map_err(|e| err(e.to_string()))?;
                    if with_text {
                        drawn.label(s.name.clone()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 14, y)], colour.stroke_width(2))
                        });
                    }
                }
                if with_text && !series.is_empty() {
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .label_font((FONT, 12))
                        .draw()
                        .map_err(|e| err(e.to_string()))?;
                }
            }};
        }
        if log_y {
            draw!(builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()));
        } else {
            draw!(builder.build_cartesian_2d(x0..x1, y0..y1));
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    save_png(
        path,
        &RgbImage::from_raw(width, height, raw).expect("buffer keeps its size"),
    )
}

/// `image` scaled (aspect kept) to fit a `side`×`side` square.
pub fn thumbnail(image: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let scale = side as f64 / w.max(h).max(1) as f64;
    let (tw, th) = (
        ((w as f64 * scale) as u32).clamp(1, side),
        ((h as f64 * scale) as u32).clamp(1, side),
    );
    imageops::resize(image, tw, th, imageops::FilterType::Triangle)
}

/// Writes `image` as a PNG with the best compression and adaptive filtering: photos come out
/// at about half the size of the default encoding.
pub fn save_png(path: &Path, image: &RgbImage) -> Result<(), PlotError> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let save = || -> image::ImageResult<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let encoder =
            PngEncoder::new_with_quality(file, CompressionType::Best, FilterType::Adaptive);
        image.write_with_encoder(encoder)
    };
    save().map_err(|source| PlotError::Save {
        path: path.to_path_buf(),
        source,
    })
}

/// One image of a contact sheet and the line printed under it.
pub struct Cell {
    pub image: RgbImage,
    pub caption: String,
}

/// Images in a grid of `columns`, each fitted into a `cell`×`cell` square (aspect kept),
/// captioned, under a title. Title and captions may span lines (`\n`). An empty list gives a
/// sheet with only the title.
pub fn contact_sheet(
    path: &Path,
    title: &str,
    cells: &[Cell],
    columns: usize,
    cell: u32,
) -> Result<(), PlotError> {
    let with_text = font_available();
    let lines = |text: &str| text.lines().count().max(1) as u32;
    let caption_lines = cells.iter().map(|c| lines(&c.caption)).max().unwrap_or(1);
    let (title_h, caption_h, pad) = if with_text {
        (6 + 22 * lines(title), 15 * caption_lines + 1, 4)
    } else {
        (0, 0, 4)
    };
    let rows = cells.len().div_ceil(columns.max(1)).max(1) as u32;
    let width = columns as u32 * (cell + pad) + pad;
    let height = title_h + rows * (cell + caption_h + pad) + pad;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let origin = |i: usize| {
        let (col, row) = ((i % columns) as u32, (i / columns) as u32);
        (
            pad + col * (cell + pad),
            title_h + pad + row * (cell + caption_h + pad),
        )
    };
    for (i, c) in cells.iter().enumerate() {
        let thumb = thumbnail(&c.image, cell);
        let (tw, th) = thumb.dimensions();
        let (x, y) = origin(i);
        imageops::replace(
            &mut canvas,
            &thumb,
            (x + (cell - tw) / 2) as i64,
            (y + (cell - th) / 2) as i64,
        );
    }
    if with_text {
        let err = draw_error(path);
        let mut raw = canvas.into_raw();
        {
            let root = BitMapBackend::with_buffer(&mut raw, (width, height)).into_drawing_area();
            let title_style = (FONT, 18).into_font().color(&BLACK);
            for (n, line) in title.lines().enumerate() {
                root.draw_text(line, &title_style, (pad as i32, 5 + 22 * n as i32))
                    .map_err(|e| err(e.to_string()))?;
            }
            let style = (FONT, 12).into_font().color(&BLACK);
            for (i, c) in cells.iter().enumerate() {
                let (x, y) = origin(i);
                for (n, line) in c.caption.lines().enumerate() {
                    let at = (x as i32, (y + cell + 2) as i32 + 15 * n as i32);
                    root.draw_text(line, &style, at)
                        .map_err(|e| err(e.to_string()))?;
                }
            }
            root.present().map_err(|e| err(e.to_string()))?;
        }
        canvas = RgbImage::from_raw(width, height, raw).expect("buffer keeps its size");
    }
    save_png(path, &canvas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_contact_sheet_are_pngs_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let hist = dir.path().join("h.png");
        histogram(
            &hist,
            "scores",
            &[("a", &[0.1, 0.2, 0.2, 0.9]), ("b", &[0.5])],
            10,
            Some(&Cut {
                at: 0.3,
                label: "cut".into(),
            }),
        )
        .unwrap();
        assert_eq!(
            image::open(&hist).unwrap().to_rgb8().dimensions(),
            (900, 540)
        );

        let sheet = dir.path().join("s.png");
        let red = RgbImage::from_pixel(40, 20, Rgb([255, 0, 0]));
        let cells: Vec<Cell> = (0..5)
            .map(|i| Cell {
                image: red.clone(),
                caption: format!("#{i}"),
            })
            .collect();
        contact_sheet(&sheet, "lowest", &cells, 3, 32).unwrap();
        let img = image::open(&sheet).unwrap().to_rgb8();
        let (title_h, caption_h) = if font_available() { (28, 16) } else { (0, 0) };
        assert_eq!(
            img.dimensions(),
            (3 * 36 + 4, title_h + 2 * (32 + caption_h + 4) + 4)
        );
        // The first image's centre is red: images land in their cells.
        assert_eq!(img.get_pixel(4 + 16, title_h + 4 + 16), &Rgb([255, 0, 0]));

        // A second line of title or caption makes room for itself.
        let mut cells = cells;
        cells[4].caption.push_str("\nt 1 c 2 k 3");
        contact_sheet(&sheet, "lowest\nlegend", &cells, 3, 32).unwrap();
        let img = image::open(&sheet).unwrap().to_rgb8();
        let (title_h, caption_h) = if font_available() { (50, 31) } else { (0, 0) };
        assert_eq!(
            img.dimensions(),
            (3 * 36 + 4, title_h + 2 * (32 + caption_h + 4) + 4)
        );
    }

    #[test]
    fn the_cut_is_drawn_and_line_charts_take_a_log_axis() {
        let dir = tempfile::tempdir().unwrap();
        let draw = |cut: Option<&Cut>| {
            let path = dir.path().join("h.png");
            histogram(&path, "s", &[("a", &[0.0, 1.0])], 4, cut).unwrap();
            image::open(&path).unwrap().to_rgb8()
        };
        let cut = Cut {
            at: 0.6,
            label: "cut".into(),
        };
        let (with, without) = (draw(Some(&cut)), draw(None));
        let changed: Vec<u32> = (0..with.width())
            .filter(|&x| {
                (0..with.height()).any(|y| with.get_pixel(x, y) != without.get_pixel(x, y))
            })
            .collect();
        // A line (2 px wide), not a smear, when there is no legend to draw.
        if !font_available() {
            assert!(!changed.is_empty() && changed.len() <= 3, "{changed:?}");
        } else {
            assert!(!changed.is_empty());
        }

        let path = dir.path().join("l.png");
        let series = [
            Series {
                name: "loss".into(),
                points: vec![(1.0, 2.0), (2.0, 0.5), (3.0, 0.0), (4.0, f64::NAN)],
            },
            Series {
                name: "empty".into(),
                points: vec![],
            },
        ];
        lines(&path, "t", ("step", "loss"), &series, true).unwrap();
        assert_eq!(
            image::open(&path).unwrap().to_rgb8().dimensions(),
            (640, 360)
        );
    }
}

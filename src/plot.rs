//! Shared PNG helpers: an overlaid histogram and an image contact sheet (grid with
//! captions). Text uses DejaVu Sans from /usr/share/fonts when it is installed; without it
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

/// Histograms of several series over one shared range, overlaid semi-transparently.
pub fn histogram(
    path: &Path,
    title: &str,
    series: &[(&str, &[f64])],
    bins: usize,
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
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
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
    if with_text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// One image of a contact sheet and the line printed under it.
pub struct Cell {
    pub image: RgbImage,
    pub caption: String,
}

/// Images in a grid of `columns`, each fitted into a `cell`×`cell` square (aspect kept),
/// captioned, under a title. An empty list gives a sheet with only the title.
pub fn contact_sheet(
    path: &Path,
    title: &str,
    cells: &[Cell],
    columns: usize,
    cell: u32,
) -> Result<(), PlotError> {
    let with_text = font_available();
    let (title_h, caption_h, pad) = if with_text { (28, 16, 4) } else { (0, 0, 4) };
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
        let (w, h) = c.image.dimensions();
        let scale = cell as f64 / w.max(h).max(1) as f64;
        let (tw, th) = (
            ((w as f64 * scale) as u32).max(1),
            ((h as f64 * scale) as u32).max(1),
        );
        let thumb = imageops::resize(&c.image, tw, th, imageops::FilterType::Triangle);
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
            root.draw_text(
                title,
                &(FONT, 18).into_font().color(&BLACK),
                (pad as i32, 5),
            )
            .map_err(|e| err(e.to_string()))?;
            let style = (FONT, 12).into_font().color(&BLACK);
            for (i, c) in cells.iter().enumerate() {
                let (x, y) = origin(i);
                root.draw_text(&c.caption, &style, (x as i32, (y + cell + 2) as i32))
                    .map_err(|e| err(e.to_string()))?;
            }
            root.present().map_err(|e| err(e.to_string()))?;
        }
        canvas = RgbImage::from_raw(width, height, raw).expect("buffer keeps its size");
    }
    canvas.save(path).map_err(|source| PlotError::Save {
        path: path.to_path_buf(),
        source,
    })
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
    }
}

//! `synthetic`: a generated WebVision-like dataset, so the quickstart and the tests run on a
//! fresh machine with no downloads.
//!
//! In: [`SyntheticParams`] and a folder. Out: `<dir>/synthetic/` in the WebVision 2017 layout
//! (real JPEG files from our encoder `store::jpeg`, `info/` lists, `meta/` JSON) and
//! `<dir>/truth.tsv` (path, given_label, true_label, noise_kind, true_wnid, source_image: the
//! columns of imagenette-web's truth file).
//!
//! Images: each class has its own colour and stripe orientation/frequency, with per-image
//! phase, shift and pixel noise. Text: each class has its own words; a clean image's text draws
//! from its class, a noisy one's from its true class (or, one time in five, from its query's
//! class, as real web pages about the query do), mixed with generic web words. Class sizes
//! follow a geometric long tail. Everything is a pure function of the seed.

use std::f32::consts::PI;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::json;

use super::DatasetError;
use crate::recipe::params::SyntheticParams;

const WEB_WORDS: &[&str] = &[
    "photo",
    "image",
    "free",
    "download",
    "best",
    "stock",
    "hd",
    "wallpaper",
    "picture",
    "new",
    "www",
    "com",
    "gallery",
    "online",
    "view",
    "top",
];
/// Share of noisy images whose text follows their query instead of their content.
const TEXT_FOLLOWS_QUERY: f64 = 0.2;
/// Share of text fields left missing or empty.
const BLANK_FIELD: f64 = 0.1;
const GOOGLE_SHARE: f64 = 0.45;
/// σ of the log-normal class sizes of the WebVision shape: WebVision 1.0's 1000 classes hold
/// 300..11,000 images, median about 2,000, mean 2,400 (e^{σ²/2} = 1.2).
const SIZE_SIGMA: f64 = 0.6;
/// Words of the WebVision shape's background vocabulary and their Zipf exponent.
const BACKGROUND_WORDS: usize = 300_000;
const ZIPF_EXPONENT: f64 = 1.0;

/// One generated training image before it is written.
struct Planned {
    given: u32,
    truth: u32,
    query: u32,
    text_class: u32,
    google: bool,
}

/// How pages are written: words per field, the share drawn from the page's class words, and
/// where the other words come from.
struct TextShape {
    class_words: usize,
    title: Range<usize>,
    description: Range<usize>,
    tags: Range<usize>,
    /// Share of class words in the title, description and tags.
    own: [f64; 3],
    background: Background,
}

enum Background {
    /// [`WEB_WORDS`], uniformly.
    Web,
    /// Made-up words by Zipf's law: the words and their cumulative weights.
    Zipf {
        words: Vec<String>,
        cumulative: Vec<f64>,
    },
}

impl TextShape {
    fn of(params: &SyntheticParams) -> TextShape {
        match params.train_samples {
            None => TextShape {
                class_words: 12,
                title: 2..5,
                description: 6..13,
                tags: 2..6,
                own: [0.7, 0.6, 0.8],
                background: Background::Web,
            },
            Some(_) => {
                let words: Vec<String> = (0..BACKGROUND_WORDS).map(background_word).collect();
                let cumulative = (1..=BACKGROUND_WORDS)
                    .scan(0.0, |sum, rank| {
                        *sum += (rank as f64).powf(-ZIPF_EXPONENT);
                        Some(*sum)
                    })
                    .collect();
                TextShape {
                    class_words: 40,
                    title: 4..11,
                    description: 30..66,
                    tags: 8..25,
                    own: [0.4, 0.25, 0.5],
                    background: Background::Zipf { words, cumulative },
                }
            }
        }
    }

    fn background_word(&self, rng: &mut ChaCha8Rng) -> &str {
        match &self.background {
            Background::Web => WEB_WORDS.choose(rng).expect("web words"),
            Background::Zipf { words, cumulative } => {
                let total = *cumulative.last().expect("words");
                let at = rng.random_range(0.0..total);
                &words[cumulative
                    .partition_point(|&c| c <= at)
                    .min(words.len() - 1)]
            }
        }
    }
}

/// Background word `i`: three syllables and an `x`, so that it is no class word (those are
/// two or three syllables without).
fn background_word(i: usize) -> String {
    const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    let mut rest = i;
    let mut word = String::with_capacity(7);
    for _ in 0..3 {
        let syllable = rest % (CONSONANTS.len() * VOWELS.len());
        rest /= CONSONANTS.len() * VOWELS.len();
        word.push(CONSONANTS[syllable / VOWELS.len()] as char);
        word.push(VOWELS[syllable % VOWELS.len()] as char);
    }
    word.push('x');
    word
}

/// A generated dataset: its root in the WebVision layout and the truth file that says, per
/// training image, its given and its true label.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub root: PathBuf,
    pub truth: PathBuf,
}

/// The folder below the work folder that holds the generated dataset.
pub const DIR: &str = "synthetic";

/// Generates the dataset into `dir/synthetic` and its truth file into `dir/truth.tsv`, unless
/// a complete one with the same settings is there.
pub fn generate(params: &SyntheticParams, dir: &Path) -> Result<Generated, DatasetError> {
    let root = dir.join(DIR);
    let generated = Generated {
        truth: dir.join("truth.tsv"),
        root: root.clone(),
    };
    let marker = root.join(".complete");
    let fingerprint = serde_json::to_string(params).expect("params serialize");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(fingerprint.as_str())
        && generated.truth.is_file()
    {
        return Ok(generated);
    }
    let fail = |message: String| DatasetError::Synthetic {
        dir: root.clone(),
        message,
    };
    if params.classes < 2
        || params.min_per_class == 0
        || params.max_per_class < params.min_per_class
    {
        return Err(fail(format!(
            "needs ≥ 2 classes and 0 < min_per_class ≤ max_per_class (got {} classes, {}..{})",
            params.classes, params.min_per_class, params.max_per_class
        )));
    }
    if u16::try_from(params.image_size).is_err() {
        return Err(fail(format!(
            "image_size {} is over a JPEG's largest side, 65535",
            params.image_size
        )));
    }
    if let Some(n) = params.train_samples {
        let (lowest, highest) = (
            params.classes * params.min_per_class,
            params.classes * params.max_per_class,
        );
        if !(lowest..=highest).contains(&n) {
            return Err(fail(format!(
                "train_samples = {n} does not fit {} classes of {}..={} images ({lowest}..={highest})",
                params.classes, params.min_per_class, params.max_per_class
            )));
        }
    }
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(DatasetError::io(&root))?;
    }
    let shape = TextShape::of(params);
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let vocab: Vec<Vec<String>> = (0..params.classes)
        .map(|_| {
            (0..shape.class_words)
                .map(|_| pseudo_word(&mut rng))
                .collect()
        })
        .collect();
    // Queries: one or two per class, numbered 1.. in class order.
    let mut queries: Vec<(u32, usize, String)> = Vec::new();
    for (class, words) in vocab.iter().enumerate() {
        let count = 1 + rng.random_range(0..2);
        for k in 0..count {
            let text = if k == 0 {
                words[0].clone()
            } else {
                format!("{} {}", words[0], words[1])
            };
            queries.push((queries.len() as u32 + 1, class, text));
        }
    }
    let plan = plan_train(params, &queries, &mut rng);
    let val_labels: Vec<usize> = {
        let mut labels: Vec<usize> = (0..params.classes)
            .flat_map(|c| std::iter::repeat_n(c, params.val_per_class))
            .collect();
        labels.shuffle(&mut rng);
        labels
    };
    let layout = Layout {
        params,
        root: &root,
        shape: &shape,
        vocab: &vocab,
        plan: &plan,
        val_labels: &val_labels,
    };
    layout.write(&queries, &generated.truth)?;
    std::fs::write(&marker, fingerprint).map_err(DatasetError::io(&marker))?;
    Ok(generated)
}

/// Training images per class: geometric from `max_per_class` down to `min_per_class`, or, with
/// `train_samples`, WebVision's log-normal sizes ([`webvision_sizes`]); shuffled over classes.
fn class_sizes(params: &SyntheticParams, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let k = params.classes;
    let mut sizes = match params.train_samples {
        None => {
            let ratio = params.min_per_class as f64 / params.max_per_class as f64;
            (0..k)
                .map(|c| {
                    (params.max_per_class as f64 * ratio.powf(c as f64 / (k - 1) as f64)).round()
                        as usize
                })
                .collect()
        }
        Some(total) => webvision_sizes(params, total, rng),
    };
    sizes.shuffle(rng);
    sizes
}

/// `classes` sizes `median · e^{σz}` (z standard normal, σ = [`SIZE_SIGMA`]) clipped to
/// `min_per_class..=max_per_class`, the median chosen so that they sum to `total` (which
/// `generate` checks is reachable).
fn webvision_sizes(params: &SyntheticParams, total: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let (low, high) = (params.min_per_class as f64, params.max_per_class as f64);
    // Box–Muller.
    let z: Vec<f64> = (0..params.classes)
        .map(|_| {
            let (u, v): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        })
        .collect();
    let sizes = |median: f64| -> Vec<f64> {
        z.iter()
            .map(|z| (median * (SIZE_SIGMA * z).exp()).clamp(low, high))
            .collect()
    };
    let (mut below, mut above) = (low * 1e-6, high * 1e6);
    for _ in 0..200 {
        let median = (below * above).sqrt();
        match sizes(median).iter().sum::<f64>() < total as f64 {
            true => below = median,
            false => above = median,
        }
    }
    let mut sizes: Vec<usize> = sizes(above).iter().map(|s| s.round() as usize).collect();
    // Rounding leaves the sum a few off: take them from (or give them to) the classes with
    // room, largest first.
    let mut by_size: Vec<usize> = (0..sizes.len()).collect();
    by_size.sort_by_key(|&c| std::cmp::Reverse(sizes[c]));
    let mut sum: usize = sizes.iter().sum();
    for &c in by_size.iter().cycle().take(by_size.len() * 4) {
        if sum > total && sizes[c] > params.min_per_class {
            sizes[c] -= 1;
            sum -= 1;
        } else if sum < total && sizes[c] < params.max_per_class {
            sizes[c] += 1;
            sum += 1;
        }
    }
    sizes
}

fn plan_train(
    params: &SyntheticParams,
    queries: &[(u32, usize, String)],
    rng: &mut ChaCha8Rng,
) -> Vec<Planned> {
    let k = params.classes;
    let sizes = class_sizes(params, rng);
    let mut plan = Vec::with_capacity(sizes.iter().sum());
    for (given, &size) in sizes.iter().enumerate() {
        let own_queries: Vec<u32> = queries
            .iter()
            .filter(|q| q.1 == given)
            .map(|q| q.0)
            .collect();
        for _ in 0..size {
            let noisy = rng.random_bool(params.noise.clamp(0.0, 1.0));
            let truth = if noisy {
                (given + 1 + rng.random_range(0..k - 1)) % k
            } else {
                given
            };
            let text_class = if noisy && !rng.random_bool(TEXT_FOLLOWS_QUERY) {
                truth
            } else {
                given
            };
            let query = *own_queries.choose(rng).expect("every class has a query");
            plan.push(Planned {
                given: given as u32,
                truth: truth as u32,
                query,
                google: rng.random_bool(GOOGLE_SHARE),
                text_class: text_class as u32,
            });
        }
    }
    plan
}

/// What the files are made from.
struct Layout<'a> {
    params: &'a SyntheticParams,
    root: &'a Path,
    shape: &'a TextShape,
    vocab: &'a [Vec<String>],
    plan: &'a [Planned],
    val_labels: &'a [usize],
}

fn wnid(class: usize) -> String {
    format!("s{class:04}")
}

fn source(p: &Planned) -> &'static str {
    if p.google {
        "google"
    } else {
        "flickr"
    }
}

impl Layout<'_> {
    /// Writes every file: the small lists, then the training lists, pages and truth file on
    /// this thread while the images are drawn and written on the others.
    fn write(&self, queries: &[(u32, usize, String)], truth: &Path) -> Result<(), DatasetError> {
        let mut synsets = String::new();
        for (c, words) in self.vocab.iter().enumerate() {
            writeln!(synsets, "{} {}, {}", wnid(c), words[0], words[1]).expect("write to String");
        }
        let (mut query_list, mut query_map) = (String::new(), String::new());
        for (id, class, text) in queries {
            writeln!(query_list, "{id} {}", text.replace(' ', "+")).expect("write to String");
            writeln!(query_map, "{id} {}", class + 1).expect("write to String");
        }
        let mut val_list = String::new();
        for (i, &label) in self.val_labels.iter().enumerate() {
            writeln!(val_list, "{} {label}", val_name(i)).expect("write to String");
        }
        for (name, text) in [
            ("info/synsets.txt", synsets),
            ("info/queries_google.txt", query_list.clone()),
            ("info/queries_flickr.txt", query_list),
            ("info/queries_synsets_map.txt", query_map),
            ("info/val_filelist.txt", val_list),
        ] {
            write_file(&self.root.join(name), text.as_bytes())?;
        }
        // Rows: Flickr first, then Google (as the real `all` list), by query, in plan order.
        let mut order: Vec<u32> = (0..self.plan.len() as u32).collect();
        order.sort_by_key(|&i| (self.plan[i as usize].google, self.plan[i as usize].query));
        let (lists, images) = rayon::join(
            || self.write_lists(&order, truth),
            || self.write_images(&order),
        );
        lists.and(images)
    }

    fn path_of(&self, i: usize) -> String {
        let p = &self.plan[i];
        format!("{}/q{:04}/{:07}.jpg", source(p), p.query, i + 1)
    }

    /// The training file and meta lists (google, flickr, all), the page files and the truth
    /// file, in list order; a page file is written when the list moves on to the next query.
    fn write_lists(&self, order: &[u32], truth_path: &Path) -> Result<(), DatasetError> {
        let mut lists = Vec::new();
        for name in ["google", "flickr", "all"] {
            for list in ["filelist", "meta_list"] {
                let path = self.root.join(format!("info/train_{list}_{name}.txt"));
                lists.push((create(&path)?, path));
            }
        }
        let mut truth = (create(truth_path)?, truth_path.to_path_buf());
        put(
            &mut truth,
            "path\tgiven_label\ttrue_label\tnoise_kind\ttrue_wnid\tsource_image\n",
        )?;
        let mut text_rng = ChaCha8Rng::seed_from_u64(self.params.seed ^ 0x7e57);
        let mut pages: Option<(String, Vec<serde_json::Value>)> = None;
        for &i in order {
            let i = i as usize;
            let p = &self.plan[i];
            let meta_file = format!("{}/q{:04}.json", source(p), p.query);
            if pages.as_ref().is_some_and(|(file, _)| *file != meta_file) {
                self.write_pages(pages.take().expect("checked"))?;
            }
            let (_, rows) = pages.get_or_insert_with(|| (meta_file.clone(), Vec::new()));
            rows.push(self.page(
                &self.vocab[p.text_class as usize],
                p.google,
                (i + 1) as u64,
                rows.len() + 1,
                &mut text_rng,
            ));
            let path = self.path_of(i);
            let entries = [
                format!("{path} {}\n", p.given),
                format!("{meta_file} {}\n", rows.len()),
            ];
            for list in [usize::from(!p.google), 2] {
                put(&mut lists[2 * list], &entries[0])?;
                put(&mut lists[2 * list + 1], &entries[1])?;
            }
            let kind = if p.truth == p.given { "clean" } else { "cross" };
            put(
                &mut truth,
                &format!(
                    "{path}\t{}\t{}\t{kind}\t{}\tsynthetic\n",
                    p.given,
                    p.truth,
                    wnid(p.truth as usize)
                ),
            )?;
        }
        if let Some(last) = pages {
            self.write_pages(last)?;
        }
        for (writer, path) in lists.into_iter().chain([truth]) {
            writer
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|file| file.sync_all())
                .map_err(DatasetError::io(&path))?;
        }
        Ok(())
    }

    fn write_pages(
        &self,
        (name, rows): (String, Vec<serde_json::Value>),
    ) -> Result<(), DatasetError> {
        let text = serde_json::Value::Array(rows).to_string();
        write_file(&self.root.join("meta").join(name), text.as_bytes())
    }

    /// Draws and writes every image in parallel, training images in list order then the
    /// validation images; image `j` has its own random stream, so the files do not depend on
    /// the thread count.
    fn write_images(&self, order: &[u32]) -> Result<(), DatasetError> {
        let side = u16::try_from(self.params.image_size).expect("`generate` checks the side");
        let train = order.len();
        (0..train + self.val_labels.len())
            .into_par_iter()
            .try_for_each(|j| {
                let (path, class) = match j.checked_sub(train) {
                    None => {
                        let i = order[j] as usize;
                        (self.path_of(i), self.plan[i].truth as usize)
                    }
                    Some(v) => (
                        format!("{}/{}", super::webvision::VAL_IMAGES, val_name(v)),
                        self.val_labels[v],
                    ),
                };
                let mut rng = ChaCha8Rng::seed_from_u64(self.params.seed ^ 0x1a9e);
                rng.set_stream(j as u64);
                let image =
                    class_image(class, self.params.classes, self.params.image_size, &mut rng);
                let mut bytes = Vec::new();
                crate::store::jpeg::encode_rgb(image.as_raw(), side, side, 90, &mut bytes);
                write_file(&self.root.join(path), &bytes)
            })
    }

    /// A page's text: title, description and (Flickr) tags drawn from `words` and background
    /// words, some fields blanked (missing or empty) as on the web.
    fn page(
        &self,
        words: &[String],
        google: bool,
        id: u64,
        rank: usize,
        rng: &mut ChaCha8Rng,
    ) -> serde_json::Value {
        let shape = self.shape;
        let draw = |n: Range<usize>, own_share: f64, rng: &mut ChaCha8Rng| -> Vec<String> {
            let n = rng.random_range(n);
            (0..n)
                .map(|_| {
                    if rng.random_bool(own_share) {
                        words.choose(rng).expect("class words").clone()
                    } else {
                        shape.background_word(rng).to_string()
                    }
                })
                .collect()
        };
        let title = draw(shape.title.clone(), shape.own[0], rng).join(" ");
        let description = draw(shape.description.clone(), shape.own[1], rng).join(" ");
        let tags = draw(shape.tags.clone(), shape.own[2], rng);
        let mut page = json!({ "id": id.to_string(), "title": title, "description": description });
        if google {
            page["rank"] = json!(rank);
            page["url"] = json!(format!("http://example.com/{id}"));
        } else {
            page["tags"] = json!(tags);
        }
        for key in ["title", "description", "tags"] {
            if page.get(key).is_some() && rng.random_bool(BLANK_FIELD) {
                if rng.random_bool(0.5) {
                    page.as_object_mut().expect("object").remove(key);
                } else {
                    page[key] = if key == "tags" { json!([]) } else { json!("") };
                }
            }
        }
        page
    }
}

fn val_name(i: usize) -> String {
    format!("val{:06}.jpg", i + 1)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(DatasetError::io(parent))?;
    }
    std::fs::write(path, bytes).map_err(DatasetError::io(path))
}

fn create(path: &Path) -> Result<BufWriter<File>, DatasetError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(DatasetError::io(parent))?;
    }
    Ok(BufWriter::new(
        File::create(path).map_err(DatasetError::io(path))?,
    ))
}

fn put((writer, path): &mut (BufWriter<File>, PathBuf), text: &str) -> Result<(), DatasetError> {
    writer
        .write_all(text.as_bytes())
        .map_err(DatasetError::io(path))
}

/// A pronounceable made-up word (so that no real word leaks class information).
fn pseudo_word(rng: &mut ChaCha8Rng) -> String {
    const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    (0..rng.random_range(2..4))
        .flat_map(|_| {
            [
                *CONSONANTS.choose(rng).expect("letters") as char,
                *VOWELS.choose(rng).expect("letters") as char,
            ]
        })
        .collect()
}

/// The procedural image of class `class` of `classes`, with per-image variation from `rng`.
pub fn class_image(
    class: usize,
    classes: usize,
    size: u32,
    rng: &mut ChaCha8Rng,
) -> image::RgbImage {
    let hue = class as f32 / classes as f32;
    let base = hue_to_rgb(hue);
    let angle = PI * ((class as f32 * 0.618_034) % 1.0);
    let frequency = 2.0 + (class % 4) as f32;
    let (dx, dy) = (angle.cos(), angle.sin());
    let phase = rng.random_range(0.0..2.0 * PI);
    let brightness = rng.random_range(0.8..1.2f32);
    let step = 2.0 * PI * frequency / size as f32;
    image::RgbImage::from_fn(size, size, |x, y| {
        let wave = 0.6 + 0.4 * ((x as f32 * dx + y as f32 * dy) * step + phase).sin();
        let noise = rng.random_range(-20.0..20.0f32);
        image::Rgb(base.map(|b| (b * wave * brightness + noise).clamp(0.0, 255.0) as u8))
    })
}

fn hue_to_rgb(hue: f32) -> [f32; 3] {
    [0.0, 1.0 / 3.0, 2.0 / 3.0].map(|offset| {
        let t = ((hue + offset) * 2.0 * PI).cos();
        60.0 + 160.0 * (0.5 + 0.5 * t)
    })
}

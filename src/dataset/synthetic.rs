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

use std::collections::BTreeMap;
use std::f32::consts::PI;
use std::fmt::Write as _;
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
const WORDS_PER_CLASS: usize = 12;
const GOOGLE_SHARE: f64 = 0.45;

/// One generated training image before it is written.
struct Planned {
    given: usize,
    truth: usize,
    query: u32,
    google: bool,
    text_class: usize,
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
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(DatasetError::io(&root))?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let vocab: Vec<Vec<String>> = (0..params.classes)
        .map(|_| {
            (0..WORDS_PER_CLASS)
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
    let truth = write_layout(params, &root, &vocab, &queries, &plan, &val_labels)?;
    write_file(&generated.truth, truth.as_bytes())?;
    std::fs::write(&marker, fingerprint).map_err(DatasetError::io(&marker))?;
    Ok(generated)
}

fn plan_train(
    params: &SyntheticParams,
    queries: &[(u32, usize, String)],
    rng: &mut ChaCha8Rng,
) -> Vec<Planned> {
    let k = params.classes;
    let ratio = params.min_per_class as f64 / params.max_per_class as f64;
    let mut sizes: Vec<usize> = (0..k)
        .map(|c| {
            (params.max_per_class as f64 * ratio.powf(c as f64 / (k - 1) as f64)).round() as usize
        })
        .collect();
    sizes.shuffle(rng);
    let mut plan = Vec::new();
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
                given,
                truth,
                query,
                google: rng.random_bool(GOOGLE_SHARE),
                text_class,
            });
        }
    }
    plan
}

fn write_layout(
    params: &SyntheticParams,
    root: &Path,
    vocab: &[Vec<String>],
    queries: &[(u32, usize, String)],
    plan: &[Planned],
    val_labels: &[usize],
) -> Result<String, DatasetError> {
    let wnid = |c: usize| format!("s{c:04}");
    let mut files: Vec<(String, String)> = Vec::new();
    let mut synsets = String::new();
    for (c, words) in vocab.iter().enumerate() {
        writeln!(synsets, "{} {}, {}", wnid(c), words[0], words[1]).expect("write to String");
    }
    let (mut query_list, mut query_map) = (String::new(), String::new());
    for (id, class, text) in queries {
        writeln!(query_list, "{id} {}", text.replace(' ', "+")).expect("write to String");
        writeln!(query_map, "{id} {}", class + 1).expect("write to String");
    }
    files.push(("info/synsets.txt".into(), synsets));
    files.push(("info/queries_google.txt".into(), query_list.clone()));
    files.push(("info/queries_flickr.txt".into(), query_list));
    files.push(("info/queries_synsets_map.txt".into(), query_map));

    // Rows: Flickr first, then Google (as the real `all` list), by query, in plan order.
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| (plan[i].google, plan[i].query));
    let source = |p: &Planned| if p.google { "google" } else { "flickr" };
    let path_of = |i: usize| {
        format!(
            "{}/q{:04}/{:07}.jpg",
            source(&plan[i]),
            plan[i].query,
            i + 1
        )
    };
    // [google, flickr, all] × [file list, meta list]
    let mut lists: [[String; 2]; 3] = Default::default();
    let mut meta: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let mut truth =
        String::from("path\tgiven_label\ttrue_label\tnoise_kind\ttrue_wnid\tsource_image\n");
    let mut text_rng = ChaCha8Rng::seed_from_u64(params.seed ^ 0x7e57);
    let mut images = Vec::new();
    for &i in &order {
        let p = &plan[i];
        let meta_file = format!("{}/q{:04}.json", source(p), p.query);
        let rows = meta.entry(meta_file.clone()).or_default();
        rows.push(page(
            &vocab[p.text_class],
            p.google,
            (i + 1) as u64,
            rows.len() + 1,
            &mut text_rng,
        ));
        let entries = [
            format!("{} {}\n", path_of(i), p.given),
            format!("{meta_file} {}\n", rows.len()),
        ];
        for list in [usize::from(!p.google), 2] {
            lists[list][0].push_str(&entries[0]);
            lists[list][1].push_str(&entries[1]);
        }
        let kind = if p.truth == p.given { "clean" } else { "cross" };
        writeln!(
            truth,
            "{}\t{}\t{}\t{kind}\t{}\tsynthetic",
            path_of(i),
            p.given,
            p.truth,
            wnid(p.truth)
        )
        .expect("write to String");
        images.push((path_of(i), p.truth));
    }
    for (list, name) in lists.into_iter().zip(["google", "flickr", "all"]) {
        let [file_list, meta_list] = list;
        files.push((format!("info/train_filelist_{name}.txt"), file_list));
        files.push((format!("info/train_meta_list_{name}.txt"), meta_list));
    }
    for (name, rows) in meta {
        files.push((
            format!("meta/{name}"),
            serde_json::Value::Array(rows).to_string(),
        ));
    }
    let mut val_list = String::new();
    for (i, &label) in val_labels.iter().enumerate() {
        let name = format!("val{:06}.jpg", i + 1);
        writeln!(val_list, "{name} {label}").expect("write to String");
        images.push((format!("{}/{name}", super::webvision::VAL_IMAGES), label));
    }
    files.push(("info/val_filelist.txt".into(), val_list));
    for (name, text) in files {
        write_file(&root.join(name), text.as_bytes())?;
    }
    write_images(root, &images, params)?;
    Ok(truth)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(DatasetError::io(parent))?;
    }
    std::fs::write(path, bytes).map_err(DatasetError::io(path))
}

/// Draws and writes every image in parallel; image `i` has its own random stream, so the files
/// do not depend on the thread count.
fn write_images(
    root: &Path,
    images: &[(String, usize)],
    params: &SyntheticParams,
) -> Result<(), DatasetError> {
    let side = u16::try_from(params.image_size).expect("`generate` checks the side");
    images
        .par_iter()
        .enumerate()
        .try_for_each(|(i, (path, class))| {
            let mut rng = ChaCha8Rng::seed_from_u64(params.seed ^ 0x1a9e);
            rng.set_stream(i as u64);
            let image = class_image(*class, params.classes, params.image_size, &mut rng);
            let mut bytes = Vec::new();
            crate::store::jpeg::encode_rgb(image.as_raw(), side, side, 90, &mut bytes);
            write_file(&root.join(path), &bytes)
        })
}

/// A page's text: title, description and (Flickr) tags drawn from `words` and web words, some
/// fields blanked (missing or empty) as on the web.
fn page(
    words: &[String],
    google: bool,
    id: u64,
    rank: usize,
    rng: &mut ChaCha8Rng,
) -> serde_json::Value {
    let draw = |n: usize, own_share: f64, rng: &mut ChaCha8Rng| -> Vec<String> {
        (0..n)
            .map(|_| {
                if rng.random_bool(own_share) {
                    words.choose(rng).expect("class words").clone()
                } else {
                    WEB_WORDS.choose(rng).expect("web words").to_string()
                }
            })
            .collect()
    };
    let title = draw(rng.random_range(2..5), 0.7, rng).join(" ");
    let description = draw(rng.random_range(6..13), 0.6, rng).join(" ");
    let tags = draw(rng.random_range(2..6), 0.8, rng);
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

//! Data path: WebVision readers, ingest into LMDB (counts, skips, resume after a real kill),
//! the synthetic dataset, and the loader (determinism, samplers, eval crops).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{Rgb, RgbImage};
use websieve::dataset::{self, DatasetError, PageTexts};
use websieve::loader::{self, crop_boxes, LoaderConfig};
use websieve::recipe::params::{
    CropSet, DatasetFormat, DatasetParams, Precision, ResizeMode, SamplerKind, StoreEncoding,
    SyntheticParams,
};
use websieve::recipe::Recipe;
use websieve::sample::{Pixels, SampleText, Source, Split};
use websieve::store::{self, IngestOptions, SkipReason, Store, StoreError};

// ---------------------------------------------------------------- fixtures

fn params(format: DatasetFormat, root: Option<&Path>) -> DatasetParams {
    DatasetParams {
        format,
        root: root.map(Path::to_path_buf),
        resize: 16,
        resize_mode: ResizeMode::ShorterSide,
        synthetic: SyntheticParams {
            classes: 4,
            min_per_class: 12,
            max_per_class: 48,
            val_per_class: 3,
            noise: 0.25,
            image_size: 40,
            seed: 5,
            train_samples: None,
        },
        ..Recipe::default().dataset
    }
}

fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut out, 95,
        ))
        .unwrap();
    out
}

fn encoded(image: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn gradient(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 5) as u8 ^ seed, (y * 7) as u8, seed])
    })
}

/// A JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6): stored 40×20 with
/// a black left half and a white right half, so displayed it is 20×40, black on top.
fn exif_rotated_jpeg() -> Vec<u8> {
    let stored = RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let plain = jpeg(&stored);
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes()); // first IFD
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&[6, 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut segment = vec![0xFF, 0xE1];
    segment.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    segment.extend_from_slice(b"Exif\0\0");
    segment.extend_from_slice(&tiff);
    [&plain[..2], &segment, &plain[2..]].concat()
}

/// A 16×16 pure red CMYK JPEG (C=0, M=255, Y=255, K=0) as Pillow 11 writes it (Adobe marker,
/// inverted storage). Made by:
/// ```python
/// from PIL import Image; import io
/// img = Image.new("CMYK", (16, 16), (0, 255, 255, 0)); buf = io.BytesIO()
/// img.save(buf, "JPEG", quality=95); print(buf.getvalue().hex())
/// ```
const CMYK_RED_JPEG_HEX: &str = "ffd8ffee000e41646f626500640000000000ffdb0043000201010101010201010102020202020403020202020504040304060506060605060606070908060709070606080b08090a0a0a0a0a06080b0c0b0a0c090a0a0affc000140800100010044311004d11005911004b1100ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffda000e0443004d0059004b00003f00fdfcafe7febf9ffafdfca28a28a28a28a28a28afffd9";

fn cmyk_red_jpeg() -> Vec<u8> {
    (0..CMYK_RED_JPEG_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&CMYK_RED_JPEG_HEX[i..i + 2], 16).unwrap())
        .collect()
}

/// One training image of the fixture: where it is listed, its bytes (None: listed but
/// missing), its class, its meta row and text, and what ingest must do with it.
struct FixtureImage {
    path: &'static str,
    bytes: Option<Vec<u8>>,
    label: u32,
    row: usize,
    title: Option<&'static str>,
    skip: Option<SkipReason>,
}

fn fixture_images() -> Vec<FixtureImage> {
    let img = |path, bytes: Vec<u8>, label, row, title, skip| FixtureImage {
        path,
        bytes: Some(bytes),
        label,
        row,
        title,
        skip,
    };
    let mut truncated = jpeg(&gradient(48, 48, 3));
    truncated.truncate(120);
    vec![
        // Flickr first, as the real `all` list. Rows deliberately not in file order.
        img(
            "flickr/q0002/f1.jpg",
            jpeg(&gradient(30, 24, 1)),
            1,
            3,
            Some("flickr one"),
            None,
        ),
        img(
            "flickr/q0002/f2.jpg",
            truncated,
            1,
            1,
            Some("corrupt"),
            Some(SkipReason::Undecodable),
        ),
        img(
            "flickr/q0002/f3.jpg",
            cmyk_red_jpeg(),
            1,
            2,
            Some("cmyk red"),
            None,
        ),
        img("flickr/q0002/f4.jpg", exif_rotated_jpeg(), 1, 4, None, None),
        FixtureImage {
            path: "flickr/q0002/f5.jpg",
            bytes: None,
            label: 1,
            row: 5,
            title: Some("gone"),
            skip: Some(SkipReason::Missing),
        },
        img(
            "flickr/q0003/g1.jpg",
            encoded(
                image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(20, 20, |x, _| {
                    image::Luma([x as u8 * 10])
                })),
                image::ImageFormat::Jpeg,
            ),
            2,
            1,
            Some("gray"),
            None,
        ),
        img(
            "flickr/q0003/g2.jpg",
            encoded(
                image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
                    18,
                    18,
                    image::Rgba([0, 0, 255, 255]),
                )),
                image::ImageFormat::Gif,
            ),
            2,
            2,
            Some("gif as jpg"),
            None,
        ),
        img(
            "google/q0001/a1.jpg",
            jpeg(&gradient(600, 400, 9)),
            0,
            1,
            Some("large original"),
            None,
        ),
        img(
            "google/q0001/a2.jpg",
            encoded(
                image::DynamicImage::ImageRgb8(gradient(24, 30, 4)),
                image::ImageFormat::Png,
            ),
            0,
            2,
            Some("png as jpg"),
            None,
        ),
        img(
            "google/q0001/a3.jpg",
            Vec::new(),
            0,
            3,
            Some("empty file"),
            Some(SkipReason::Empty),
        ),
        img(
            "google/q0001/a4.jpg",
            jpeg(&gradient(17, 40, 5)),
            0,
            4,
            Some(""),
            None,
        ),
    ]
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes a small WebVision-layout dataset under `root` and returns its training images.
fn write_webvision_fixture(root: &Path) -> Vec<FixtureImage> {
    let images = fixture_images();
    write(
        &root.join("info/synsets.txt"),
        b"n0001 alpha, first\nn0002 beta\nn0003 gamma, third, last\n",
    );
    write(
        &root.join("info/queries_google.txt"),
        b"1 alpha\n2 beta\n3 gamma+ray\n",
    );
    write(
        &root.join("info/queries_flickr.txt"),
        b"1 alpha\n2 beta\n3 gamma+ray\n",
    );
    write(
        &root.join("info/queries_synsets_map.txt"),
        b"1 1\n2 2\n3 3\n",
    );
    let mut lists: BTreeMap<&str, (String, String)> = BTreeMap::new();
    let mut meta: BTreeMap<String, BTreeMap<usize, serde_json::Value>> = BTreeMap::new();
    for image in &images {
        let source = &image.path[..6];
        let meta_file = format!("{}.json", &image.path[..12]);
        for list in [source, "all"] {
            let entry = lists.entry(list).or_default();
            entry.0 += &format!("{} {}\n", image.path, image.label);
            entry.1 += &format!("{meta_file} {}\n", image.row);
        }
        let mut page =
            serde_json::json!({ "id": image.path, "description": format!("about {}", image.path) });
        if let Some(title) = image.title {
            page["title"] = title.into();
        }
        if source == "flickr" {
            page["tags"] = serde_json::json!(["tag", image.path]);
        } else {
            page["tags"] = serde_json::json!(["google pages have no tags"]);
        }
        meta.entry(meta_file).or_default().insert(image.row, page);
        if let Some(bytes) = &image.bytes {
            write(&root.join(image.path), bytes);
        }
    }
    for (list, (files, metas)) in lists {
        write(
            &root.join(format!("info/train_filelist_{list}.txt")),
            files.as_bytes(),
        );
        write(
            &root.join(format!("info/train_meta_list_{list}.txt")),
            metas.as_bytes(),
        );
    }
    for (file, rows) in meta {
        let array: Vec<_> = rows.into_values().collect();
        write(
            &root.join("meta").join(file),
            serde_json::to_string(&array).unwrap().as_bytes(),
        );
    }
    write(
        &root.join("info/val_filelist.txt"),
        b"val000001.jpg 2\nval000002.jpg 0\nval000003.jpg 1\n",
    );
    for (i, seed) in [(1, 11u8), (2, 12), (3, 13)] {
        write(
            &root.join(format!("val_images_256/val{i:06}.jpg")),
            &jpeg(&gradient(20 + i, 20, seed)),
        );
    }
    images
}

/// Page texts kept in the temporary folder, for readers called directly.
fn page_texts() -> PageTexts {
    PageTexts::in_dir(&std::env::temp_dir())
}

fn expected_text(image: &FixtureImage) -> SampleText {
    let flickr = image.path.starts_with("flickr");
    SampleText {
        title: image.title.map(str::to_string),
        description: Some(format!("about {}", image.path)),
        tags: if flickr {
            vec!["tag".into(), image.path.into()]
        } else {
            Vec::new()
        },
    }
}

// ---------------------------------------------------------------- WebVision ingest

#[test]
fn webvision_fixture_ingests_with_counts_skip_reasons_and_web_reality() {
    let root = tempfile::tempdir().unwrap();
    let images = write_webvision_fixture(root.path());
    let stage = tempfile::tempdir().unwrap();
    let report = store::ingest(
        &params(DatasetFormat::Webvision, Some(root.path())),
        stage.path(),
        false,
    )
    .unwrap();

    let kept: Vec<&FixtureImage> = images.iter().filter(|i| i.skip.is_none()).collect();
    assert_eq!((report.train, report.val), (kept.len() as u64, 3));
    let reasons: BTreeMap<SkipReason, u64> = [
        (SkipReason::Empty, 1),
        (SkipReason::Missing, 1),
        (SkipReason::Undecodable, 1),
    ]
    .into();
    assert_eq!(report.skipped, reasons);
    let skipped_paths: Vec<(&str, SkipReason)> = report
        .skips
        .iter()
        .map(|s| (s.path.as_str(), s.reason))
        .collect();
    let expected_skips: Vec<(&str, SkipReason)> = images
        .iter()
        .filter_map(|i| i.skip.map(|r| (i.path, r)))
        .collect();
    assert_eq!(skipped_paths, expected_skips);
    let on_disk: store::IngestReport =
        serde_json::from_slice(&std::fs::read(stage.path().join("ingest_report.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk, report);

    let store = Store::open(stage.path()).unwrap();
    let header = store.header();
    assert_eq!(
        header
            .classes
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["n0001", "n0002", "n0003"]
    );
    assert_eq!(header.classes[2].name, "gamma, third, last");
    assert_eq!(header.train_counts, vec![3, 3, 2]);
    assert_eq!(header.val_counts, vec![1, 1, 1]);
    assert_eq!(header.queries[2].text, "gamma ray");
    assert_eq!(
        store.truth_file(),
        None,
        "web data comes without a truth file"
    );
    let reader = store.reader().unwrap();
    // Ids follow the file list, skipped files get none; every record keeps its own text.
    for (id, image) in kept.iter().enumerate() {
        let meta = reader.meta(Split::Train, id as u64).unwrap();
        assert_eq!(meta.path, image.path);
        assert_eq!(meta.label, image.label);
        assert_eq!(meta.text, expected_text(image), "{}", image.path);
        let stored = reader.image(Split::Train, id as u64).unwrap();
        assert_eq!(
            stored.width().min(stored.height()),
            16,
            "{} is {:?}",
            image.path,
            stored.dimensions()
        );
    }
    let by_path = |path: &str| kept.iter().position(|i| i.path == path).unwrap() as u64;
    let meta = reader
        .meta(Split::Train, by_path("google/q0001/a1.jpg"))
        .unwrap();
    assert_eq!((meta.source, meta.query), (Source::Google, 1));
    // CMYK decoded to red; the EXIF-rotated image is portrait with its black half on top.
    let cmyk = reader
        .image(Split::Train, by_path("flickr/q0002/f3.jpg"))
        .unwrap();
    let Rgb([r, g, b]) = *cmyk.get_pixel(8, 8);
    assert!(r > 230 && g < 30 && b < 30, "cmyk pixel {r},{g},{b}");
    let rotated = reader
        .image(Split::Train, by_path("flickr/q0002/f4.jpg"))
        .unwrap();
    assert_eq!(rotated.dimensions(), (16, 32));
    assert!(rotated.get_pixel(8, 4)[0] < 30 && rotated.get_pixel(8, 28)[0] > 225);
    // The 600×400 original keeps its aspect ratio through DCT-scaled decoding.
    assert_eq!(
        reader
            .image(Split::Train, by_path("google/q0001/a1.jpg"))
            .unwrap()
            .dimensions(),
        (24, 16)
    );
    let val = reader.meta(Split::Val, 0).unwrap();
    assert_eq!(
        (val.path.as_str(), val.label, val.source),
        ("val000001.jpg", 2, Source::Other)
    );
    assert!(matches!(
        reader.meta(Split::Val, 3),
        Err(StoreError::NoSuchId { len: 3, .. })
    ));
}

#[test]
fn meta_rows_follow_the_meta_list_not_the_file_order() {
    let root = tempfile::tempdir().unwrap();
    let images = write_webvision_fixture(root.path());
    for (sources, prefix) in [
        (vec![Source::Flickr], "flickr"),
        (vec![Source::Google], "google"),
        (vec![Source::Google, Source::Flickr], ""),
    ] {
        let index =
            websieve::dataset::webvision::read(root.path(), &sources, false, page_texts()).unwrap();
        let expected: Vec<&FixtureImage> = images
            .iter()
            .filter(|i| i.path.starts_with(prefix))
            .collect();
        assert_eq!(index.train.len(), expected.len());
        for (sample, image) in index.train.iter().zip(expected) {
            assert_eq!(sample.path, image.path);
            assert_eq!(
                index.text(sample).unwrap(),
                expected_text(image),
                "{}",
                image.path
            );
        }
    }
}

/// The search standing: 1 for a query's first result, falling to 1/n for the last of the n
/// rows its meta file has, from whichever lists the sources pick; a bad row is named with
/// its line.
#[test]
fn search_standing_follows_each_images_row_in_its_query_results() {
    let root = tempfile::tempdir().unwrap();
    let images = write_webvision_fixture(root.path());
    for sources in [
        vec![Source::Flickr],
        vec![Source::Google],
        vec![Source::Google, Source::Flickr],
    ] {
        let standing =
            websieve::dataset::webvision::search_standing(root.path(), &sources).unwrap();
        let listed: Vec<&FixtureImage> = images
            .iter()
            .filter(|i| sources.iter().any(|s| i.path.starts_with(s.as_str())))
            .collect();
        assert_eq!(standing.len(), listed.len());
        for image in &listed {
            let query = &image.path[..12];
            let n = images
                .iter()
                .filter(|i| i.path.starts_with(query))
                .map(|i| i.row)
                .max()
                .unwrap();
            assert_eq!(
                standing[image.path],
                1.0 - (image.row - 1) as f64 / n as f64,
                "{}",
                image.path
            );
        }
    }
    let metas = root.path().join("info/train_meta_list_all.txt");
    replace_line(&metas, 2, "flickr/q0002.json 0");
    let error = websieve::dataset::webvision::search_standing(
        root.path(),
        &[Source::Google, Source::Flickr],
    )
    .unwrap_err();
    insta::assert_snapshot!(error_text(error, root.path()), @"<root>/info/train_meta_list_all.txt:2: row: is 1-based, got 0");
}

/// Error text with the temporary root replaced, for snapshots.
fn error_text(error: DatasetError, root: &Path) -> String {
    error
        .to_string()
        .replace(&root.display().to_string(), "<root>")
}

/// Reads the fixture with every source, for the error.
fn read_error(root: &Path) -> DatasetError {
    websieve::dataset::webvision::read(root, &[Source::Google, Source::Flickr], false, page_texts())
        .unwrap_err()
}

#[test]
fn malformed_lists_and_json_name_file_and_line() {
    let lists: [(&str, &str, usize, &str); 4] = [
        (
            "label_not_a_number",
            "info/train_filelist_all.txt",
            2,
            "flickr/q0002/f2.jpg one",
        ),
        (
            "label_out_of_range",
            "info/train_filelist_all.txt",
            1,
            "flickr/q0002/f1.jpg 7",
        ),
        (
            "meta_row_out_of_range",
            "info/train_meta_list_all.txt",
            2,
            "flickr/q0002.json 99",
        ),
        (
            "meta_list_misaligned",
            "info/train_meta_list_all.txt",
            2,
            "google/q0001.json 1",
        ),
    ];
    for (name, file, line, text) in lists {
        let root = tempfile::tempdir().unwrap();
        write_webvision_fixture(root.path());
        replace_line(&root.path().join(file), line, text);
        insta::assert_snapshot!(name, error_text(read_error(root.path()), root.path()));
    }
    let root = tempfile::tempdir().unwrap();
    write_webvision_fixture(root.path());
    write(
        &root.path().join("meta/flickr/q0002.json"),
        b"[{\"title\": \"a\"},\n {\"title\": }]",
    );
    insta::assert_snapshot!(
        "json_syntax",
        error_text(read_error(root.path()), root.path())
    );
}

/// A line missing from the meta list shifts every later line onto another image's page: the
/// line counts of the two lists are compared before any line is read.
#[test]
fn a_meta_list_of_another_length_names_both_lists_and_their_counts() {
    let root = tempfile::tempdir().unwrap();
    write_webvision_fixture(root.path());
    let metas = root.path().join("info/train_meta_list_all.txt");
    let text = std::fs::read_to_string(&metas).unwrap();
    let shorter: Vec<&str> = text
        .lines()
        .filter(|l| *l != "flickr/q0002.json 5")
        .collect();
    write(&metas, (shorter.join("\n") + "\n").as_bytes());
    let error = read_error(root.path());
    insta::assert_snapshot!(error_text(error, root.path()), @"<root>/info/train_filelist_all.txt: 11 lines vs <root>/info/train_meta_list_all.txt: 10 lines; the two lists must be line-aligned");
}

/// Replaces line `number` (1-based) of the list file `path`.
fn replace_line(path: &Path, number: usize, text: &str) {
    let old = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<&str> = old.lines().collect();
    lines[number - 1] = text;
    write(path, (lines.join("\n") + "\n").as_bytes());
}

#[test]
fn list_paths_that_leave_the_root_are_refused_with_file_and_line() {
    let cases = [
        (
            "climbs_out_of_the_root",
            "info/train_filelist_all.txt",
            9,
            "google/q0001/../../../../etc/passwd 0",
        ),
        (
            "absolute",
            "info/train_filelist_all.txt",
            9,
            "/etc/passwd 0",
        ),
        (
            "meta_file_climbs_out",
            "info/train_meta_list_all.txt",
            9,
            "google/q0001/../../../../../etc/q0001.json 2",
        ),
        (
            "val_climbs_out",
            "info/val_filelist.txt",
            2,
            "../../secret.jpg 0",
        ),
    ];
    for (name, list, line, text) in cases {
        let root = tempfile::tempdir().unwrap();
        write_webvision_fixture(root.path());
        replace_line(&root.path().join(list), line, text);
        let error = websieve::dataset::webvision::read(
            root.path(),
            &[Source::Google, Source::Flickr],
            true,
            page_texts(),
        )
        .unwrap_err();
        assert!(
            matches!(error, DatasetError::OutsideRoot { .. }),
            "{name}: {error}"
        );
        insta::assert_snapshot!(name, error_text(error, root.path()));
    }
    // `..` that stays inside, and a linked folder inside the root, are the dataset's own.
    let root = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    write_webvision_fixture(root.path());
    let google = elsewhere.path().join("google");
    std::fs::rename(root.path().join("google"), &google).unwrap();
    std::os::unix::fs::symlink(&google, root.path().join("google")).unwrap();
    let list = root.path().join("info/train_filelist_all.txt");
    replace_line(&list, 9, "google/q0001/../q0001/a2.jpg 0");
    let stage = tempfile::tempdir().unwrap();
    let report = store::ingest(
        &params(DatasetFormat::Webvision, Some(root.path())),
        stage.path(),
        false,
    )
    .unwrap();
    let kept = fixture_images().iter().filter(|i| i.skip.is_none()).count();
    assert_eq!(report.train, kept as u64);
}

/// Web pages put numbers, bools, lists and objects where text belongs: converted or taken as
/// missing, counted in the ingest report with file, row and field, never fatal.
#[test]
fn wrong_typed_meta_fields_are_converted_or_dropped_and_counted() {
    let root = tempfile::tempdir().unwrap();
    write_webvision_fixture(root.path());
    write(
        &root.path().join("meta/google/q0001.json"),
        br#"[
            {"title": true, "description": 12345, "tags": 7},
            {"title": 5.5, "description": ["x", ["nested"]]},
            {"title": "empty file"},
            {"title": ["a", "b", 3, null], "description": {"html": "<p>"}}
        ]"#,
    );
    write(
        &root.path().join("meta/flickr/q0003.json"),
        br#"[
            {"title": "gray", "tags": ["a", 2017, null, {"k": 1}]},
            {"title": "gif", "tags": 42}
        ]"#,
    );
    let stage = tempfile::tempdir().unwrap();
    let report = store::ingest(
        &params(DatasetFormat::Webvision, Some(root.path())),
        stage.path(),
        false,
    )
    .unwrap();
    let store = Store::open(stage.path()).unwrap();
    let reader = store.reader().unwrap();
    let texts: BTreeMap<String, SampleText> = (0..store.len(Split::Train))
        .map(|id| reader.meta(Split::Train, id).unwrap())
        .map(|meta| (meta.path, meta.text))
        .collect();
    let text = |title: Option<&str>, description: Option<&str>, tags: &[&str]| SampleText {
        title: title.map(str::to_string),
        description: description.map(str::to_string),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    };
    for (path, expected) in [
        (
            "google/q0001/a1.jpg",
            text(Some("true"), Some("12345"), &[]),
        ),
        ("google/q0001/a2.jpg", text(Some("5.5"), None, &[])),
        ("google/q0001/a4.jpg", text(Some("a b 3"), None, &[])),
        (
            "flickr/q0003/g1.jpg",
            text(Some("gray"), None, &["a", "2017"]),
        ),
        ("flickr/q0003/g2.jpg", text(Some("gif"), None, &["42"])),
    ] {
        assert_eq!(texts[path], expected, "{path}");
    }
    let on_disk: store::IngestReport =
        serde_json::from_slice(&std::fs::read(stage.path().join("ingest_report.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk, report);
    insta::assert_snapshot!(serde_json::to_string_pretty(&report.repaired).unwrap());

    // Counted in full, listed up to a bound.
    let files = [
        ("meta/flickr/q0002.json", 5),
        ("meta/flickr/q0003.json", 2),
        ("meta/google/q0001.json", 4),
    ];
    for (file, rows) in files {
        let row = serde_json::json!({"title": 1, "description": 2});
        let array = serde_json::Value::Array(vec![row; rows]);
        write(&root.path().join(file), array.to_string().as_bytes());
    }
    let index = dataset::webvision::read(
        root.path(),
        &[Source::Google, Source::Flickr],
        false,
        page_texts(),
    )
    .unwrap();
    assert_eq!(index.repaired.total, 22);
    assert_eq!(index.repaired.first.len(), dataset::FieldRepairs::LISTED);
}

/// A split whose every image is skipped (a wrong root, a folder not copied) fails the ingest,
/// naming the commonest reasons; cached as a success, the next stage would blame its text
/// settings for an empty store.
#[test]
fn a_split_whose_every_image_is_skipped_fails_naming_the_reasons() {
    let root = tempfile::tempdir().unwrap();
    for image in write_webvision_fixture(root.path()) {
        if image.bytes.is_some() && image.skip.is_none() {
            std::fs::remove_file(root.path().join(image.path)).unwrap();
        }
    }
    let stage = tempfile::tempdir().unwrap();
    let params = params(DatasetFormat::Webvision, Some(root.path()));
    let error = store::ingest(&params, stage.path(), false).unwrap_err();
    assert!(
        matches!(
            &error,
            store::IngestError::NothingStored {
                split: Split::Train,
                listed: 11,
                ..
            }
        ),
        "{error}"
    );
    insta::assert_snapshot!(error
        .to_string()
        .replace(&root.path().display().to_string(), "<root>"));
    assert!(matches!(
        Store::open(stage.path()),
        Err(StoreError::Unfinished { .. })
    ));
    // The rerun finds the same, rather than a store.
    assert!(matches!(
        store::ingest(&params, stage.path(), false),
        Err(store::IngestError::NothingStored { .. })
    ));
}

// ---------------------------------------------------------------- resume after kill -9

const CHILD_ROOT_ENV: &str = "WEBSIEVE_TEST_RESUME_ROOT";
const CHILD_STAGE_ENV: &str = "WEBSIEVE_TEST_RESUME_STAGE";
const RESUME_COMMIT_EVERY: usize = 3;

fn resume_params(root: &Path) -> DatasetParams {
    DatasetParams {
        encoding: StoreEncoding::Jpeg { quality: 85 },
        resize_mode: ResizeMode::Squash,
        ..params(DatasetFormat::Webvision, Some(root))
    }
}

/// Not a test on its own: the child process of `resume_after_abort_equals_uninterrupted_ingest`,
/// which runs it with the failpoint set so that it dies mid-ingest.
#[test]
#[ignore = "child process of resume_after_abort_equals_uninterrupted_ingest"]
fn resume_child() {
    let (Ok(root), Ok(stage)) = (
        std::env::var(CHILD_ROOT_ENV),
        std::env::var(CHILD_STAGE_ENV),
    ) else {
        return;
    };
    let options = IngestOptions {
        progress: false,
        threads: 2,
        commit_every: RESUME_COMMIT_EVERY,
        map_size: None,
    };
    store::ingest_with(
        &resume_params(Path::new(&root)),
        Path::new(&stage),
        &options,
    )
    .unwrap();
}

#[test]
fn resume_after_abort_equals_uninterrupted_ingest() {
    let root = tempfile::tempdir().unwrap();
    write_webvision_fixture(root.path());
    let (killed, clean) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "data::resume_child",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ROOT_ENV, root.path())
        .env(CHILD_STAGE_ENV, killed.path())
        .env(websieve::failpoint::ABORT_AFTER_COMMITS_ENV, "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have aborted");
    assert!(matches!(
        Store::open(killed.path()),
        Err(StoreError::Unfinished { .. })
    ));
    let options = IngestOptions {
        progress: false,
        threads: 1,
        commit_every: RESUME_COMMIT_EVERY,
        map_size: None,
    };
    let resumed = store::ingest_with(&resume_params(root.path()), killed.path(), &options).unwrap();
    let options = IngestOptions {
        progress: false,
        threads: 2,
        commit_every: 100,
        map_size: None,
    };
    let uninterrupted =
        store::ingest_with(&resume_params(root.path()), clean.path(), &options).unwrap();
    assert_eq!(resumed, uninterrupted);
    let (a, b) = (
        Store::open(killed.path()).unwrap(),
        Store::open(clean.path()).unwrap(),
    );
    assert_eq!(a.header(), b.header());
    let (ra, rb) = (a.reader().unwrap(), b.reader().unwrap());
    for split in [Split::Train, Split::Val] {
        assert_eq!(a.len(split), b.len(split));
        assert!(a.len(split) > 0);
        for id in 0..a.len(split) {
            assert_eq!(ra.meta(split, id).unwrap(), rb.meta(split, id).unwrap());
            assert_eq!(ra.image(split, id).unwrap(), rb.image(split, id).unwrap());
        }
    }
}

#[test]
fn changed_settings_are_refused_on_resume() {
    let root = tempfile::tempdir().unwrap();
    write_webvision_fixture(root.path());
    let stage = tempfile::tempdir().unwrap();
    store::ingest(
        &params(DatasetFormat::Webvision, Some(root.path())),
        stage.path(),
        false,
    )
    .unwrap();
    let other = DatasetParams {
        resize: 20,
        ..params(DatasetFormat::Webvision, Some(root.path()))
    };
    assert!(matches!(
        store::ingest(&other, stage.path(), false),
        Err(store::IngestError::Changed { .. })
    ));
}

// ---------------------------------------------------------------- synthetic + loader

fn synthetic_store(dir: &Path) -> Arc<Store> {
    let params = DatasetParams {
        resize: 32,
        resize_mode: ResizeMode::Squash,
        ..params(DatasetFormat::Synthetic, None)
    };
    let report = store::ingest(&params, dir, false).unwrap();
    assert!(report.skips.is_empty());
    Arc::new(Store::open(dir).unwrap())
}

/// Resident kB of this process's mappings of `file` (from `/proc/self/smaps`).
fn resident_kb_of(file: &Path) -> u64 {
    let file = file.canonicalize().unwrap().display().to_string();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    let mut kb = 0;
    for line in smaps.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-'))
            && line.contains(' ')
        {
            inside = line.ends_with(&file);
        } else if let Some(rest) = line.strip_prefix("Rss:").filter(|_| inside) {
            kb += rest.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
        }
    }
    kb
}

/// A pass over the store leaves its pages mapped (resident) until the store gives them back.
#[test]
fn a_store_gives_back_the_pages_a_pass_mapped() {
    let stage = tempfile::tempdir().unwrap();
    let store = synthetic_store(stage.path());
    let data = stage.path().join("store/data.mdb");
    let reader = store.reader().unwrap();
    let images: Vec<image::RgbImage> = (0..store.len(Split::Train))
        .map(|id| reader.image(Split::Train, id).unwrap())
        .collect();
    drop(reader);
    let bytes: usize = images.iter().map(|i| i.as_raw().len()).sum();
    let mapped = resident_kb_of(&data);
    assert!(
        mapped * 1024 >= bytes as u64 / 2,
        "{mapped} kB resident after reading {bytes} bytes"
    );
    store.release_mapped_pages();
    assert_eq!(resident_kb_of(&data), 0);
    // Reading again maps the pages again: the same images.
    let reader = store.reader().unwrap();
    for (id, image) in images.iter().enumerate() {
        assert_eq!(&reader.image(Split::Train, id as u64).unwrap(), image);
    }
    assert!(resident_kb_of(&data) > 0);
}

#[test]
fn synthetic_dataset_has_long_tail_noise_and_a_truth_file() {
    let stage = tempfile::tempdir().unwrap();
    let store = synthetic_store(stage.path());
    let header = store.header();
    let mut counts = header.train_counts.clone();
    counts.sort();
    assert_eq!(counts, vec![12, 19, 30, 48]); // 48 · (12/48)^(c/3), rounded
    assert_eq!(header.val_counts, vec![3; 4]);
    // The truth file is an output of the ingest, recorded in the store header.
    let truth_file = store
        .truth_file()
        .expect("a generated dataset keeps its truth file");
    assert_eq!(truth_file, stage.path().join(store::TRUTH_FILE));
    let truth = std::fs::read_to_string(truth_file).unwrap();
    let rows: Vec<Vec<&str>> = truth
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len() as u64, store.len(Split::Train));
    assert_eq!(
        truth.lines().next().unwrap(),
        "path\tgiven_label\ttrue_label\tnoise_kind\ttrue_wnid\tsource_image"
    );
    let noisy = rows.iter().filter(|r| r[1] != r[2]).count() as f64 / rows.len() as f64;
    assert!((0.12..0.4).contains(&noisy), "noise share {noisy}");
    assert!(rows.iter().all(|r| (r[1] == r[2]) == (r[3] == "clean")));
    // The truth file's rows are the store's training samples, in order.
    let reader = store.reader().unwrap();
    for (id, row) in rows.iter().enumerate() {
        let meta = reader.meta(Split::Train, id as u64).unwrap();
        assert_eq!(
            (meta.path.as_str(), meta.label.to_string().as_str()),
            (row[0], row[1])
        );
    }
    // A rerun reuses the generated files and the finished store.
    let again = store::ingest(
        &DatasetParams {
            resize: 32,
            resize_mode: ResizeMode::Squash,
            ..params(DatasetFormat::Synthetic, None)
        },
        stage.path(),
        false,
    )
    .unwrap();
    assert_eq!(again.train, store.len(Split::Train));
}

#[test]
fn synthetic_text_follows_the_true_class() {
    let stage = tempfile::tempdir().unwrap();
    let store = synthetic_store(stage.path());
    let truth = std::fs::read_to_string(store.truth_file().unwrap()).unwrap();
    let true_labels: Vec<usize> = truth
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(2).unwrap().parse().unwrap())
        .collect();
    let reader = store.reader().unwrap();
    // Word → class it is most used by among clean samples.
    let words = |id: u64| {
        let text = reader.meta(Split::Train, id).unwrap().text;
        [
            text.title.unwrap_or_default(),
            text.description.unwrap_or_default(),
            text.tags.join(" "),
        ]
        .join(" ")
    };
    let mut usage: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for id in 0..store.len(Split::Train) {
        let meta = reader.meta(Split::Train, id).unwrap();
        if meta.label as usize == true_labels[id as usize] {
            for w in words(id).split_whitespace() {
                usage.entry(w.to_string()).or_insert_with(|| vec![0; 4])[meta.label as usize] += 1;
            }
        }
    }
    let (mut follows_truth, mut noisy) = (0, 0);
    for id in 0..store.len(Split::Train) {
        let meta = reader.meta(Split::Train, id).unwrap();
        let truth = true_labels[id as usize];
        if meta.label as usize != truth {
            noisy += 1;
            let mut votes = [0u32; 4];
            for w in words(id).split_whitespace() {
                if let Some(u) = usage.get(w) {
                    let total: u32 = u.iter().sum();
                    if let Some((c, _)) = u.iter().enumerate().find(|(_, n)| **n * 2 > total) {
                        votes[c] += 1;
                    }
                }
            }
            follows_truth += usize::from(votes[truth] > votes[meta.label as usize]);
        }
    }
    assert!(noisy > 5);
    assert!(
        follows_truth as f64 / noisy as f64 > 0.5,
        "{follows_truth} of {noisy} noisy samples' text follows the true class"
    );
}

fn loader_config(sampler: SamplerKind, workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 16,
        crop: 24,
        mirror: true,
        mean_rgb: [120.0, 110.0, 100.0],
        sampler,
        workers,
        seed: 3,
        precision: Precision::F32,
    }
}

fn all_train_samples(store: &Store) -> Vec<(u64, u32)> {
    let reader = store.reader().unwrap();
    (0..store.len(Split::Train))
        .map(|id| (id, reader.meta(Split::Train, id).unwrap().label))
        .collect()
}

#[test]
fn training_batches_do_not_depend_on_worker_count_and_resume_mid_stream() {
    let stage = tempfile::tempdir().unwrap();
    let store = synthetic_store(stage.path());
    let samples = all_train_samples(&store);
    for sampler in [SamplerKind::Shuffle, SamplerKind::HalfBalanced] {
        let take = |workers, start, n| -> Vec<websieve::sample::Batch> {
            loader::train_batches(
                store.clone(),
                samples.clone(),
                None,
                &loader_config(sampler, workers),
                start,
            )
            .unwrap()
            .take(n)
            .map(Result::unwrap)
            .collect()
        };
        let one = take(1, 0, 12);
        assert_eq!(one, take(3, 0, 12));
        assert_eq!(one[7..], take(2, 7, 5)[..]);
        assert_eq!(one[0].shape, [16, 3, 24, 24]);
        assert_ne!(one[0].pixels, one[1].pixels);
    }
    let cfg = LoaderConfig {
        seed: 4,
        ..loader_config(SamplerKind::Shuffle, 1)
    };
    let other_seed = loader::train_batches(store.clone(), samples.clone(), None, &cfg, 0)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let first = loader::train_batches(
        store,
        samples,
        None,
        &loader_config(SamplerKind::Shuffle, 1),
        0,
    )
    .unwrap()
    .next()
    .unwrap()
    .unwrap();
    assert_ne!(other_seed.ids, first.ids);
}

#[test]
fn bf16_batches_are_the_f32_batches_rounded() {
    let stage = tempfile::tempdir().unwrap();
    let store = synthetic_store(stage.path());
    let samples = all_train_samples(&store);
    // A fractional mean, so that values such as 200 − 0.3 need rounding to bf16's 8 bits.
    let take = |precision| {
        let cfg = LoaderConfig {
            mean_rgb: [0.3, 110.25, 99.5],
            precision,
            ..loader_config(SamplerKind::Shuffle, 2)
        };
        loader::train_batches(store.clone(), samples.clone(), None, &cfg, 0)
            .unwrap()
            .take(3)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    let (full, half) = (take(Precision::F32), take(Precision::Bf16));
    let mut rounded = 0;
    for (f, h) in full.iter().zip(&half) {
        assert_eq!((&f.ids, &f.labels, f.shape), (&h.ids, &h.labels, h.shape));
        assert_eq!(h.pixels.precision(), Precision::Bf16);
        let (Pixels::F32(f), Pixels::Bf16(h)) = (&f.pixels, &h.pixels) else {
            panic!("element types");
        };
        for (a, b) in f.iter().zip(h) {
            assert_eq!(*b, half::bf16::from_f32(*a));
            assert!((b.to_f32() - a).abs() <= 0.5);
            rounded += usize::from(b.to_f32() != *a);
        }
    }
    assert!(
        rounded > 0,
        "no value needed rounding: the test would not see a truncation bug"
    );
    let tensor = half[0]
        .pixels
        .to_tensor(&half[0].shape, &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(
        (tensor.dtype(), tensor.dims()),
        (candle_core::DType::BF16, &half[0].shape[..])
    );
}

#[test]
fn balanced_samplers_reach_their_class_frequencies() {
    let stage = tempfile::tempdir().unwrap();
    let store = synthetic_store(stage.path());
    let samples = all_train_samples(&store);
    let counts = &store.header().train_counts;
    let largest = *counts.iter().max().unwrap() as f64;
    let draws = 400;
    for (sampler, target) in [
        (
            SamplerKind::Balanced,
            counts.iter().map(|_| 1.0).collect::<Vec<f64>>(),
        ),
        (
            SamplerKind::HalfBalanced,
            counts
                .iter()
                .map(|&n| (n as f64).max(largest / 2.0))
                .collect(),
        ),
        (
            SamplerKind::Replacement,
            counts.iter().map(|&n| n as f64).collect(),
        ),
    ] {
        let cfg = LoaderConfig {
            crop: 8,
            ..loader_config(sampler, 2)
        };
        let mut seen = vec![0f64; counts.len()];
        for batch in loader::train_batches(store.clone(), samples.clone(), None, &cfg, 0)
            .unwrap()
            .take(draws)
        {
            batch
                .unwrap()
                .labels
                .iter()
                .for_each(|&l| seen[l as usize] += 1.0);
        }
        let (total_seen, total_target) = (seen.iter().sum::<f64>(), target.iter().sum::<f64>());
        for (c, (s, t)) in seen.iter().zip(&target).enumerate() {
            let (share, expected) = (s / total_seen, t / total_target);
            // 6400 draws: the standard error of a share near 0.25 is ~0.005.
            assert!(
                (share - expected).abs() < 0.025,
                "{sampler:?} class {c}: {share:.3} vs {expected:.3}"
            );
        }
    }
}

#[test]
fn eval_batches_hold_every_crop_of_whole_samples_in_rgb_minus_mean() {
    let stage = tempfile::tempdir().unwrap();
    let store = synthetic_store(stage.path());
    let mean = [120.0, 110.0, 100.5];
    for precision in [Precision::F32, Precision::Bf16] {
        check_eval_batches(&store, mean, precision);
    }
}

fn check_eval_batches(store: &Arc<Store>, mean: [f32; 3], precision: Precision) {
    let cfg = loader::EvalConfig {
        crop: 24,
        crops: CropSet::Ten,
        mean_rgb: mean,
        samples_per_batch: 5,
        workers: 2,
        precision,
    };
    let batches: Vec<_> = loader::eval_split_batches(store.clone(), Split::Val, &cfg)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(batches.len(), 3); // 12 val samples, 5 per batch
    let ids: Vec<u64> = batches.iter().flat_map(|b| b.ids.iter().copied()).collect();
    let expected: Vec<u64> = (0..12).flat_map(|id| std::iter::repeat_n(id, 10)).collect();
    assert_eq!(ids, expected);
    // Some samples, in the order asked for (a holdout, a rank's share); none beyond the split.
    let some: Vec<u64> = loader::eval_batches(store.clone(), Split::Val, vec![7, 2, 11], &cfg)
        .unwrap()
        .flat_map(|b| b.unwrap().ids)
        .step_by(10)
        .collect();
    assert_eq!(some, [7, 2, 11]);
    let beyond = loader::eval_batches(store.clone(), Split::Val, vec![3, 12], &cfg).err();
    assert!(
        beyond.is_some_and(|e| e.to_string().contains("12")),
        "id 12 of 12 val samples is refused"
    );
    assert_eq!(batches[2].shape, [20, 3, 24, 24]);
    let reader = store.reader().unwrap();
    let image = reader.image(Split::Val, 6).unwrap();
    let boxes = crop_boxes(CropSet::Ten, 32, 32, 24);
    // Sample 6 is the second of batch 1; its crop 6 is the mirrored top-right corner.
    let (batch, slot, b) = (&batches[1], 10 + 6, boxes[6]);
    assert!(b.mirror && b.x == 8 && b.y == 0);
    let plane = 24 * 24;
    let values = batch.pixels.to_f32();
    assert_eq!(batch.pixels.precision(), precision);
    for (channel, m) in mean.iter().enumerate() {
        for (row, col) in [(0, 0), (5, 17), (23, 23)] {
            let pixel = image.get_pixel(b.x + 23 - col, b.y + row)[channel] as f32;
            let expected = match precision {
                Precision::F32 | Precision::Tf32 => pixel - m,
                Precision::Bf16 => half::bf16::from_f32(pixel - m).to_f32(),
            };
            assert_eq!(
                values[slot * 3 * plane + channel * plane + row as usize * 24 + col as usize],
                expected
            );
        }
    }
    assert_eq!(
        batch.labels[slot],
        reader.meta(Split::Val, 6).unwrap().label
    );
}

// ---------------------------------------------------------------- imagenette-web

#[test]
fn imagenette_web_ingests_with_the_counts_its_readme_states() {
    // `../shared/data` beside the checkout, or where WEBSIEVE_SHARED_DATA points.
    let data = std::env::var_os("WEBSIEVE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let root = data.join("imagenette-web");
    if !root.is_dir() {
        eprintln!("skipped: {} is absent", root.display());
        return;
    }
    let stage = tempfile::tempdir().unwrap();
    let params = DatasetParams {
        resize: 32,
        resize_mode: ResizeMode::Squash,
        ..params(DatasetFormat::Webvision, Some(&root))
    };
    let report = store::ingest(&params, stage.path(), false).unwrap();
    assert_eq!(
        (report.train, report.val, report.skips.len()),
        (4576, 2000, 0)
    );
    let store = Store::open(stage.path()).unwrap();
    assert_eq!(store.header().classes.len(), 10);
    assert_eq!(
        store.header().train_counts,
        vec![440, 257, 526, 215, 900, 753, 308, 368, 629, 180]
    );
    assert_eq!(store.header().val_counts, vec![200; 10]);
    let index = dataset::webvision::read(&root, &[Source::Google], false, page_texts()).unwrap();
    assert_eq!(index.train.len(), 1911);
}

#[test]
fn store_and_loaders_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send::<loader::TrainLoader>();
    send::<loader::EvalLoader>();
}

// ---------------------------------------------------------------- imagefolder, jsonl

#[test]
fn imagefolder_reads_class_folders_sidecar_text_and_val() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(&r.join("train/cat/1.jpg"), &jpeg(&gradient(20, 20, 1)));
    write(&r.join("train/cat/1.txt"), b"  a cat on a mat \n");
    write(
        &r.join("train/dog/2.png"),
        &encoded(
            image::DynamicImage::ImageRgb8(gradient(20, 20, 2)),
            image::ImageFormat::Png,
        ),
    );
    write(&r.join("train/dog/.hidden.jpg"), b"");
    write(&r.join("val/dog/3.jpg"), &jpeg(&gradient(20, 20, 3)));
    let stage = tempfile::tempdir().unwrap();
    let report = store::ingest(
        &params(DatasetFormat::Imagefolder, Some(r)),
        stage.path(),
        false,
    )
    .unwrap();
    assert_eq!((report.train, report.val, report.skips.len()), (2, 1, 0));
    let store = Store::open(stage.path()).unwrap();
    assert_eq!(
        store
            .header()
            .classes
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["cat", "dog"]
    );
    let reader = store.reader().unwrap();
    let cat = reader.meta(Split::Train, 0).unwrap();
    assert_eq!(
        (
            cat.path.as_str(),
            cat.label,
            cat.text.description.as_deref()
        ),
        ("train/cat/1.jpg", 0, Some("a cat on a mat"))
    );
    assert_eq!(reader.meta(Split::Train, 1).unwrap().text.description, None);
    assert_eq!(reader.meta(Split::Val, 0).unwrap().label, 1);
}

#[test]
fn jsonl_reads_records_and_names_the_line_of_a_bad_one() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(&r.join("img/a.jpg"), &jpeg(&gradient(20, 20, 1)));
    write(&r.join("img/b.jpg"), &jpeg(&gradient(20, 20, 2)));
    write(
        &r.join("train.jsonl"),
        br#"{"path": "img/a.jpg", "label": "zebra", "title": "stripes", "tags": ["x"]}

{"path": "img/b.jpg", "label": "ant", "text": "small"}
"#,
    );
    let index = dataset::jsonl::read(r, false, page_texts()).unwrap();
    assert_eq!(
        index
            .classes
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["ant", "zebra"]
    );
    assert_eq!(index.train[0].label, 1);
    assert_eq!(
        index.text(&index.train[0]).unwrap(),
        SampleText {
            title: Some("stripes".into()),
            description: None,
            tags: vec!["x".into()]
        }
    );
    assert_eq!(
        index.text(&index.train[1]).unwrap().description.as_deref(),
        Some("small")
    );
    write(
        &r.join("train.jsonl"),
        b"{\"path\": \"img/a.jpg\", \"label\": \"ant\"}\n{\"path\": \"img/b.jpg\"}\n",
    );
    let error = dataset::jsonl::read(r, false, page_texts()).unwrap_err();
    insta::assert_snapshot!(error_text(error, r));
    write(
        &r.join("train.jsonl"),
        b"{\"path\": \"img/a.jpg\", \"label\": \"ant\"}\n{\"path\": \"img/../../b.jpg\", \"label\": \"ant\"}\n",
    );
    let error = dataset::jsonl::read(r, false, page_texts()).unwrap_err();
    assert!(
        matches!(error, DatasetError::OutsideRoot { line: 2, .. }),
        "{error}"
    );
}

#[test]
fn a_full_map_grows_and_the_store_stays_complete() {
    let root = tempfile::tempdir().unwrap();
    write_webvision_fixture(root.path());
    let stage = tempfile::tempdir().unwrap();
    // 8 raw 256² images (1.5 MB) into a 1 MiB map.
    let params = DatasetParams {
        resize: 256,
        resize_mode: ResizeMode::Squash,
        ..params(DatasetFormat::Webvision, Some(root.path()))
    };
    let options = IngestOptions {
        commit_every: 2,
        map_size: Some(1 << 20),
        ..IngestOptions::default()
    };
    let report = store::ingest_with(&params, stage.path(), &options).unwrap();
    assert_eq!((report.train, report.val), (8, 3));
    let store = Store::open(stage.path()).unwrap();
    let reader = store.reader().unwrap();
    for id in 0..8 {
        assert_eq!(
            reader.image(Split::Train, id).unwrap().dimensions(),
            (256, 256)
        );
    }
}

/// The generated JPEGs come from our own encoder (`store::jpeg`, chroma sampled 4:2:0), not
/// from `image`'s (4:4:4): the product has one JPEG encoder.
#[test]
fn synthetic_images_are_written_by_our_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let synthetic = params(DatasetFormat::Synthetic, None).synthetic;
    let root = dataset::synthetic::generate(&synthetic, dir.path())
        .unwrap()
        .root;
    let file = glob::glob(&format!("{}/**/*.jpg", root.display()))
        .unwrap()
        .next()
        .expect("a generated image")
        .unwrap();
    let bytes = std::fs::read(file).unwrap();
    // SOF0: marker, length (2), precision, height (2), width (2), components, then per
    // component its id and its sampling factors (horizontal << 4 | vertical).
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    assert_eq!(bytes[sof + 9], 3, "three components");
    assert_eq!(bytes[sof + 11], 0x22, "luma sampled 2×2 against chroma");
}

//! What the documents say about the code holds: the files that comments cite exist, and
//! ARCHITECTURE.md names every module that uses `anyhow`.

use std::path::{Path, PathBuf};

fn rust_sources() -> Vec<PathBuf> {
    glob::glob("src/**/*.rs")
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Repository paths of Markdown files cited in the sources' comments (`notes/net.md`,
/// `BENCHMARKS.md`).
fn cited_markdown(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split_once("//").map(|(_, comment)| comment))
        .flat_map(|comment| {
            comment
                .split(|c: char| !(c.is_ascii_alphanumeric() || "_-./".contains(c)))
                .filter(|word| word.ends_with(".md") && word.len() > ".md".len())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_document_a_source_comment_cites_exists() {
    let mut missing = Vec::new();
    for path in rust_sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        for cited in cited_markdown(&text) {
            if !Path::new(&cited).is_file() {
                missing.push(format!("{}: {cited}", path.display()));
            }
        }
    }
    assert!(missing.is_empty(), "cited but missing: {missing:#?}");
}

#[test]
fn architecture_names_every_module_that_uses_anyhow() {
    let errors = std::fs::read_to_string("ARCHITECTURE.md").unwrap();
    let errors = errors.split("## Errors").nth(1).expect("an Errors section");
    for path in rust_sources() {
        if !std::fs::read_to_string(&path).unwrap().contains("anyhow") {
            continue;
        }
        // src/main.rs is `runner`; otherwise the top module below src/.
        let module = match path.strip_prefix("src").unwrap().iter().next() {
            Some(first) if first == "main.rs" => "runner".to_string(),
            Some(first) => first.to_string_lossy().trim_end_matches(".rs").to_string(),
            None => unreachable!("a file below src"),
        };
        assert!(
            errors.contains(&format!("`{module}`")),
            "{} uses anyhow, but the Errors section of ARCHITECTURE.md does not name `{module}`",
            path.display()
        );
    }
}

//! Loading: recipe patterns → files → `extends` chains → `--set` overrides → sweep points →
//! merged TOML tables, each with a map from every dotted key to the text that set it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::diag::{
    display_path, from_toml_error, plain_words, suggestion, Diagnostic, Location, Origin, Place,
    RecipeError,
};
use super::raw::RawRecipe;

/// One piece of recipe text: a file of an `extends` chain, or a `--set` argument.
#[derive(Debug, Clone)]
struct Layer {
    origin: Origin,
    text: String,
    table: toml::Table,
}

/// Where each dotted key of a merged recipe was set (the last layer that set it wins).
#[derive(Debug, Clone)]
pub struct SourceMap {
    /// Each key's location and the number of the layer that set it (later layers win).
    keys: HashMap<String, (usize, Location)>,
    layers: usize,
    /// The recipe file named on the command line: where errors about keys that no layer
    /// sets are reported.
    file: Origin,
}

impl SourceMap {
    pub(super) fn new(file: Origin) -> SourceMap {
        SourceMap {
            keys: HashMap::new(),
            layers: 0,
            file,
        }
    }

    /// Of `keys`, the one the latest layer sets itself (the first on a tie), if any: of
    /// settings that together size something, the one most likely just changed.
    pub fn last_set<'k>(&self, keys: &[&'k str]) -> Option<&'k str> {
        keys.iter()
            .filter_map(|&k| self.keys.get(k).map(|(layer, _)| (*layer, k)))
            .rev()
            .max_by_key(|(layer, _)| *layer)
            .map(|(_, k)| k)
    }

    /// Where an error about `key` is reported: where it (or its closest parent) was set, else
    /// the recipe file.
    pub fn place(&self, key: &str) -> Place {
        self.get(key)
            .cloned()
            .map_or_else(|| Place::In(self.file.clone()), Place::At)
    }

    /// The location of `key` (e.g. "train.optimizer.lr"), or of its closest set parent.
    fn get(&self, key: &str) -> Option<&Location> {
        let mut key = key;
        loop {
            if let Some((_, loc)) = self.keys.get(key) {
                return Some(loc);
            }
            key = key.rsplit_once('.')?.0;
        }
    }

    /// The folder relative paths set at `key` are resolved against: the folder of the file
    /// that set it, or the current folder for `--set`.
    pub fn base_dir(&self, key: &str) -> PathBuf {
        match self.get(key).map(|l| &l.origin) {
            Some(Origin::File(path)) => path.parent().map(Path::to_path_buf).unwrap_or_default(),
            _ => std::env::current_dir().unwrap_or_default(),
        }
    }

    fn add_layer(&mut self, layer: &Layer) {
        let Ok(doc) = toml_edit::Document::parse(layer.text.as_str()) else {
            return;
        };
        let mut found = Vec::new();
        if let Some(table) = doc.as_item().as_table_like() {
            collect_key_spans(table, "", &mut found);
        }
        self.layers += 1;
        for (key, span) in found {
            let location = Location {
                origin: layer.origin.clone(),
                text: layer.text.clone(),
                span,
            };
            self.keys.insert(key, (self.layers, location));
        }
    }
}

fn collect_key_spans(
    table: &dyn toml_edit::TableLike,
    prefix: &str,
    out: &mut Vec<(String, std::ops::Range<usize>)>,
) {
    for (key, item) in table.iter() {
        let dotted = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        if let Some(span) = table.key(key).and_then(|k| k.span()) {
            out.push((dotted.clone(), span));
        }
        if let Some(inner) = item.as_table_like() {
            collect_key_spans(inner, &dotted, out);
        }
    }
}

/// A recipe's merged TOML before validation, with its provenance.
#[derive(Debug, Clone)]
pub struct Merged {
    /// Run name: file stem, plus `/key=value,...` for a sweep point.
    pub name: String,
    pub table: toml::Table,
    pub sources: SourceMap,
}

/// Expands recipe arguments: plain paths, and globs expanded by us (so a quoted glob works),
/// each pattern's matches sorted; the order of the arguments is kept, duplicates dropped.
pub fn expand_patterns(patterns: &[String]) -> Result<Vec<PathBuf>, RecipeError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        let mut matches: Vec<PathBuf> = if pattern.contains(['*', '?', '[']) {
            glob::glob(pattern)
                .map_err(|e| RecipeError::Pattern {
                    pattern: pattern.clone(),
                    message: e.to_string(),
                })?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect()
        } else {
            vec![PathBuf::from(pattern)]
        };
        if matches.is_empty() {
            return Err(RecipeError::NoMatch {
                pattern: pattern.clone(),
            });
        }
        matches.sort();
        for path in matches {
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// Loads one recipe file with its `extends` chain and the `--set` overrides, and expands its
/// sweep: one [`Merged`] per run.
pub fn load_merged(path: &Path, sets: &[String]) -> Result<Vec<Merged>, RecipeError> {
    let mut layers = Vec::new();
    load_chain(path, &mut Vec::new(), &mut layers)?;
    // The file named on the command line is the last of its chain: only it (and `--set`)
    // names the run.
    let top = layers.len() - 1;
    for parent in &mut layers[..top] {
        parent.table.remove("name");
    }
    for arg in sets {
        layers.push(set_layer(arg)?);
    }
    let mut stem = base_run_name(path);
    for layer in &layers[top..] {
        if let Some(toml::Value::String(name)) = layer.table.get("name") {
            stem = checked_run_name(name, &layer.origin, &layer.text)?;
        }
    }
    let mut table = toml::Table::new();
    let mut sources = SourceMap::new(Origin::File(display_path(path)));
    for layer in layers {
        sources.add_layer(&layer);
        unset_alternatives(&mut table, &layer.table);
        merge(&mut table, layer.table);
    }
    table.remove("extends");
    table.remove("name");
    let sweep = take_sweep(&mut table, &sources)?;
    sweep_points(&sweep)
        .into_iter()
        .map(|point| {
            let mut table = table.clone();
            for (key, value) in &point {
                let layer = dotted_table(key, value.clone());
                unset_alternatives(&mut table, &layer);
                merge(&mut table, layer);
            }
            Ok(Merged {
                name: run_name(&stem, &point),
                table,
                sources: sources.clone(),
            })
        })
        .collect()
}

fn load_chain(
    path: &Path,
    stack: &mut Vec<PathBuf>,
    layers: &mut Vec<Layer>,
) -> Result<(), RecipeError> {
    let canonical = path.canonicalize().map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if let Some(first) = stack.iter().position(|p| p == &canonical) {
        let chain = stack[first..]
            .iter()
            .chain(std::iter::once(&canonical))
            .map(|p| display_path(p).display().to_string())
            .collect::<Vec<_>>()
            .join(" → ");
        return Err(RecipeError::Cycle { chain });
    }
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = Origin::File(display_path(path));
    let raw: RawRecipe = toml::from_str(&text).map_err(|e| from_toml_error(&e, &origin, &text))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| from_toml_error(&e, &origin, &text))?;
    stack.push(canonical);
    if let Some(parent) = &raw.extends {
        let parent_path = path.parent().unwrap_or(Path::new("")).join(parent);
        if !parent_path.is_file() {
            let span = toml_edit::Document::parse(text.as_str())
                .ok()
                .and_then(|d| d.as_table().key("extends").and_then(|k| k.span()));
            let location = span.map(|span| Location {
                origin: origin.clone(),
                text: text.clone(),
                span,
            });
            return Err(Diagnostic::new(
                format!(
                    "`extends` names {}, which does not exist",
                    parent_path.display()
                ),
                location,
                &origin,
            )
            .into());
        }
        load_chain(&parent_path, stack, layers)?;
    }
    stack.pop();
    layers.push(Layer {
        origin,
        text,
        table,
    });
    Ok(())
}

/// `--set a.b.c=VALUE`: VALUE is TOML (`0.02`, `true`, `[1, 2]`, `"x"`); a bare word that is
/// not TOML is taken as a string, so `--set clean.similarity=cosine` works.
fn set_layer(arg: &str) -> Result<Layer, RecipeError> {
    let origin = Origin::Set(arg.to_string());
    let Some((key, value)) = arg.split_once('=') else {
        return Err(Diagnostic::placed(
            "expected KEY=VALUE, e.g. train.optimizer.lr=0.02",
            Place::In(origin),
        )
        .into());
    };
    let key = key.trim();
    if key == "extends" || key == "sweep" || key.starts_with("sweep.") {
        return Err(Diagnostic::placed(
            format!("--set cannot change `{key}`: edit the recipe"),
            Place::In(origin),
        )
        .into());
    }
    let text = if toml::from_str::<toml::Table>(arg).is_ok() {
        arg.to_string()
    } else {
        format!("{key}={}", toml::Value::String(value.trim().to_string()))
    };
    toml::from_str::<RawRecipe>(&text).map_err(|e| from_toml_error(&e, &origin, &text))?;
    let table = toml::from_str(&text).map_err(|e| from_toml_error(&e, &origin, &text))?;
    Ok(Layer {
        origin,
        text,
        table,
    })
}

/// Keys of which a recipe sets one: a layer that sets one unsets the others it inherited, so
/// `--set train.iterations=100` works on a recipe that extends one with `epochs`.
const ALTERNATIVES: &[(&str, &[&str])] = &[("train", &["iterations", "epochs"])];

fn unset_alternatives(base: &mut toml::Table, layer: &toml::Table) {
    for (section, keys) in ALTERNATIVES {
        let (Some(toml::Value::Table(over)), Some(toml::Value::Table(inherited))) =
            (layer.get(*section), base.get_mut(*section))
        else {
            continue;
        };
        if keys.iter().any(|k| over.contains_key(*k)) {
            for key in keys.iter().filter(|k| !over.contains_key(**k)) {
                inherited.remove(*key);
            }
        }
    }
}

/// Deep merge: tables merge key by key, anything else (arrays too) is replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn dotted_table(key: &str, value: toml::Value) -> toml::Table {
    let mut value = value;
    for part in key.rsplit('.') {
        let mut t = toml::Table::new();
        t.insert(part.to_string(), value);
        value = toml::Value::Table(t);
    }
    match value {
        toml::Value::Table(t) => t,
        _ => unreachable!("a key has at least one part"),
    }
}

/// Removes `[sweep]` from the merged table and checks that each of its points is a valid
/// setting, reporting errors at the sweep key.
fn take_sweep(
    table: &mut toml::Table,
    sources: &SourceMap,
) -> Result<BTreeMap<String, Vec<toml::Value>>, RecipeError> {
    let Some(sweep) = table.remove("sweep") else {
        return Ok(BTreeMap::new());
    };
    let sweep: BTreeMap<String, Vec<toml::Value>> = sweep
        .try_into()
        .expect("[sweep] was type-checked with its file");
    let mut errors = Vec::new();
    for (key, values) in &sweep {
        let place = sources.place(&format!("sweep.{key}"));
        if values.is_empty() {
            errors.push(
                Diagnostic::placed(format!("sweep `{key}` has no values"), place.clone()).into(),
            );
        }
        for value in values {
            let probe = toml::Value::Table(dotted_table(key, value.clone()));
            if let Err(e) = probe.try_into::<RawRecipe>() {
                let message = plain_words(e.message());
                let mut diag = Diagnostic::placed(
                    format!("sweep `{key}` = {value}: {message}"),
                    place.clone(),
                );
                if let Some(help) = suggestion(&message) {
                    diag = diag.note(help);
                }
                errors.push(diag.into());
            }
        }
    }
    match errors.len() {
        0 => Ok(sweep),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(RecipeError::Many(errors)),
    }
}

/// Every combination of the sweep's values, keys in sorted order; one empty point when
/// there is no sweep.
fn sweep_points(sweep: &BTreeMap<String, Vec<toml::Value>>) -> Vec<Vec<(String, toml::Value)>> {
    let mut points = vec![Vec::new()];
    for (key, values) in sweep {
        points = points
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut p = point.clone();
                    p.push((key.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    points
}

/// A recipe's run name: its path below the nearest folder named `recipes`, without the
/// extension (`recipes/ablation/discard-20.toml` → `ablation/discard-20`), so recipes of the
/// same name in different folders get different runs; elsewhere the file stem.
/// A `name` set in a recipe: a relative folder path below `runs/` (`a/b` is fine, `..` and
/// absolute paths are not).
fn checked_run_name(name: &str, origin: &Origin, text: &str) -> Result<String, RecipeError> {
    let path = Path::new(name);
    let ok = !name.trim().is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        return Ok(name.to_string());
    }
    let span = toml_edit::Document::parse(text)
        .ok()
        .and_then(|d| d.as_table().key("name").and_then(|k| k.span()));
    Err(Diagnostic::new(
        format!("`name` = {name:?}: expected a relative folder name such as \"softlabel\" or \"ablation/lr\", without `..`"),
        span.map(|span| Location {
            origin: origin.clone(),
            text: text.to_string(),
            span,
        }),
        origin,
    )
    .into())
}

fn base_run_name(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let below_recipes = absolute
        .ancestors()
        .skip(1)
        .find(|dir| dir.file_name().is_some_and(|n| n == "recipes"))
        .and_then(|dir| absolute.strip_prefix(dir).ok())
        .map(|rel| rel.with_extension(""));
    below_recipes
        .or_else(|| path.file_stem().map(PathBuf::from))
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .unwrap_or_else(|| "recipe".into())
}

/// `softlabel/lr=0.02,crop=64`: the last part of each key, or the whole key where two swept
/// keys end alike.
fn run_name(stem: &str, point: &[(String, toml::Value)]) -> String {
    if point.is_empty() {
        return stem.to_string();
    }
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let parts: Vec<String> = point
        .iter()
        .map(|(key, value)| {
            let clash = point.iter().filter(|(k, _)| last(k) == last(key)).count() > 1;
            let label = if clash { key.clone() } else { last(key) };
            let value = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{label}={value}")
        })
        .collect();
    format!("{stem}/{}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn merge_is_deep_and_replaces_arrays() {
        let mut base = t("[a]\nx = 1\ny = [1, 2]\n[b]\nz = 3");
        merge(&mut base, t("[a]\ny = [9]\nw = 4"));
        assert_eq!(base, t("[a]\nx = 1\ny = [9]\nw = 4\n[b]\nz = 3"));
    }

    #[test]
    fn setting_one_length_unsets_the_inherited_other() {
        let mut base = t("[train]\nepochs = 4\nseed = 1");
        let layer = t("[train]\niterations = 6");
        unset_alternatives(&mut base, &layer);
        merge(&mut base, layer);
        assert_eq!(base, t("[train]\nseed = 1\niterations = 6"));
    }

    #[test]
    fn sweep_points_are_the_cartesian_product() {
        let sweep: BTreeMap<String, Vec<toml::Value>> = toml::from_str::<toml::Table>(
            "\"train.optimizer.lr\" = [0.01, 0.02]\n\"clean.similarity\" = [\"dot\", \"cosine\", \"dot\"]",
        )
        .unwrap()
        .try_into()
        .unwrap();
        let points = sweep_points(&sweep);
        assert_eq!(points.len(), 6);
        let names: Vec<String> = points.iter().map(|p| run_name("r", p)).collect();
        assert_eq!(names[0], "r/similarity=dot,lr=0.01");
        assert_eq!(names[3], "r/similarity=cosine,lr=0.02");
    }

    #[test]
    fn run_names_keep_the_folder_below_recipes() {
        assert_eq!(
            base_run_name(Path::new("recipes/ablation/discard-20.toml")),
            "ablation/discard-20"
        );
        assert_eq!(base_run_name(Path::new("recipes/clean.toml")), "clean");
        assert_eq!(base_run_name(Path::new("/tmp/x/grid.toml")), "grid");
    }

    #[test]
    fn clashing_last_parts_use_the_whole_key() {
        let point = vec![
            ("a.lr".to_string(), toml::Value::Float(0.5)),
            ("b.lr".to_string(), toml::Value::Integer(2)),
        ];
        assert_eq!(run_name("r", &point), "r/a.lr=0.5,b.lr=2");
    }
}

//! The recipe JSON Schema (draft 2020-12) for editors: generated from [`RawRecipe`] by
//! schemars, then written for TOML. TOML has no null, yet schemars writes every optional field
//! as "T or null" (`anyOf: [T, null]`, `type: [T, "null"]`); an editor validating against
//! that (Taplo, Even Better TOML) then reports a misspelt key in a table as "not valid under any
//! of the schemas listed in the 'anyOf' keyword" instead of naming it, and completes less. Here
//! each field is its plain type, with a description (a table's from its definition) and, where
//! its doc comment says "Default: X", X as its `default`.

use serde_json::{Map, Value};

use super::raw::RawRecipe;

/// The schema as `runner schema` writes it to `schemas/recipe.schema.json`.
pub fn schema_json() -> String {
    let mut schema = schemars::schema_for!(RawRecipe).to_value();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for_toml(&mut schema, &defs);
    let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialize");
    text.push('\n');
    text
}

/// Rewrites `schema` and its subschemas (`defs`: the definitions `$ref`s point to).
fn for_toml(schema: &mut Value, defs: &Map<String, Value>) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    drop_null(obj);
    if !obj.contains_key("description") {
        let described = obj
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| defs.get(name)?.get("description"))
            .cloned();
        if let Some(description) = described {
            obj.insert("description".into(), description);
        }
    }
    if let Some(default) = obj
        .get("description")
        .and_then(Value::as_str)
        .and_then(documented_default)
    {
        obj.insert("default".into(), default);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = obj.get_mut(key) {
            for_toml(sub, defs);
        }
    }
    for key in ["properties", "$defs"] {
        if let Some(Value::Object(subs)) = obj.get_mut(key) {
            subs.values_mut().for_each(|sub| for_toml(sub, defs));
        }
    }
    if let Some(Value::Array(subs)) = obj.get_mut("anyOf") {
        subs.iter_mut().for_each(|sub| for_toml(sub, defs));
    }
}

/// `type: [T, "null"]` → `type: T`; `anyOf: [S, {type: null}]` → S's keywords beside the
/// field's own (its description).
fn drop_null(obj: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = obj.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            obj.insert("type".into(), only);
        }
    }
    let is_null = |s: &Value| s.get("type").and_then(Value::as_str) == Some("null");
    if let Some(Value::Array(any)) = obj.get("anyOf") {
        let (nulls, rest): (Vec<&Value>, Vec<&Value>) = any.iter().partition(|s| is_null(s));
        if let ([_], [one]) = (nulls.as_slice(), rest.as_slice()) {
            let one = one.as_object().cloned().unwrap_or_default();
            obj.remove("anyOf");
            for (key, value) in one {
                obj.entry(key).or_insert(value);
            }
        }
    }
}

/// X of a description's "Default: X", X written as JSON (`80`, `0.5`, `"poly"`,
/// `["top1", "top5"]`) and followed by the end of its sentence or a remark.
fn documented_default(description: &str) -> Option<Value> {
    let (_, text) = description.split_once("Default: ")?;
    let value = if text.starts_with(['"', '[']) {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .next()
            .and_then(Result::ok)
    } else {
        text.split_whitespace()
            .next()
            .and_then(|word| serde_json::from_str(word.trim_end_matches('.')).ok())
    };
    // A doc comment that says "Default:" and is not followed by a value is a mistake here.
    assert!(
        value.is_some(),
        "{description:?}: \"Default:\" must be followed by a JSON value"
    );
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults_are_read_up_to_the_end_of_their_sentence() {
        for (description, default) in [
            ("Default: 80.", "80"),
            ("Learning-rate decay. Default: 0.5 (gensim's).", "0.5"),
            ("Default: \"poly\".", "\"poly\""),
            (
                "Fields. Default: [\"title\", \"tags\"].",
                "[\"title\", \"tags\"]",
            ),
            ("Default: 2.0.", "2.0"),
            ("Random horizontal mirror. Default: true.", "true"),
        ] {
            let parsed: Value = serde_json::from_str(default).unwrap();
            assert_eq!(
                documented_default(description),
                Some(parsed),
                "{description}"
            );
        }
        assert_eq!(
            documented_default("The symmetric α; default 1/topics."),
            None
        );
    }
}

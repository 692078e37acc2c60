//! Content digests: the one place that says how websieve names data by its content (stage
//! keys, the dataset fingerprint, the store's ingest fingerprint, init checkpoints).
//!
//! In: bytes, a file or a JSON value. Out: the first 16 hex digits of its BLAKE3 hash (64 bits:
//! a collision among a cache's few thousand entries is about 1e-13 likely).

use std::path::Path;

/// The first 16 hex digits of the BLAKE3 hash of `bytes`.
pub fn short_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_string()
}

/// [`short_hash`] of `value` as compact JSON (object keys in serde_json's sorted order).
pub fn json_hash(value: &serde_json::Value) -> String {
    short_hash(&serde_json::to_vec(value).expect("JSON values serialize"))
}

/// [`short_hash`] of a file's content, read in a stream.
pub fn file_hash(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex()[..16].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hashes_are_stable_sensitive_and_agree_across_forms() {
        let a = json!({"a": 1, "b": [1, 2]});
        assert_eq!(json_hash(&a), json_hash(&json!({"b": [1, 2], "a": 1})));
        assert_ne!(json_hash(&a), json_hash(&json!({"a": 1, "b": [2, 1]})));
        assert_eq!(json_hash(&a).len(), 16);
        assert_eq!(json_hash(&a), short_hash(br#"{"a":1,"b":[1,2]}"#));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"websieve").unwrap();
        assert_eq!(file_hash(&file).unwrap(), short_hash(b"websieve"));
        // BLAKE3 of "abc", from the reference implementation's test vectors (b3sum).
        assert_eq!(short_hash(b"abc"), "6437b3ac38465133");
    }
}

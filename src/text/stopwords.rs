//! Stop lists: common English function words, and words every web page carries whatever
//! its image shows. Both are matched after normalisation (lowercase ASCII letters).

/// English function words (the usual short list of pronouns, articles, auxiliaries,
/// prepositions and conjunctions, with contractions split as `normalise` splits them).
#[rustfmt::skip]
pub const ENGLISH: &[&str] = &[
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours",
    "yourself", "yourselves", "he", "him", "his", "himself", "she", "her", "hers", "herself",
    "it", "its", "itself", "they", "them", "their", "theirs", "themselves", "what", "which",
    "who", "whom", "this", "that", "these", "those", "am", "is", "are", "was", "were", "be",
    "been", "being", "have", "has", "had", "having", "do", "does", "did", "doing", "a", "an",
    "the", "and", "but", "if", "or", "because", "as", "until", "while", "of", "at", "by",
    "for", "with", "about", "against", "between", "into", "through", "during", "before",
    "after", "above", "below", "to", "from", "up", "down", "in", "out", "on", "off", "over",
    "under", "again", "further", "then", "once", "here", "there", "when", "where", "why",
    "how", "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "no",
    "nor", "not", "only", "own", "same", "so", "than", "too", "very", "s", "t", "can", "will",
    "just", "don", "should", "now", "d", "ll", "m", "o", "re", "ve", "y", "ain", "aren",
    "couldn", "didn", "doesn", "hadn", "hasn", "haven", "isn", "ma", "mightn", "mustn",
    "needn", "shan", "shouldn", "wasn", "weren", "won", "wouldn", "also", "would", "could",
    "may", "might", "must", "shall", "get", "got", "one", "us",
];

/// Words of web pages rather than of what an image shows (the list).
#[rustfmt::skip]
pub const WEB: &[&str] = &[
    "wikipedia", "google", "flickr", "figure", "photo", "image", "homepage", "url", "youtube",
    "images", "blog", "pinterest",
];

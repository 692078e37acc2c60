//! The kinds of stage, in execution order.

use std::fmt;

use serde::Serialize;

/// A node of the stage graph, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Ingest,
    Lda,
    Probe,
    Score,
    Train,
    Eval,
}

impl StageKind {
    pub const ALL: [StageKind; 6] = [
        StageKind::Ingest,
        StageKind::Lda,
        StageKind::Probe,
        StageKind::Score,
        StageKind::Train,
        StageKind::Eval,
    ];

    /// The folder name under the cache, and the name in recipes' `--until` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Ingest => "ingest",
            StageKind::Lda => "lda",
            StageKind::Probe => "probe",
            StageKind::Score => "score",
            StageKind::Train => "train",
            StageKind::Eval => "eval",
        }
    }

    pub fn from_name(name: &str) -> Option<StageKind> {
        StageKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

//! The stage graph (ingest → lda → score → train → eval), its content-addressed cache and run folders. In: validated recipes. Out: stage folders and `runs/<name>/`.

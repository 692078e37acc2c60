//! Tables (and later plots) over finished runs. In: run folders. Out: text tables.

//! Online variational Bayes LDA (Hoffman, Blei & Bach 2010) and topic inference: the `lda` stage. In: sparse documents. Out: a topic model and a topic vector per sample.

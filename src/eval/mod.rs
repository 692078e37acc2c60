//! Evaluation: top-1/top-5 overall and per class, multi-crop, ensembles, predictions, confusion matrix: the `eval` stage. In: checkpoints and the validation split. Out: metrics and plots.

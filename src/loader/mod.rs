//! Batches for training and evaluation: crops, mirror, mean subtraction, samplers, a multi-threaded prefetching pipeline. In: a store and sample ids. Out: [`crate::sample::Batch`]es.

//! Trains the quickstart's small GoogLeNet (1/8 width, 64 px) for a few steps on generated
//! images and prints the loss: the training loop used as a library, without the stage cache.
//!
//! ```sh
//! cargo run --release --example train_steps -- [STEPS]    # default 30
//! ```

use std::sync::Arc;

use candle_core::Device;
use websieve::loader::{self, LoaderConfig};
use websieve::recipe::{self, TrainLength, TrainParams};
use websieve::sample::Split;
use websieve::store::{self, Store};
use websieve::train::{self, BatchStream, BoxError, SampleTargets, TrainJob};

/// The loss of each logged step of a `steps`-step run.
fn train_losses(steps: u64) -> anyhow::Result<Vec<f64>> {
    let recipe = recipe::load_file("recipes/quickstart.toml".as_ref(), &[])?.remove(0);
    let temp = tempfile::tempdir()?;
    let ingest_dir = temp.path().join("ingest");
    store::ingest(&recipe.dataset, &ingest_dir, false)?;
    let store = Arc::new(Store::open(&ingest_dir)?);

    // Every training image with its label as given (no cleaning, no soft labels).
    let samples: Vec<(u64, u32)> = {
        let reader = store.reader()?;
        (0..store.len(Split::Train))
            .map(|id| Ok((id, reader.meta(Split::Train, id)?.label)))
            .collect::<Result<_, store::StoreError>>()?
    };
    let train_params = TrainParams {
        length: TrainLength::Iterations(steps),
        checkpoint_every: steps,
        ..recipe.train.clone()
    };
    let config = LoaderConfig::for_training(&train_params, train_params.batch_per_device);
    let mut batches = |start: u64| -> Result<BatchStream<'static>, BoxError> {
        let loader = loader::train_batches(store.clone(), samples.clone(), None, &config, start)?;
        Ok(Box::new(loader.map(|b| b.map_err(BoxError::from))))
    };
    let targets = SampleTargets {
        lambda: &|_| Some(1.0),
        topics: &|_| None,
    };
    let run_dir = temp.path().join("train");
    let job = TrainJob {
        model: &recipe.model,
        train: &train_params,
        num_classes: store.header().classes.len(),
        topics: 0,
        iterations: steps,
        out_dir: &run_dir,
        init: None,
        resume: false,
        stop_after: None,
        progress: false,
        holdout: None,
    };
    train::train(&job, &mut batches, &targets, &Device::Cpu)?;

    let metrics = std::fs::read_to_string(run_dir.join(train::STEP_METRICS_FILE))?;
    let mut losses = Vec::new();
    for line in metrics.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        if let Some(loss) = record["loss"].as_f64() {
            losses.push(loss);
        }
    }
    Ok(losses)
}

fn main() -> anyhow::Result<()> {
    let steps = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 30,
    };
    for (step, loss) in train_losses(steps)?.iter().enumerate() {
        println!("step {:3}  loss {loss:.4}", step + 1);
    }
    Ok(())
}

/// Training learns: the loss of the last steps is below that of the first ones.
#[test]
fn the_loss_falls() {
    let losses = train_losses(30).unwrap();
    assert_eq!(losses.len(), 30, "one logged loss per step");
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[25..]));
    assert!(
        last < first * 0.95,
        "first 5 steps {first:.4}, last 5 {last:.4}"
    );
}

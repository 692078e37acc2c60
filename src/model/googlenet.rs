//! GoogLeNet (Inception v1) as BVLC's Caffe model defines it, with an optional batch-norm
//! variant, a width multiplier, any input size the pooling chain admits, and the 2-headed
//! variant (a topic-regression branch beside each of the 3 classifiers).
//!
//! In: [`ModelParams`], the class and topic counts, an init seed and a device. Out: a network
//! mapping `[n, 3, h, w]` f32 images to per-head class logits and topic logits
//! ([`GoogLeNet::forward_train`]), or the main head's only ([`GoogLeNet::forward_eval`]).
//!
//! Layer names follow the prototxt (`conv1`, `inception_4a.3x3_reduce`, `loss1.fc`, …) with
//! `.weight` / `.bias` appended; they are the keys of checkpoints.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::layers::{
    AuxBranch, AuxHead, BatchNorm, Conv, HeadOutput, Inception, Linear, MainHead, Pass,
};
use crate::model::ops::{lrn, max_pool2d, pooled_len};
use crate::recipe::params::{Arch, ModelParams};

/// Caffe's LRN settings in GoogLeNet (`local_size: 5, alpha: 1e-4, beta: 0.75`, k = 1).
const LRN_SIZE: usize = 5;
const LRN_ALPHA: f64 = 1e-4;
const LRN_BETA: f64 = 0.75;
const LRN_K: f64 = 1.0;
/// Bias filler of every convolution and hidden fc layer (`constant 0.2`); classifiers use 0.
const HIDDEN_BIAS: f32 = 0.2;

/// Head names in output order: the main classifier, then the auxiliary heads after 4a and 4d.
pub const HEAD_NAMES: [&str; 3] = ["loss3", "loss1", "loss2"];

/// `(1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj)` output widths from the paper's table 1.
const INCEPTIONS: [(&str, [usize; 6]); 9] = [
    ("inception_3a", [64, 96, 128, 16, 32, 32]),
    ("inception_3b", [128, 128, 192, 32, 96, 64]),
    ("inception_4a", [192, 96, 208, 16, 48, 64]),
    ("inception_4b", [160, 112, 224, 24, 64, 64]),
    ("inception_4c", [128, 128, 256, 24, 64, 64]),
    ("inception_4d", [112, 144, 288, 32, 64, 64]),
    ("inception_4e", [256, 160, 320, 32, 128, 128]),
    ("inception_5a", [256, 160, 320, 32, 128, 128]),
    ("inception_5b", [384, 192, 384, 48, 128, 128]),
];

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model.input_size = {input_size}: too small for GoogLeNet, {layer} would see \
         {size}×{size} px, less than its {kernel}×{kernel} window"
    )]
    InputTooSmall {
        input_size: u32,
        layer: &'static str,
        size: usize,
        kernel: usize,
    },
    #[error("model.width = {0}: must be a finite number > 0")]
    BadWidth(f64),
    #[error("model: neither `classification` nor `regression` is enabled")]
    NoTask,
    #[error("model: classification needs at least 1 class, got {0}")]
    NoClasses(usize),
    #[error("model: regression needs at least 1 topic, got {0}")]
    NoTopics(usize),
    #[error("model: tensor `{name}` is missing from the weights being loaded")]
    MissingTensor { name: String },
    #[error("model: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Creates layers with Caffe's fillers and records every learnable tensor and buffer by name.
struct Builder<'a> {
    device: &'a Device,
    rng: ChaCha8Rng,
    batch_norm: bool,
    width: f64,
    vars: Vec<(String, Var)>,
    buffers: Vec<(String, Var)>,
}

impl Builder<'_> {
    fn scaled(&self, channels: usize) -> usize {
        ((channels as f64 * self.width).round() as usize).max(1)
    }

    /// Caffe's `xavier` filler: U(−a, a) with a = sqrt(3 / fan_in); its `std` field is unused.
    fn xavier(&mut self, name: String, shape: &[usize], fan_in: usize) -> candle_core::Result<Var> {
        let bound = (3.0 / fan_in as f64).sqrt() as f32;
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| self.rng.random_range(-bound..=bound))
            .collect();
        self.var(name, Tensor::from_vec(values, shape, self.device)?)
    }

    fn constant(&mut self, name: String, len: usize, value: f32) -> candle_core::Result<Var> {
        self.var(name, Tensor::full(value, len, self.device)?)
    }

    fn var(&mut self, name: String, init: Tensor) -> candle_core::Result<Var> {
        let var = Var::from_tensor(&init)?;
        self.vars.push((name, var.clone()));
        Ok(var)
    }

    fn buffer(&mut self, name: String, init: Tensor) -> candle_core::Result<Var> {
        let var = Var::from_tensor(&init)?;
        self.buffers.push((name, var.clone()));
        Ok(var)
    }

    /// Convolution + (batch norm) + ReLU; `out` is the published width before scaling.
    fn conv(
        &mut self,
        name: &str,
        in_channels: usize,
        out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Conv> {
        let out = self.scaled(out);
        let weight = self.xavier(
            format!("{name}.weight"),
            &[out, in_channels, kernel, kernel],
            in_channels * kernel * kernel,
        )?;
        let (bias, bn) = if self.batch_norm {
            let bn = BatchNorm::new(
                &self.constant(format!("{name}.bn.weight"), out, 1.0)?,
                &self.constant(format!("{name}.bn.bias"), out, 0.0)?,
                &self.buffer(
                    format!("{name}.bn.running_mean"),
                    Tensor::zeros(out, DType::F32, self.device)?,
                )?,
                &self.buffer(
                    format!("{name}.bn.running_var"),
                    Tensor::ones(out, DType::F32, self.device)?,
                )?,
            )?;
            (None, Some(bn))
        } else {
            let bias = self.constant(format!("{name}.bias"), out, HIDDEN_BIAS)?;
            (Some(bias), None)
        };
        Ok(Conv {
            weight,
            bias,
            bn,
            stride,
            pad,
        })
    }

    fn linear(
        &mut self,
        name: &str,
        inputs: usize,
        outputs: usize,
        bias: f32,
    ) -> candle_core::Result<Linear> {
        Ok(Linear {
            weight: self.xavier(format!("{name}.weight"), &[outputs, inputs], inputs)?,
            bias: self.constant(format!("{name}.bias"), outputs, bias)?,
        })
    }

    fn inception(
        &mut self,
        name: &str,
        in_channels: usize,
        widths: [usize; 6],
    ) -> candle_core::Result<Inception> {
        let [w1, w3r, w3, w5r, w5, wp] = widths;
        let b1 = self.conv(&format!("{name}.1x1"), in_channels, w1, 1, 1, 0)?;
        let b3r = self.conv(&format!("{name}.3x3_reduce"), in_channels, w3r, 1, 1, 0)?;
        let b3 = self.conv(&format!("{name}.3x3"), b3r.out_channels(), w3, 3, 1, 1)?;
        let b5r = self.conv(&format!("{name}.5x5_reduce"), in_channels, w5r, 1, 1, 0)?;
        let b5 = self.conv(&format!("{name}.5x5"), b5r.out_channels(), w5, 5, 1, 2)?;
        let proj = self.conv(&format!("{name}.pool_proj"), in_channels, wp, 1, 1, 0)?;
        Ok(Inception {
            b1,
            b3r,
            b3,
            b5r,
            b5,
            proj,
        })
    }
}

/// Layer names of the regression heads' parts (`loss1.topic_fc`, `loss3.topic_regressor`).
const TOPIC_FC: &str = "topic_fc";
const TOPIC_REGRESSOR: &str = "topic_regressor";

/// Whether the tensor `name` (`<head>.<layer>.<weight|bias>`) belongs to a regression head.
fn is_regression_head(name: &str) -> bool {
    name.split('.')
        .any(|part| part == TOPIC_FC || part == TOPIC_REGRESSOR)
}

/// The network. Learnable tensors are [`GoogLeNet::vars`]; batch-norm running statistics are
/// [`GoogLeNet::buffers`]. Both are shared handles: an optimiser updating a `Var` updates
/// the network.
pub struct GoogLeNet {
    batch_norm: bool,
    input_size: usize,
    conv1: Conv,
    conv2_reduce: Conv,
    conv2: Conv,
    inceptions: Vec<Inception>,
    aux: [AuxHead; 2],
    main: MainHead,
    vars: Vec<(String, Var)>,
    buffers: Vec<(String, Var)>,
}

/// Spatial sides along the trunk, checked against every pooling window.
struct Sides {
    /// Input of the auxiliary heads (the output of 4a and 4d).
    aux_input: usize,
    aux_output: usize,
}

fn trunk_sides(input_size: u32) -> Result<Sides, ModelError> {
    let size = input_size as usize;
    let pool = |layer: &'static str, side: usize, kernel: usize, stride: usize| {
        pooled_len(side, kernel, stride, 0, true).map_err(|_| ModelError::InputTooSmall {
            input_size,
            layer,
            size: side,
            kernel,
        })
    };
    let conv1 = (size + 2 * 3).saturating_sub(7) / 2 + 1;
    let pool1 = pool("pool1", conv1, 3, 2)?;
    let pool2 = pool("pool2", pool1, 3, 2)?;
    let pool3 = pool("pool3", pool2, 3, 2)?;
    pool("pool4", pool3, 3, 2)?;
    // The aux pool is 5×5/3 as published; below 5 px it shrinks to the whole map.
    let aux_kernel = pool3.min(5);
    let aux_output = pool("loss1.ave_pool", pool3, aux_kernel, 3)?;
    Ok(Sides {
        aux_input: pool3,
        aux_output,
    })
}

impl GoogLeNet {
    /// Builds the network with Caffe's fillers drawn from `seed`. `num_classes` is used when
    /// `params.classification`, `topics` when `params.regression`.
    pub fn new(
        params: &ModelParams,
        num_classes: usize,
        topics: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        if !(params.width.is_finite() && params.width > 0.0) {
            return Err(ModelError::BadWidth(params.width));
        }
        if !params.classification && !params.regression {
            return Err(ModelError::NoTask);
        }
        if params.classification && num_classes == 0 {
            return Err(ModelError::NoClasses(num_classes));
        }
        if params.regression && topics == 0 {
            return Err(ModelError::NoTopics(topics));
        }
        let sides = trunk_sides(params.input_size)?;
        let mut b = Builder {
            device,
            rng: ChaCha8Rng::seed_from_u64(seed),
            batch_norm: params.arch == Arch::GooglenetBn,
            width: params.width,
            vars: Vec::new(),
            buffers: Vec::new(),
        };
        let conv1 = b.conv("conv1", 3, 64, 7, 2, 3)?;
        let conv2_reduce = b.conv("conv2_reduce", conv1.out_channels(), 64, 1, 1, 0)?;
        let conv2 = b.conv("conv2", conv2_reduce.out_channels(), 192, 3, 1, 1)?;
        let mut channels = conv2.out_channels();
        let mut inceptions = Vec::with_capacity(INCEPTIONS.len());
        let mut aux_channels = Vec::new();
        for (name, widths) in INCEPTIONS {
            let block = b.inception(name, channels, widths)?;
            channels = block.out_channels();
            if name == "inception_4a" || name == "inception_4d" {
                aux_channels.push(channels);
            }
            inceptions.push(block);
        }
        let features = b.scaled(128) * sides.aux_output * sides.aux_output;
        let hidden = b.scaled(1024);
        let aux_head = |b: &mut Builder, name: &str, in_channels| {
            let conv = b.conv(&format!("{name}.conv"), in_channels, 128, 1, 1, 0)?;
            let branch = |b: &mut Builder, enabled: bool, fc: &str, out: &str, outputs| {
                if !enabled {
                    return Ok(None);
                }
                Ok::<_, candle_core::Error>(Some(AuxBranch {
                    fc: b.linear(&format!("{name}.{fc}"), features, hidden, HIDDEN_BIAS)?,
                    out: b.linear(&format!("{name}.{out}"), hidden, outputs, 0.0)?,
                }))
            };
            let classifier = branch(b, params.classification, "fc", "classifier", num_classes)?;
            let regressor = branch(b, params.regression, TOPIC_FC, TOPIC_REGRESSOR, topics)?;
            Ok::<_, candle_core::Error>(AuxHead {
                pool_kernel: sides.aux_input.min(5),
                conv,
                classifier,
                regressor,
            })
        };
        let aux = [
            aux_head(&mut b, "loss1", aux_channels[0])?,
            aux_head(&mut b, "loss2", aux_channels[1])?,
        ];
        let main = MainHead {
            classifier: match params.classification {
                true => Some(b.linear("loss3.classifier", channels, num_classes, 0.0)?),
                false => None,
            },
            regressor: match params.regression {
                true => {
                    Some(b.linear(&format!("loss3.{TOPIC_REGRESSOR}"), channels, topics, 0.0)?)
                }
                false => None,
            },
        };
        Ok(Self {
            batch_norm: b.batch_norm,
            input_size: params.input_size as usize,
            conv1,
            conv2_reduce,
            conv2,
            inceptions,
            aux,
            main,
            vars: b.vars,
            buffers: b.buffers,
        })
    }

    /// The side of the square images the network was built for.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// Learnable tensors by name, in construction order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Batch-norm running statistics by name (empty for `googlenet`).
    pub fn buffers(&self) -> &[(String, Var)] {
        &self.buffers
    }

    /// Training pass: dropout from `rng`, batch statistics. Outputs in [`HEAD_NAMES`] order.
    pub fn forward_train(
        &self,
        images: &Tensor,
        rng: &ChaCha8Rng,
    ) -> Result<[HeadOutput; 3], ModelError> {
        self.forward_train_rows(images, rng, 0)
    }

    /// [`GoogLeNet::forward_train`] on rows `first_row..` of a larger batch (a data-parallel
    /// shard): the dropout masks are those of the same rows in the whole batch.
    pub fn forward_train_rows(
        &self,
        images: &Tensor,
        rng: &ChaCha8Rng,
        first_row: usize,
    ) -> Result<[HeadOutput; 3], ModelError> {
        let mut pass = Pass::Train {
            rng: Box::new(rng.clone()),
            first_row,
            layer: 0,
        };
        let (main, aux) = self.forward(images, &mut pass, true)?;
        let [aux1, aux2] = aux.expect("aux heads run in training");
        Ok([main, aux1, aux2])
    }

    /// Evaluation pass: no dropout, running statistics, main head only.
    pub fn forward_eval(&self, images: &Tensor) -> Result<HeadOutput, ModelError> {
        Ok(self.forward(images, &mut Pass::Eval, false)?.0)
    }

    /// [`GoogLeNet::forward_eval`] and the globally pooled features the main head reads (the
    /// penultimate layer: one row of `channels` per image), for neighbours in feature space.
    pub fn forward_eval_features(
        &self,
        images: &Tensor,
    ) -> Result<(HeadOutput, Tensor), ModelError> {
        let (main, features, _) = self.forward_with_features(images, &mut Pass::Eval, false)?;
        Ok((main, features))
    }

    fn forward(
        &self,
        images: &Tensor,
        pass: &mut Pass,
        with_aux: bool,
    ) -> candle_core::Result<(HeadOutput, Option<[HeadOutput; 2]>)> {
        let (main, _, aux) = self.forward_with_features(images, pass, with_aux)?;
        Ok((main, aux))
    }

    fn forward_with_features(
        &self,
        images: &Tensor,
        pass: &mut Pass,
        with_aux: bool,
    ) -> candle_core::Result<(HeadOutput, Tensor, Option<[HeadOutput; 2]>)> {
        let train = pass.is_train();
        let normalise = |x: Tensor| match self.batch_norm {
            true => Ok(x),
            false => lrn(&x, LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K),
        };
        let x = self.conv1.forward(images, train)?;
        let x = normalise(max_pool2d(&x, 3, 2, 0, true)?)?;
        let x = self.conv2_reduce.forward(&x, train)?;
        let x = normalise(self.conv2.forward(&x, train)?)?;
        let mut x = max_pool2d(&x, 3, 2, 0, true)?;
        let mut aux_outputs = Vec::new();
        for (block, (name, _)) in self.inceptions.iter().zip(INCEPTIONS) {
            x = block.forward(&x, train)?;
            match name {
                "inception_3b" | "inception_4e" => x = max_pool2d(&x, 3, 2, 0, true)?,
                "inception_4a" | "inception_4d" if with_aux => {
                    let head = &self.aux[aux_outputs.len()];
                    aux_outputs.push(head.forward(&x, pass)?);
                }
                _ => {}
            }
        }
        let (main, features) = self.main.forward(&x, pass)?;
        let aux = aux_outputs.try_into().ok();
        Ok((main, features, aux))
    }

    /// All tensors a checkpoint holds for the network: learnable ones, then buffers.
    pub fn named_tensors(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars
            .iter()
            .chain(&self.buffers)
            .map(|(name, var)| (name.as_str(), var))
    }

    /// Overwrites every learnable tensor and buffer from `tensors` (by name; extra entries
    /// are ignored). Nothing is changed unless every tensor is present with the right shape.
    pub fn load(&self, tensors: &HashMap<String, Tensor>) -> Result<(), ModelError> {
        self.load_but(tensors, |_| false).map(drop)
    }

    /// [`Self::load`] for `train.init`: the regression heads that a checkpoint of a net without
    /// them lacks keep their fresh weights (the 2-headed net fine-tuned from the cleaned
    /// 1-headed one, as the original did). Returns the names of the tensors left fresh.
    pub fn load_for_init(
        &self,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Vec<String>, ModelError> {
        self.load_but(tensors, is_regression_head)
    }

    /// Loads as [`Self::load`] except that a tensor `may_lack` names may be absent.
    fn load_but(
        &self,
        tensors: &HashMap<String, Tensor>,
        may_lack: fn(&str) -> bool,
    ) -> Result<Vec<String>, ModelError> {
        let mut fresh = Vec::new();
        for (name, var) in self.named_tensors() {
            let Some(found) = tensors.get(name) else {
                match may_lack(name) {
                    true => {
                        fresh.push(name.to_string());
                        continue;
                    }
                    false => {
                        return Err(ModelError::MissingTensor {
                            name: name.to_string(),
                        })
                    }
                }
            };
            if found.dims() != var.dims() {
                return Err(ModelError::ShapeMismatch {
                    name: name.to_string(),
                    expected: var.dims().to_vec(),
                    found: found.dims().to_vec(),
                });
            }
        }
        for (name, var) in self.named_tensors() {
            if let Some(found) = tensors.get(name) {
                var.set(&found.to_device(var.device())?.to_dtype(var.dtype())?)?;
            }
        }
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn params(arch: Arch, width: f64, input_size: u32, regression: bool) -> ModelParams {
        ModelParams {
            arch,
            regression,
            input_size,
            width,
            ..crate::recipe::Recipe::default().model
        }
    }

    fn count(net: &GoogLeNet) -> usize {
        net.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// `train.init` of the 2-headed net from a 1-headed checkpoint: the shared tensors come
    /// from the checkpoint, the regression heads keep their fresh weights; a plain load
    /// refuses the same checkpoint, and a 1-headed net loads a 2-headed one's tensors.
    #[test]
    fn init_of_the_two_headed_net_keeps_its_fresh_regression_heads() {
        let net = |regression: bool, seed: u64| {
            let p = params(Arch::Googlenet, 0.125, 64, regression);
            GoogLeNet::new(&p, 10, 8, seed, &Device::Cpu).unwrap()
        };
        let one_headed = net(false, 1);
        let tensors: HashMap<String, Tensor> = one_headed
            .named_tensors()
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect();
        let two_headed = net(true, 2);
        let values = |net: &GoogLeNet, name: &str| -> Vec<f32> {
            let (_, var) = net.named_tensors().find(|(n, _)| *n == name).unwrap();
            var.flatten_all().unwrap().to_vec1().unwrap()
        };
        let fresh_head = values(&two_headed, "loss3.topic_regressor.weight");
        assert!(matches!(
            two_headed.load(&tensors),
            Err(ModelError::MissingTensor { .. })
        ));
        let mut fresh = two_headed.load_for_init(&tensors).unwrap();
        fresh.sort();
        assert_eq!(
            fresh,
            [
                "loss1.topic_fc.bias",
                "loss1.topic_fc.weight",
                "loss1.topic_regressor.bias",
                "loss1.topic_regressor.weight",
                "loss2.topic_fc.bias",
                "loss2.topic_fc.weight",
                "loss2.topic_regressor.bias",
                "loss2.topic_regressor.weight",
                "loss3.topic_regressor.bias",
                "loss3.topic_regressor.weight",
            ]
        );
        for shared in ["conv1.weight", "loss1.fc.weight", "loss3.classifier.weight"] {
            assert_eq!(values(&two_headed, shared), values(&one_headed, shared));
        }
        assert_eq!(
            values(&two_headed, "loss3.topic_regressor.weight"),
            fresh_head
        );
        let back: HashMap<String, Tensor> = two_headed
            .named_tensors()
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect();
        assert!(net(false, 3).load_for_init(&back).unwrap().is_empty());
    }

    #[test]
    fn trunk_sides_follow_caffe_ceil_mode() {
        // 224 px in BVLC GoogLeNet: 112 → 56 → 28 → 14 (4a, 4d) → aux pool 5/3 → 4×4.
        let full = trunk_sides(224).unwrap();
        assert_eq!((full.aux_input, full.aux_output), (14, 4));
        // 64 px: 32 → 16 → 8 → 4; the aux pool shrinks to the 4×4 map.
        let small = trunk_sides(64).unwrap();
        assert_eq!((small.aux_input, small.aux_output), (4, 1));
    }

    #[test]
    fn full_googlenet_has_the_published_parameter_count() {
        // BVLC GoogLeNet with 1000 classes: 13,378,280 learnable values, 6,998,552 without
        // loss1/loss2. Computed independently from the paper's table with:
        //   conv = lambda i, o, k: o*i*k*k + o
        //   total = conv(3,64,7) + conv(64,64,1) + conv(64,192,3); c = 192; aux_in = []
        //   for n, (a,b,d,e,f,g) in enumerate(INCEPTIONS):   # widths as in INCEPTIONS
        //       total += conv(c,a,1)+conv(c,b,1)+conv(b,d,3)+conv(c,e,1)+conv(e,f,5)+conv(c,g,1)
        //       c = a+d+f+g; aux_in += [c] if n in (2, 5) else []
        //   main = total + c*1000 + 1000
        //   aux = sum(conv(i,128,1) + 2048*1024+1024 + 1024*1000+1000 for i in aux_in)
        let net = GoogLeNet::new(
            &params(Arch::Googlenet, 1.0, 224, false),
            1000,
            0,
            0,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(count(&net), 13_378_280);
        let aux: usize = net
            .vars()
            .iter()
            .filter(|(n, _)| n.starts_with("loss1") || n.starts_with("loss2"))
            .map(|(_, v)| v.elem_count())
            .sum();
        assert_eq!(count(&net) - aux, 6_998_552);
    }

    #[test]
    fn xavier_init_bounds_follow_fan_in() {
        let net = GoogLeNet::new(
            &params(Arch::Googlenet, 1.0, 224, false),
            10,
            0,
            7,
            &Device::Cpu,
        )
        .unwrap();
        let find = |name: &str| &net.vars().iter().find(|(n, _)| n == name).unwrap().1;
        let conv1: Vec<f32> = find("conv1.weight")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let bound = (3.0f32 / (3.0 * 49.0)).sqrt();
        assert!(conv1.iter().all(|w| w.abs() <= bound));
        // A uniform draw fills its range: the extremes come close to ±bound.
        let max = conv1.iter().fold(0f32, |m, w| m.max(w.abs()));
        assert!(max > 0.99 * bound, "max |w| {max} vs bound {bound}");
        let bias: Vec<f32> = find("conv1.bias").to_vec1().unwrap();
        assert!(bias.iter().all(|&b| b == 0.2));
        let classifier: Vec<f32> = find("loss3.classifier.bias").to_vec1().unwrap();
        assert!(classifier.iter().all(|&b| b == 0.0));
    }

    #[test]
    fn small_two_headed_bn_net_shapes() {
        let net = GoogLeNet::new(
            &params(Arch::GooglenetBn, 0.125, 64, true),
            5,
            7,
            1,
            &Device::Cpu,
        )
        .unwrap();
        assert!(net.buffers().len() > 100);
        assert!(!net.vars().iter().any(|(n, _)| n.starts_with("conv1.bias")));
        let images = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
        let rng = ChaCha8Rng::seed_from_u64(0);
        let heads = net.forward_train(&images, &rng).unwrap();
        for head in &heads {
            assert_eq!(head.classes.as_ref().unwrap().dims(), &[2, 5]);
            assert_eq!(head.topics.as_ref().unwrap().dims(), &[2, 7]);
        }
        let eval = net.forward_eval(&images).unwrap();
        assert_eq!(eval.classes.unwrap().dims(), &[2, 5]);
    }

    #[test]
    fn batch_norm_training_moves_running_statistics_towards_the_batch() {
        let net = GoogLeNet::new(
            &params(Arch::GooglenetBn, 0.125, 64, false),
            3,
            0,
            1,
            &Device::Cpu,
        )
        .unwrap();
        let images = Tensor::randn(0f32, 1.0, (4, 3, 64, 64), &Device::Cpu).unwrap();
        let (name, running_mean) = &net.buffers()[0];
        assert_eq!(name, "conv1.bn.running_mean");
        let weight = &net.vars()[0].1;
        // conv1 has no bias in the BN variant: its batch mean per channel, by hand.
        let batch_mean: Vec<f32> = images
            .conv2d(weight, 3, 2, 1, 1)
            .unwrap()
            .mean_keepdim((0, 2, 3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        net.forward_train(&images, &ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let updated: Vec<f32> = running_mean.to_vec1().unwrap();
        for (u, b) in updated.iter().zip(&batch_mean) {
            assert!((u - 0.1 * b).abs() < 1e-5, "{u} vs 0.1 × {b}");
        }
    }

    #[test]
    fn eval_is_deterministic_and_train_draws_dropout() {
        let net = GoogLeNet::new(
            &params(Arch::Googlenet, 0.125, 64, false),
            3,
            0,
            1,
            &Device::Cpu,
        )
        .unwrap();
        let images = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
        let logits = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let a = logits(net.forward_eval(&images).unwrap().classes.unwrap());
        let b = logits(net.forward_eval(&images).unwrap().classes.unwrap());
        assert_eq!(a, b);
        let rng = ChaCha8Rng::seed_from_u64(3);
        let [main, ..] = net.forward_train(&images, &rng).unwrap();
        assert_ne!(a, logits(main.classes.unwrap()));
    }

    #[test]
    fn too_small_input_names_the_layer() {
        let err = GoogLeNet::new(
            &params(Arch::Googlenet, 0.125, 32, false),
            3,
            0,
            1,
            &Device::Cpu,
        )
        .err()
        .unwrap();
        insta::assert_snapshot!(err.to_string(), @"model.input_size = 32: too small for GoogLeNet, pool4 would see 2×2 px, less than its 3×3 window");
    }

    #[test]
    fn load_rejects_a_wrong_shape_and_changes_nothing() {
        let p = params(Arch::Googlenet, 0.125, 64, false);
        let net = GoogLeNet::new(&p, 3, 0, 1, &Device::Cpu).unwrap();
        let other = GoogLeNet::new(&p, 4, 0, 2, &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> = other
            .named_tensors()
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect();
        let before: Vec<f32> = net.vars()[0].1.flatten_all().unwrap().to_vec1().unwrap();
        let err = net.load(&tensors).unwrap_err();
        assert!(
            matches!(err, ModelError::ShapeMismatch { ref name, .. } if name.starts_with("loss1.classifier")),
            "{err}"
        );
        let after: Vec<f32> = net.vars()[0].1.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(before, after);
    }
}

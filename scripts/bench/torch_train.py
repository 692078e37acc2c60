"""PyTorch eager side of `runner bench train`: training img/s of BVLC GoogLeNet on the CPU.

The network is websieve's (src/model/googlenet.rs) layer for layer: LRN after pool1 and conv2,
3 heads (aux weight 0.3), a width multiplier (channels round(c * width), at least 1; 1/8 is the
experiments' small net), any input size (the aux heads pool min(side, 5)/3 in ceil mode, as
ours do), dropout 0.7 / 0.4, and Caffe's SGD (momentum 0.9, weight decay 2e-4; biases at twice
the lr and no decay). At width 1, 224 px it is `../shared/bench/torch_cpu.py`'s net.

One JSON line per network on stdout: {"network", "threads", "batch", "classes", "params",
"img_per_s"} (the mean over the timed steps, after the warm-up steps, as ours).

Usage: python torch_train.py --network 1,224,4,1000 --network 0.125,64,64,10 --threads 1
(width, input px, batch, classes per network).
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# (1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj) per inception block, as ours.
INCEPTIONS = [
    ("3a", [64, 96, 128, 16, 32, 32]),
    ("3b", [128, 128, 192, 32, 96, 64]),
    ("4a", [192, 96, 208, 16, 48, 64]),
    ("4b", [160, 112, 224, 24, 64, 64]),
    ("4c", [128, 128, 256, 24, 64, 64]),
    ("4d", [112, 144, 288, 32, 64, 64]),
    ("4e", [256, 160, 320, 32, 128, 128]),
    ("5a", [256, 160, 320, 32, 128, 128]),
    ("5b", [384, 192, 384, 48, 128, 128]),
]


def scaled(channels, width):
    """Rust's `(c * width).round().max(1)`: halves round away from zero."""
    return max(1, math.floor(channels * width + 0.5))


def pooled(side, kernel, stride):
    """Ceil-mode pooled length without padding (ours and Caffe's)."""
    return -(-(side - kernel) // stride) + 1


class Inception(nn.Module):
    def __init__(self, cin, widths, width):
        super().__init__()
        c1, c3r, c3, c5r, c5, cp = (scaled(c, width) for c in widths)
        self.b1 = nn.Conv2d(cin, c1, 1)
        self.b3r = nn.Conv2d(cin, c3r, 1)
        self.b3 = nn.Conv2d(c3r, c3, 3, padding=1)
        self.b5r = nn.Conv2d(cin, c5r, 1)
        self.b5 = nn.Conv2d(c5r, c5, 5, padding=2)
        self.proj = nn.Conv2d(cin, cp, 1)
        self.out = c1 + c3 + c5 + cp

    def forward(self, x):
        a = F.relu(self.b1(x))
        b = F.relu(self.b3(F.relu(self.b3r(x))))
        c = F.relu(self.b5(F.relu(self.b5r(x))))
        d = F.relu(self.proj(F.max_pool2d(x, 3, 1, 1, ceil_mode=True)))
        return torch.cat([a, b, c, d], 1)


class AuxHead(nn.Module):
    """avg-pool min(side, 5)/3 (ceil) → 1×1 conv 128 → ReLU → fc 1024 → ReLU → dropout 0.7 → fc."""

    def __init__(self, cin, side, classes, width):
        super().__init__()
        self.kernel = min(side, 5)
        out = pooled(side, self.kernel, 3)
        self.conv = nn.Conv2d(cin, scaled(128, width), 1)
        self.fc = nn.Linear(scaled(128, width) * out * out, scaled(1024, width))
        self.classifier = nn.Linear(scaled(1024, width), classes)

    def forward(self, x):
        x = F.avg_pool2d(x, self.kernel, 3, ceil_mode=True)
        x = torch.flatten(F.relu(self.conv(x)), 1)
        return self.classifier(F.dropout(F.relu(self.fc(x)), 0.7, self.training))


class GoogLeNet(nn.Module):
    def __init__(self, width, size, classes):
        super().__init__()
        s = lambda c: scaled(c, width)  # noqa: E731
        self.conv1 = nn.Conv2d(3, s(64), 7, 2, 3)
        self.conv2_reduce = nn.Conv2d(s(64), s(64), 1)
        self.conv2 = nn.Conv2d(s(64), s(192), 3, padding=1)
        side = pooled(pooled((size + 6 - 7) // 2 + 1, 3, 2), 3, 2)
        channels, blocks, aux = s(192), [], []
        for name, widths in INCEPTIONS:
            if name == "4a":
                side = pooled(side, 3, 2)
            blocks.append(Inception(channels, widths, width))
            channels = blocks[-1].out
            if name in ("4a", "4d"):
                aux.append(AuxHead(channels, side, classes, width))
        self.blocks = nn.ModuleList(blocks)
        self.aux = nn.ModuleList(aux)
        self.classifier = nn.Linear(channels, classes)
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def forward(self, x):
        x = self.lrn(F.max_pool2d(F.relu(self.conv1(x)), 3, 2, ceil_mode=True))
        x = F.relu(self.conv2(F.relu(self.conv2_reduce(x))))
        x = F.max_pool2d(self.lrn(x), 3, 2, ceil_mode=True)
        aux = []
        for (name, _), block in zip(INCEPTIONS, self.blocks):
            x = block(x)
            if name in ("3b", "4e"):
                x = F.max_pool2d(x, 3, 2, ceil_mode=True)
            if name in ("4a", "4d"):
                aux.append(self.aux[len(aux)](x))
        x = F.dropout(x.mean((2, 3)), 0.4, self.training)
        return [self.classifier(x)] + aux


def caffe_sgd(model, lr):
    """Caffe's SGD as ours: biases at 2× lr without decay, every other tensor at 1× with decay."""
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    others = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    groups = [
        {"params": others, "lr": lr, "weight_decay": 2e-4},
        {"params": biases, "lr": 2 * lr, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def loss_fn(outputs, labels):
    """Main head 1, each aux head 0.3: mean cross-entropy (λ = 1 for every row)."""
    return sum(w * F.cross_entropy(o, labels) for w, o in zip((1.0, 0.3, 0.3), outputs))


def measure(width, size, batch, classes, warmup, steps):
    torch.manual_seed(0)
    model = GoogLeNet(width, size, classes).train()
    opt = caffe_sgd(model, 1e-3)
    images = torch.randn(batch, 3, size, size) * 50
    labels = torch.arange(batch) % classes

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / max(steps, 1)
    params = sum(p.numel() for p in model.parameters())
    return params, batch / seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--network", action="append", required=True,
                    help="width,input px,batch,classes (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for spec in a.network:
        width, size, batch, classes = spec.split(",")
        width, size, batch, classes = float(width), int(size), int(batch), int(classes)
        params, rate = measure(width, size, batch, classes, a.warmup, a.steps)
        print(json.dumps({
            "network": spec, "threads": a.threads, "torch": torch.__version__,
            "batch": batch, "classes": classes, "params": params, "img_per_s": rate,
        }), flush=True)


if __name__ == "__main__":
    main()

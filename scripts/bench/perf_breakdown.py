"""Where `runner bench train`'s CPU time goes: the samples of
`perf record --call-graph dwarf runner bench train --measure-here ...` grouped by what they do
(BENCHMARKS.md, issue 17). A sample goes to the SGD update or the all-reduce when any frame of
its stack is there, else to the innermost frame that names one of the other groups; weight
initialisation is left out. The pooling kernels run on rayon's workers, whose stacks name only
the closure's impl block: `before` numbers them as commit c3e5025 did, `after` as later.

Usage: python3 scripts/bench/perf_breakdown.py perf.data before|after"""
import re, subprocess, sys, collections
pool = {"before": ("2", "4", "6", "8"), "after": ("3", "5", "7", "9")}[sys.argv[2]]
pats = [
 ("max pool forward", rf"ops::pool::\{{impl#{pool[0]}\}}::run|MaxRows"),
 ("max pool backward", rf"ops::pool::\{{impl#{pool[1]}\}}::run"),
 ("avg pool forward + backward", rf"ops::pool::\{{impl#({pool[2]}|{pool[3]})\}}::run"),
 ("LRN forward + backward", r"ops::lrn"),
 ("bias + ReLU (outside convolutions)", r"ops::bias_relu"),
 ("im2col", r"conv::cpu::im2col"),
 ("col2im", r"conv::cpu::col2im"),
 ("matrix products (gemm)", r"gemm_f32|gemm_common|gemm::"),
 ("convolution: other passes (bias, ReLU mask, output layout)", r"conv::cpu::"),
 ("SGD update", r"train::optim::|train::update"),
 ("all-reduce (thread ranks)", r"websieve::runtime::"),
 ("candle: backprop bookkeeping, gradient sums, cat, copies", r"candle_core::"),
]
pats = [(n, re.compile(p)) for n, p in pats]
out = subprocess.run(["perf", "script", "-i", sys.argv[1], "-F", "ip,sym"], capture_output=True, text=True).stdout
whole = [(n, re.compile(p)) for n, p in [
 ("SGD update", r"train::optim::Sgd::apply|train::update"),
 ("all-reduce (thread ranks)", r"runtime::exchange|runtime::combine|all_reduce"),
]]
skip = re.compile(r"googlenet::Builder|xavier|GoogLeNet::new|randn")
counts = collections.Counter(); total = 0
for block in out.split("\n\n"):
    frames = [l.strip() for l in block.strip().split("\n") if l.strip()]
    if not frames or any(skip.search(f) for f in frames):
        continue
    total += 1
    cat = "other (kernel page faults, allocator)"
    hit = next((n for n, p in whole if any(p.search(f) for f in frames)), None)
    if hit:
        counts[hit] += 1
        continue
    for f in frames:
        hit = next((n for n, p in pats if p.search(f)), None)
        if hit: cat = hit; break
    counts[cat] += 1
for n, c in counts.most_common():
    print(f"| {n} | {100*c/total:.1f}% |")
print("samples", total)

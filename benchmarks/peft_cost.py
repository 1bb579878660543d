#!/usr/bin/env python
"""What each tuning method costs next to full fine-tuning, measured in one run on CPU.

For ViT-B/16 and Swin-T (mmpretrain, 224 px, random init, 100-class linear head, batch 8) and for
every method, as a ratio to full fine-tuning:

* step time: forward + backward + AdamW step, median of ``--steps`` timed steps after warm-up;
  the methods are timed round-robin (serpentine order: full FT first, then last, ...) so that a
  slow-down from other processes on the machine is shared rather than landing on one method;
* training-state memory: bytes of the tensors saved for backward (unique storages seen by
  ``torch.autograd.graph.saved_tensors_hooks``, excluding the storages of the model's own
  parameters and buffers) + bytes of the trainable parameters' ``.grad`` + bytes of the AdamW
  state after one step. Deterministic;
* peak RSS of a separate process per method (this script with ``--child METHOD MODEL``: build,
  run two training steps, report the peak RSS: ``VmHWM``, which is ``ru_maxrss`` without the
  parent's share that Linux carries across fork + exec), and the part of it above the RSS right
  after the model was built (what training added);
* for the mergeable methods (BitFit, SSF, LoRA, RLRR, DoRA, SNELL): eval-mode inference time of
  the merged backbone (``get_peft(backbone).merge(backbone)``) over a freshly built stock backbone.

Timings never go into unit tests; this script is the place for them. Usage::

    python benchmarks/peft_cost.py                      # the full run (see benchmarks/README.md)
    python benchmarks/peft_cost.py --quick              # ViT only, 1 timed step
    python benchmarks/peft_cost.py --models swin --methods full,ssf,lora --steps 5
    python benchmarks/peft_cost.py --models vit --methods full,ssf --breakdown ssf --no-rss --no-merge
    python benchmarks/peft_cost.py --compile --depth 2 --batch 4   # torch.compile speed-up per method
    python benchmarks/peft_cost.py --device cuda --batch 32 --no-rss   # on a GPU (gpu_proof.sh)
"""
import argparse
import collections
import gc
import inspect
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import mmssf  # noqa: E402,F401  (registers the methods)
from mmssf.peft.registry_facts import method_classes  # noqa: E402

#: labels of the reference variants (the methods' own come from their cards: ``card.label``)
VARIANT_LABELS = {'ssf_naive': 'SSF (naive hook, reference)',
                  'snell_dense': 'SNELL-8 storing ΔW (effective weights, reference)'}


def method_key(cls) -> str:
    """Short key of a method: its zoo prefix (``vpt-deep`` -> ``vpt_deep``), else its name."""
    return cls.card.zoo.replace('-', '_') if cls.card.zoo else cls.__name__.lower()


def _builds_from_defaults(cls) -> bool:
    """SPT needs an allocation (benchmarks/spt_cost.py measures it)."""
    return all(p.default is not inspect.Parameter.empty or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
               for name, p in inspect.signature(cls.__init__).parameters.items() if name != 'self')


def registry_methods():
    """key -> (label, apply_peft config, variant): every registered method that builds from its
    defaults, full fine-tuning first, plus the naive-SSF reference variant."""
    rows = collections.OrderedDict()
    order = {'FullFineTune': 0, 'LinearProbe': 1}
    for cls in sorted(method_classes(), key=lambda c: (order.get(c.__name__, 2), c.__name__)):
        if not _builds_from_defaults(cls):
            continue
        key = method_key(cls)
        rows[key] = (cls.card.label or cls.__name__, dict(type=cls.__name__), None)
        if key == 'ssf':
            rows['ssf_naive'] = (VARIANT_LABELS['ssf_naive'], dict(type='SSF'), 'naive')
        if key == 'snell':
            rows['snell_dense'] = (VARIANT_LABELS['snell_dense'], dict(type='SNELL'), 'dense')
    return rows


METHODS = registry_methods()
_CLASSES = {cls.__name__: cls for cls in method_classes()}
#: methods whose merged backbone is timed against the stock one (the baselines merge trivially)
MERGEABLE = tuple(k for k, (_, cfg, variant) in METHODS.items()
                  if variant is None and k not in ('full', 'linear') and _CLASSES[cfg['type']].mergeable)
MODELS = collections.OrderedDict([('vit', 'ViT-B/16'), ('swin', 'Swin-T')])
NUM_CLASSES = 100
IMG = 224
MB = 1024 ** 2

# Goals (from the issue). Each: (key, description, predicate on the row's ratios).
GOALS = {
    'ssf': [('mem', 'mem <= 0.55', lambda r: r <= 0.55), ('time', 'time <= 0.65', lambda r: r <= 0.65)],
    'lora': [('mem', 'mem < 1', lambda r: r < 1.0), ('time', 'time < 1', lambda r: r < 1.0)],
    'rlrr': [('mem', 'mem < 1', lambda r: r < 1.0), ('time', 'time < 1', lambda r: r < 1.0)],
    'snell': [('mem', 'mem < 1', lambda r: r < 1.0)],
    # (issue 20: each new method below full fine-tuning in step time)
    'adaptformer': [('time', 'time < 1', lambda r: r < 1.0)],
    'adapterplus': [('time', 'time < 1', lambda r: r < 1.0)],
    'fact_tt': [('time', 'time < 1', lambda r: r < 1.0)],
    'fact_tk': [('time', 'time < 1', lambda r: r < 1.0)],
    'glora': [('time', 'time < 1', lambda r: r < 1.0)],  # (its default: the largest support)
}
MERGE_TOL = 0.05  # merged / stock inference time counts as 1.00 within +-5 % (timing noise)
#: set by main() from --device / --depth (the child processes get them on their command line)
DEVICE = torch.device('cpu')
DEPTH = None


# ---------------------------------------------------------------------------------------------
# building


def set_threads(threads):
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def quiet_mmengine():
    """init_weights() logs every parameter at INFO; keep warnings only."""
    import logging

    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:
        handler.setLevel(logging.WARNING)


def build_backbone(model: str, seed: int = 0) -> nn.Module:
    import mmssf  # noqa: F401  (registers methods, patches the stack)
    quiet_mmengine()
    from mmpretrain.models.backbones import SwinTransformer, VisionTransformer
    torch.manual_seed(seed)
    if model == 'vit':
        arch = 'b' if DEPTH is None else dict(embed_dims=768, num_layers=DEPTH, num_heads=12,
                                              feedforward_channels=3072)
        backbone = VisionTransformer(arch=arch, img_size=IMG, patch_size=16)
    elif model == 'swin':
        arch = 'tiny' if DEPTH is None else dict(embed_dims=96, depths=[2, 2, DEPTH, 2],
                                                 num_heads=[3, 6, 12, 24])
        backbone = SwinTransformer(arch=arch, img_size=IMG)
    else:
        raise ValueError(model)
    backbone.init_weights()
    return backbone


def sync():
    """Wait for the device (timings on CUDA)."""
    if DEVICE.type == 'cuda':
        torch.cuda.synchronize()


class Classifier(nn.Module):
    """Backbone + a 100-class linear head (ViT: cls token; Swin: mean-pooled last stage)."""

    def __init__(self, backbone: nn.Module, dim: int = 768):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x):
        feat = self.backbone(x)[-1]
        if feat.dim() == 4:
            feat = feat.mean((2, 3))
        return self.head(feat)


def naive_ssf(method):
    """Replace SSF's autograd op with a plain ``o * gamma + beta`` forward hook (same placements)."""
    for unit in method.units:
        if unit.reparam:
            continue  # (no such unit on the mmpretrain backbones)
        for handle in unit.handles:
            handle.remove()
        dim = getattr(unit, "channel_dim", -1)  # (norm units fold into the norm: no such attribute)

        def hook(module, args, out, unit=unit, dim=dim):
            shape = [1] * out.dim()
            shape[dim] = -1
            out = out * unit.scale.view(shape)
            return out + unit.shift.view(shape) if unit.shift is not None else out

        unit.handles = [unit.module.register_forward_hook(hook)]


def dense_snell(method):
    """SNELL with its update applied as an effective weight ``W + ΔWˢ`` on every Linear (what
    autograd then keeps: the paper's "SNELL storing ΔW", Fig. 3b), instead of the recomputing
    hook."""
    for unit in method.units:
        if unit.reparam:
            continue
        for handle in unit.handles:
            handle.remove()
        unit.handles = []
        unit.add_weight_transform('snell', ('weight', ), unit.reparameterize)


def build_trainer(model: str, method: str, seed: int = 0):
    """(classifier in train mode, AdamW over its trainable parameters)."""
    from mmssf.peft import apply_peft
    _, cfg, variant = METHODS[method]
    backbone = build_backbone(model, seed)
    peft = apply_peft(backbone, dict(cfg))
    if variant == 'naive':
        naive_ssf(peft)
    elif variant == 'dense':
        dense_snell(peft)
    torch.manual_seed(seed + 1)
    clf = Classifier(backbone).to(DEVICE)  # the head always trains
    clf.train()
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    return clf, opt


def make_batch(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, IMG, IMG, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch, ), generator=gen)
    return x.to(DEVICE), y.to(DEVICE)


def train_step(clf, opt, x, y):
    loss = F.cross_entropy(clf(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def num_trainable(clf):
    return sum(p.numel() for p in clf.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# training-state memory


class ModuleTracker:
    """Knows which module is running (for the per-module breakdown of saved tensors)."""

    def __init__(self, root: nn.Module):
        self.stack = ['<outside>']
        self.handles = []
        for name, mod in root.named_modules():
            self.handles.append(mod.register_forward_pre_hook(self._push(name or '<root>'), prepend=True))
            self.handles.append(mod.register_forward_hook(self._pop, always_call=True))

    def _push(self, name):
        def push(module, args):
            self.stack.append(name)
        return push

    def _pop(self, module, args, out):
        self.stack.pop()

    def current(self):
        return self.stack[-1]

    def remove(self):
        for h in self.handles:
            h.remove()


def measure_state(clf, opt, x, y, breakdown=False):
    """One training step that records training-state bytes. Returns a dict (bytes)."""
    model_ptrs = {t.untyped_storage().data_ptr() for t in list(clf.parameters()) + list(clf.buffers())}
    saved = {}  # storage ptr -> bytes
    groups = collections.defaultdict(lambda: [0, 0])  # (module, producer) -> [bytes, count]
    shapes = {}  # (module, producer) -> first shape seen
    tracker = ModuleTracker(clf) if breakdown else None
    if DEVICE.type == 'cuda':
        sync()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()

    def pack(t):
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        ptr = storage.data_ptr()
        if ptr not in model_ptrs and ptr not in saved:  # parameters saved by an op are not activations
            saved[ptr] = storage.nbytes()
            if tracker is not None:
                module = re.sub(r'\.\d+(?=\.|$)', '.*', tracker.current())
                producer = type(t.grad_fn).__name__ if t.grad_fn is not None else (
                    'param-derived leaf' if t.requires_grad else 'no-grad tensor')
                key = (module, producer)
                groups[key][0] += storage.nbytes()
                groups[key][1] += 1
                shapes.setdefault(key, tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(clf(x), y)
    if tracker is not None:
        tracker.remove()
    loss.backward()
    grads = sum(p.grad.nbytes for p in clf.parameters() if p.grad is not None)
    opt.step()
    opt_state = sum(v.nbytes for state in opt.state.values() for v in state.values()
                    if torch.is_tensor(v))
    opt.zero_grad(set_to_none=True)
    out = dict(act=sum(saved.values()), grad=grads, opt=opt_state, n_saved=len(saved))
    if DEVICE.type == 'cuda':  # (the first step: AdamW's state is allocated inside it)
        sync()
        out['cuda_peak'] = torch.cuda.max_memory_allocated()
        out['cuda_resident'] = resident
    out['total'] = out['act'] + out['grad'] + out['opt']
    if breakdown:
        out['groups'] = sorted(((k + (shapes[k], ), v[0], v[1]) for k, v in groups.items()),
                               key=lambda r: -r[1])
    return out


def print_breakdown(model, method, state, top=30):
    print(f'\n### Saved-for-backward breakdown: {MODELS[model]}, {METHODS[method][0]}')
    print(f'(unique storages first saved while the module was running, by producing op; '
          f'total {state["act"] / MB:.1f} MB in {state["n_saved"]} storages)\n')
    print('| module (block indices as *) | produced by | first shape | count | MB |')
    print('|---|---|---|---:|---:|')
    for (module, producer, shape), nbytes, count in state['groups'][:top]:
        print(f'| {module} | {producer} | {"x".join(map(str, shape))} | {count} | {nbytes / MB:.1f} |')
    rest = state['groups'][top:]
    if rest:
        print(f'| ({len(rest)} more groups) | | | {sum(r[2] for r in rest)} | '
              f'{sum(r[1] for r in rest) / MB:.1f} |')


# ---------------------------------------------------------------------------------------------
# child process: peak RSS


def proc_status_kb(field):
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process, KiB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    return 0


def current_rss_kb():
    return proc_status_kb('VmRSS')


def child_main(method, model, args):
    set_threads(args.threads)
    import mmssf  # noqa: F401
    rss_import = current_rss_kb()
    clf, opt = build_trainer(model, method)
    x, y = make_batch(args.batch)
    gc.collect()
    rss_built = current_rss_kb()
    for _ in range(args.child_steps):
        train_step(clf, opt, x, y)
    # ru_maxrss (KiB on Linux) also carries the parent's RSS at fork / exec time: Linux keeps the
    # high-water mark of the replaced address space across execve, and the parent holds several
    # models. VmHWM is the peak of this process's own address space, so it is the number we use;
    # ru_maxrss is reported too (equal to it whenever the parent was smaller than the child).
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = proc_status_kb('VmHWM') or ru_maxrss
    print('CHILD_RESULT ' + json.dumps(dict(method=method, model=model, maxrss_kb=peak,
                                            ru_maxrss_kb=ru_maxrss, rss_import_kb=rss_import,
                                            rss_built_kb=rss_built)))


def run_child(method, model, args):
    cmd = [sys.executable, os.path.abspath(__file__), '--child', method, model,
           '--batch', str(args.batch), '--threads', str(args.threads),
           '--child-steps', str(args.child_steps)]
    if args.depth is not None:
        cmd += ['--depth', str(args.depth)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.rss_mmap_threshold is not None:
        # glibc raises its mmap threshold (up to 32 MiB) after freeing a large block and then keeps
        # freed heap memory mapped, so the default peak RSS includes allocator retention. A fixed
        # threshold returns large frees to the OS: peak RSS then tracks the live tensors.
        env['MALLOC_MMAP_THRESHOLD_'] = str(args.rss_mmap_threshold)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith('CHILD_RESULT '):
            return json.loads(line[len('CHILD_RESULT '):])
    raise RuntimeError(f'child {method} {model} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}')


# ---------------------------------------------------------------------------------------------
# merged-model inference


def randomize_trainable(backbone, std=0.02, seed=1):
    """Move the tuned parameters off their (often identity) init so the merge does something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(backbone.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * std)


def stock_structure(backbone):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in backbone.modules())
    return {k: tuple(v.shape) for k, v in backbone.state_dict().items()}, hooks


def measure_merged(model, methods, args, log):
    """{method: dict(ratio, times, max_abs_diff, identical)} + stock times."""
    from mmssf.peft import apply_peft, get_peft
    x, _ = make_batch(args.batch, seed=2)
    stock = build_backbone(model).to(DEVICE)
    stock.eval()  # (some backbones' train() returns None: no chaining)
    stock_sd, _ = stock_structure(stock)
    nets = collections.OrderedDict(stock=stock)
    info = {}
    for method in methods:
        backbone = build_backbone(model)
        apply_peft(backbone, dict(METHODS[method][1]))
        randomize_trainable(backbone)
        backbone.to(DEVICE)
        backbone.eval()
        with torch.no_grad():
            tuned_out = backbone(x)[-1]
        get_peft(backbone).merge(backbone)
        backbone.eval()
        with torch.no_grad():
            merged_out = backbone(x)[-1]
        sd, hooks = stock_structure(backbone)
        info[method] = dict(max_abs_diff=float((tuned_out - merged_out).abs().max()),
                            identical=(sd == stock_sd and hooks == 0))
        nets[method] = backbone
        log(f'  merged {method}: structure identical to stock: {info[method]["identical"]}, '
            f'max |tuned - merged| = {info[method]["max_abs_diff"]:.2e}')
    times = {k: [] for k in nets}
    order = list(nets)
    with torch.no_grad():
        for _ in range(args.warmup):
            for k in order:
                nets[k](x)
        for r in range(args.infer_reps):
            for k in (order if r % 2 == 0 else order[::-1]):
                sync()
                t0 = time.perf_counter()
                nets[k](x)
                sync()
                times[k].append(time.perf_counter() - t0)
    stock_t = statistics.median(times['stock'])
    for method in methods:
        info[method]['times'] = times[method]
        info[method]['ratio'] = statistics.median(times[method]) / stock_t
    return info, times['stock']


# ---------------------------------------------------------------------------------------------
# main


def benchmark_model(model, methods, args, log):
    x, y = make_batch(args.batch)
    res = collections.OrderedDict()
    trainers = collections.OrderedDict()
    log(f'\n== {MODELS[model]}: building {len(methods)} models')
    for method in methods:
        clf, opt = build_trainer(model, method)
        trainers[method] = (clf, opt)
        res[method] = dict(trainable=num_trainable(clf))
    # Warm-up 1 = the memory-measurement step (with saved-tensor hooks, not timed).
    for method in methods:
        clf, opt = trainers[method]
        state = measure_state(clf, opt, x, y, breakdown=method in args.breakdown)
        res[method]['state'] = state
        log(f'  {method:12s} trainable {res[method]["trainable"]:>11,d}  saved {state["act"] / MB:8.1f} MB '
            f'grad {state["grad"] / MB:7.1f} MB  AdamW {state["opt"] / MB:7.1f} MB')
    times = {m: [] for m in methods}
    cpu = {m: [] for m in methods}  # process CPU time (all threads): less sensitive to other load
    if args.memory_only:
        for method in methods:
            res[method]['times'] = res[method]['cpu'] = [float('nan')]
        return res
    for _ in range(args.warmup - 1):
        for method in methods:
            train_step(*trainers[method], x, y)
    res['_load'] = [load_average()]
    log(f'  timing {args.steps} rounds (load average {res["_load"][0]})')
    for r in range(args.steps):
        order = methods if r % 2 == 0 else methods[::-1]  # serpentine: full first, then last
        for method in order:
            clf, opt = trainers[method]
            sync()
            c0, t0 = time.process_time(), time.perf_counter()
            train_step(clf, opt, x, y)
            sync()
            times[method].append(time.perf_counter() - t0)
            cpu[method].append(time.process_time() - c0)
        log(f'  round {r + 1}/{args.steps}: ' + ', '.join(f'{m} {times[m][-1]:.2f}s' for m in methods))
    res['_load'].append(load_average())
    log(f'  timing done (load average {res["_load"][1]})')
    for method in methods:
        res[method]['times'] = times[method]
        res[method]['cpu'] = cpu[method]
    del trainers
    gc.collect()

    merge_methods = [m for m in methods if m in MERGEABLE] if not args.no_merge else []
    if merge_methods:
        log(f'  merged-model inference ({", ".join(merge_methods)} vs stock)')
        info, stock_times = measure_merged(model, merge_methods, args, log)
        for method in merge_methods:
            res[method]['merge'] = info[method]
        res['_stock_times'] = stock_times
        gc.collect()

    if not args.no_rss:
        for method in methods:
            res[method]['rss'] = run_child(method, model, args)
            r = res[method]['rss']
            log(f'  child {method:12s} peak RSS {r["maxrss_kb"] / 1024:8.1f} MB '
                f'(after build {r["rss_built_kb"] / 1024:8.1f} MB)')
    return res


def compile_method(model, method, args, log):
    """One method under ``torch.compile`` (inductor) next to eager: the first training step's
    loss and gradients compared (same drop-path draws: ``fallback_random``), then eager and
    compiled training steps timed alternately on the same model. Returns a dict; ``error`` when
    compiling or running the compiled model fails."""
    import torch._dynamo
    import torch._inductor.config as inductor_config
    inductor_config.fallback_random = True
    clf, opt = build_trainer(model, method)
    x, y = make_batch(args.batch)
    trainable = [(n, p) for n, p in clf.named_parameters() if p.requires_grad]
    row = dict(trainable=num_trainable(clf))

    def first_step(net):
        torch.manual_seed(0)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in trainable}
        opt.zero_grad(set_to_none=True)
        return loss.detach(), grads

    loss_e, grads_e = first_step(clf)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(clf)
    sync()
    t0 = time.perf_counter()
    try:
        loss_c, grads_c = first_step(compiled)
    except Exception as err:  # noqa: BLE001  (the table reports what broke)
        first = (str(err).strip().splitlines() or [''])[0][:200].replace('|', '/')
        row['error'] = f'{type(err).__name__}: {first}'
        log(f'  {method:12s} compile FAILED: {row["error"]}')
        return row
    sync()
    row['compile_s'] = time.perf_counter() - t0
    row['graph_breaks'] = sum(torch._dynamo.utils.counters['graph_break'].values())
    row['loss_diff'] = float((loss_c - loss_e).abs())
    row['grad_rel'] = max(float((grads_c[n] - grads_e[n]).abs().max()
                                / grads_e[n].abs().max().clamp(min=1e-30)) for n, _ in trainable)
    nets = dict(eager=clf, compiled=compiled)
    times = {k: [] for k in nets}
    for _ in range(args.warmup):
        for net in nets.values():
            train_step(net, opt, x, y)
    for r in range(args.steps):
        for k in (list(nets) if r % 2 == 0 else list(nets)[::-1]):
            sync()
            t0 = time.perf_counter()
            train_step(nets[k], opt, x, y)
            sync()
            times[k].append(time.perf_counter() - t0)
    row['eager_s'] = statistics.median(times['eager'])
    row['compiled_s'] = statistics.median(times['compiled'])
    row['speedup'] = row['eager_s'] / row['compiled_s']
    log(f'  {method:12s} compiled in {row["compile_s"]:.0f}s ({row["graph_breaks"]} graph breaks), '
        f'max rel grad diff {row["grad_rel"]:.1e}, step eager {row["eager_s"]:.3f}s / compiled '
        f'{row["compiled_s"]:.3f}s = x{row["speedup"]:.2f}')
    del compiled, nets, clf, opt
    torch._dynamo.reset()
    gc.collect()
    return row


def compile_table(all_rows, args):
    lines = ['| Model | Method | compiles | graph breaks | first compiled step (s) | eager step (s) '
             '| compiled step (s) | speed-up | first-step loss diff | max rel grad diff |',
             '|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for model, rows in all_rows.items():
        for method, r in rows.items():
            name = f'| {MODELS[model]} | {METHODS[method][0]} |'
            if 'error' in r:
                lines.append(f'{name} **no**: {r["error"]} | | | | | | | |')
                continue
            lines.append(f'{name} yes | {r["graph_breaks"]} | {r["compile_s"]:.0f} | '
                         f'{r["eager_s"]:.3f} | {r["compiled_s"]:.3f} | {r["speedup"]:.2f} | '
                         f'{r["loss_diff"]:.1e} | {r["grad_rel"]:.1e} |')
    return '\n'.join(lines)


def cuda_table(all_res):
    """Step time, peak CUDA memory of the first (measured) step, merged / stock inference."""
    lines = ['| Model | Method | step time (ms) | × full | peak allocated in a step (MB) '
             '| above resident (MB) | × full | merged / stock inference |',
             '|---|---|---:|---:|---:|---:|---:|---:|']
    for model, res in all_res.items():
        full = res['full']
        full_t = statistics.median(full['times'])
        full_above = full['state']['cuda_peak'] - full['state']['cuda_resident']
        for method in [m for m in res if not m.startswith('_')]:
            r, st = res[method], res[method]['state']
            t = statistics.median(r['times'])
            above = st['cuda_peak'] - st['cuda_resident']
            merge = fmt_ratio(r['merge']['ratio']) if 'merge' in r else '—'
            lines.append(f'| {MODELS[model]} | {METHODS[method][0]} | {t * 1e3:.1f} | '
                         f'{t / full_t:.2f} | {st["cuda_peak"] / MB:.0f} | {above / MB:.0f} | '
                         f'{above / full_above:.2f} | {merge} |')
    return '\n'.join(lines)


def load_average():
    try:
        return '%.2f %.2f %.2f' % os.getloadavg()
    except OSError:
        return 'n/a'


def fmt_ratio(v, digits=2):
    return f'{v:.{digits}f}' if v is not None and v == v else '—'  # (None / NaN: not measured)


def summarize(all_res, args):
    """Markdown tables (ratios + absolute numbers) and the goal checks."""
    lines = []
    ratio_rows, abs_rows, misses = [], [], []
    for model, res in all_res.items():
        full = res['full']
        full_t = statistics.median(full['times'])
        full_cpu = statistics.median(full['cpu'])
        full_mem = full['state']['total']
        full_rss = full.get('rss')
        for method in [m for m in res if not m.startswith('_')]:
            r = res[method]
            t = statistics.median(r['times'])
            t_ratio = t / full_t
            c = statistics.median(r['cpu'])
            c_ratio = c / full_cpu
            mem_ratio = r['state']['total'] / full_mem
            rss_ratio = rss_delta_ratio = None
            if full_rss and r.get('rss'):
                rss_ratio = r['rss']['maxrss_kb'] / full_rss['maxrss_kb']
                full_delta = full_rss['maxrss_kb'] - full_rss['rss_built_kb']
                rss_delta_ratio = (r['rss']['maxrss_kb'] - r['rss']['rss_built_kb']) / full_delta
            merge_ratio = r['merge']['ratio'] if 'merge' in r else None
            checks = []
            values = dict(mem=mem_ratio, time=t_ratio)
            for key, desc, ok in GOALS.get(method, []):
                if values[key] == values[key]:  # (not NaN: --memory-only has no times)
                    checks.append((desc, ok(values[key]), values[key]))
            if method in MERGEABLE and merge_ratio is not None:
                ok = abs(merge_ratio - 1.0) <= MERGE_TOL and r['merge']['identical']
                checks.append((f'merged = 1.00±{MERGE_TOL:.2f}', ok, merge_ratio))
            if method == 'full':
                goal, status = 'reference', '—'
            elif not checks:
                goal, status = '—', '—'
            else:
                goal = '; '.join(c[0] for c in checks)
                failed = [f'{c[0].split()[0]} {c[2]:.2f}' for c in checks if not c[1]]
                status = 'PASS' if not failed else 'MISS (' + ', '.join(failed) + ')'
                if failed:
                    misses.append(f'{MODELS[model]} {METHODS[method][0]}: ' + ', '.join(failed))
            ratio_rows.append(
                f'| {MODELS[model]} | {METHODS[method][0]} | {r["trainable"]:,} | {fmt_ratio(t_ratio)} | '
                f'{fmt_ratio(c_ratio)} | {mem_ratio:.2f} | {fmt_ratio(rss_ratio)} | {fmt_ratio(rss_delta_ratio)} | '
                f'{fmt_ratio(merge_ratio)} | {goal} | {status} |')
            st = r['state']
            spread = (max(r['times']) - min(r['times'])) / t * 100 if len(r['times']) > 1 else 0.0
            rss = r.get('rss')
            abs_rows.append(
                f'| {MODELS[model]} | {METHODS[method][0]} | {fmt_ratio(t)} | '
                + (f'{min(r["times"]):.2f}–{max(r["times"]):.2f} ({spread:.0f} %)' if t == t else '—')
                + f' | {fmt_ratio(c)} | {st["act"] / MB:.1f} | {st["grad"] / MB:.1f} | {st["opt"] / MB:.1f} | '
                f'{st["total"] / MB:.1f} | '
                + (f'{rss["maxrss_kb"] / 1024:.0f} | {(rss["maxrss_kb"] - rss["rss_built_kb"]) / 1024:.0f} | '
                   if rss else '— | — | ')
                + (f'{statistics.median(r["merge"]["times"]):.3f} / {statistics.median(res["_stock_times"]):.3f} | '
                   f'{r["merge"]["max_abs_diff"]:.1e} |' if 'merge' in r else '— | — |'))
    for model, res in all_res.items():
        if '_load' in res:
            lines.append(f'Load average (1, 5, 15 min) when {MODELS[model]} timing started / ended: '
                         f'{res["_load"][0]} / {res["_load"][1]} (2 threads on a quiet machine add ~2).')
    lines.append('')
    lines.append('### Ratios to full fine-tuning (merged inference: ratio to the stock backbone)\n')
    lines.append('| Model | Method | trainable params (incl. head) | step time × full | CPU time × full '
                 '| train-state mem × full | peak RSS × full | RSS growth in training × full '
                 '| merged / stock inference | goal | status |')
    lines.append('|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|')
    lines += ratio_rows
    lines.append('\n### Absolute numbers\n')
    lines.append('| Model | Method | step time median (s) | min–max (spread) | CPU time median (s) '
                 '| saved for backward (MB) '
                 '| grads (MB) | AdamW state (MB) | train-state total (MB) | child peak RSS (MB) '
                 '| RSS growth in training (MB) | inference merged / stock (s) | max abs(tuned − merged) |')
    lines.append('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    lines += abs_rows
    return '\n'.join(lines), misses


def machine_line(args):
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    import mmpretrain
    if DEVICE.type == 'cuda':
        cpu = f'{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), host {cpu}'
    depth = '' if DEPTH is None else f', depth {DEPTH} (ViT-B blocks / Swin-T stage-3 blocks)'
    return (f'{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} '
            f'({torch.get_num_threads()} threads), mmpretrain {mmpretrain.__version__}, '
            f'Python {platform.python_version()}; batch {args.batch}, {IMG} px{depth}, '
            f'{args.warmup} warm-up + {args.steps} timed steps')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default=None, help='comma list of vit,swin (default both; --quick: vit)')
    p.add_argument('--methods', default=','.join(METHODS),
                   help=f'comma list of {",".join(METHODS)} (full is always added)')
    p.add_argument('--steps', type=int, default=None, help='timed steps per method (default 3; --quick: 1)')
    p.add_argument('--warmup', type=int, default=1, help='warm-up steps (the first measures memory)')
    p.add_argument('--infer-reps', type=int, default=None,
                   help='timed eval forwards per merged / stock backbone (default 5; --quick: 2)')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)))
    p.add_argument('--quick', action='store_true', help='ViT only, 1 timed step')
    p.add_argument('--no-rss', action='store_true', help='skip the per-method child processes')
    p.add_argument('--rss-mmap-threshold', type=int, default=None, metavar='BYTES',
                   help='run the RSS children with MALLOC_MMAP_THRESHOLD_=BYTES (e.g. 65536): peak RSS '
                        'without glibc heap retention (default: the allocator as it comes)')
    p.add_argument('--no-merge', action='store_true', help='skip merged-model inference')
    p.add_argument('--memory-only', action='store_true',
                   help='only the (deterministic) training-state memory: no timing, RSS or merge')
    p.add_argument('--breakdown', default='',
                   help='comma list of methods whose saved tensors are broken down per module / op')
    p.add_argument('--json', default=None, help='also write the raw results here')
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'),
                   help='cuda: timings synchronised, peak torch.cuda.max_memory_allocated of the '
                        'first step per method, no RSS children')
    p.add_argument('--compile', action='store_true',
                   help='instead of the cost table: torch.compile (inductor) per method, checked '
                        'against eager and timed (speed-up); see benchmarks/README.md')
    p.add_argument('--dry-run', action='store_true',
                   help='check the arguments, print what would run, and exit')
    p.add_argument('--depth', type=int, default=None,
                   help='blocks of ViT-B (default 12) / of Swin-T stage 3 (default 6): a shallower '
                        'model for --compile, whose compile time grows with depth')
    p.add_argument('--child', nargs=2, metavar=('METHOD', 'MODEL'), help=argparse.SUPPRESS)
    p.add_argument('--child-steps', type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.models is None:
        args.models = 'vit' if args.quick else 'vit,swin'
    if args.steps is None:
        args.steps = 1 if args.quick else 3
    if args.infer_reps is None:
        args.infer_reps = 2 if args.quick else 5
    args.models = [m.strip() for m in args.models.split(',') if m.strip()]
    methods = [m.strip() for m in args.methods.split(',') if m.strip()]
    args.breakdown = [m.strip() for m in args.breakdown.split(',') if m.strip()]
    for name in args.models:
        if name not in MODELS:
            p.error(f'unknown model {name!r}; choose from {", ".join(MODELS)}')
    for name in methods + args.breakdown:
        if name not in METHODS:
            p.error(f'unknown method {name!r}; choose from {", ".join(METHODS)}')
    args.methods = ['full'] + [m for m in METHODS if m in methods and m != 'full']
    if args.compile:  # (only the methods asked for; the variants are references for memory)
        args.methods = [m for m in METHODS if m in methods and METHODS[m][2] is None]
    if args.memory_only or args.device == 'cuda' or args.compile:
        args.no_rss = True
    if args.memory_only:
        args.no_merge = True
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: torch sees no CUDA device')
    if args.depth is not None and args.depth < 1:
        p.error('--depth must be >= 1')
    if args.warmup < 1 or args.steps < 1:
        p.error('--warmup and --steps must be >= 1')
    return args


def compile_main(args, log, start):
    all_rows = collections.OrderedDict()
    for model in args.models:
        log(f'\n== {MODELS[model]}: torch.compile per method')
        all_rows[model] = collections.OrderedDict(
            (method, compile_method(model, method, args, log)) for method in args.methods)
    print('\n## torch.compile (inductor) per method\n')
    print(f'Machine: {machine_line(args)}. Run time {(time.perf_counter() - start) / 60:.1f} min.\n')
    print(compile_table(all_rows, args))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=machine_line(args), results=all_rows), f, indent=1)
    return 0


def main(argv=None):
    global DEVICE, DEPTH
    args = parse_args(argv)
    if args.dry_run:
        print(f'peft_cost.py would run: {"torch.compile per method" if args.compile else "cost table"} '
              f'on {args.device}, models {",".join(args.models)}, methods {",".join(args.methods)}, '
              f'batch {args.batch}, {args.steps} timed steps, RSS children: {not args.no_rss}')
        return 0
    DEVICE, DEPTH = torch.device(args.device), args.depth
    if args.child:
        child_main(args.child[0], args.child[1], args)
        return 0
    os.environ['OMP_NUM_THREADS'] = str(args.threads)
    set_threads(args.threads)
    import mmssf  # noqa: F401
    start = time.perf_counter()

    def log(msg):
        print(f'[{time.perf_counter() - start:7.1f}s] {msg}', flush=True)

    log(machine_line(args))
    if args.compile:
        return compile_main(args, log, start)
    all_res = collections.OrderedDict()
    for model in args.models:
        all_res[model] = benchmark_model(model, args.methods, args, log)
        for method in args.breakdown:
            if method in all_res[model]:
                print_breakdown(model, method, all_res[model][method]['state'])
    table, misses = summarize(all_res, args)
    elapsed = time.perf_counter() - start
    print('\n## PEFT cost vs full fine-tuning\n')
    print(f'Machine: {machine_line(args)}. Run time {elapsed / 60:.1f} min.\n')
    print(table)
    if DEVICE.type == 'cuda':
        print(f'\n### On {torch.cuda.get_device_name()}\n')
        print(cuda_table(all_res))
    print('\nGoals: SSF train-state memory <= 0.55x and step time <= 0.65x of full; LoRA / RLRR '
          f'below full on both; merged / stock inference = 1.00 (within ±{MERGE_TOL:.2f}, and the merged '
          'backbone has exactly the stock state-dict keys and shapes and no hooks).')
    floors = [f'{MODELS[m]} {statistics.median(r["bitfit"]["times"]) / statistics.median(r["full"]["times"]):.2f}'
              for m, r in all_res.items() if 'bitfit' in r and r['bitfit']['times'][0] == r['bitfit']['times'][0]]
    if floors:
        print('Time floor for methods that back-propagate through the whole backbone: BitFit (which adds no '
              'computation) takes ' + ', '.join(floors) + ' x full here.')
    print('Missed: ' + ('; '.join(misses) if misses else 'none'))
    if args.json:
        def clean(o):
            if isinstance(o, dict):
                return {str(k): clean(v) for k, v in o.items() if k != 'groups'}
            if isinstance(o, (list, tuple)):
                return [clean(v) for v in o]
            return o
        with open(args.json, 'w') as f:
            json.dump(dict(machine=machine_line(args), elapsed_s=elapsed, results=clean(all_res)), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python
"""What SPT costs, measured in one run on CPU (ViT-B/16, 224 px, batch 8, random init).

* Sensitivity pass time (eval-mode forward + backward + g² accumulation over ``--samples``
  samples) as a ratio to one full fine-tuning training pass (forward + backward + AdamW step)
  over the same batches. Goal ≤ 1.3×.
* Allocation time for a ``--budget`` (default 0.4M) from those scores.
* SPT-LoRA (that allocation) training step time, training-state memory (saved-for-backward
  unique storages + gradients + AdamW state, see ``peft_cost.py``) and peak RSS of a separate
  process, as ratios to LoRA (r=8 on qkv) and to full fine-tuning.

    python benchmarks/spt_cost.py [--samples 32] [--budget 0.4M] [--steps 3] [--no-rss]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peft_cost as pc  # noqa: E402  (model, batch, step and memory helpers shared with it)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MB = 1024 ** 2


def build(method_cfg, seed=0):
    from mmssf.peft import apply_peft
    backbone = pc.build_backbone('vit', seed)
    apply_peft(backbone, method_cfg)
    torch.manual_seed(seed + 1)
    clf = pc.Classifier(backbone).train()
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-3,
                            weight_decay=0.05)
    return clf, opt


def batches(num_samples, batch):
    out = []
    for i in range(0, num_samples, batch):
        x, y = pc.make_batch(min(batch, num_samples - i), seed=i)
        out.append(dict(inputs=x, labels=y))
    return out


def classification_loss(model, batch):
    return F.cross_entropy(model(batch['inputs']), batch['labels'])


def sensitivity_vs_training(args):
    from mmssf.peft.spt import allocate, compute_sensitivity
    data = batches(args.samples, args.batch)
    clf, opt = build(dict(type='Full'))
    pc.train_step(clf, opt, data[0]['inputs'], data[0]['labels'])  # warm-up (allocator, caches)
    start = time.perf_counter()
    for b in data:
        pc.train_step(clf, opt, b['inputs'], b['labels'])
    train_s = time.perf_counter() - start
    clf, _ = build(dict(type='Full'))
    start = time.perf_counter()
    scores, _ = compute_sensitivity(clf, clf.backbone, data, num_samples=args.samples,
                                    loss_fn=classification_loss, progress=False)
    sens_s = time.perf_counter() - start
    start = time.perf_counter()
    alloc = allocate(scores, clf.backbone, args.budget, kind='lora', rank=8)
    alloc_s = time.perf_counter() - start
    return dict(train_s=train_s, sens_s=sens_s, alloc_s=alloc_s), alloc


def step_time(clf, opt, x, y, steps):
    pc.train_step(clf, opt, x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        pc.train_step(clf, opt, x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child(args):
    clf, opt = build(json.loads(args.child))
    x, y = pc.make_batch(args.batch)
    for _ in range(2):
        pc.train_step(clf, opt, x, y)
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's across fork + exec)
    print('CHILD_RSS_KB', pc.proc_status_kb('VmHWM') or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def child_rss(cfg, args):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', json.dumps(cfg),
                           '--batch', str(args.batch)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    for line in proc.stdout.splitlines():
        if line.startswith('CHILD_RSS_KB'):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f'child {cfg} failed:\n{proc.stderr[-2000:]}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--samples', type=int, default=32)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--budget', default='0.4M')
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)))
    parser.add_argument('--no-rss', action='store_true')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    pc.set_threads(args.threads)
    if args.child:
        return child(args)

    times, alloc = sensitivity_vs_training(args)
    ratio = times['sens_s'] / times['train_s']
    print(f'## SPT cost — ViT-B/16, 224 px, batch {args.batch}, {args.samples} samples, CPU '
          f'({args.threads} threads), torch {torch.__version__}\n')
    print(f'sensitivity pass {times["sens_s"]:.1f} s vs full fine-tuning training pass '
          f'{times["train_s"]:.1f} s over the same samples: **{ratio:.2f}×** '
          f'(goal ≤ 1.3×: {"PASS" if ratio <= 1.3 else "MISS"})')
    print(f'allocation of {alloc.budget["asked"]:,} ({alloc.budget["note"]}): '
          f'{times["alloc_s"]:.1f} s; {alloc.budget["structured"]:,} structured in '
          f'{len(alloc.structured)} modules + {alloc.budget["vectors"]:,} in '
          f'{len(alloc.vectors)} whole vectors + {alloc.budget["unstructured"]:,} unstructured + '
          f'{alloc.budget["cls_token"]:,} class token\n')

    with tempfile.TemporaryDirectory() as tmp:
        path = alloc.save(tmp)
        methods = {'Full fine-tuning': dict(type='Full'), 'LoRA (qkv, r=8)': dict(type='LoRA'),
                   'SPT-LoRA': dict(type='SPTLoRA', allocation=path)}
        x, y = pc.make_batch(args.batch)
        rows = {}
        for label, cfg in methods.items():
            clf, opt = build(cfg)
            state = pc.measure_state(clf, opt, x, y)
            rows[label] = dict(trainable=pc.num_trainable(clf), step=step_time(clf, opt, x, y, args.steps),
                               state=state['total'])
            del clf, opt
            if not args.no_rss:
                rows[label]['rss'] = child_rss(cfg, args)
    full, lora = rows['Full fine-tuning'], rows['LoRA (qkv, r=8)']
    print('| method | trainable | step s | × full | × LoRA | train-state MB | × full | × LoRA |'
          + (' peak RSS MB | × full | × LoRA |' if not args.no_rss else ''))
    print('|---|---:|---:|---:|---:|---:|---:|---:|' + ('---:|---:|---:|' if not args.no_rss else ''))
    for label, r in rows.items():
        line = (f'| {label} | {r["trainable"]:,} | {r["step"]:.2f} | {r["step"] / full["step"]:.2f} | '
                f'{r["step"] / lora["step"]:.2f} | {r["state"] / MB:,.0f} | '
                f'{r["state"] / full["state"]:.2f} | {r["state"] / lora["state"]:.2f} |')
        if not args.no_rss:
            line += (f' {r["rss"] / MB:,.0f} | {r["rss"] / full["rss"]:.2f} | '
                     f'{r["rss"] / lora["rss"]:.2f} |')
        print(line)


if __name__ == '__main__':
    main()

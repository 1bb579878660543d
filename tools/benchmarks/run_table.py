"""Rerun a paper table: train and test one method on every task of VTAB-1k or FGVC through the
Runner, and print (and write as markdown + CSV) the table beside the paper's numbers.

    python tools/benchmarks/run_table.py --suite vtab1k|fgvc --method ssf --data-root DIR
        [--tasks T ...] [--protocol official|val] [--work-dir DIR] [--launcher none|pytorch]
        [--gpus N] [--amp] [--config CFG] [--stock-config CFG] [--spt-budget 0.4M]
        [--spt-budget-grid B ...] [--epochs N] [--check-merged] [--dry-run]
        [--cfg-options k=v ...]

Per task (recipe: ``configs/<suite>/recipes.csv``; the run config is written in full into the
run's folder):

* ``official``: train on train800val200 (FGVC: train + val), test the *last* epoch on test.
  (The official SSF / RLRR code report the best test epoch; we never select on test.)
* ``val``: train on train800 (FGVC: train) for every candidate of the recipe's lr / wd grids
  (``--lr-grid`` / ``--wd-grid`` override them), score each on val200 (FGVC: val), then train
  the chosen one on train800val200 and test it.

SPT's budget (``mmssf/benchmarks/spt_budgets.py``): the official scripts sweep 0.2M-1.0M on
every task (ziplab/SPT ``configs/vtab_supervised_spt_lora.sh``: ``param_req_{1.0,...,0.2}``) and
state no per-task choice. ``val`` makes the budget one more grid (``--spt-budget-grid``, default
the official sweep) chosen on val; ``official`` trains every task at ``--spt-budget``. The table
says which budget each task used and why.

Each run is ``tools/train.py`` then ``tools/test.py`` in subprocesses (``torchrun`` with
``--launcher pytorch``). Mergeable methods are tested through their merged checkpoint on the
stock config (``--check-merged`` also tests the tuned checkpoint and records both). A finished
run writes ``run_result.json`` and a finished task ``result.json`` (atomically): a second
invocation skips them, a killed one resumes (an unfinished training continues from its last
checkpoint). A result made with another recipe or config is an error, never overwritten.
Output: ``<work-dir>/<suite>/<method>/<protocol>/table.{md,csv}``.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
import warnings
from dataclasses import replace

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')



def _config_root():
    """The zoo's configs/ as :func:`mmssf.benchmarks.suites.find_config_root` finds it
    ($MMSSF_CONFIGS, the checkout beside the package, the wheel's ``mmssf/.mim/configs``), without
    importing mmssf (``find_spec`` does not run the package)."""
    import importlib.util
    spec = importlib.util.find_spec('mmssf')
    package = list(spec.submodule_search_locations)[0] if spec else None
    candidates = [os.environ.get('MMSSF_CONFIGS')]
    if package:
        candidates += [osp.join(osp.dirname(package), 'configs'),
                       osp.join(package, '.mim', 'configs')]
    for root in candidates + [osp.join(ROOT, 'configs')]:
        if root and osp.isfile(osp.join(root, 'vtab1k', 'recipes.csv')):
            return root
    return osp.join(ROOT, 'configs')


CONFIGS = _config_root()

# only the argument parser's needs here: --help answers before torch and mmssf are imported
from mmengine.config import DictAction  # noqa: E402


def _load_stack():
    """mmssf and what the harness uses of it, imported once the arguments are parsed (so that
    ``--help`` and argument errors answer without loading torch)."""
    global mmssf, ResultTable, get_suite, load_paper_results, load_recipes, run_config
    global find_data_problems, weights_problem, MERGEABLE, PRETRAINED_HOW, Config, split_names
    global spt_budgets, parse_budget
    import mmssf  # noqa: F401  (stack fixes: weights_only loading of Runner checkpoints)
    from mmssf.benchmarks import (ResultTable, get_suite, load_paper_results, load_recipes,
                                  run_config)
    from mmssf.benchmarks.data_check import find_data_problems, weights_problem
    from mmssf.benchmarks import spt_budgets
    from mmssf.benchmarks.suites import MERGEABLE, PRETRAINED_HOW
    from mmssf.peft.spt import parse_budget
    from mmssf.cli import split_names
    from mmssf.launch import Config


def _suite_files():
    """``{suite: (tasks, methods)}`` as the files of ``configs/<suite>/`` hold them (the help
    text, without importing mmssf): the task columns of ``paper_results.csv`` and the prefixes
    of the method configs ``<method>_<stock config>.py``. The harness checks both against the
    suite's table when it runs."""
    found = {}
    for suite in sorted(os.listdir(CONFIGS)) if osp.isdir(CONFIGS) else ():
        papers = osp.join(CONFIGS, suite, 'paper_results.csv')
        if not osp.isfile(papers) or not osp.isfile(osp.join(CONFIGS, suite, 'recipes.csv')):
            continue
        with open(papers) as f:
            header = next(line for line in f if line.strip() and not line.startswith('#'))
        tasks = [c for c in header.strip().split(',') if c not in (
            'method', 'mean_reported', 'mean_convention', 'source') and not c.endswith('_reported')]
        names = sorted(n[:-3] for n in os.listdir(osp.join(CONFIGS, suite)) if n.endswith('.py'))
        stock = [n for n in names if any(m.endswith('_' + n) for m in names)]
        methods = [m[:-len(stock[0]) - 1] for m in names if stock and m.endswith('_' + stock[0])]
        found[suite] = (tasks, methods)
    return found


PY = sys.executable
METRIC = 'accuracy/top1'


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default where it has one."""

    def _get_help_string(self, action):
        text = action.help or ''
        if action.default not in (None, False, argparse.SUPPRESS) and 'default' not in text:
            text += ' (default: %(default)s)'
        return text


def _epilog(suites):
    lines = []
    for suite, (tasks, methods) in suites.items():
        lines.append(f'{suite} tasks ({len(tasks)}): {", ".join(tasks)}')
        lines.append(f'{suite} methods (--method): {", ".join(methods)}')
    lines.append('check a prepared data folder first: '
                 'tools/dataset_converters/check_benchmark_data.py')
    return '\n'.join(lines)


def parse_args(argv=None):
    suites = _suite_files()
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0],
                                     formatter_class=_HelpFormatter, epilog=_epilog(suites))
    parser.add_argument('--suite', required=True, choices=sorted(suites))
    parser.add_argument('--method', required=True, help='one of the methods listed below')
    parser.add_argument('--data-root', required=True,
                        help='VTAB-1k: the folder holding the 19 task folders; FGVC: the folder '
                             'holding CUB_200_2011/, NABirds/, OxfordFlowers/, StanfordDogs/, '
                             'StanfordCars/')
    parser.add_argument('--tasks', nargs='+',
                        help='space- or comma-separated; default: every task of the suite')
    parser.add_argument('--protocol', choices=('official', 'val'), default='official',
                        help='official: train on train+val, test the last epoch; val: select '
                             'lr / wd on val first')
    parser.add_argument('--work-dir', default='work_dirs/benchmarks', help='output root')
    parser.add_argument('--launcher', choices=('none', 'pytorch'), default='none',
                        help='pytorch: torchrun with --gpus processes')
    parser.add_argument('--gpus', type=int, default=1,
                        help='processes per run (--launcher pytorch)')
    parser.add_argument('--amp', action='store_true', help='mixed precision (the scripts use it)')
    parser.add_argument('--config', help='method config (default: configs/<suite>/<method>_...)')
    parser.add_argument('--stock-config', help='stock config for merged checkpoints (default: '
                                               'the method config name without its method)')
    parser.add_argument('--spt-budget', default='0.4M',
                        help='SPT methods, official protocol: the trainable budget of every task '
                             '(the official scripts state no per-task budget)')
    parser.add_argument('--spt-budget-grid', nargs='+',
                        help='SPT methods, val protocol: budget candidates (default: the official '
                             'sweep 0.2M 0.4M 0.6M 0.8M 1.0M)')
    parser.add_argument('--lr-grid', nargs='+', type=float, help='val protocol: lr candidates')
    parser.add_argument('--wd-grid', nargs='+', type=float, help='val protocol: wd candidates')
    parser.add_argument('--epochs', type=int,
                        help='override every recipe\'s epochs (smoke tests; warm-up scaled '
                             'in proportion)')
    parser.add_argument('--check-merged', action='store_true',
                        help='also test the tuned checkpoint and record both accuracies')
    parser.add_argument('--dry-run', action='store_true',
                        help='check the data (files, images, labels) and the pretrained '
                             'weights, write the run configs, build each model (no weights), '
                             'print the trainable parameters, train nothing')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='applied to every run config after the recipe')
    args = parser.parse_args(argv)
    if args.launcher == 'none' and args.gpus != 1:
        parser.error('--gpus > 1 needs --launcher pytorch')
    _load_stack()
    if args.tasks is not None:
        args.tasks = split_names(args.tasks)
        if not args.tasks:
            parser.error('--tasks needs at least one name')
    return args


# ----------------------------------------------------------------------------- small helpers
def write_json_atomic(path, obj):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def write_text_atomic(path, text):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def log(msg):
    print(f'[run_table {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def run_tool(args, cmd, log_path):
    """Run a tool (``torchrun`` for --launcher pytorch); its output goes to ``log_path``."""
    if args.launcher == 'pytorch' and cmd[0] in ('tools/train.py', 'tools/test.py'):
        full = [PY, '-m', 'torch.distributed.run', f'--nproc_per_node={args.gpus}',
                f'--master_port={29500 + os.getpid() % 1000}'] + cmd + ['--launcher', 'pytorch']
    else:
        full = [PY] + cmd
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    with open(log_path, 'a') as out:
        out.write(f'\n$ {" ".join(full)}\n')
        out.flush()
        code = subprocess.call(full, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f'{" ".join(cmd[:2])} failed (exit {code}); log {log_path}:\n{tail}')


def trainable_params(checkpoint):
    """The trainable-parameter count the checkpoint's meta records (mmssf hooks)."""
    import torch
    meta = torch.load(checkpoint, map_location='cpu', weights_only=True, mmap=True)['meta']
    return meta.get('mmssf', {}).get('trainable_params')


# ------------------------------------------------------------------------------------ a run
class Harness:

    def __init__(self, args):
        self.args = args
        self.suite = get_suite(args.suite)
        self.recipes = load_recipes(self.suite.recipes_file, self.suite.tasks,
                                    self.suite.train_augs)
        if args.epochs:  # a shorter schedule of the same shape (smoke tests)
            for per_task in self.recipes.values():
                for task, r in per_task.items():
                    per_task[task] = replace(r, epochs=args.epochs, warmup_epochs=int(
                        r.warmup_epochs * args.epochs / r.epochs))
        if args.method not in self.recipes:
            raise SystemExit(f'no {self.suite.title} recipe for method {args.method!r} in '
                             f'{self.suite.recipes_file}; methods: {", ".join(self.recipes)}')
        self.papers = load_paper_results(self.suite.papers_file, self.suite.tasks,
                                         self.suite.groups)
        for task in args.tasks or ():
            try:
                self.suite.check_task(task)
            except ValueError as err:
                raise SystemExit(str(err)) from None
        self.tasks = list(args.tasks or self.suite.tasks)
        self.config = osp.abspath(args.config or self.suite.method_config(args.method))
        if not osp.isfile(self.config):
            raise SystemExit(f'method config {self.config} does not exist')
        name = osp.basename(self.config)
        self.stock_config = osp.abspath(args.stock_config or osp.join(
            osp.dirname(self.config), name.split('_', 1)[1]))
        self.mergeable = args.method in MERGEABLE
        self.spt = args.method.startswith('spt')
        self.budget_grid = list(args.spt_budget_grid or spt_budgets.OFFICIAL_GRID)
        for budget in [args.spt_budget] + self.budget_grid:
            try:
                parse_budget(budget)
            except ValueError as err:
                raise SystemExit(f'SPT budget: {err}') from None
        self.data_root = osp.abspath(args.data_root)
        self.out = osp.abspath(osp.join(args.work_dir, self.suite.name, args.method,
                                        args.protocol))
        os.makedirs(self.out, exist_ok=True)

    # -- configs
    def signature(self, task):
        """What a task's result depends on: a result made otherwise is not reused."""
        recipe = self.recipes[self.args.method].get(task)
        return dict(recipe=recipe.to_dict() if recipe else None, config=self.config,
                    stock_config=self.stock_config, protocol=self.args.protocol,
                    cfg_options=self.args.cfg_options or {},
                    spt_budget=self.budget_signature(task),
                    lr_grid=self.args.lr_grid, wd_grid=self.args.wd_grid,
                    world_size=self.args.gpus, amp=self.args.amp)

    def budget_signature(self, task):
        if not self.spt:
            return None
        budgets = self.budgets(task)[0]
        return budgets if self.args.protocol == 'val' else budgets[0]

    def budgets(self, task):
        """``(candidates, source)`` of SPT's budget on ``task`` under the protocol
        (:mod:`mmssf.benchmarks.spt_budgets`); ``([None], '')`` for other methods."""
        if not self.spt:
            return [None], ''
        if self.args.protocol == 'val':
            sel_eval = self.suite.splits['select'][1]
            default = self.budget_grid == list(spt_budgets.OFFICIAL_GRID)
            return list(self.budget_grid), (
                f'selected on {sel_eval} from {" ".join(self.budget_grid)}'
                + (f' ({spt_budgets.GRID_SOURCE})' if default else ' (--spt-budget-grid)'))
        budget, source = spt_budgets.official_budget(task, self.args.spt_budget)
        return [budget], source

    def write_configs(self, run_dir, task, train_split, eval_split, recipe, lr, wd):
        spt = (osp.join(run_dir, 'spt', 'allocation.json')
               if self.args.method.startswith('spt') else None)
        cfg = run_config(Config.fromfile(self.config), self.suite, task, self.data_root,
                         train_split, eval_split, recipe, lr=lr, weight_decay=wd,
                         world_size=self.args.gpus, spt_allocation=spt)
        if self.args.cfg_options:
            cfg.merge_from_dict(self.args.cfg_options)
        # (not in run_dir itself: the Runner dumps its own copy there under the same name)
        os.makedirs(osp.join(run_dir, 'configs'), exist_ok=True)
        train_cfg = osp.join(run_dir, 'configs', 'train.py')
        cfg.dump(train_cfg)
        stock_cfg = None
        if self.mergeable:
            stock = run_config(Config.fromfile(self.stock_config), self.suite, task,
                               self.data_root, train_split, eval_split)
            if self.args.cfg_options:
                stock.merge_from_dict(self.args.cfg_options)
            stock_cfg = osp.join(run_dir, 'configs', 'stock.py')
            stock.dump(stock_cfg)
        return train_cfg, stock_cfg, spt, cfg

    # -- one training + test
    def run(self, task, name, train_split, eval_split, lr, wd, budget=None):
        args, recipe = self.args, self.recipes[self.args.method][task]
        run_dir = osp.join(self.out, task, name)
        done = osp.join(run_dir, 'run_result.json')
        if osp.isfile(done):
            log(f'{task}/{name}: finished earlier, skipped')
            return read_json(done)
        os.makedirs(run_dir, exist_ok=True)
        train_cfg, stock_cfg, spt, cfg = self.write_configs(run_dir, task, train_split,
                                                            eval_split, recipe, lr, wd)
        logf = osp.join(run_dir, 'run.log')
        started = time.time()
        missing = self.missing_weights(cfg)
        if missing:  # (before SPT's scoring and training, not a FileNotFoundError inside them)
            raise SystemExit(f'{task}/{name}: {missing}')
        if spt and not osp.isfile(spt):
            log(f'{task}/{name}: SPT sensitivity + allocation ({budget})')
            run_tool(args, ['tools/analysis_tools/spt_sensitivity.py', train_cfg,
                            '--budget', str(budget)], logf)
        final = osp.join(run_dir, f'epoch_{recipe.epochs}.pth')
        if not osp.isfile(final):
            resume = osp.isfile(osp.join(run_dir, 'last_checkpoint'))
            log(f'{task}/{name}: {"resuming" if resume else "training"} on {train_split} '
                f'(lr {lr:g}, wd {wd:g}, {recipe.epochs} epochs)')
            run_tool(args, ['tools/train.py', train_cfg, '--work-dir', run_dir]
                     + (['--resume'] if resume else []) + (['--amp'] if args.amp else []), logf)
        result = dict(task=task, run=name, train_split=train_split, eval_split=eval_split,
                      lr=lr, weight_decay=wd, epochs=recipe.epochs, checkpoint=final,
                      trainable_params=trainable_params(final))
        if budget is not None:
            result['spt_budget'] = budget
        if self.mergeable:
            # merged offline from the checkpoint's weights (with a weight EMA: the EMA weights,
            # which the checkpoint holds and tools/test.py evaluates)
            merged = osp.join(run_dir, f'epoch_{recipe.epochs}_stock.pth')
            if not osp.isfile(merged):
                run_tool(args, ['tools/model_converters/merge_peft.py', train_cfg, final,
                                merged], logf)
            result['accuracy'] = self.test(stock_cfg, merged, run_dir, 'merged', logf)
            result['evaluated'] = 'merged on stock config'
            if args.check_merged:
                result['accuracy_tuned'] = self.test(train_cfg, final, run_dir, 'tuned', logf)
        else:
            result['accuracy'] = self.test(train_cfg, final, run_dir, 'tuned', logf)
            result['evaluated'] = 'tuned (not mergeable)'
        result['seconds'] = round(time.time() - started, 1)
        write_json_atomic(done, result)
        log(f'{task}/{name}: {eval_split} top-1 {result["accuracy"]:.2f} '
            f'({result["evaluated"]})')
        return result

    def test(self, config, checkpoint, run_dir, tag, logf):
        out = osp.join(run_dir, f'metrics_{tag}.json')
        run_tool(self.args, ['tools/test.py', config, checkpoint, '--work-dir',
                             osp.join(run_dir, f'test_{tag}'), '--out', out], logf)
        return float(read_json(out)[METRIC])

    # -- one task
    def task(self, task):
        args = self.args
        recipe = self.recipes[args.method].get(task)
        if recipe is None:
            raise SystemExit(f'no {args.method} recipe for {task} in {self.suite.recipes_file}')
        task_dir = osp.join(self.out, task)
        os.makedirs(task_dir, exist_ok=True)
        result_file = osp.join(task_dir, 'result.json')
        signature = self.signature(task)
        if osp.isfile(result_file):
            result = read_json(result_file)
            if result.get('signature') != signature:
                changed = sorted(k for k in signature
                                 if result.get('signature', {}).get(k) != signature[k])
                raise SystemExit(f'{result_file} was made with another {", ".join(changed)}; '
                                 'move it (or its folder) away to rerun this task')
            log(f'{task}: finished earlier ({result["accuracy"]:.2f}), skipped')
            return result
        official_train, test_split = self.suite.splits['official']
        splits = [official_train, test_split]
        if args.protocol == 'val':
            splits += list(self.suite.splits['select'])
        try:  # bad data fails here, before any training
            self.suite.check_data(self.data_root, task, splits)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f'{self.suite.title} {task}: {err}') from None

        budgets, budget_source = self.budgets(task)
        chosen, selection = (budgets[0], recipe.lr, recipe.weight_decay), []
        if args.protocol == 'val':
            sel_train, sel_eval = self.suite.splits['select']
            lrs = args.lr_grid or recipe.lr_grid or (recipe.lr, )
            wds = args.wd_grid or recipe.wd_grid or (recipe.weight_decay, )
            for budget in budgets:  # (SPT: the budget is one more grid; others: [None])
                for lr in lrs:
                    for wd in wds:
                        name = 'select_' + (f'b{budget}_' if budget else '') + f'lr{lr:g}_wd{wd:g}'
                        res = self.run(task, name, sel_train, sel_eval, lr, wd, budget)
                        selection.append(dict(lr=lr, weight_decay=wd, accuracy=res['accuracy'],
                                              **({'spt_budget': budget} if budget else {})))
            best = max(selection, key=lambda s: s['accuracy'])  # first of equals
            chosen = (best.get('spt_budget'), best['lr'], best['weight_decay'])
            log(f'{task}: chose ' + (f'budget {chosen[0]}, ' if chosen[0] else '')
                + f'lr {chosen[1]:g}, wd {chosen[2]:g} on {sel_eval} ({best["accuracy"]:.2f})')
        final = self.run(task, 'final', official_train, test_split, chosen[1], chosen[2],
                         chosen[0])
        result = dict(final, suite=self.suite.name, method=args.method,
                      protocol=args.protocol, selection=selection, signature=signature,
                      recipe_source=recipe.source)
        if self.spt:
            result.update(spt_budget=chosen[0], spt_budget_source=budget_source)
        write_json_atomic(result_file, result)
        return result

    def missing_weights(self, cfg):
        """The line naming the backbone's missing pretrained file and the converter, or None."""
        init = cfg.model.backbone.get('init_cfg') or {}
        checkpoint = init.get('checkpoint') if init.get('type') == 'Pretrained' else None
        how = PRETRAINED_HOW.format(checkpoint=checkpoint)
        if cfg.model.backbone.get('checkpoint_path'):  # (a timm wrapper: timm loads the file)
            checkpoint = cfg.model.backbone.checkpoint_path
            how = ('point --cfg-options model.backbone.checkpoint_path=FILE at the timm '
                   'checkpoint (.pth, .safetensors or Google\'s .npz; configs/timm/)')
        if checkpoint and not osp.isabs(checkpoint) and '://' not in checkpoint:
            checkpoint = osp.join(ROOT, checkpoint)  # (the tools run in the repository root)
        return weights_problem(checkpoint, how)

    # -- dry run: data and weights checked, configs + model builds, no training
    def dry_run(self):
        from mmengine.registry import MODELS, init_default_scope
        splits = list(self.suite.splits['official'])
        if self.args.protocol == 'val':
            splits += list(self.suite.splits['select'])
        problems = find_data_problems(self.suite, self.data_root, self.tasks, splits,
                                      check_sizes=False)
        if problems:
            raise SystemExit(f'--dry-run: the {self.suite.title} data is not ready '
                             f'({len(problems)} problem(s)):\n  - ' + '\n  - '.join(problems))
        log(f'data: {len(self.tasks)} task(s) of {self.data_root} checked ({", ".join(splits)}: '
            'files, images, labels; sizes: tools/dataset_converters/check_benchmark_data.py)')
        weights_checked = False
        for task in self.tasks:
            recipe = self.recipes[self.args.method][task]
            run_dir = osp.join(self.out, task, 'dry_run')
            os.makedirs(run_dir, exist_ok=True)
            train_split, eval_split = self.suite.splits['official']
            _, _, spt, cfg = self.write_configs(run_dir, task, train_split, eval_split, recipe,
                                                recipe.lr, recipe.weight_decay)
            if not weights_checked:
                weights_checked = True
                missing = self.missing_weights(cfg)
                log(f'WARNING: {missing} (a real run stops here)' if missing
                    else 'weights: the pretrained file exists (not loaded by --dry-run)')
            model_cfg = cfg.model.copy()
            model_cfg.backbone.init_cfg = None
            if model_cfg.backbone.get('checkpoint_path'):
                model_cfg.backbone.checkpoint_path = ''
            if spt:
                budgets, source = self.budgets(task)
                log(f'{task}: SPT needs its allocation (spt_sensitivity.py on the data); '
                    f'config written, model not built | budget {" / ".join(budgets)}: {source}')
                continue
            init_default_scope(cfg.get('default_scope', 'mmpretrain'))
            model = MODELS.build(model_cfg)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            log(f'{task}: {self.args.method} trainable params: {trainable:,} || all params: '
                f'{total:,} || lr {recipe.lr:g} wd {recipe.weight_decay:g} '
                f'drop-path {recipe.drop_path:g} | {recipe.source}')

    # -- the table
    def table(self):
        results = {}
        for task in self.tasks:
            path = osp.join(self.out, task, 'result.json')
            if osp.isfile(path):
                results[task] = read_json(path)
        table = ResultTable(self.suite, self.args.method, self.args.protocol, self.tasks,
                            results, self.papers.get(self.args.method))
        md, csv_text = table.markdown(), table.csv()
        write_text_atomic(osp.join(self.out, 'table.md'), md)
        write_text_atomic(osp.join(self.out, 'table.csv'), csv_text)
        print(md, flush=True)
        log(f'written: {osp.join(self.out, "table.md")} and table.csv')
        return table


def main(argv=None):
    args = parse_args(argv)
    harness = Harness(args)
    if args.dry_run:
        harness.dry_run()
        return
    for task in harness.tasks:
        harness.task(task)
    harness.table()


if __name__ == '__main__':
    main()

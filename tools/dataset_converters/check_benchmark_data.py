"""Check a prepared VTAB-1k or FGVC folder and print what is wrong with it.

    python tools/dataset_converters/check_benchmark_data.py --suite vtab1k|fgvc DATA_ROOT
        [--tasks T ...] [--no-size-check]

Every task folder, every split file (VTAB-1k: train800, val200, train800val200, test; FGVC:
train, val, trainval, test), every listed image, every label against the task's classes, and
each split's image count against the community's preparation (VTAB-1k: 800 / 200 / 1000 and
the test size of the task; FGVC: VPT's splits). Exit status 0 when the folder is ready, 1 with
one line per problem otherwise. How to prepare the folders: configs/vtab1k/README.md,
configs/fgvc/README.md.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[2:]))
    parser.add_argument('--suite', required=True, choices=('vtab1k', 'fgvc'))
    parser.add_argument('data_root', help='the folder holding the task folders')
    parser.add_argument('--tasks', nargs='+', help='space- or comma-separated (default: all)')
    parser.add_argument('--no-size-check', action='store_true',
                        help='do not compare split sizes with the official preparation '
                             '(subsets, generated folders)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)  # (before the imports: --help stays fast)
    from mmssf.benchmarks import get_suite
    from mmssf.benchmarks.data_check import find_data_problems
    suite = get_suite(args.suite)
    tasks = list(dict.fromkeys(t for value in args.tasks or () for t in value.split(',') if t))
    tasks = tasks or None
    try:
        for task in tasks or ():
            suite.check_task(task)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    problems = find_data_problems(suite, args.data_root, tasks,
                                  check_sizes=not args.no_size_check)
    checked = len(tasks or suite.tasks)
    if problems:
        print(f'{args.data_root}: {len(problems)} problem(s) in {checked} {suite.title} '
              'task(s):')
        for line in problems:
            print(f'  - {line}')
        return 1
    print(f'{args.data_root}: {checked} {suite.title} task(s) ready '
          f'({"sizes not checked" if args.no_size_check else "sizes as official"})')
    return 0


if __name__ == '__main__':
    sys.exit(main())

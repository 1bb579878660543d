"""Publish a checkpoint the OpenMMLab way: keep ``meta`` and ``state_dict`` only and name the file
after its own SHA-256, ``OUT-<sha256[:8]>.pth``, so whoever downloads it can check it.

    python tools/model_converters/publish_model.py IN.pth OUT.pth [--save-keys meta state_dict]
    python tools/model_converters/publish_model.py --check OUT-1a2b3c4d.pth

IN is usually an ``X_merged.pth`` (the stock model, what users evaluate with the upstream config).
It is verified first (its recorded tensor digest, safe loading) and the published file records
a fresh digest of what it keeps. ``--check`` recomputes the file's SHA-256 and compares it with
the 8 hex digits in its name, and verifies the tensor digest in its meta.
"""
import argparse
import hashlib
import io
import os.path as osp
import pickle
import re
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('in_file', nargs='?', help='checkpoint to publish (X_merged.pth)')
    parser.add_argument('out_file', nargs='?', help='published name, before -<sha256[:8]>.pth')
    parser.add_argument('--save-keys', nargs='+', default=['meta', 'state_dict'],
                        help='top-level keys to keep')
    parser.add_argument('--check', metavar='FILE', help='verify a published file')
    args = parser.parse_args(argv)
    if not args.check and not (args.in_file and args.out_file):
        parser.error('give IN.pth OUT.pth, or --check FILE')
    return args


if __name__ == '__main__':  # --help and argument errors answer here, before the heavy imports
    parse_args()


import torch  # noqa: E402

from mmssf.fileio import (CheckpointFileError, CheckpointWriteError,  # noqa: E402
                          atomic_write_bytes, load_checkpoint_file)
from mmssf.integrity import recorded_digest, seal_checkpoint  # noqa: E402

NAME = re.compile(r'-([0-9a-f]{8})\.pth$')


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def publish(in_file: str, out_file: str, save_keys=('meta', 'state_dict')) -> str:
    """Write the published copy of ``in_file``; return its final name."""
    checkpoint = load_checkpoint_file(in_file)
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint:
        raise CheckpointFileError(f'{in_file} has no state_dict: not a checkpoint to publish')
    dropped = [k for k in checkpoint if k not in save_keys]
    kept = {k: v for k, v in checkpoint.items() if k in save_keys}
    if 'meta' in kept:
        kept['meta'] = dict(kept['meta'])
        seal_checkpoint(kept)
    with io.BytesIO() as buffer:
        torch.save(kept, buffer)
        data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    stem = out_file[:-4] if out_file.endswith('.pth') else out_file
    final = f'{stem}-{sha[:8]}.pth'
    atomic_write_bytes(data, final)
    if dropped:
        print(f'publish_model: left out {", ".join(dropped)} (keep them with --save-keys)')
    print(f'publish_model: {final}\n  sha256 {sha}')
    return final


def check(path: str) -> None:
    found = NAME.search(osp.basename(path))
    if not found:
        raise CheckpointFileError(f'{path} is not named NAME-<sha256[:8]>.pth')
    sha = file_sha256(path)
    if not sha.startswith(found.group(1)):
        raise CheckpointFileError(f'{path} is corrupted or not the published file: its SHA-256 '
                                  f'is {sha[:8]}..., its name says {found.group(1)}')
    checkpoint = load_checkpoint_file(path)  # (verifies the tensor digest in meta, if any)
    tensors = 'tensor digest verified' if recorded_digest(checkpoint) else 'no tensor digest'
    print(f'publish_model: {path} OK (sha256 {sha}; {tensors})')


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.check:
            check(args.check)
        else:
            publish(args.in_file, args.out_file, args.save_keys)
    except (CheckpointFileError, CheckpointWriteError, pickle.UnpicklingError,
            FileNotFoundError) as err:
        sys.exit(f'publish_model: {err}')


if __name__ == '__main__':
    main()

"""Command-line helpers shared by mmssf's tools."""
import argparse

__all__ = ['NameList']


class NameList(argparse.Action):
    """``nargs='+'`` names, space- or comma-separated or both (``--tasks dtd,eurosat kitti``),
    empty items dropped and repeats kept once, in order: users type either form."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = []
        for value in values if isinstance(values, (list, tuple)) else [values]:
            for name in value.split(','):
                name = name.strip()
                if name and name not in names:
                    names.append(name)
        if not names:
            parser.error(f'{option_string} needs at least one name')
        setattr(namespace, self.dest, names)

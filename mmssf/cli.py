"""Command-line helpers shared by mmssf's tools."""
import argparse

__all__ = ['NameList', 'split_names']


def split_names(values):
    """``['dtd,eurosat', 'kitti', 'dtd,']`` -> ``['dtd', 'eurosat', 'kitti']``: comma- or
    space-separated names, empty items dropped and repeats kept once, in order."""
    names = []
    for value in values if isinstance(values, (list, tuple)) else [values]:
        for name in value.split(','):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


class NameList(argparse.Action):
    """``nargs='+'`` names, space- or comma-separated or both (``--tasks dtd,eurosat kitti``)
    (:func:`split_names`): users type either form."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = split_names(values)
        if not names:
            parser.error(f'{option_string} needs at least one name')
        setattr(namespace, self.dest, names)

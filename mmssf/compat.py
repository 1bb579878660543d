"""Fixes for what the pinned OpenMMLab stack gets wrong on current torch / numpy."""

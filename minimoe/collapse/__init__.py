"""The router-collapse lab: a small MoE trained with no balancing collapses onto a few experts;
each remedy (Switch aux loss, z-loss, aux-loss-free bias balancing, a capacity with drops) is
trained on the same task and seed, and too strong a balancing loss is shown to hurt.

    python -m minimoe collapse-lab            # the table, about a second per setting
    from minimoe.collapse.lab import run_lab, format_table

`task` holds the synthetic clustered task and its model, `lab` the settings and the training
loop, `cli` the command line.
"""

from minimoe.collapse.lab import SETTINGS, LabResult, Setting, format_table, run_lab, run_setting

__all__ = ["SETTINGS", "LabResult", "Setting", "format_table", "run_lab", "run_setting"]

"""The course machinery: what the lessons and problem sets need beyond the library.

- `minimoe.course.checks`: the check function of every exercise (one module per exercise group,
  `chNN_topic.py`; what they share in `_common.py`).
- `minimoe.course.toys`: small models the lessons and checks use (the toy MoE of chapter 01).
- `minimoe.course.doctor`: the environment doctor (`python -m minimoe doctor`).
- `minimoe.course.lab`: `make lab`'s JupyterLab server; `minimoe.course.workspace`: the learner's
  workspace it serves, filled from the course and kept in step with it.

- `minimoe.course.notebooks`: read and write notebooks, `generate` exercises/ from solutions/,
  the command line.
- `minimoe.course.clean`: check that notebooks are stored without outputs, strip them.
- `minimoe.course.runner`: run a notebook cell by cell in a separate kernel, surviving timeouts,
  exceptions and kernel deaths.
- `minimoe.course.grade`: grade submitted exercise notebooks against the canonical checks, with
  `guard`, `sandbox` and `kernel_box` keeping each submission from changing another's grade;
  `submission` reads what was handed in (any encoding, any nbformat, its chapter), `report`
  writes the score table, JSON and CSV.

The conventions (cell tags `answer` / `check`, metadata `minimoe.exercise`, `### BEGIN SOLUTION`
regions) are described in `minimoe.course.notebooks`. The submodules are not imported here, so
`python -m minimoe.course.notebooks` runs cleanly and importing `minimoe` stays light.
"""

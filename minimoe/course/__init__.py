"""The course machinery: exercise notebooks generated from solutions, and the grader.

- `minimoe.course.notebooks`: read and write notebooks, `generate` exercises/ from solutions/,
  the command line.
- `minimoe.course.clean`: check that notebooks are stored without outputs, strip them.
- `minimoe.course.runner`: run a notebook cell by cell in a separate kernel, surviving timeouts,
  exceptions and kernel deaths.
- `minimoe.course.grade`: grade submitted exercise notebooks against the canonical checks.

The conventions (cell tags `answer` / `check`, metadata `minimoe.exercise`, `### BEGIN SOLUTION`
regions) are described in `minimoe.course.notebooks`. The submodules are not imported here, so
`python -m minimoe.course.notebooks` runs cleanly and importing `minimoe` stays light.
"""

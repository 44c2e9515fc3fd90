"""The lesson structure of the notebook series (issue 16.2), checked without a kernel.

Conventions every notebook in ``notebooks/`` follows (Carpentries episode header,
Neuromatch "Think!" prompts and hidden solutions). A notebook is checked once
its stem is in :data:`CONVERTED`; add it there when it is done.

1. **Header** (the first cell, markdown) starts ``# NN · Title`` and holds, each
   on its own line, ``**Questions.**``, ``**Objectives.**``, ``**Prerequisites.**``
   and the time line::

       **Teaching:** 15 min · **Exercises:** 10 min

2. **Sections.** Every level-2 heading ends with its time estimate,
   ``## The files of one session (~5 min)``; the section times add up to
   teaching + exercise minutes. The last section is ``## Key points (~N min)``.
   Level-3 headings (``###``) need no time.
3. **Exercises**, interleaved: at least two ``##`` sections hold one. Each is
   three consecutive cells:

   a. markdown starting ``### Exercise N.M: <title>`` (N = the notebook's
      number without the leading zero, M = 1, 2, ... in order), containing a
      predict-first prompt ``**Think!** Before you run ..., predict ...``
      (an optional ``<details><summary>Hint</summary>...</details>`` may follow);
   b. the fill-in code cell, tagged ``exercise``, which runs as is: the
      learner's line is a placeholder such as ``answer = None  # your code``
      (it contains ``# your code`` and no ``...``);
   c. the solution code cell, tagged ``solution`` and ``hide-cell`` (Jupyter
      Book hides it; tests/test_notebooks.py executes it like any cell). Its
      last line is an ``assert`` or a ``print(`` that checks the answer with
      the package's result, so a wrong solution fails or shows it.

   A markdown cell may follow with the discussion of the answer.
4. **Figures.** Every code cell that draws (``plot_...(``, ``.plot(``,
   ``.plot.<kind>(``, ``.hist(``, ``plt.``) has cell metadata::

       {"mystnb": {"image": {"alt": "<what the figure shows, for a screen reader>"}},
        "caption": "<one line>"}

   and the next cell is markdown whose first line is ``**Figure.** <the same
   one-line caption>``.
5. **No outputs committed**; no cell mentions ``STUDY.md`` (cite the paper's
   doi instead). Every number in the prose is computed in the notebook or
   taken from ``benchmarks/RESULTS.md`` (editorial, not tested here).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"

#: Notebooks that follow the conventions above (extend when one is converted).
CONVERTED = (
    "00_start_here",
    "01_raw_dwi",
    "02_tensor_and_md",
    "03_registration_and_regions",
    "04_cohort_and_deltas",
    "05_outcomes_and_model",
    "06_beyond_the_study",
    "07_your_own_data",
    "08_power",
)

TIME_LINE = re.compile(r"\*\*Teaching:\*\*\s*(\d+)\s*min\s*·\s*\*\*Exercises:\*\*\s*(\d+)\s*min")
SECTION = re.compile(r"^## (?!#)(.*)$", re.MULTILINE)
SECTION_TIME = re.compile(r"\(~(\d+) min\)\s*$")
EXERCISE = re.compile(r"^### Exercise (\d+)\.(\d+): \S")
PLOTS = re.compile(r"\bplot_\w*\(|\.plot\(|\.plot\.\w+\(|\.hist\(|\bplt\.")


def _code(cell) -> list[str]:
    return [ln for ln in cell.source.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


def header_problems(nb, stem: str) -> list[str]:
    """Problems with the header cell and the section timings of one notebook."""
    out = []
    head = nb.cells[0] if nb.cells else None
    if head is None or head.cell_type != "markdown":
        return ["cell 0: the header must be a markdown cell"]
    if not head.source.startswith(f"# {stem[:2]} · "):
        out.append(f"cell 0: the header must start '# {stem[:2]} · Title'")
    for key in ("**Questions.**", "**Objectives.**", "**Prerequisites.**"):
        if key not in head.source:
            out.append(f"cell 0: the header has no {key}")
    m = TIME_LINE.search(head.source)
    if m is None:
        out.append("cell 0: no '**Teaching:** N min · **Exercises:** M min' line")
    total, sections = 0, []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for title in SECTION.findall(cell.source):
            sections.append(title)
            t = SECTION_TIME.search(title)
            if t is None:
                out.append(f"cell {i}: section '## {title}' has no '(~N min)'")
            else:
                total += int(t.group(1))
    if not sections or not sections[-1].startswith("Key points"):
        out.append("the last ## section must be 'Key points (~N min)'")
    if m is not None and total != int(m.group(1)) + int(m.group(2)):
        out.append(f"section times add up to {total} min, the header says "
                   f"{m.group(1)} + {m.group(2)} min")
    return out


def exercise_problems(nb, stem: str) -> list[str]:
    """Problems with the exercises: prompt, fill-in cell and solution cell."""
    out, number, section, sections_with = [], 0, None, set()
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and SECTION.search(cell.source):
            section = SECTION.findall(cell.source)[-1]
        if cell.cell_type == "code" and "solution" in _tags(cell):
            if i < 2 or not (cells[i - 2].cell_type == "markdown"
                             and EXERCISE.match(cells[i - 2].source)):
                out.append(f"cell {i}: a solution cell not two cells after an exercise prompt")
        if cell.cell_type != "markdown" or not cell.source.startswith("### Exercise"):
            continue
        m = EXERCISE.match(cell.source)
        number += 1
        if m is None or (int(m.group(1)), int(m.group(2))) != (int(stem[:2]), number):
            out.append(f"cell {i}: expected '### Exercise {int(stem[:2])}.{number}: title'")
        if "**Think!**" not in cell.source:
            out.append(f"cell {i}: exercise without a '**Think!**' predict-first prompt")
        sections_with.add(section)
        fill = cells[i + 1] if i + 1 < len(cells) else None
        sol = cells[i + 2] if i + 2 < len(cells) else None
        if fill is None or fill.cell_type != "code" or "exercise" not in _tags(fill):
            out.append(f"cell {i + 1}: the exercise's fill-in code cell (tag 'exercise') "
                       "must follow its prompt")
        elif "# your code" not in fill.source or "..." in fill.source:
            out.append(f"cell {i + 1}: a fill-in cell has a '# your code' placeholder "
                       "and no '...'")
        if sol is None or sol.cell_type != "code" or not {"solution", "hide-cell"} <= _tags(sol):
            out.append(f"cell {i + 2}: the solution cell (tags 'solution', 'hide-cell') "
                       "must follow the fill-in cell")
        elif not _code(sol) or not _code(sol)[-1].lstrip().startswith(("assert ", "print(")):
            out.append(f"cell {i + 2}: a solution ends with an assert or a print( check")
    if number == 0:
        out.append("no exercise")
    elif len(sections_with) < 2:
        out.append("exercises must be interleaved: at least two ## sections hold one")
    return out


def figure_problems(nb) -> list[str]:
    """Problems with figure cells: alt text, caption metadata, caption below."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not any(PLOTS.search(ln) for ln in _code(cell)):
            continue
        alt = cell.metadata.get("mystnb", {}).get("image", {}).get("alt", "")
        caption = cell.metadata.get("caption", "")
        if not alt.strip():
            out.append(f"cell {i}: a figure cell without mystnb.image.alt")
        if not caption.strip() or "\n" in caption.strip():
            out.append(f"cell {i}: a figure cell without a one-line 'caption'")
        nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        first = nxt.source.splitlines()[0] if nxt is not None and nxt.source else ""
        if nxt is None or nxt.cell_type != "markdown" or not first.startswith("**Figure.** "):
            out.append(f"cell {i + 1}: a figure cell must be followed by markdown "
                       "'**Figure.** <caption>'")
        elif caption and first.removeprefix("**Figure.** ").strip() != caption.strip():
            out.append(f"cell {i + 1}: the markdown caption differs from the cell's 'caption'")
    return out


def hygiene_problems(nb) -> list[str]:
    """Outputs committed, or a mention of STUDY.md."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            out.append(f"cell {i}: outputs committed; clear them")
        if "STUDY.md" in cell.source:
            out.append(f"cell {i}: mentions STUDY.md (not in the repository); cite the doi")
    return out


def _read(stem):
    return nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)


def test_converted_names_exist():
    for stem in CONVERTED:
        assert (NOTEBOOK_DIR / f"{stem}.ipynb").is_file(), stem


@pytest.mark.parametrize("stem", CONVERTED)
@pytest.mark.parametrize("check", ["header", "exercises", "figures", "hygiene"])
def test_notebook_structure(stem, check):
    nb = _read(stem)
    problems = {"header": lambda: header_problems(nb, stem),
                "exercises": lambda: exercise_problems(nb, stem),
                "figures": lambda: figure_problems(nb),
                "hygiene": lambda: hygiene_problems(nb)}[check]()
    assert not problems, f"{stem}.ipynb:\n  " + "\n  ".join(problems)


def test_the_checks_catch_a_bad_notebook():
    """A notebook breaking each convention is caught by the check for it."""
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# 09 · Bad\n\n**Objectives.** x\n\n**Teaching:** 5 min · "
                             "**Exercises:** 5 min"),
        v4.new_markdown_cell("## Untimed section"),
        v4.new_code_cell("kp.plot_md_map(md)"),
        v4.new_markdown_cell("### Exercise 9.2: wrong number\n\nNo prompt. See STUDY.md"),
        v4.new_code_cell("answer = ...", metadata={"tags": ["exercise"]}),
        v4.new_code_cell("answer = 1", metadata={"tags": ["solution"]}),
        v4.new_markdown_cell("## Key points (~3 min)"),
    ])
    nb.cells[2].outputs = [v4.new_output("stream", text="x")]
    header = " ".join(header_problems(nb, "09_bad"))
    for expected in ("**Questions.**", "**Prerequisites.**", "has no '(~N min)'",
                     "add up to 3 min"):
        assert expected in header, expected
    exercises = " ".join(exercise_problems(nb, "09_bad"))
    for expected in ("Exercise 9.1", "Think!", "no '...'", "'hide-cell'", "interleaved"):
        assert expected in exercises, expected
    assert "mystnb.image.alt" in " ".join(figure_problems(nb))
    hygiene = " ".join(hygiene_problems(nb))
    assert "outputs committed" in hygiene and "STUDY.md" in hygiene

"""No pipeline stage imports a later one: the run folder is the only hand-off forward (README, "Layout").

Read from the source with `ast`, so imports inside functions count as much as the ones at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "edgecls"

# Stage modules or packages, in pipeline order; `distill` is part of fine-tuning.
STAGES = ["data", "models", "distill", "train", "optimize", "calibration", "export", "firmware", "validate", "bench",
          "report", "pipeline", "cli"]  # fmt: skip

# The one reach forward: `optimize --fit` measures each candidate's int8 file with export's TFLite
# converter (a library module; it never runs the export stage).
ALLOWED = {("optimize", "edgecls.export.tflite")}


def stage_of(module: str) -> str | None:
    """`edgecls.<stage>...` -> `<stage>`; None for anything else."""
    parts = module.split(".")
    if parts[0] != "edgecls" or len(parts) < 2 or parts[1] not in STAGES:
        return None
    return parts[1]


def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports, at the top or inside a function."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
    return modules


def forward_imports() -> list[tuple[str, str, str]]:
    """(file, its stage, the later module it imports) for every stage file."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        stage = stage_of(".".join(("edgecls", *path.relative_to(PACKAGE).with_suffix("").parts)))
        if stage is None:
            continue
        for module in imported_modules(path):
            target = stage_of(module)
            later = target is not None and STAGES.index(target) > STAGES.index(stage)
            if later and (stage, module) not in ALLOWED:
                found.append((str(path.relative_to(PACKAGE)), stage, module))
    return found


def test_no_stage_imports_a_later_one():
    assert forward_imports() == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from edgecls.report import write_report\n    import edgecls.bench.ssh\n")
    assert imported_modules(source) == ["edgecls.report", "edgecls.bench.ssh"]
    assert [stage_of(m) for m in imported_modules(source)] == ["report", "bench"]


def test_every_stage_named_exists():
    """A renamed stage must not silently drop out of the check."""
    for stage in STAGES:
        assert (PACKAGE / f"{stage}.py").is_file() or (PACKAGE / stage / "__init__.py").is_file(), stage

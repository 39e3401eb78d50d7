"""The documentation: README limits and example, links, citations, the generated results page."""

import ast
import importlib.util
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SKIP_DIRS = {
    ".git",
    "__pycache__",
    "build",
    "dist",
    ".venv",
    "venv",
    "bench-results",
    "bench-work",
    ".ipynb_checkpoints",
    ".pytest_cache",
    "node_modules",
}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".cfg", ".toml", ".ipynb", ".txt", ".json", ".sh", ".rst", ""}
MISSING_DESIGN_PAGE = "DESIGN" + ".md"  # spelt in two parts so that this file does not cite it


def _readme() -> str:
    with open(README, encoding="utf-8") as handle:
        return handle.read()


def _results_module():
    spec = importlib.util.spec_from_file_location("benchmark_results", os.path.join(ROOT, "benchmarks", "results.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the dataclasses in it look their module up there
    spec.loader.exec_module(module)
    return module


def _repository_text_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            if os.path.splitext(name)[1] in TEXT_SUFFIXES:
                yield os.path.join(dirpath, name)


def test_no_file_cites_the_missing_design_page():
    citing = []
    for path in _repository_text_files():
        with open(path, encoding="utf-8", errors="ignore") as handle:
            if MISSING_DESIGN_PAGE in handle.read():
                citing.append(os.path.relpath(path, ROOT))
    assert not citing, f"cite docs/design.md instead of {MISSING_DESIGN_PAGE}: {sorted(citing)}"


def test_readme_is_short():
    n = len(_readme().splitlines())
    assert n <= 160, f"README.md has {n} lines; keep it for users (at most about 150) and move the rest to docs/"


def test_readme_python_examples_parse():
    blocks = re.findall(r"```python\n(.*?)```", _readme(), flags=re.S)
    assert blocks, "README.md has no python example"
    for block in blocks:
        tree = ast.parse(block)  # a SyntaxError fails the test
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert any(m and m.split(".")[0] == "boltzgen" for m in modules), "the example imports no boltzgen module"


def test_readme_states_the_ci_test_command():
    with open(os.path.join(ROOT, ".ci", "run")) as handle:
        ci = [line.strip() for line in handle if line.strip().startswith("pytest")]
    assert ci, ".ci/run runs no pytest command"
    assert ci[-1] in _readme(), f"README.md must state CI's test command: {ci[-1]!r}"


def test_relative_links_resolve():
    pages = [README] + [
        os.path.join(ROOT, "docs", n) for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md")
    ]
    pages += [os.path.join(ROOT, d, "README.md") for d in ("benchmarks", "notebooks", "systems")]
    broken = []
    for page in pages:
        if not os.path.exists(page):
            continue
        with open(page, encoding="utf-8") as handle:
            text = handle.read()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
                continue
            if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(page), target))):
                broken.append(f"{os.path.relpath(page, ROOT)} -> {target}")
    assert not broken, f"broken links: {broken}"


def test_design_page_sections():
    with open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8") as handle:
        headings = [line[3:].strip().lower() for line in handle if line.startswith("## ")]
    for topic in ("conventions", "objectives", "sampling", "states", "command line", "files", "python api", "layout"):
        assert any(topic in h for h in headings), f"docs/design.md has no section on {topic}"


def test_results_page_without_json_says_not_run(tmp_path):
    results = _results_module()
    page = results.render(str(tmp_path))
    for bench in results.BENCHMARKS:
        assert f"## {bench.name}" in page
        section = page.split(f"## {bench.name}\n", 1)[1].split("\n## ", 1)[0]
        assert "Not run" in section and "| not run |" in section, bench.name


def test_recorded_rows_fit_their_tables():
    results = _results_module()
    with open(results.RECORDED, encoding="utf-8") as handle:
        recorded = json.load(handle)["benchmarks"]
    columns = {b.name: b.columns for b in results.BENCHMARKS}
    columns["path_ess"] = results.PATH_ESS_RECORDED_COLUMNS
    for name, entry in recorded.items():
        assert name in columns, f"recorded.json: unknown benchmark {name}"
        assert re.search(r"commit [0-9a-f]{7}", entry["source"]), f"recorded.json: {name} names no commit"
        for row in entry["rows"]:
            assert len(row) == len(columns[name]), f"recorded.json: {name} row {row} does not fit {columns[name]}"


def test_results_reads_benchmark_json(tmp_path):
    results = _results_module()
    blob = {
        "benchmark": "aldp-vacuum chain",
        "system": "aldp-vacuum",
        "quick": False,
        "results": {
            loss: {
                "ess_fraction": 0.5,
                "energy_w2": 1.0,
                "torsion_w2": 0.5,
                "delta_f_kT": 4.0,
                "delta_f_err_kT": 1.0,
                "reference_delta_f_kT": 4.28,
                "reference_delta_f_err_kT": 0.31,
            }
            for loss in ("dsm", "dsm+diffclf")
        },
    }
    (tmp_path / "aldp.json").write_text(json.dumps(blob))
    found = results.load_results(str(tmp_path))
    assert [b for _, b in found["aldp"]] == [blob]
    rows = {row[0]: row for row in results.headline(found, results.load_recorded())}
    assert rows["alanine dipeptide in vacuum: ΔF(φ > 0 vs φ < 0), kT"][1:3] == ["4.00 ± 1.00", "4.00 ± 1.00"]
    assert rows["alanine dipeptide in vacuum: ESS / energy W2, kT / torsion W2, rad"][1] == "0.500 / 1.000 / 0.500"
    assert "bench-results" in rows["alanine dipeptide in vacuum: ESS / energy W2, kT / torsion W2, rad"][4]


def test_headline_shows_the_latest_quickstart_of_each_seed(tmp_path):
    results = _results_module()
    found = results.load_results(str(tmp_path))
    rows = [["x"] * 7 for _ in range(2)]
    rows[0][:2] = ["default quickstart, seed 1, commit abcdef1 (older)", "1.00 ± 0.10"]
    rows[1][:2] = ["default quickstart, seed 1, commit 1234567 (newer)", "2.00 ± 0.20"]
    recorded = {
        "quickstart": {"rows": rows + [["default quickstart, seed 0, commit 7654321", "3.00 ± 0.30"] + ["x"] * 5]}
    }
    last = results.headline(found, recorded)[-1]
    assert last[0].startswith("`boltzgen quickstart`, latest whole run of seeds 0, 1:")
    assert last[2] == "3.00 ± 0.30; 2.00 ± 0.20"
    assert "1234567" in last[4] and "abcdef1" not in last[4]
    assert [row[0] for row in results.headline(found, {})][-1] != last[0]
    # the --long recipe's runs get a row of their own after the default's
    recorded["quickstart"]["rows"].append(["long quickstart, seed 2, commit 89abcde", "4.00 ± 0.10"] + ["x"] * 5)
    default, long = results.headline(found, recorded)[-2:]
    assert default == last and long[0].startswith("`boltzgen quickstart --long`, latest whole run of seeds 2:")
    assert long[2] == "4.00 ± 0.10" and "89abcde" in long[4]


def test_readme_results_table_is_the_generated_one():
    results = _results_module()
    with open(os.path.join(ROOT, "benchmarks", "RESULTS.md"), encoding="utf-8") as handle:
        page = handle.read()
    block = results.headline_block(page)
    assert block.startswith(results.HEADLINE_START) and block.endswith(results.HEADLINE_END)
    assert block in _readme(), "README's results table differs from RESULTS.md's: run python benchmarks/results.py"

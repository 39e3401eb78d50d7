"""Install metadata: setup.cfg, environment.yml and the package tree agree."""

import configparser
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONDA_NAMES = {"torch": "pytorch", "torch-geometric": "pytorch_geometric", "tables": "pytables"}


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg


def _split(requirement):
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return name.lower(), spec.replace(" ", "")


def test_environment_yml_matches_install_requires():
    cfg = _setup_cfg()
    pip_reqs = dict(_split(r) for r in cfg["options"]["install_requires"].strip().splitlines())
    with open(os.path.join(ROOT, "environment.yml")) as handle:
        env = yaml.safe_load(handle)
    assert env["channels"] == ["conda-forge"]
    conda = dict(_split(d) for d in env["dependencies"] if isinstance(d, str))
    for name, spec in pip_reqs.items():
        conda_name = CONDA_NAMES.get(name, name)
        assert conda_name in conda, f"{name} (conda: {conda_name}) missing from environment.yml"
        assert conda[conda_name] == spec, f"{name}: setup.cfg says {spec!r}, environment.yml {conda[conda_name]!r}"
    assert conda["python"] == cfg["options"]["python_requires"]
    test_reqs = dict(_split(r) for r in cfg["options.extras_require"]["test"].strip().splitlines())
    for name, spec in test_reqs.items():  # pytest and what runs the notebooks
        assert name in conda, f"test requirement {name} missing from environment.yml"
        assert conda[name] == spec, f"{name}: setup.cfg's test extra says {spec!r}, environment.yml {conda[name]!r}"


def test_every_package_is_listed_in_setup_cfg():
    listed = set(_setup_cfg()["options"]["packages"].split())
    found = set()
    for dirpath, _, files in os.walk(os.path.join(ROOT, "boltzgen")):
        if "__init__.py" in files:
            found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    assert found - listed == set(), f"packages missing from setup.cfg: {sorted(found - listed)}"
    assert "boltzgen.builtin_systems" in listed


def test_builtin_files_are_found_from_any_directory(tmp_path, monkeypatch):
    from boltzgen.systems.catalog import data_path

    monkeypatch.chdir(tmp_path)
    assert os.path.isfile(data_path("aldp.pdb"))


def test_shipped_training_defaults_build():
    """Every system's shipped training config loads, and its network builds and starts at exactly 0."""
    import torch

    import boltzgen.systems as systems
    from boltzgen.config import load_train_config
    from boltzgen.nn import build_network
    from boltzgen.systems.catalog import SPECS, data_path

    shipped = {spec.train_config: name for name, spec in SPECS.items() if spec.train_config is not None}
    on_disk = {n for n in os.listdir(os.path.join(ROOT, "systems")) if n.endswith(".train.yaml")}
    assert on_disk <= set(shipped), f"training configs no system uses: {sorted(on_disk - set(shipped))}"
    for filename, name in sorted(shipped.items()):
        assert os.path.isfile(data_path(filename)), f"{name}: {filename} is not installed"
        config = load_train_config(system=name).to_dict()
        target = systems.load(name, n_workers=0) if SPECS[name].openmm else systems.load(name)
        try:
            options = dict(config["net"])
            kind = options.pop("kind")
            net = build_network(kind, target.topology if target.topology is not None else target.event_shape, **options)
            x, t = torch.randn(3, *target.event_shape), torch.full((3,), 0.5)
            out = net(x, t)
        finally:
            target.close()
        assert out.shape == (3,), f"{name}: {kind} network gives shape {tuple(out.shape)}"
        assert torch.equal(out, torch.zeros(3)), f"{name}: an untrained {kind} network must start at exactly 0"
        assert any(p.requires_grad for p in net.parameters()), f"{name}: {kind} network has nothing to train"

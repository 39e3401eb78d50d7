"""A crafted sample file must not run code in any reader (issue 21, case 1).

PyTables unpickles a string attribute that ends in "." when it is read; mdtraj reads its HDF5
files through PyTables. The file below carries such a pickle, which creates a marker file when
unpickled. First the test proves the payload is live (PyTables runs it), then it checks that
boltzgen's readers and commands read the file without running it.
"""

import os
import pickle

import h5py
import numpy as np
import pytest

from boltzgen.io import load_samples, save_samples
from boltzgen.systems import load


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def aldp():
    target = load("aldp-vacuum")
    yield target
    target.close()


def _malicious_file(tmp_path, aldp, marker):
    path = str(tmp_path / "crafted.h5")
    x = np.repeat(aldp.positions.numpy()[None], 4, axis=0)
    save_samples(
        path, x, topology=aldp.topology, log_q=np.zeros(4), reduced_energy=None, metadata={"system": "aldp-vacuum"}
    )
    payload = pickle.dumps(_Payload(marker), protocol=0)
    assert payload.endswith(b".")
    with h5py.File(path, "a") as handle:
        handle.attrs["note"] = np.bytes_(payload)
        handle["coordinates"].attrs["note"] = np.bytes_(payload)
    return path


def test_payload_is_live_under_pytables(tmp_path, aldp):
    tables = pytest.importorskip("tables")
    marker = str(tmp_path / "ran")
    path = _malicious_file(tmp_path, aldp, marker)
    with tables.open_file(path) as handle:
        handle.root._v_attrs.note  # noqa: B018 - reading the attribute unpickles it
    assert os.path.exists(marker), "the crafted attribute should run under PyTables (else this test proves nothing)"


def test_load_samples_runs_nothing(tmp_path, aldp):
    marker = str(tmp_path / "ran")
    path = _malicious_file(tmp_path, aldp, marker)
    samples = load_samples(path)
    assert not os.path.exists(marker)
    assert samples.x.shape == (4, 22, 3)
    assert samples.topology.n_atoms == 22
    np.testing.assert_allclose(samples.x[0], aldp.positions.numpy(), atol=1e-6)  # float32 on disk
    assert samples.metadata["system"] == "aldp-vacuum"


def test_topology_file_runs_nothing(tmp_path, aldp):
    """A crafted .h5 given as the topology of a user's System XML is read without PyTables."""
    import openmm

    from boltzgen.systems import from_openmm

    marker = str(tmp_path / "ran")
    path = _malicious_file(tmp_path, aldp, marker)
    xml = tmp_path / "system.xml"
    xml.write_text(openmm.XmlSerializer.serialize(aldp.system))
    target = from_openmm(str(xml), path, 300.0)
    try:
        assert target.topology.n_atoms == 22
        assert np.isfinite(float(target.reduced_energy(target.positions[None])[0]))
    finally:
        target.close()
    assert not os.path.exists(marker)


@pytest.mark.parametrize("command", ["reweight", "analyze"])
def test_commands_run_nothing(tmp_path, aldp, command):
    from boltzgen.cli import main

    marker = str(tmp_path / "ran")
    path = _malicious_file(tmp_path, aldp, marker)
    if command == "reweight":
        argv = ["reweight", path, "--system", "aldp-vacuum", "--log-q", "log_q", "-o", str(tmp_path / "w.h5")]
    else:
        argv = ["analyze", path, "-o", str(tmp_path / "report")]
    main(argv)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("where", ["topology", "metadata", "coordinates"])
def test_malformed_files_are_refused_clearly(tmp_path, aldp, where):
    path = str(tmp_path / "bad.h5")
    save_samples(path, np.repeat(aldp.positions.numpy()[None], 2, axis=0), topology=aldp.topology)
    with h5py.File(path, "a") as handle:
        if where == "topology":
            del handle["topology"]
            handle["topology"] = np.array([b"not json"])
        elif where == "metadata":
            handle.attrs["boltzgen_metadata"] = "[1, 2]"
        else:
            del handle["coordinates"]
            handle["coordinates"] = np.array([b"a", b"b"])
    with pytest.raises(ValueError, match=path):
        load_samples(path)


def test_other_trajectory_formats_read_with_a_topology(tmp_path, aldp):
    """DCD and XTC (no topology of their own) are read with --topology; without one the error says so."""
    import mdtraj

    x = np.repeat(aldp.positions.numpy()[None], 3, axis=0) + 0.001 * np.arange(3)[:, None, None]
    traj = mdtraj.Trajectory(x.astype(np.float32), aldp.topology)
    pdb = str(tmp_path / "top.pdb")
    traj[0].save_pdb(pdb)
    for ext in ("dcd", "xtc"):
        path = str(tmp_path / f"traj.{ext}")
        traj.save(path)
        samples = load_samples(path, topology=pdb)
        assert samples.x.shape == (3, 22, 3) and samples.log_weights is None
        np.testing.assert_allclose(samples.x, x, atol=2e-3)
        assert samples.metadata["source_format"] == ext
        with pytest.raises(ValueError, match="need --topology"):
            load_samples(path)

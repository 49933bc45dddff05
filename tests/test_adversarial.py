"""Adversarial inputs (issue 18): every failure a user can cause is exit 2 and one line, and no failure damages
an earlier run record.

Generators, not lists: the numeric fields come from the config schema (every int/float field, with the bad
values its own constraints imply, NaN and infinities, integers beyond int64 and seeds beyond what the RNGs
accept); damaged model folders, SAE folders, corpus files, activation files and run folders are drawn by
hypothesis (truncated, emptied, wrong JSON shape, wrong types, random bytes, invalid UTF-8). Each case runs
the real command-line entry point in this process on a finished tiny run and asserts exit 2, one line on
stderr naming the field, no traceback, and the earlier run folder byte-identical (hidden files included).
Signals (SIGTERM, SIGINT) hit real subprocesses at random moments; the folder is then either the old record
or a consistent new one, and the rerun ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from experiments.config import ExperimentConfig
from experiments.interventions import main as interventions_main
from experiments.probe import main as probe_main
from experiments.report import main as report_main
from experiments.run import verify_record
from experiments.steer import main as steer_main
from tiny_pipeline import differences, run_in_process, write_pipeline

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished tiny run (model, SAE, corpus, config and run folder); its files must never change below."""
    root = tmp_path_factory.mktemp("adversarial")
    config = write_pipeline(root / "inputs")
    old = os.environ.get("COOC_CACHE")
    os.environ["COOC_CACHE"] = str(root / "cache")
    run_in_process(config, root / "run", root / "cache")
    yield root, config, root / "run"
    if old is None:
        os.environ.pop("COOC_CACHE", None)
    else:
        os.environ["COOC_CACHE"] = old


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, main, argv, field: str | None = None, folder: Path | None = None) -> str:
    """Run ``main(argv)``; assert exit 2, one line ``error: FIELD: ...`` and (with ``folder``) an unchanged folder."""
    before = snapshot(folder) if folder is not None else None
    capsys.readouterr()
    rc = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2, (argv, err)
    assert len(err) >= 1 and "Traceback" not in "\n".join(err), err
    line = err[-1]
    assert line.startswith("error: ") and len([x for x in err if x.startswith("error:")]) == 1, err
    # log lines (INFO) may precede it, but nothing that looks like a traceback or a library's retry noise
    assert all(not x.startswith(("  File ", "Traceback", "Retrying", "WARNING:urllib3")) for x in err), err
    if field is not None:
        assert line.startswith(f"error: {field}"), (field, line)
    if folder is not None:
        assert snapshot(folder) == before, "the earlier run record changed"
    return line


def steer_argv(config: Path, out: Path, *sets: str) -> list[str]:
    return [str(config), "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]


# ------------------------------------------------------------------- numeric fields, from the schema

def _numeric_fields(model: type[BaseModel], prefix: str = ""):
    """(dotted path, python type, constraints) of every int/float field of the config, at any depth."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        args = (info.annotation, *typing.get_args(info.annotation))
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            yield from _numeric_fields(sub, path + ".")
            continue
        metadata = list(info.metadata)
        kinds = set()
        for a in args:
            for inner in (a, *typing.get_args(a)):
                if typing.get_origin(inner) is typing.Annotated:
                    base, *meta = typing.get_args(inner)
                    kinds.add(base)
                    metadata += [m for x in meta for m in getattr(x, "metadata", [x])]
                elif inner in (int, float):
                    kinds.add(inner)
                elif typing.get_origin(inner) is list and set(typing.get_args(inner)) & {int, float}:
                    kinds.add(("list", typing.get_args(inner)[0]))
        for kind in kinds:
            if kind in (int, float) or isinstance(kind, tuple):
                yield path, kind, metadata


def _bad_values(kind, metadata) -> list[str]:
    """YAML texts that must be refused for a field of ``kind`` with these constraints."""
    if isinstance(kind, tuple):  # a list of numbers: a non-finite or out-of-range element
        return [f"[1, {v}]" for v in _bad_values(kind[1], metadata) if not v.startswith("[")] or ["[1, .nan]"]
    bad = [".nan", ".inf", "-.inf"] if kind is float else ["2.5", str(2**63), str(-(2**63) - 1), ".nan"]
    for m in metadata:
        if isinstance(m, Ge):
            bad.append(str(m.ge - 1) if kind is int else repr(m.ge - 0.5 - abs(m.ge)))
        elif isinstance(m, Gt):
            bad.append(str(m.gt) if kind is int else repr(float(m.gt)))
        elif isinstance(m, Le):
            bad.append(str(m.le + 1) if kind is int else repr(m.le + 0.5 + abs(m.le)))
        elif isinstance(m, Lt):
            bad.append(str(m.lt) if kind is int else repr(float(m.lt)))
    return bad


CASES = [(path, value) for path, kind, meta in _numeric_fields(ExperimentConfig) for value in _bad_values(kind, meta)]


def test_the_schema_walk_finds_every_numeric_field_and_the_seeds():
    paths = {p for p, _ in CASES}
    assert {"seed", "interventions.seed", "sae.train.seed", "interventions.clamp_value", "cooc.alpha",
            "probes.regularisation", "data.max_tokens", "hook.layer"} <= paths, sorted(paths)
    assert len(paths) > 60 and (("seed", str(2**32)) in CASES)  # a millisecond timestamp is refused


@pytest.mark.parametrize("path, value", CASES, ids=[f"{p}={v}" for p, v in CASES])
def test_every_non_finite_or_out_of_range_number_is_refused_before_anything_is_touched(done, capsys, path, value):
    _, config, out = done
    line = refused(capsys, steer_main, steer_argv(config, out, f"{path}={value}"), folder=out)
    assert line.startswith(f"error: {path}") or (line.startswith("error: sae") and path.startswith("sae.")), line


# ------------------------------------------------------------------------------------- damaged files

def _damage(data: bytes, how: str, draw) -> bytes:
    if how == "truncate":  # strictly inside the content: dropping only trailing whitespace would damage nothing
        return data[:draw(st.integers(0, max(len(data.rstrip()) - 1, 0)))]
    if how == "empty":
        return b""
    if how == "json_shape":
        return draw(st.sampled_from([b"[]", b"[1, 2]", b"42", b'"text"', b"null", b"true"]))
    if how == "random":
        return draw(st.binary(min_size=1, max_size=64))
    if how == "bad_utf8":
        cut = draw(st.integers(0, len(data)))
        return data[:cut] + b"\xff\xfe\xc3" + data[cut:]
    raise AssertionError(how)


DAMAGE = st.sampled_from(["truncate", "empty", "json_shape", "random", "bad_utf8"])


def damaged_copy(source: Path, tmp_path_factory, names: list[str], data) -> Path:
    """A copy of the folder ``source`` with one of ``names`` damaged as hypothesis draws it (a safetensors file
    is truncated, emptied, replaced by random bytes or given a header whose offsets overflow)."""
    folder = tmp_path_factory.mktemp(source.name)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    target = folder / data.draw(st.sampled_from(names))
    how = data.draw(DAMAGE)
    if target.suffix == ".safetensors" and how == "bad_utf8":
        how = "truncate"
    if target.suffix == ".safetensors" and how == "json_shape":  # a header whose offsets overflow
        header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e999]}}'
        target.write_bytes(len(header).to_bytes(8, "little") + header)
    else:
        target.write_bytes(_damage(target.read_bytes(), how, data.draw))
    return folder


@pytest.mark.parametrize("folder_name, names, setting, field", [
    ("model", ["config.json", "model.safetensors"], "model.name", "model.name"),
    ("sae", ["cfg.json", "sae_weights.safetensors"], "sae.path", "sae"),
])
@FAST
@given(data=st.data())
def test_a_damaged_model_or_sae_folder_is_one_line(done, capsys, tmp_path_factory, folder_name, names, setting, field,
                                                   data):
    root, config, out = done
    folder = damaged_copy(root / "inputs" / folder_name, tmp_path_factory, names, data)
    refused(capsys, steer_main, steer_argv(config, out, f"{setting}={folder}"), field, folder=out)


@pytest.mark.parametrize("content", [b"hello, I am a text file\n", b"", b"GGU", b"GGUF\x03\x00\x00\x00garbage"])
def test_a_file_named_gguf_that_is_not_one_is_one_line(done, capsys, tmp_path, content):
    _, config, out = done
    fake = tmp_path / "model.gguf"
    fake.write_bytes(content)
    refused(capsys, steer_main, steer_argv(config, out, f"model.name={fake}"), "model.name", folder=out)


def test_a_jsonl_file_with_invalid_utf8_read_without_the_preflight_is_a_config_error(tmp_path):
    from sources.config import DataSpec
    from sources.corpora import iter_documents
    from sources.errors import ConfigError

    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "bro\xffken"}\n')
    with pytest.raises(ConfigError, match="is not UTF-8 text") as exc:
        list(iter_documents(DataSpec(source="jsonl", path=str(path))))
    assert exc.value.field == "data.path"


@FAST
@given(data=st.data())
def test_a_damaged_activation_file_is_one_line(done, capsys, tmp_path_factory, data):
    _, config, out = done
    folder = tmp_path_factory.mktemp("acts")
    path = folder / "acts.npz"
    rng = np.random.default_rng(0)
    how = data.draw(st.sampled_from(["truncate", "empty", "random", "dense", "npy", "scalar_shape", "wrong_width", "nan"]))
    width = 48 if how == "wrong_width" else 64  # the tiny SAE has 64 latents
    acts = sp.random(200, width, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    if how == "nan":
        acts.data[data.draw(st.integers(0, acts.nnz - 1))] = np.nan
    if how == "dense":
        np.savez(path, acts=acts.toarray())
    elif how == "npy":  # a plain array under an .npz name
        with open(path, "wb") as f:
            np.save(f, acts.toarray())
    elif how == "scalar_shape":  # a sparse-looking archive whose shape is a 0-d array
        np.savez(path, format=np.array("csr"), shape=np.array(5), data=acts.data, indices=acts.indices,
                 indptr=acts.indptr)
    else:
        sp.save_npz(path, acts)
    if how in ("truncate", "empty", "random"):
        path.write_bytes(_damage(path.read_bytes(), how, data.draw))
    refused(capsys, steer_main, steer_argv(config, out, "activations.source=file", f"activations.path={path}"),
            "activations", folder=out)


# ---------------------------------------------------------------------------------- damaged run folders

@FAST
@given(data=st.data())
def test_a_damaged_run_folder_is_refused_by_the_report_and_later_stages(done, capsys, tmp_path_factory, data):
    _, config, out = done
    copy = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(out, copy)
    m = json.loads((copy / "manifest.json").read_text())
    recorded = [f"{s}/{f}" for s, rec in m["stages"].items() for f in rec["files"]] + ["manifest.json", "verdicts.csv"]
    target = copy / data.draw(st.sampled_from(sorted(recorded)))
    how = data.draw(st.sampled_from(["truncate", "empty", "json_shape", "random"]))
    before = target.read_bytes()
    damaged = _damage(before, how, data.draw)
    if damaged == before:
        damaged += b"\n"
    target.write_bytes(damaged)
    record = target == copy / "manifest.json"  # the run record itself (cooc/manifest.json is a stage file)
    stage = "out" if record else "interventions" if target == copy / "verdicts.csv" else target.relative_to(copy).parts[0]
    refused(capsys, report_main, [str(copy), "--quiet"], stage, folder=copy)
    later = probe_main if record else {"cooc": probe_main, "probes": interventions_main}.get(stage)
    if later is not None:  # a later stage refuses to read it
        refused(capsys, later, [str(config), "--out", str(copy), "--quiet"], stage, folder=copy)
    if record:  # steer refuses a damaged record instead of overwriting it (a damaged stage file it recomputes)
        refused(capsys, steer_main, [str(config), "--out", str(copy), "--quiet"], "out", folder=copy)


def test_a_refused_command_inside_a_stage_leaves_the_record_byte_identical(done, capsys, monkeypatch):
    _, config, out = done
    # checks that can run before any stage: explicit group ids against the reused cooc stage
    refused(capsys, steer_main, steer_argv(config, out, "interventions.groups=[gnope]"), "interventions.groups", folder=out)
    refused(capsys, steer_main, steer_argv(config, out, "report.enabled=true", "report.groups=[gnope]"), "report.groups",
            folder=out)
    # a failure raised inside a stage after it has written part of its files (here: the probes stage, recomputed
    # because one of its settings changed) leaves the manifest and every recorded file as they were
    from probes import stage as probes_stage
    from sources.errors import ConfigError

    class HalfWritten:
        def save(self, folder):
            (Path(folder) / "results.csv").write_text("half a table\n")
            raise ConfigError("probes", "refused inside the stage")

    monkeypatch.setattr(probes_stage, "run_probes", lambda cooc, cfg, progress: HalfWritten())
    refused(capsys, steer_main, steer_argv(config, out, "probes.n_bootstrap=60"), "probes", folder=out)
    assert verify_record(out)["complete"] is True and not (out / ".staging").exists()


# ------------------------------------------------------------------------------- the command line, OS

@pytest.mark.parametrize("argv", [["--frobnicate"], ["--set"], ["a.yaml", "b.yaml"], ["--out"]])
def test_bad_command_lines_are_one_line(capsys, argv):
    line = refused(capsys, steer_main, argv, "arguments")
    assert "--help" in line


def test_a_file_name_too_long_is_one_line(done, capsys, tmp_path):
    _, config, _ = done
    refused(capsys, steer_main, steer_argv(config, tmp_path / ("x" * 300)), "out")
    refused(capsys, steer_main, steer_argv(config, tmp_path / "o", f"data.path={tmp_path / ('y' * 300)}.jsonl"), "path")
    assert not (tmp_path / "o").exists()  # a refused command leaves no empty folder behind


@pytest.mark.parametrize("sets, field", [
    (["model.name=some-org/some-model"], "model.name"),
    (["sae.path=null", "sae.release=gpt2-small-res-jb", "sae.id=blocks.8.hook_resid_pre"], "sae.release"),
    (["data.source=hub", "data.name=some-org/some-dataset"], "data.name"),
])
def test_hub_names_without_a_network_fail_fast_and_quietly(done, capsys, monkeypatch, sets, field):
    from sources import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda endpoint=None: False)  # as on a machine without a network
    _, config, out = done
    t0 = time.perf_counter()
    line = refused(capsys, steer_main, steer_argv(config, out, *sets), field, folder=out)
    assert "not reachable" in line and "HF_HUB_OFFLINE" in line, line
    assert time.perf_counter() - t0 < 30


def test_the_real_connectivity_check_answers_within_its_timeout():
    from sources import hub

    hub.hub_reachable.cache_clear()
    t0 = time.perf_counter()
    hub.hub_reachable("https://10.255.255.1:81")  # routable nowhere: a connect that only the timeout ends
    assert time.perf_counter() - t0 < hub.TIMEOUT_S + 2


def test_outputs_are_readable_as_the_umask_allows(done):
    _, _, out = done
    mask = os.umask(0)
    os.umask(mask)
    for p in out.rglob("*"):
        if p.is_file():
            assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


# ------------------------------------------------------------------------------------ locks and signals

def _hold(folder: Path) -> subprocess.Popen:
    code = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDONLY)\nfor _ in range(200):\n    try:\n"
            "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n        break\n    except OSError:\n"
            "        time.sleep(0.05)\nelse:\n    print('busy', flush=True)\n    sys.exit(1)\n"
            "print('held', flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held", "this test process still holds the folder's lock"
    return p


def test_a_second_command_on_a_folder_in_use_is_refused_and_a_killed_holder_frees_it(done, capsys):
    _, config, out = done
    holder = _hold(out)
    try:
        line = refused(capsys, steer_main, [str(config), "--out", str(out), "--quiet"], "out", folder=out)
        assert "in use" in line
        refused(capsys, report_main, [str(out), "--quiet"], "out", folder=out)
    finally:
        holder.send_signal(signal.SIGKILL)  # as a crash would: no cleanup
        holder.wait()
    assert steer_main([str(config), "--out", str(out), "--quiet"]) == 0  # no stale lock


def _steer_process(config: Path, out: Path, cache: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "COOC_CACHE": str(cache), "COOC_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "experiments.steer", str(config), "--out", str(out), "--quiet", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stage=st.sampled_from(["cooc", "probes", "interventions"]), delay=st.floats(0.0, 0.2),
       sig=st.sampled_from([signal.SIGTERM, signal.SIGINT]), fresh=st.booleans())
def test_a_signal_at_a_random_moment_is_one_line_and_leaves_a_consistent_resumable_record(
        done, tmp_path_factory, stage, delay, sig, fresh):
    root, config, out = done
    folder = tmp_path_factory.mktemp("signal") / "run"
    if fresh:  # interrupt a --fresh recomputation of a finished folder: its record must stay consistent
        shutil.copytree(out, folder)
    p = _steer_process(config, folder, root / "cache", *(["--fresh"] if fresh else []))
    deadline = time.monotonic() + 120
    while not (folder / ".staging" / stage).exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # until that stage has started (start-up signals: test_a_signal_while_starting...)
    time.sleep(delay)
    p.send_signal(sig)
    _, err = p.communicate(timeout=300)
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err, err
    assert p.returncode == (143 if sig == signal.SIGTERM else 130), (stage, err)  # it was interrupted in the stage
    assert lines[-1].startswith(("terminated (SIGTERM)", "interrupted")), lines
    assert not list(folder.rglob(".*.tmp*"))
    if (folder / "manifest.json").exists():
        verify_record(folder)  # every recorded file has its recorded digest
    run_in_process(config, folder, root / "cache")  # the same command again resumes ...
    assert differences(out, folder) == []  # ... and ends where an uninterrupted run ends


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_starting_is_one_line_and_writes_nothing(done, tmp_path, sig):
    root, config, _ = done
    p = _steer_process(config, tmp_path / "run", root / "cache")
    time.sleep(0.5)  # python -m experiments.steer is still importing torch
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == (143 if sig == signal.SIGTERM else 130) and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("while starting; nothing was written")
    assert not (tmp_path / "run").exists()

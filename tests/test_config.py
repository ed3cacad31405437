"""Typed training config: YAML files, --set overrides, strict keys and values, shipped configs."""

from __future__ import annotations

import contextlib
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pspnet.config import (
    DatasetKind,
    TrainConfig,
    describe_config_source,
    list_shipped_configs,
    load_config,
    resolve_config_path,
)
from pspnet.errors import InputError

# The authors' hszhao/semseg config/*/*.yaml, transcribed by hand: (layers, crop, epochs).
AUTHORS = {
    "ade20k_pspnet50": ("pspnet50", 473, 100),
    "ade20k_pspnet101": ("pspnet101", 473, 100),
    "voc2012_pspnet50": ("pspnet50", 473, 50),
    "voc2012_pspnet101": ("pspnet101", 473, 50),
    "cityscapes_pspnet50": ("pspnet50", 713, 200),
    "cityscapes_pspnet101": ("pspnet101", 713, 200),
}


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_shipped_configs_reproduce_the_authors(name):
    config = load_config(name)
    preset, crop, epochs = AUTHORS[name]
    assert (config.model.preset, config.data.crop_size, config.optim.epochs) == (preset, crop, epochs)
    o = config.optim
    assert (o.batch_size, o.base_lr, o.momentum, o.weight_decay, o.power, o.aux_weight) == (
        16, 0.01, 0.9, 0.0001, 0.9, 0.4
    )  # fmt: skip
    assert o.head_lr_mult == 10 and config.data.scale == [0.5, 2.0] and config.data.rotate == [-10, 10]
    assert config.data.ignore_index == 255 and config.data.blur and config.data.flip


def test_every_shipped_config_loads():
    assert {"demo", *AUTHORS} <= set(list_shipped_configs())
    for name in list_shipped_configs():
        load_config(name)


def test_yaml_file_and_set_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: pspnet_tiny}\noptim: {iterations: 10, base_lr: 1}\n")
    config = load_config(
        path, ["optim.base_lr=0.02", "optim.amp=bf16", "model.overrides.bins=[1, 2]", "seed=7"]
    )
    assert config.model.preset == "pspnet_tiny" and config.optim.iterations == 10
    assert config.optim.base_lr == 0.02 and isinstance(config.optim.base_lr, float)
    assert config.optim.amp == "bf16" and config.model.overrides == {"bins": [1, 2]} and config.seed == 7
    assert isinstance(load_config(path).optim.base_lr, float)  # YAML int 1 -> float 1.0


def test_round_trip_through_yaml(tmp_path):
    config = load_config("demo", ["optim.accumulate=2", "data.scale=null"])
    path = tmp_path / "saved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["optim.base_lt=0.1"], ["optim.base_lt", "base_lr"]),
        (["optimizer.lr=0.1"], ["optimizer", "optim"]),
        (["optim.amp=fp8"], ["optim.amp", "'fp8'", "'bf16'"]),
        (["optim.batch_size=big"], ["optim.batch_size", "'big'", "int"]),
        (["optim.batch_size=2.5"], ["optim.batch_size", "2.5"]),
        (["deterministic=3"], ["deterministic", "bool"]),
        (["optim.iterations=0"], ["optim.iterations", ">= 1"]),
        (["optim.epochs=3"], ["exactly one"]),
        (["model.overrides.binz=[1]"], ["model.overrides.binz", "bins"]),
        (["model.overrides.pooling=median"], ["model.overrides", "pooling"]),
        (["data.scale=[2, 1]"], ["data.scale"]),
        (["optim"], ["KEY=VALUE"]),
        (["optim.base_lr.x=1"], ["optim.base_lr", "not a section"]),
        (["optim.base_lr=fast"], ["optim.base_lr", "'fast'", "float"]),
        (["optim.base_lr=1e400"], ["optim.base_lr"]),  # inf
        (["optim.weight_decay=nan"], ["optim.weight_decay"]),
        (["model.overrides.num_classes=5"], ["model.overrides.num_classes", "model.num_classes"]),
        (["data.ignore_index=70000"], ["data.ignore_index", "70000"]),
        (["data.ignore_index=-1"], ["data.ignore_index", "-1"]),
    ],
)
def test_mistakes_name_the_key_and_the_fix(overrides, fragments):
    with pytest.raises(InputError) as info:
        load_config("demo", overrides)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_floats_in_scientific_notation_are_accepted(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-4 without a dot as a string; the docs write weight_decay 1e-4."""
    config = load_config("demo", ["optim.base_lr=1e-3", "optim.weight_decay=5E-4", "data.scale=[5e-1, 2]"])
    assert (config.optim.base_lr, config.optim.weight_decay) == (0.001, 0.0005)
    assert config.data.scale == [0.5, 2.0] and isinstance(config.optim.base_lr, float)
    path = tmp_path / "my.yaml"
    path.write_text("data: {root: demo_small}\noptim: {iterations: 2, weight_decay: 1e-4}\n")
    assert load_config(path).optim.weight_decay == 0.0001
    with pytest.raises(InputError, match="optim.batch_size"):  # integers stay integers
        load_config("demo", ["optim.batch_size=1e1"])


def test_data_keys_for_lists_palettes_and_ignore_index():
    config = load_config(
        "demo", ["data.data_root=/data/ade", "data.mask_palette=voc2012", "data.ignore_index=0"]
    )
    assert (config.data.data_root, config.data.mask_palette, config.data.ignore_index) == (
        "/data/ade", "voc2012", 0
    )  # fmt: skip
    assert load_config("demo").data.ignore_index is None  # the dataset's own
    moved = load_config("demo", ["data.data_root=/elsewhere"])
    assert moved.fingerprint_hash() == load_config("demo").fingerprint_hash()  # where, not what


def test_unknown_shipped_name_lists_the_shipped_configs():
    with pytest.raises(InputError, match="ade20k_pspnet50"):
        load_config("ade21k")


def test_a_local_file_wins_over_a_shipped_name_and_says_so(tmp_path, monkeypatch):
    """``--config demo`` in a folder holding the user's edited ``demo.yaml`` reads that file, and the
    line ``pspnet train`` prints names it and the shipped config it shadows."""
    monkeypatch.chdir(tmp_path)
    shipped = resolve_config_path("demo")
    assert shipped.name == "demo.yaml" and shipped.parent.name == "configs"
    assert describe_config_source("demo") == f"config: {shipped}"
    Path("demo.yaml").write_text("model: {preset: pspnet_tiny}\noptim: {iterations: 3}\n")
    for name in ("demo", "demo.yaml", "./demo"):
        assert load_config(name).optim.iterations == 3, name
        assert describe_config_source(name) == (
            f"config: demo.yaml (a local file; it shadows the shipped config demo, which is {shipped})"
        )
    assert load_config(shipped).optim.iterations == 280  # the shipped one, by its path
    Path("mine.yaml").write_text("optim: {iterations: 5}\n")
    assert load_config("mine").optim.iterations == 5  # NAME finds NAME.yaml, shipped or not
    assert describe_config_source("mine") == "config: mine.yaml"


def test_the_command_prints_the_config_file_it_read(tmp_path, monkeypatch, capsys):
    from pspnet.cli import main

    monkeypatch.chdir(tmp_path)
    Path("demo.yaml").write_text("model: {preset: pspnet_tiny}\noptim: {iterations: 3}\n")
    assert main(["train", "--config", "demo", "--print-config"]) == 0
    captured = capsys.readouterr()
    assert "iterations: 3" in captured.out
    assert captured.err.startswith("config: demo.yaml (a local file; it shadows the shipped config demo")


def test_data_kind_names_the_dataset_layouts():
    from pspnet.data.datasets import DATASET_KINDS

    assert typing.get_args(DatasetKind) == tuple(DATASET_KINDS)
    with pytest.raises(InputError, match=r"data\.kind: invalid value 'folder2'; expected 'auto' \|"):
        load_config("demo", ["data.kind=folder2"])


def test_fingerprint_ignores_where_results_go():
    a = load_config("demo", ["output.dir=a", "data.num_workers=0", "eval.interval=5"])
    b = load_config("demo", ["output.dir=b", "data.num_workers=3"])
    assert a.fingerprint_hash() == b.fingerprint_hash()
    assert a.fingerprint_hash() != load_config("demo", ["optim.base_lr=0.5"]).fingerprint_hash()


_KEYS = [
    "seed", "device", "nonfinite", "deterministic", "optim.base_lr", "optim.amp", "optim.batch_size",
    "optim.iterations", "data.scale", "data.crop_size", "eval.scales", "model.overrides",
    "model.overrides.bins", "model.num_classes", "output.keep_last", "data", "junk.key", "model.preset",
]  # fmt: skip
_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(_KEYS), value=_JUNK)
def test_junk_values_raise_only_input_error(key, value):
    try:
        config = load_config("demo", [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
    except InputError:
        return
    assert isinstance(config, TrainConfig)


@settings(max_examples=60, deadline=None)
@given(document=_JUNK)
def test_junk_documents_raise_only_input_error(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    with contextlib.suppress(InputError):
        load_config(path)

"""Every committed experiment config parses, and its patch fits its pooling."""

from pathlib import Path

import pytest

from training.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "training" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_committed_config_parses(path):
    cfg = load_config(path)
    assert cfg.data.sources and cfg.model.structures
    assert cfg.output_dir.startswith("runs/")


def test_there_are_configs():
    assert {"default_wholegland.yaml", "nci_isbi.yaml"} <= {p.name for p in CONFIGS}

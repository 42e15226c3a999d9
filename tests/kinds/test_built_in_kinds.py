"""``data-stats`` and ``aot`` work for every built-in kind of run, through the kind's interface."""

import json

import pytest

from sora_jax.cli import main
from sora_jax.config import load_config
from sora_jax.errors import ConfigError
from sora_jax.kinds.registry import kind_class, names, run_kind
from tests.cli import sora_jax

CONFIGS = {"dit": "experiments/world_tiny.py:test", "autoencoder": "experiments/vae_world.py:test"}


def test_built_in_kinds_are_found_by_name_and_unknown_ones_are_refused():
    assert {"dit", "autoencoder"} <= set(names())
    for name, spec in CONFIGS.items():
        assert type(run_kind(load_config(spec))) is kind_class(name)
    with pytest.raises(ConfigError, match="'vae' is not one of .*autoencoder.*dit"):
        load_config(CONFIGS["dit"], ["task=vae"])
    with pytest.raises(ConfigError, match="cannot import 'no_such_module:Kind'"):
        load_config(CONFIGS["dit"], ["task=no_such_module:Kind"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_data_stats_describes_the_batches_of_every_kind(name, capsys):
    # The command in this process (tests/test_cli.py runs data-stats as a separate process).
    assert main(["data-stats", "--config", CONFIGS[name], "--batches", "2"]) == 0
    stats = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert stats["batches"] == 2
    if name == "dit":
        assert 0 < stats["packing_efficiency"] <= 1 and stats["tokens_per_s"] > 0
    else:
        assert stats["clips_per_s"] > 0 and stats["clip_pixels"] == 5 * 16 * 16


@pytest.mark.slow
def test_aot_compiles_the_autoencoders_step_for_a_tpu_slice(tmp_path):
    out = tmp_path / "aot.json"
    result = sora_jax(
        "aot", "--config", CONFIGS["autoencoder"], "--topology", "v5p-8", "--json", str(out), "--no-estimate"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["fits"] and report["work_unit"] == "clips" and report["work_per_step"] == 8
    assert report["flops_per_step"] is None and report["per_chip_bytes"]["arguments"] > 0

import json
from pathlib import Path

import pytest

from sora_jax.config import ConfigError, config_from_json, config_to_json, load_config

TINY = "experiments/world_tiny.py"


def test_overrides_set_keys_with_their_types():
    config = load_config(
        TINY,
        [
            "train.steps=7",
            "seed=3",
            "optim.lr=2e-4",
            "model.qk_norm=false",
            "data.side=(16,32)",
            "diffusion.sampler=heun",
        ],
    )
    assert config.train.steps == 7 and config.seed == 3
    assert config.optim.lr == pytest.approx(2e-4) and config.model.qk_norm is False
    assert config.data.side == (16, 32) and config.diffusion.sampler == "heun"
    assert isinstance(config.optim.lr, float)


def test_int_given_to_a_float_key_becomes_float():
    assert load_config(TINY, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=5", r"unknown config key 'train.stepz'; did you mean train.steps"),
        ("nosuch.key=1", r"unknown config key 'nosuch.key'"),
        ("train.steps=many", r"'train.steps' takes a int, got 'many'"),
        ("model.qk_norm=3", r"'model.qk_norm' takes true/false"),
        ("data.side=(1,2,3)", r"'data.side' takes 2 values"),
        ("train.steps", r"not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.heads=5", "model.dim"),
        ("model.attention=flash", "model.attention"),
        ("data.seq_len=8", "data.seq_len"),
        ("data.frames=(4,2)", "data.frames"),
        ("train.steps=0", "train.steps"),
        ("optim.ema_decay=1.5", "optim.ema_decay"),
        ("train.sample_height=30", "train.sample_height"),
        ("mesh.ici_fsdp=-1", "mesh.ici_data"),
        ("data.caption_dropout=2.0", "data.caption_dropout"),
    ],
)
def test_validation_names_the_key_before_anything_compiles(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(TINY, [override])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("task=gan", "task"),
        ("data.dense_clip=(8,32,32)", "data.dense_clip"),  # Not 1 + 2k frames.
        ("data.dense_clip=(9,31,32)", "data.dense_clip"),  # Not a multiple of 2 pixels.
        ("autoencoder.norm=batch", "autoencoder.norm"),
    ],
)
def test_autoencoder_runs_are_validated_too(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config("experiments/vae_world.py", [override])


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("experiments").glob("*.py")))
def test_every_experiment_and_its_test_variant_validate(path):
    config = load_config(path)
    assert config.train.steps > 0
    if 'if arg == "test"' in Path(path).read_text():
        assert load_config(path + ":test").train.steps < config.train.steps


def test_missing_file_and_unknown_variant_are_clear():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("experiments/nope.py")
    with pytest.raises(ValueError, match="unknown world_tiny variant"):
        load_config(TINY + ":huge")


def test_resolved_config_round_trips_through_json():
    config = load_config(TINY + ":test", ["seed=11"])
    text = config_to_json(config)
    assert json.loads(text)["seed"] == 11
    assert config_from_json(text).to_dict() == config.to_dict()


def test_a_config_json_written_before_a_key_existed_keeps_the_behaviour_it_trained_with():
    import json

    from sora_jax.config import LEGACY_VALUES

    config = load_config("experiments/world_tiny.py")
    values = json.loads(config_to_json(config))
    for dotted in LEGACY_VALUES:
        section, key = dotted.split(".")
        del values[section][key]
    old = config_from_json(json.dumps(values))
    for dotted, legacy in LEGACY_VALUES.items():
        section, key = dotted.split(".")
        assert old[section][key] == legacy
    assert config_from_json(config_to_json(config)).to_dict() == config.to_dict()

import json
from pathlib import Path

import pytest

from sora_jax.cli import main
from sora_jax.config import ConfigError, config_from_json, config_to_json, experiment_variants, load_config

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
        ("diffusion.uniform_t=1.5", "diffusion.uniform_t"),
        ("model.text_attention=mixed", "model.text_attention"),
    ],
)
def test_validation_names_the_key_before_anything_compiles(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(TINY, [override])


@pytest.mark.parametrize("kernel", ["splash", "ring"])
def test_joint_text_attention_is_refused_with_a_one_stream_kernel(kernel):
    with pytest.raises(
        ConfigError, match=f"'model.text_attention': joint attention .* model.attention='{kernel}'"
    ):
        load_config(TINY, ["model.text_attention=joint", f"model.attention={kernel}"])
    assert load_config(TINY, ["model.text_attention=joint"]).model.text_attention == "joint"


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
def test_every_experiment_and_each_of_its_variants_validate(path):
    config = load_config(path)
    assert config.train.steps > 0
    variants = experiment_variants(Path(path).read_text())
    for variant in variants:
        load_config(f"{path}:{variant}")
    if "test" in variants:
        assert load_config(path + ":test").train.steps < config.train.steps


def test_the_variants_of_an_experiment_are_read_from_its_get_config():
    assert experiment_variants(Path(TINY).read_text()) == ["test"]
    assert experiment_variants(Path("experiments/sora_1b.py").read_text()) == [
        "av-v5p-64",
        "v5p-64",
        "v6e-64",
        "smoke",
    ]
    assert experiment_variants(Path("experiments/sora_8b.py").read_text()) == []  # It takes none.
    source = """
def get_config(spec=None):
    size = (spec or "big").split(",")[0]
    if size in ("big", "small"):
        pass
    match spec:
        case "a" | "b":
            pass
    other = "not" == "a variant"
"""
    assert experiment_variants(source) == ["big", "small", "a", "b"]


def test_missing_file_names_the_closest_experiments():
    with pytest.raises(ConfigError, match="config file not found: experiments/world_tny.py; did you mean "):
        load_config("experiments/world_tny.py")
    with pytest.raises(ConfigError, match="config file not found: experiments/nope.py$"):
        load_config("experiments/nope.py")


def test_an_unknown_variant_lists_the_variants_the_file_has():
    with pytest.raises(ConfigError) as raised:
        load_config(TINY + ":bogus")
    message = str(raised.value)
    assert message.startswith(f"{TINY} has no variant 'bogus'; its variants: test (")
    assert "ValueError: unknown world_tiny variant 'bogus'" in message and "\n" not in message
    assert isinstance(raised.value.__cause__, ValueError)  # The experiment's own error is kept.
    with pytest.raises(
        ConfigError, match="sora_1b.py has no variant 'v4'; its variants: av-v5p-64, v5p-64, v6e-64, smoke"
    ):
        load_config("experiments/sora_1b.py:v4")


def experiment(tmp_path: Path, source: str) -> str:
    path = tmp_path / "experiment.py"
    path.write_text(source)
    return str(path)


BASE = "from sora_jax.config import base_config\n\n\n"


@pytest.mark.parametrize(
    "source, message",
    [
        ("def get_config(arg=None):\n    c = (\n", r"experiment.py:2: syntax error: '\(' was never closed$"),
        ("def get_config(arg=None)\n    pass\n", r"experiment.py:1: syntax error: expected ':'$"),
        (
            "from sora_jax.config import nope\n",
            r"experiment.py:1: importing it raised ImportError: .* 'nope' .*SORA_JAX_TRACEBACK=1",
        ),
        ("x = 1\n", r"experiment.py defines no get_config\(arg\)$"),
        (
            BASE + "def get_config(arg=None):\n    c = base_config()\n    return c.to_dict()\n",
            r"get_config\(None\) returned a dict; it must return an ml_collections.ConfigDict, .*base_config",
        ),
        (BASE + "def get_config(arg=None):\n    c = base_config()\n", r"get_config\(None\) returned None"),
        (
            BASE + "def get_config(arg=None):\n    c = base_config()\n    return c.model\n",
            r"returned a config without audio, checkpoint, conditioning and \d+ more; start it from",
        ),
        (
            BASE + "def get_config(arg=None):\n    c = base_config()\n    c.model.dept = 3\n    return c\n",
            r"get_config\(None\) sets 'model.dept', which is not a config key; did you mean model.depth\?",
        ),
        (
            BASE + "def get_config(arg=None):\n    c = base_config()\n    return c.model.widht\n",
            r"experiment.py:6: get_config\(None\) raised AttributeError: .*widht.*SORA_JAX_TRACEBACK=1",
        ),
    ],
)
def test_a_broken_experiment_file_is_one_line_naming_it(tmp_path, source, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(experiment(tmp_path, source))
    assert "\n" not in str(raised.value) and str(tmp_path / "experiment.py") in str(raised.value)


def test_the_experiments_own_traceback_is_kept_and_shown_on_request(tmp_path, monkeypatch):
    path = experiment(tmp_path, "def get_config(arg=None):\n    return {}[arg]\n")
    with pytest.raises(
        ConfigError, match=r"experiment.py:2: get_config\('x'\) raised KeyError: 'x'"
    ) as raised:
        load_config(path + ":x")
    assert isinstance(raised.value.__cause__, KeyError)
    monkeypatch.setenv("SORA_JAX_TRACEBACK", "1")
    with pytest.raises(KeyError):
        load_config(path + ":x")


def test_cli_prints_a_broken_experiment_in_one_line(tmp_path, capsys):
    path = experiment(tmp_path, "def get_config(arg=None):\n    return {}\n")
    assert main(["data-stats", "--config", path]) == 2
    assert capsys.readouterr().err == f"sora-jax data-stats: {path}: get_config(None) returned a dict; " + (
        "it must return an ml_collections.ConfigDict, the one sora_jax.config.base_config() makes with the "
        "experiment's values set\n"
    )


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

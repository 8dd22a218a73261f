import pytest

from multibox.config import Config, config_from_dict, list_presets, load_config, save_config


def test_every_preset_loads_and_builds_typed_sections():
    names = list_presets()
    assert {
        "demo_bccd",
        "ssd300_vgg16_voc",
        "ssd512_vgg16_voc",
        "ssdlite_effl0_bccd",
        "ssdlite_effl0_raccoon",
        "ssdlite_effl0_chess",
    } <= set(names)
    for n in names:
        cfg = load_config(n)
        assert isinstance(cfg, Config) and isinstance(cfg.data.augment.min_ious, tuple)


def test_paper_recipe_preset():
    cfg = load_config("ssd300_vgg16_voc")
    t = cfg.train
    assert (t.batch_size, t.lr, t.iterations, t.schedule) == (32, 0.001, 120000, "multistep")
    assert t.milestones == [80000, 100000] and t.weight_decay == 0.0005 and t.momentum == 0.9


def test_overrides_parse_yaml_values():
    cfg = load_config(
        "demo_bccd",
        [
            "train.lr=0.5",
            "data.val=null",
            "train.milestones=[0.5, 0.9]",
            "model.kwargs.image_size=256",
            "data.augment.flip_prob=0",
        ],
    )
    assert cfg.train.lr == 0.5 and cfg.data.val is None and cfg.train.milestones == [0.5, 0.9]
    assert cfg.model.kwargs["image_size"] == 256 and cfg.model.kwargs["feature_strides"] == [8, 16, 32]
    assert cfg.data.augment.flip_prob == 0


def test_bad_config_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'train.lrr'"):
        load_config("demo_bccd", ["train.lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config("demo_bccd", ["train.lr"])
    with pytest.raises(FileNotFoundError, match="no config file or preset named 'nope'"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml: invalid YAML"):
        load_config(str(bad))


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config("ssdlite_effl0_chess", ["train.epochs=3"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(str(tmp_path / "c.yaml"))
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_with_overrides_copies_and_applies():
    from multibox.config import Config, with_overrides

    cfg = Config()
    out = with_overrides(cfg, ["train.epochs=3", "model.kwargs={image_size: 256}", "data.val=null"])
    assert (out.train.epochs, out.model.kwargs, out.data.val) == (3, {"image_size": 256}, None)
    assert cfg.train.epochs == 50 and cfg.model.kwargs == {}  # the original is untouched
    with pytest.raises(ValueError, match="must look like key=value"):
        with_overrides(cfg, ["train.epochs"])


def test_numbers_in_exponent_form_are_floats(tmp_path):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a config field declared float takes it."""
    cfg = load_config("demo_bccd", ["train.lr=1e-3", "train.weight_decay=5e-4", "train.epochs=12.0"])
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == 0.0005 and cfg.train.epochs == 12 and isinstance(cfg.train.epochs, int)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-2\n  time_budget: 6e2\n")
    cfg = load_config(str(path))
    assert (cfg.train.lr, cfg.train.time_budget) == (0.01, 600.0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=ten", "config key 'train.epochs': expected an integer, got 'ten'"),
        ("train.epochs=0", "config key 'train.epochs': expected a value >= 1, got 0"),
        ("train.batch_size=2.5", "config key 'train.batch_size': expected an integer, got 2.5"),
        ("train.lr=0", "config key 'train.lr': expected a value > 0, got 0.0"),
        ("train.lr=fast", "config key 'train.lr': expected a number, got 'fast'"),
        ("train.match_iou=1.5", r"config key 'train.match_iou': expected a value in \(0, 1\], got 1.5"),
        ("train.momentum=1", r"config key 'train.momentum': expected a value in \[0, 1\), got 1.0"),
        ("train.schedule=linear", "config key 'train.schedule': expected one of cosine, multistep, got 'linear'"),
        ("train.amp=yes", "config key 'train.amp': expected one of auto, bf16, fp16, off, got 'on'"),
        ("data.augment.flip_prob=2", r"config key 'data.augment.flip_prob': expected a value in \[0, 1\], got 2.0"),
        ("data.augment.contrast=[1.5,0.5]", "'data.augment.contrast': expected \\[low, high\\]"),
        ("data.skip_bad=maybe", "config key 'data.skip_bad': expected true or false, got 'maybe'"),
        ("train.milestones=[-1]", "'train.milestones': expected fractions"),
        ("train.epochs=null", "config key 'train.epochs': expected an integer, got null"),
        ("model.kwargs=[1]", "config key 'model.kwargs': expected a mapping, got \\[1\\]"),
        ("train.milestones=[0.6", "override 'train.milestones=\\[0.6': the value is not valid YAML"),
        ("train=3", "train: expected a mapping of keys, got 3"),
    ],
)
def test_each_bad_value_names_key_expectation_and_value(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("demo_bccd", [override])


def test_configs_from_checkpoints_are_checked_too():
    values = load_config("demo_bccd").to_dict()
    values["train"]["batch_size"] = "8"  # a hand-edited file: a digit string is an integer
    assert config_from_dict(values).train.batch_size == 8
    values["train"]["batch_size"] = -8
    with pytest.raises(ValueError, match="'train.batch_size': expected a value >= 1, got -8"):
        config_from_dict(values)

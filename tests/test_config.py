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

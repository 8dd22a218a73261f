"""torchvision ssd300_vgg16 import: a state dict with torchvision's real key names and shapes,
run through an independent functional transcription of torchvision's forward."""

import math

import pytest
import torch
import torch.nn.functional as F

from multibox.inference.checkpoint import load_checkpoint, model_from_checkpoint
from multibox.inference.interop import convert_torchvision_ssd300, import_torchvision_ssd300, ssd300_from_torchvision

VGG_CONVS = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
]
EXTRAS = [(1024, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256)]  # in, mid, out
HEAD_IN = [512, 1024, 512, 256, 256, 256]
ANCHORS = [4, 6, 6, 6, 4, 4]


def torchvision_state_dict(num_logits: int = 91, seed: int = 0) -> dict:
    """Keys and shapes of torchvision.models.detection.ssd300_vgg16(num_classes=num_logits)."""
    g = torch.Generator().manual_seed(seed)

    def conv(out_c, in_c, k):
        fan = in_c * k * k
        return torch.randn(out_c, in_c, k, k, generator=g) * math.sqrt(2.0 / fan), torch.randn(
            out_c, generator=g
        ) * 0.01

    sd = {}
    for i, cin, cout in VGG_CONVS:
        sd[f"backbone.features.{i}.weight"], sd[f"backbone.features.{i}.bias"] = conv(cout, cin, 3)
    sd["backbone.scale_weight"] = torch.full((512,), 20.0) + torch.rand(512, generator=g)
    for i in (1, 3, 5):
        sd[f"backbone.extra.0.{i}.weight"], sd[f"backbone.extra.0.{i}.bias"] = conv(512, 512, 3)
    sd["backbone.extra.0.7.1.weight"], sd["backbone.extra.0.7.1.bias"] = conv(1024, 512, 3)
    sd["backbone.extra.0.7.3.weight"], sd["backbone.extra.0.7.3.bias"] = conv(1024, 1024, 1)
    for b, (cin, mid, cout) in enumerate(EXTRAS, start=1):
        sd[f"backbone.extra.{b}.0.weight"], sd[f"backbone.extra.{b}.0.bias"] = conv(mid, cin, 1)
        sd[f"backbone.extra.{b}.2.weight"], sd[f"backbone.extra.{b}.2.bias"] = conv(cout, mid, 3)
    for k, (cin, a) in enumerate(zip(HEAD_IN, ANCHORS)):
        w, b = conv(a * num_logits, cin, 3)
        sd[f"head.classification_head.module_list.{k}.weight"] = w * 0.1
        sd[f"head.classification_head.module_list.{k}.bias"] = b
        w, b = conv(a * 4, cin, 3)
        sd[f"head.regression_head.module_list.{k}.weight"] = w * 0.1
        sd[f"head.regression_head.module_list.{k}.bias"] = b
    return sd


def torchvision_forward(sd: dict, images: torch.Tensor):
    """torchvision's SSD300 forward written out with functional ops (images 0-255, 300x300)."""
    mean = torch.tensor([0.48235, 0.45882, 0.40784]).view(1, 3, 1, 1)
    x = (images / 255.0 - mean) / (1.0 / 255.0)

    def c(x, key, **kw):
        return F.relu(F.conv2d(x, sd[f"{key}.weight"], sd[f"{key}.bias"], **kw))

    for i, _, _ in VGG_CONVS:
        x = c(x, f"backbone.features.{i}", padding=1)
        if i in (2, 7, 14):
            x = F.max_pool2d(x, 2, 2, ceil_mode=(i == 14))
    feats = [sd["backbone.scale_weight"].view(1, -1, 1, 1) * F.normalize(x)]
    x = F.max_pool2d(x, 2, 2)
    for i in (1, 3, 5):
        x = c(x, f"backbone.extra.0.{i}", padding=1)
    x = F.max_pool2d(x, 3, 1, 1)
    x = c(x, "backbone.extra.0.7.1", padding=6, dilation=6)
    x = c(x, "backbone.extra.0.7.3")
    feats.append(x)
    for b in range(1, 5):
        x = c(x, f"backbone.extra.{b}.0")
        x = c(x, f"backbone.extra.{b}.2", stride=2 if b <= 2 else 1, padding=1 if b <= 2 else 0)
        feats.append(x)

    def head(kind, cols):
        outs = []
        for k, f in enumerate(feats):
            r = F.conv2d(
                f, sd[f"head.{kind}.module_list.{k}.weight"], sd[f"head.{kind}.module_list.{k}.bias"], padding=1
            )
            n, _, h, w = r.shape
            outs.append(r.view(n, -1, cols, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, cols))
        return torch.cat(outs, 1)

    return head("regression_head", 4), head("classification_head", 91)


def torchvision_anchors() -> torch.Tensor:
    """DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]], scales, steps), cxcywh fractions."""
    scales = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    steps = [8, 16, 32, 64, 100, 300]
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    sizes = [38, 19, 10, 5, 3, 1]
    out = []
    for k, f in enumerate(sizes):
        s, s2 = scales[k], math.sqrt(scales[k] * scales[k + 1])
        wh = [[s, s], [s2, s2]]
        for r in ratios[k]:
            wh += [[s * math.sqrt(r), s / math.sqrt(r)], [s / math.sqrt(r), s * math.sqrt(r)]]
        wh = torch.tensor(wh).clamp(max=1)
        for i in range(f):
            for j in range(f):
                cx, cy = (j + 0.5) / (300 / steps[k]), (i + 0.5) / (300 / steps[k])
                for w, h in wh.tolist():
                    out.append([cx, cy, w, h])
    return torch.tensor(out)


def test_import_reproduces_torchvision_outputs():
    sd = torchvision_state_dict()
    model, names = ssd300_from_torchvision(sd)
    model.eval()
    assert model.num_classes == 90 and len(names) == 90 and names[0] == "person" and names[89] == "toothbrush"
    assert model.num_priors == 8732
    torch.testing.assert_close(model.priors, torchvision_anchors(), atol=1e-6, rtol=0)
    images = torch.rand(2, 3, 300, 300, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        loc, logits = model(images)
        ref_loc, ref_logits = torchvision_forward(sd, images)
    torch.testing.assert_close(loc, ref_loc, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(logits, ref_logits, atol=1e-3, rtol=1e-4)


def test_import_writes_a_loadable_checkpoint(tmp_path):
    sd = torchvision_state_dict(seed=3)
    src = tmp_path / "ssd300_vgg16_coco.pth"
    torch.save(sd, src)
    out = import_torchvision_ssd300(src, tmp_path / "converted.pt")
    model, names = model_from_checkpoint(load_checkpoint(out))
    ref, _ = ssd300_from_torchvision(sd)
    x = torch.rand(1, 3, 300, 300) * 255
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)[1], ref.eval()(x)[1])
    torch.testing.assert_close(model.priors, ref.priors)


def test_foreign_keys_are_named():
    sd = torchvision_state_dict()
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="roi_heads"):
        convert_torchvision_ssd300(sd)
    sd = torchvision_state_dict()
    del sd["backbone.features.0.weight"]
    with pytest.raises(KeyError, match="features.0.weight"):
        ssd300_from_torchvision(sd)


def test_import_cli_and_refusal_of_pickled_code(tmp_path, capsys):
    from multibox.cli import main

    src = tmp_path / "tv.pth"
    torch.save(torchvision_state_dict(seed=5), src)
    assert main(["import-torchvision", str(src), "--out", str(tmp_path / "coco.pt")]) == 0
    assert load_checkpoint(tmp_path / "coco.pt")["class_names"][0] == "person"

    class Evil:
        def __reduce__(self):
            return (print, ("this ran at load time",))

    torch.save({"backbone.scale_weight": torch.ones(512), "payload": Evil()}, tmp_path / "evil.pth")
    assert main(["import-torchvision", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "x.pt")]) == 2
    captured = capsys.readouterr()
    assert "this ran at load time" not in captured.out and "evil.pth" in captured.err

"""Streamed data: a search on datasets that are never read whole, with step budgets.

The training split is a map-style dataset that makes each row from its index (nothing is held
in memory) and records every row read; a second run streams the training split from an
endless `IterableDataset`. Neither split is ever read whole: base training, recovery and the
search's validation read only what their step budgets and `val_subset` ask for.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from torch import nn

from search.cli import main
from search.config import Recovery
from search.tasks import DataSplit, evaluate_split, fit
from tests._tiny import SPACE

pytestmark = pytest.mark.slow

ROWS = 20_000  # rows per split: far more than the budgets below read

TASK = f'''\
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

ROWS = {ROWS}
READ = {{"train": set(), "val": set(), "test": set()}}  # rows read, per split (workers: 0)


def _row(split, i):
    g = torch.Generator().manual_seed(3 * i + ("train", "val", "test").index(split))
    x = torch.randn(1, 8, 8, generator=g)
    # The class is the sign pattern of the two halves' means (learnable).
    y = int(x[0, :4].mean() > 0) + 2 * int(x[0, 4:].mean() > 0)
    return x, y


class Rows(Dataset):
    """Map-style: row i is made from i when asked for; every row asked for is recorded."""

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return ROWS

    def __getitem__(self, i):
        if isinstance(i, slice) or len(READ[self.split]) >= ROWS // 4:
            raise RuntimeError("read whole: the search must stream this split")
        READ[self.split].add(int(i))
        return _row(self.split, int(i))


class Stream(IterableDataset):
    """An endless stream without a length: only step budgets can count it."""

    def __iter__(self):
        i = 0
        while True:
            READ["train"].add(i)
            yield _row("train", i)
            i += 1


def model():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def data():
    return Rows("train"), Rows("val"), Rows("test")


def stream_data():
    return Stream(), Rows("val"), Rows("test")


class LateNaN(Stream):
    """A stream whose row 150 is NaN: past the batches checked at load, met in recovery."""

    def __iter__(self):
        for i, (x, y) in enumerate(super().__iter__()):
            yield (torch.full_like(x, float("nan")) if i == 150 else x), y


def late_nan_data():
    return LateNaN(), Rows("val"), Rows("test")
'''


def _experiment(folder: Path, data: str, **task: object) -> Path:
    (folder / "streamtask.py").write_text(TASK)
    (folder / "tiny_space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    exp = {
        "name": "stream",
        "task": {
            "model": "streamtask:model",
            "data": f"streamtask:{data}",
            "input_shape": [1, 8, 8],
            "num_classes": 4,
            "train_steps": 20,
            "workers": 0,
            "val_subset": 128,
            **task,
        },
        "target": "mcu",
        "space": "tiny_space.yaml",
        "max_accuracy_drop": None,
        "trials": 3,
        "recovery": {"steps": 6, "batch_size": 32, "early_stop": False},
    }
    path = folder / "stream.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def _reads() -> dict[str, set[int]]:
    module = importlib.import_module("streamtask")
    return module.READ


@pytest.fixture
def fresh_module():
    sys.modules.pop("streamtask", None)
    yield
    sys.modules.pop("streamtask", None)


def _trained(folder: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="stream", storage=f"sqlite:///{folder}/run/study.db")
    return [t for t in study.trials if t.user_attrs.get("status") == "trained"]


def test_search_streams_a_map_style_dataset_never_read_whole(in_tmp: Path, fresh_module):
    exp = _experiment(in_tmp, "data")
    assert main(["run", str(exp), "--out", "run", "--no-progress"]) == 0
    assert len(_trained(in_tmp)) >= 2
    read = _reads()
    # Base training: 20 steps of 64; recovery: 6 steps of 32 per trained trial; the build's
    # 64 fixed rows and the calibration's 256 are among them or beside them.
    assert 0 < len(read["train"]) <= 20 * 64 + 3 * 6 * 32 + 256 + 64 + 2 * 64
    # The search evaluates on its 128 fixed validation rows; the first batches are checked.
    assert len(read["val"]) <= 128 + 2 * 64
    assert len(read["test"]) <= 2 * 64  # only export reads test: here just the format check


def test_search_on_an_endless_iterable_dataset(in_tmp: Path, fresh_module):
    exp = _experiment(in_tmp, "stream_data")
    assert main(["run", str(exp), "--out", "run", "--no-progress"]) == 0
    assert len(_trained(in_tmp)) >= 2
    assert 0 < len(_reads()["train"]) < ROWS // 4


def test_a_stream_without_length_needs_step_budgets(in_tmp: Path, fresh_module, capsys):
    exp = _experiment(in_tmp, "stream_data", train_steps=None)
    assert main(["run", str(exp), "--out", "run", "--no-progress"]) == 2
    assert "task.train_steps: the train split is a stream" in capsys.readouterr().err
    assert not (in_tmp / "run").exists()


def test_fit_counts_steps_and_runs_the_device_path_on_cpu():
    """Step budgets, the step hook, and the GPU code path (autocast, grad scaler) with mixed
    precision asked for on the CPU, where it is off."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 1, 8, 8, generator=g), torch.randint(0, 4, (100,), generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    seen: list[int] = []
    teacher_rows: list[int] = []

    def teacher(xb: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        assert rows is not None  # an in-memory split hands the rows to a cached teacher
        teacher_rows.extend(rows.tolist())
        return torch.zeros(len(xb), 4)

    fit(
        model,
        (x, y),
        steps=9,
        lr=0.01,
        batch_size=32,
        amp=True,
        device="cpu",
        teacher=teacher,
        loss_fn=lambda s, t, yy: nn.functional.cross_entropy(s, yy) + 0 * t.sum(),
        on_step=lambda done, _m: seen.append(done),
    )
    assert seen == list(range(1, 9))  # after every step but the last
    assert len(teacher_rows) == 100 + 100 + 32  # 9 batches: 4 per pass of 100 rows
    split = DataSplit("val", torch.utils.data.TensorDataset(x, y), "<t>", (1, 8, 8), 4)
    metrics = evaluate_split(model, split, 4, device="cpu")
    assert 0 <= metrics["accuracy"] <= 1
    assert next(model.parameters()).device.type == "cpu"


def test_fake_quant_trains_under_mixed_precision():
    """Recovery on a GPU runs under autocast: the activation quantizers get bfloat16 inputs
    (CPU autocast stands in for the GPU's) and keep their float32 ranges."""
    from search.compress._quantization import (
        activation_quantizers,
        attach_activation_quant,
        attach_weight_quant,
        calibrate,
    )

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4)
    )
    for layer in (model[0], model[3]):
        attach_weight_quant(layer, 8)
        attach_activation_quant(layer, 8)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    calibrate(model, x)
    model.train()
    for _ in range(2):  # the second batch moves the ranges (an average of the batches')
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        nn.functional.cross_entropy(out.float(), y).backward()
    assert all(q.min_val.dtype == torch.float32 for q in activation_quantizers(model))
    assert model[0].parametrizations.weight.original.grad is not None


def test_step_budgets_are_spelled_in_the_experiment():
    rec = Recovery(steps=100, student_steps=300, refine_steps=50)
    assert rec.schedule("structure").steps == 100 and rec.schedule("student").steps == 300
    refined = rec.schedule("structure", refine=True)
    assert (refined.steps, refined.unit) == (100, "step")  # never shorter than the search's
    assert Recovery().schedule("structure").unit == "epoch"  # epochs, as before


IMAGEFOLDER_TASK = """\
import torchvision
from torchvision import datasets, transforms

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_model():
    return torchvision.models.mobilenet_v2(num_classes=3)


def load_data():
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(32, scale=(0.8, 1.0)), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD),
    ])
    eval_tf = transforms.Compose([
        transforms.Resize(36), transforms.CenterCrop(32),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD),
    ])
    root = "data/shapes"
    return (
        datasets.ImageFolder(f"{root}/train", train_tf),
        datasets.ImageFolder(f"{root}/val", eval_tf),
        datasets.ImageFolder(f"{root}/test", eval_tf),
    )
"""


def test_readme_torchvision_model_on_an_image_folder_with_a_step_budget(in_tmp: Path):
    """The README's "Bring your own model": torchvision MobileNetV2, an ImageFolder of JPEGs
    with augmentation, base training and recovery budgeted in steps, a validation subset."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        for c, colour in enumerate(("red", "green", "blue")):
            folder = in_tmp / "data" / "shapes" / split / colour
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(40, 40, 3, generator=g) * 80).to(torch.uint8)
                pixels[..., c] += 150
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.jpg")
    (in_tmp / "mytask.py").write_text(IMAGEFOLDER_TASK)
    (in_tmp / "tiny_space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    exp = {
        "name": "folder",
        "task": {
            "model": "mytask:make_model",
            "data": "mytask:load_data",
            "input_shape": [3, 32, 32],
            "num_classes": 3,
            "train_steps": 3,
            "workers": 1,
            "val_subset": 9,
        },
        "target": "phone",
        "space": "tiny_space.yaml",
        "max_accuracy_drop": None,
        "trials": 2,
        "recovery": {"steps": 2, "batch_size": 8, "early_stop": False, "refine_top_k": 1},
    }
    (in_tmp / "folder.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    sys.modules.pop("mytask", None)
    assert main(["run", "folder.yaml", "--out", "run", "--no-progress"]) == 0
    study = optuna.load_study(study_name="folder", storage=f"sqlite:///{in_tmp}/run/study.db")
    assert [t.user_attrs.get("status") for t in study.trials].count("trained") >= 1
    refined = study.user_attrs["refined"]
    assert refined and all(r["steps"] == 2 for r in refined.values())


def test_one_gpu_per_worker_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch):
    """`--jobs N` with `device: cuda`: worker k sees GPU k mod N of those this process may use
    (the parent keeps the first); an unset variable means every GPU of the machine."""
    from search.parallel import gpu_ids

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert gpu_ids() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_ids() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_ids() == [str(i) for i in range(torch.cuda.device_count())]


def test_bad_data_met_mid_search_stops_it_in_one_line(in_tmp: Path, fresh_module, capsys):
    """A NaN the load-time check could not see (row 150 of a stream) fails the first trial
    that reads it; the search stops there: exit 2, one line naming task.data, no run folder."""
    sys.path.insert(0, str(in_tmp))
    exp = _experiment(in_tmp, "late_nan_data", weights="base.pt", train_steps=None)
    torch.save(importlib.import_module("streamtask").model().state_dict(), in_tmp / "base.pt")
    assert main(["run", str(exp), "--out", "run", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "task.data" in err[0], err
    assert not (in_tmp / "run").exists()

"""Real-sized data: torchvision ResNet-18 and MobileNetV2 at 3x224x224 on an on-disk dataset.

    python experiments/benchmarks/scale_real.py [--images 50000] [--small 10000]
        [--data DIR] [--keep-data] [--render]

The benchmark writes a synthetic image dataset (uint8 `.npy` shards of 1,000 images, 10
classes, 150,528 bytes an image: 7.5 GB for 50,000) into `--data` (default: a folder in the
temp directory, deleted afterwards unless `--keep-data`; never in the repository). A user task
reads it as a map-style `Dataset` that seeks to one image per `__getitem__` (no memory map,
nothing held), exactly as a user's own loader would. For each network and each dataset size
(`--small`, `--images`) a fresh process:

1. loads the task (the first batches of each split are checked; nothing else is read);
2. streams the whole training split once through the product's loader (2 workers, batches of
   64, every batch checked): what an epoch of training reads;
3. costs the base network and times it (the cost model only, as a trial's cost step does);
4. runs a 3-trial search (`python -m search run` in-process): per-layer pruning and 8-bit
   weights, distillation from the online teacher, recovery budgeted in optimizer steps
   (`recovery.steps`), evaluation on 64 fixed validation rows (`task.val_subset`).

Peak RSS (the process, and the largest loader worker) is recorded per size: flat means the
data never accumulates. A last process measures the two distillation-teacher options on a
small case (256 images, ResNet-18): the teacher run online per step, against logits computed
once and cached on disk in a memory-mapped file.

Results go under the `real_sized` key of experiments/results/scale.json and a section of
scale.md (the other sections are kept). Not a test: it asserts nothing. The data is checked
against free disk space first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from _scale_report import RECOVERY, VAL_SUBSET, markdown, real_sized_markdown

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "experiments" / "results"
SHAPE = (3, 224, 224)
ITEM = int(np.prod(SHAPE))
SHARD = 1000
CLASSES = 10
EVAL_IMAGES = 1000  # validation and test: one shard each
MODELS = ("resnet18", "mobilenet_v2")

SPACE = {
    "name": "scale-real",
    "description": "Per-layer pruning and 8-bit weights on a torchvision network.",
    "prune": {"mode": ["per_layer"], "ratio": {"low": 0.0, "high": 0.5, "step": 0.25}},
    "quantize": {"weight_bits": [8, 32], "activation_bits": [32]},
    "distill": {"alpha": [0.5], "temperature": [4.0]},
}

TASK_PY = '''\
"""The benchmark's user task: torchvision networks on uint8 .npy shards read image by image."""
import os
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset

ROOT = Path(os.environ["SCALE_DATA"])
SHAPE, ITEM, SHARD = (3, 224, 224), 3 * 224 * 224, 1000


class Shards(Dataset):
    """Image i of a split: one seek and one read in its shard, normalised to float."""

    def __init__(self, split, n):
        self.files = sorted(ROOT.glob(f"{split}-*.x.npy"))
        self.n = n
        self.offsets = []
        for f in self.files:
            with open(f, "rb") as fh:
                if np.lib.format.read_magic(fh) == (1, 0):
                    np.lib.format.read_array_header_1_0(fh)
                else:
                    np.lib.format.read_array_header_2_0(fh)
                self.offsets.append(fh.tell())
        labels = [np.load(str(f).replace(".x.npy", ".y.npy")) for f in self.files]
        self.labels = np.concatenate(labels)[:n] if labels else np.zeros(0, np.int64)
        assert len(self.labels) == n, (split, n, len(self.labels))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        shard, row = divmod(int(i), SHARD)
        with open(self.files[shard], "rb", buffering=0) as fh:
            fh.seek(self.offsets[shard] + row * ITEM)
            raw = fh.read(ITEM)
        x = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(SHAPE)
        return x.float().div_(255).sub_(0.45).div_(0.25), int(self.labels[i])


def resnet18():
    return torchvision.models.resnet18(num_classes=10)


def mobilenet_v2():
    return torchvision.models.mobilenet_v2(num_classes=10)


def data():
    n = int(os.environ["SCALE_IMAGES"])
    return Shards("train", n), Shards("val", 1000), Shards("test", 1000)
'''

# One measured process: load, stream, cost, search. Prints one JSON line.
CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(1)
from search.config import load_experiment
from search.hardware import estimate_cost
from search.hardware.graph import clear_cache
from search.study import load_target, run_search
from search.tasks import load_task

exp = load_experiment(sys.argv[1])
out = {}
t = time.perf_counter()
task = load_task(exp, log=lambda m: None)
out["load_task_s"] = round(time.perf_counter() - t, 2)
t, rows = time.perf_counter(), 0
for x, y, _ in task.train.batches(64, workers=2):
    rows += len(x)
out["stream_rows"] = rows
out["stream_s"] = round(time.perf_counter() - t, 2)
def rss_now():
    return round(int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                 / 2**20, 1)
out["rss_after_stream_mb"] = rss_now()
out["peak_rss_after_stream_mb"] = round(
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
profile = load_target(exp)
cold, warm = [], []
for _ in range(3):  # cold: the structure cache emptied, as for a plan never seen before
    clear_cache()
    t = time.perf_counter()
    estimate_cost(task.base_model, task.input_shape, profile)
    cold.append(time.perf_counter() - t)
    t = time.perf_counter()
    estimate_cost(task.base_model, task.input_shape, profile)
    warm.append(time.perf_counter() - t)
out["cost_s"] = round(min(cold), 3)
out["cost_cached_s"] = round(min(warm), 4)
del task
t = time.perf_counter()
result = run_search(exp, progress=False, log=lambda m: None)
out["search_s"] = round(time.perf_counter() - t, 1)
trials = result.study.get_trials(deepcopy=False)
out["trials"] = [
    {k: t.user_attrs.get(k) for k in ("status", "plan_text", "build_s", "train_s", "accuracy",
                                      "fail_reason")}
    for t in trials
]
out["rss_end_mb"] = rss_now()
out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
out["peak_rss_workers_mb"] = round(
    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
print("RESULT " + json.dumps(out))
"""

# The teacher options on a small case: online per step, or logits cached in a memory map.
TEACHER = r"""
import json, os, tempfile, time
import numpy as np
import torch
torch.set_num_threads(1)
import realtask  # python -c: the current directory, the project, is first on sys.path

ds = realtask.Shards("train", 256)
teacher, student = realtask.resnet18().eval(), realtask.resnet18().train()
opt = torch.optim.Adam(student.parameters(), 1e-3)
batch = 16
def rows(idx):
    return torch.stack([ds[i][0] for i in idx])
x = rows(range(batch))
y = torch.randint(0, 10, (batch,))
def timed(fn, n=3):
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n
def step():
    loss = torch.nn.functional.cross_entropy(student(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
with torch.no_grad():
    online = timed(lambda: teacher(x))
student_step = timed(step)
path = os.path.join(tempfile.mkdtemp(), "logits.f32")
t = time.perf_counter()
cache = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(ds), 10))
with torch.no_grad():
    for s in range(0, len(ds), 64):
        idx = range(s, min(s + 64, len(ds)))
        cache[s:s + len(idx)] = teacher(rows(idx)).numpy()
cache.flush()
del cache
build_per_image = (time.perf_counter() - t) / len(ds)
cached = np.load(path, mmap_mode="r")
rng = np.random.default_rng(0)
read = timed(lambda: torch.from_numpy(np.array(cached[np.sort(rng.choice(len(ds), batch,
                                                                      replace=False))])), n=50)
os.remove(path)
print("RESULT " + json.dumps({
    "batch": batch, "online_teacher_s_per_step": round(online, 4),
    "student_step_s": round(student_step, 4),
    "cache_build_s_per_image": round(build_per_image, 4), "cache_read_s_per_step": round(read, 6),
}))
"""


def generate(root: Path, split: str, n: int, seed: int, log: Any) -> None:
    """`n` images of `split` as shards `split-00000.x.npy` (uint8) and `.y.npy` (labels).
    The class shows as a brighter quadrant of one channel: learnable, like a real task."""
    for s in range(0, n, SHARD):
        rng = np.random.default_rng([seed, s // SHARD])  # a shard is the same when remade
        name = root / f"{split}-{s // SHARD:05d}"
        x_path, y_path = Path(f"{name}.x.npy"), Path(f"{name}.y.npy")
        if x_path.is_file() and y_path.is_file():
            continue  # a kept dataset from an earlier run
        k = min(SHARD, n - s)
        y = rng.integers(0, CLASSES, k)
        x = rng.integers(0, 200, (k, *SHAPE), dtype=np.uint8)
        for c in range(CLASSES):
            q = c % 4
            rows = slice(0, 112) if q < 2 else slice(112, 224)
            cols = slice(0, 112) if q % 2 == 0 else slice(112, 224)
            x[y == c, c % 3, rows, cols] += 55
        tmp = Path(f"{name}.tmp.npy")
        np.save(tmp, x)
        tmp.replace(x_path)
        np.save(y_path, y.astype(np.int64))
    log(f"  {split}: {n} images in {root}")


def child(code: str, *args: str, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def experiment(project: Path, model: str, images: int) -> Path:
    name = f"real-{model.replace('_', '')}-{images}"
    exp = {
        "name": name,
        "task": {
            "model": f"realtask:{model}",
            "data": "realtask:data",
            "input_shape": list(SHAPE),
            "num_classes": CLASSES,
            "weights": f"{model}.pt",
            "workers": 2,
            "val_subset": VAL_SUBSET,
        },
        "target": "host",
        # Large budgets: every plan is trained (the point is the data path, not the front).
        "budgets": {"latency_ms": 1e6, "memory_kb": 1e8},
        "space": "scale_real_space.yaml",
        "objectives": ["accuracy", "latency_ms", "weight_bytes"],
        "max_accuracy_drop": None,
        "trials": 3,
        "seed": 0,
        "out": f"runs/{name}",
        "recovery": RECOVERY,
    }
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--data", type=Path, help="dataset folder (default: a temp folder)")
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render", action="store_true", help="only re-render scale.md (and notes) from scale.json"
    )
    args = parser.parse_args()
    if args.render:
        result = json.loads((args.out / "scale.json").read_text())
        result["real_sized"]["notes"] = notes(result["real_sized"])
        write(result, args.out)
        return

    def log(line: str) -> None:
        print(line, flush=True)

    root = args.data or Path(tempfile.gettempdir()) / "compress-search-scale-data"
    root.mkdir(parents=True, exist_ok=True)
    need = (args.images + 2 * EVAL_IMAGES) * ITEM
    free = shutil.disk_usage(root).free
    have = sum(f.stat().st_size for f in root.glob("*.npy"))
    if free + have < need * 1.1:
        raise SystemExit(f"{root}: needs {need / 1e9:.1f} GB free, has {free / 1e9:.1f} GB")
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    log(f"dataset: {args.images} + 2 x {EVAL_IMAGES} images of {SHAPE} in {root}")
    generate(root, "train", args.images, 0, log)
    generate(root, "val", EVAL_IMAGES, 1, log)
    generate(root, "test", EVAL_IMAGES, 2, log)
    gen_s = round(time.perf_counter() - t0, 1)

    import torch

    project = Path(tempfile.mkdtemp(prefix="scale-real-"))
    (project / "realtask.py").write_text(TASK_PY)
    (project / "scale_real_space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    # Not the repository: the user's own task module, just written, imported as a user would
    # to save its base weights. The task loader imports it by name from the experiment's folder
    # too, but only inside load_task, which needs the weights written here.
    sys.path.insert(0, str(project))
    os.environ["SCALE_DATA"] = str(root)
    import realtask  # the task module just written

    for model in args.models:  # the base weights: seeded initial weights (no training here)
        torch.manual_seed(0)
        torch.save(getattr(realtask, model)().state_dict(), project / f"{model}.pt")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (REPO, project))
    env["PYTHONWARNINGS"] = "ignore"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("COMPRESS_SEARCH_CACHE", None)
    runs = []
    try:
        for model in args.models:
            for images in (args.small, args.images):
                log(f"{model}, {images} images: load, stream, cost, 3-trial search")
                path = experiment(project, model, images)
                r = child(CHILD, str(path), cwd=project, env={**env, "SCALE_IMAGES": str(images)})
                r.update(model=model, images=images)
                runs.append(r)
                log(
                    f"  peak RSS {r['peak_rss_mb']} MB (workers {r['peak_rss_workers_mb']}), "
                    f"stream {r['stream_rows']} rows in {r['stream_s']} s, cost {r['cost_s']} s, "
                    f"search {r['search_s']} s"
                )
        log("teacher: online against cached on disk (small case)")
        teacher = child(TEACHER, cwd=project, env={**env, "SCALE_IMAGES": "256"})
    finally:
        shutil.rmtree(project, ignore_errors=True)
        if not args.keep_data and args.data is None:
            shutil.rmtree(root, ignore_errors=True)

    saving = teacher["online_teacher_s_per_step"] - teacher["cache_read_s_per_step"]
    teacher["cache_build_s_total"] = round(teacher["cache_build_s_per_image"] * args.images, 1)
    teacher["break_even_steps"] = round(teacher["cache_build_s_total"] / max(saving, 1e-9))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    real: dict[str, Any] = {
        "command": " ".join(["python experiments/benchmarks/scale_real.py", *sys.argv[1:]]),
        "commit": commit,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": round(os.getloadavg()[0], 2),
        "images": [args.small, args.images],
        "dataset_gb": round((args.images + 2 * EVAL_IMAGES) * ITEM / 1e9, 2),
        "generate_s": gen_s,
        "recovery": RECOVERY,
        "val_subset": VAL_SUBSET,
        "space": SPACE,
        "runs": runs,
        "teacher": teacher,
        "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    real["notes"] = notes(real)
    scale_json = args.out / "scale.json"
    result = json.loads(scale_json.read_text()) if scale_json.is_file() else {}
    result["real_sized"] = real
    write(result, args.out)
    log(f"wrote {scale_json} and {args.out / 'scale.md'}")


def write(result: dict[str, Any], out: Path) -> None:
    """scale.json with the `real_sized` section; scale.md with scale.py's sections first."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    if "throughput" in result:
        text = markdown(result)
    else:
        text = real_sized_markdown(result["real_sized"])
    (out / "scale.md").write_text(text)


def notes(real: dict[str, Any]) -> list[str]:
    out = []
    for model in sorted({r["model"] for r in real["runs"]}):
        rs = sorted((r for r in real["runs"] if r["model"] == model), key=lambda r: r["images"])
        if len(rs) == 2:
            a, b = rs
            out.append(
                f"{model}: peak RSS {a['peak_rss_mb']} MB at {a['images']} images, "
                f"{b['peak_rss_mb']} MB at {b['images']} ({b['images'] // a['images']}x the "
                f"data, {round(b['peak_rss_mb'] / a['peak_rss_mb'], 2)}x the memory); costing "
                f"the network {b['cost_s']} s; build + cost of a trial's plan "
                f"{max((t['build_s'] or 0) for t in b['trials'])} s at most."
            )
    out.append(
        "Loader workers are forked from the process: their peak RSS counts the pages they share "
        "with it (copy on write), so it is not memory on top of the process's."
    )
    t = real["teacher"]
    out.append(
        "Teacher: online costs one teacher forward per recovery step; a disk cache costs one "
        "forward per training image before the first trial, and is only right when the dataset "
        f"does not augment. At {real['images'][-1]} images the cache pays off after "
        f"{t['break_even_steps']} recovery steps summed over all trials; a step-budgeted search "
        "(here 2 steps a trial) never gets there, and an epoch-budgeted one on a large dataset "
        "reads the whole split per trial anyway. So a streamed split runs the teacher online; "
        "an in-memory `TensorDataset` (the built-in digits) keeps its logits in memory, "
        "computed once (smaller than the data it already holds)."
    )
    return out


if __name__ == "__main__":
    main()

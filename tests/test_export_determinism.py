"""Exported weights are byte-reproducible: the safetensors writer orders a header's metadata by a per-process hash,
so two exports of the same LoRA used to differ (``format`` / ``lora_adapter_metadata`` swapped)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from visalign.models._safetensors import canonicalize

# Exports the same seeded tiny LoRA three times and the merged pipeline once; prints {file: sha256}.
EXPORT = """
import hashlib, json, sys
from pathlib import Path
import torch
from visalign.models import FinetuneSpec, build_generator
from visalign.pretrain.build import build_flow_pipeline

out = Path(sys.argv[1])
gen = build_generator("flow", build_flow_pipeline(seed=0), max_sequence_length=0)
torch.manual_seed(0)
gen.setup_finetune(FinetuneSpec(mode="lora", rank=4, alpha=4.0))
for i in range(3):
    gen.save_lora(out / f"lora{i}")
gen.save_merged(out / "merged")
print(json.dumps({str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(out.rglob("*.safetensors"))}))
"""


def _export(out: Path, hash_seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", EXPORT, str(out)], env=env, capture_output=True, text=True,
                          timeout=300, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_exports_are_byte_identical_across_processes(tmp_path):
    first, second = _export(tmp_path / "a", "1"), _export(tmp_path / "b", "2")
    assert first == second
    loras = {digest for name, digest in first.items() if name.startswith("lora")}
    assert len(loras) == 1 and sum(name.startswith("lora") for name in first) == 3  # same bytes every time
    assert any(name.startswith("merged/") for name in first)
    with safe_open(tmp_path / "a" / "lora0" / "pytorch_lora_weights.safetensors", "pt") as f:
        assert set(f.metadata()) == {"format", "lora_adapter_metadata"}  # the case that varied


def _header(path: Path) -> bytes:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + size]


def test_canonicalize_sorts_the_metadata_and_keeps_the_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor([1, 2], dtype=torch.int64)}
    save_file(tensors, path, metadata={"zeta": "1", "alpha": "2", "mid": "3"})
    assert canonicalize(path)
    header = _header(path)
    assert header.index(b'"alpha"') < header.index(b'"mid"') < header.index(b'"zeta"')
    assert len(header) % 8 == 0
    loaded = load_file(path)
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"alpha": "2", "mid": "3", "zeta": "1"}
    before = path.read_bytes()
    canonicalize(path)
    assert path.read_bytes() == before  # idempotent
    save_file(tensors, tmp_path / "one.safetensors", metadata={"format": "pt"})
    assert not canonicalize(tmp_path / "one.safetensors")  # one key: the writer's bytes are already fixed

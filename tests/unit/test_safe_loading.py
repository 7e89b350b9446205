"""Models and checkpoints are loaded only from safetensors or with torch.load(weights_only=True): a model
folder whose weights are a pickle is refused by name, and no code path in the project loads a pickle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lifecycle.errors import LifecycleError
from lifecycle.model import load_causal_lm
from tests.unit.test_rag_answer import save_tiny_policy

ROOT = Path(__file__).resolve().parents[2]
CODE = [p for folder in ("lifecycle", "tasks", "flows") for p in (ROOT / folder).rglob("*.py")]


def test_a_model_with_pickled_weights_is_refused(tmp_path: Path) -> None:
    folder = save_tiny_policy(tmp_path / "policy")
    model, _ = load_causal_lm(folder)  # the safetensors copy loads
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
        torch.save(model.state_dict(), weights.with_name("pytorch_model.bin"))  # the same weights, pickled
    with pytest.raises(LifecycleError, match=r"weights are a pickle \(pytorch_model.bin\), which is never loaded"):
        load_causal_lm(folder)


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                found.append((path, node))
    return found


def _keyword(call: ast.Call, name: str) -> object:
    return next((ast.literal_eval(k.value) for k in call.keywords if k.arg == name), None)


def test_every_torch_load_is_weights_only() -> None:
    loads = [(p, c) for p, c in _calls("load") if ast.unparse(c.func) == "torch.load"]
    assert loads, "torch.load is used for checkpoints; the scan found none"
    unsafe = [f"{p.relative_to(ROOT)}:{c.lineno}" for p, c in loads if _keyword(c, "weights_only") is not True]
    assert unsafe == []


def test_no_pickle_and_models_from_safetensors_only() -> None:
    pickles = {"pickle", "dill", "cloudpickle", "joblib"}
    imports = [f"{p.relative_to(ROOT)}:{node.lineno}" for p in CODE for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.Import) and pickles & {a.name for a in node.names}
               or isinstance(node, ast.ImportFrom) and node.module in pickles]
    assert imports == []
    # PeftModel.from_pretrained takes no use_safetensors: lifecycle.lora.merge_adapter, its one caller, refuses a
    # folder without adapter_model.safetensors first (test_a_pickled_adapter_is_refused)
    peft = [f"{p.relative_to(ROOT)}" for p, c in _calls("from_pretrained")
            if ast.unparse(c.func) == "PeftModel.from_pretrained"]
    assert peft == ["lifecycle/lora.py"]
    models = [(p, c) for p, c in _calls("from_pretrained")
              if "Tokenizer" not in ast.unparse(c.func) and ast.unparse(c.func) != "PeftModel.from_pretrained"]
    assert models
    unsafe = [f"{p.relative_to(ROOT)}:{c.lineno}" for p, c in models if _keyword(c, "use_safetensors") is not True]
    assert unsafe == []


def test_a_pickled_adapter_is_refused(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from lifecycle.lora import merge_adapter

    model, _ = load_causal_lm(save_tiny_policy(tmp_path / "policy"))
    adapter = get_peft_model(model, LoraConfig(r=2, task_type="CAUSAL_LM"))
    adapter.save_pretrained(str(tmp_path / "adapter"), safe_serialization=False)  # adapter_model.bin: a pickle
    assert (tmp_path / "adapter" / "adapter_model.bin").is_file()
    with pytest.raises(LifecycleError, match="no adapter_model.safetensors; adapter weights are read from safetensors"):
        merge_adapter(load_causal_lm(tmp_path / "policy")[0], tmp_path / "adapter")

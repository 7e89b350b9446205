"""A task of our own for lm-evaluation-harness, written where a test wants it: a YAML in lm-eval's format and a
JSONL of ten multiple-choice questions (the sum of two digits, the right answer first), read by datasets'
`json` builder. Nothing comes from the hub."""

from __future__ import annotations

import json
from pathlib import Path

TASK = "toy_sums"
PAIRS = [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 1), (2, 2)]


def write_task(folder: Path, name: str = TASK) -> Path:
    """`folder`/<name>.yaml and <name>.jsonl (the data by absolute path: lm-eval resolves relative data files
    against the working directory); returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 7)],
             "label": 0} for a, b in PAIRS]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return folder

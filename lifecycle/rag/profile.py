"""Where fitted retrieval settings go: the `serve:` overlay that `lifecycle eval-retrieval --fit` prints, and
the profile it can save (conf/profiles/NAME.yaml, extending the profile the fit ran under), which `lifecycle
search/ask/serve --profile NAME` then use. Values stay in YAML a person can read, diff and commit; nothing
is read from the state dir behind the configuration's back.

    text = fitted_yaml(result["overlay"], result["fit"], extends="quickstart")
    save_profile(conf_dir, "quickstart-fitted", text)     # refuses to overwrite a profile it did not write
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lifecycle.errors import ConfigError
from lifecycle.manifest import write_bytes_atomic

MARK = "# Written by `lifecycle eval-retrieval --fit`"


def fitted_yaml(overlay: dict[str, Any], fit: dict[str, Any], extends: str | None = None) -> str:
    """The overlay as YAML, with a header saying what it was fitted on and what it scored."""
    rows = {row["setting"]: row for row in fit["table"]}
    parts = [f"{name} {rows[name]['recall_at_1']:.3f}" for name in rows if name != "fitted"]
    cv = fit["cross_validated"]
    header = [f"{MARK} on {fit['questions']} questions ({fit['settings_tried']} settings tried).",
              f"# recall@1 {rows['fitted']['recall_at_1']:.3f} ({int(cv['folds'])}-fold held-out "
              f"{cv['recall_at_1']:.3f}); " + "; ".join(parts)]
    body = ({"extends": extends} if extends else {}) | overlay
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False)


def save_profile(conf_dir: Path, name: str, text: str) -> Path:
    """Write conf/profiles/NAME.yaml; an existing profile is replaced only when a fit wrote it."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"--save-profile {name!r}: a profile name is letters, digits, '-' and '_'")
    path = Path(conf_dir) / "profiles" / f"{name}.yaml"
    if path.exists() and not path.read_text(encoding="utf-8").startswith(MARK):
        raise ConfigError(f"--save-profile {name}: {path} exists and was not written by a fit; choose another name")
    extends = (yaml.safe_load(text) or {}).get("extends")
    if extends == name:
        raise ConfigError(f"--save-profile {name}: the fit ran under --profile {name}, and a profile cannot extend "
                          "itself; choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, text.encode("utf-8"))
    return path

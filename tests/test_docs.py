"""docs/ agrees with the code: every option and every error class, no more and no less."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import spiky.errors
import spiky.torch
import spiky_dist
import spiky_runtime

DOCS = Path(__file__).resolve().parents[1] / "docs"
pytestmark = pytest.mark.smoke


def test_options_reference_matches_the_option_table() -> None:
    text = (DOCS / "options.md").read_text()
    documented = dict(re.findall(r"^### `(\w+)`\n- type: .*\n- default: `(.*)`$", text, flags=re.M))
    assert set(documented) == set(spiky.torch.OPTIONS), (
        f"undocumented: {sorted(set(spiky.torch.OPTIONS) - set(documented))}, "
        f"not options: {sorted(set(documented) - set(spiky.torch.OPTIONS))}")
    for name, default in documented.items():
        assert default == repr(spiky.torch.OPTIONS[name].default), name
    assert len(re.findall(r"^### `", text, flags=re.M)) == len(documented)  # every heading parsed


def _exported_errors() -> set[str]:
    names: set[str] = set()
    for module in (spiky.errors, spiky_runtime, spiky_dist):
        for name in dir(module):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, Exception) and value.__module__.startswith(
                    ("spiky", "spiky_ir", "spiky_runtime", "spiky_dist")):
                names.add(name)
    return names


def test_troubleshooting_covers_every_error_class() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    documented = set(re.findall(r"^### `(\w+)`$", text, flags=re.M))
    exported = _exported_errors()
    assert documented == exported, (
        f"undocumented: {sorted(exported - documented)}, not exported: {sorted(documented - exported)}")
    for name in documented:
        section = text.split(f"### `{name}`", 1)[1].split("###", 1)[0]
        assert "- cause:" in section and "- fix:" in section, name

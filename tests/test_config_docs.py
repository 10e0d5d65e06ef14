"""Every environment variable celeryconfig.py reads is in the configuration table
(docs/configuration.md)."""

from __future__ import annotations

import re

from deploy.launcher import PROJECT_DIR


def test_every_setting_is_documented():
    """Fails when a setting is added to celeryconfig.py without a row in the table."""
    source = (PROJECT_DIR / "celeryconfig.py").read_text()
    # Every reader (_int, _str, _float, _choice, _at_least, _limit, ...) takes the name first.
    names = set(re.findall(r'\b_[a-z_]+\("([A-Z][A-Z0-9_]+)"', source))
    names |= set(re.findall(r'environ\.get\("([A-Z_]+)"\)', source))
    readme = (PROJECT_DIR / "docs" / "configuration.md").read_text()
    missing = sorted(n for n in names if f"| `{n}` |" not in readme)
    assert len(names) > 30
    assert not missing, f"settings missing from docs/configuration.md: {missing}"

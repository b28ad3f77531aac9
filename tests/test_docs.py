"""The formulas the docstrings cite are in the repository: every "formulas §N" in the package
names a section of docs/formulas.md, and every loss front cites one."""
import pathlib
import re

import gaussreg

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = pathlib.Path(gaussreg.__file__).resolve().parent


def sections():
    text = (ROOT / "docs" / "formulas.md").read_text()
    return set(re.findall(r"^## §(\w+) ", text, flags=re.MULTILINE))


def test_every_cited_section_exists():
    known = sections()
    assert {"1", "2", "3", "4", "5", "6", "7", "7b", "8"} <= known
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "SPEC" not in text, f"{path} cites SPEC, which is not in the repository"
        for cited in re.findall(r"formulas §(\w+)((?:, \d+b?)*)(?: and (\d+b?))?", text):
            numbers = [cited[0], *re.findall(r"\d+b?", cited[1]), *([cited[2]] if cited[2] else [])]
            assert set(numbers) <= known, f"{path} cites formulas §{cited}"


def test_every_loss_cites_its_formula():
    for name in ("cdf_attraction", "coordinate_cdf_attraction", "gaussian_l2_to_normal", "gaussian_l2", "mmd",
                 "cw_distance", "sliced_wasserstein", "gmm_ks_loss", "gmm_cov_loss", "epps_pulley"):
        assert "formulas §" in getattr(gaussreg, name).__doc__, name

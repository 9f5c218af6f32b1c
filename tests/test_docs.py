"""The documentation site builds with warnings as errors, and the built pages hold together.

``sphinx-build -W`` turns every Sphinx and docutils warning (a broken docstring, a page in no table of contents, a
missing include) into a failure. The built HTML is then read with the standard library: every link between the
site's own pages and every image it shows must point at a file that was built, every anchor a link jumps to must
exist, the API reference must document the public classes and functions, and every case study must have a page.
Sphinx's "nitpicky" mode (``-n``) is not used: it also flags each reference to pandas, NumPy or xarray types,
which resolve only through inventories downloaded from those projects' sites, and CI has no such network.

A headless Chromium (Debian's ``chromium`` package, ``/usr/bin/chromium``; CI installs it with apt, since a browser
that ``playwright install`` downloads cannot be fetched there) then opens the index page and an executed case
study: the laid-out DOM must hold the page's heading and the theme's navigation, every picture must decode, and
the screenshot must show text. It is skipped when that browser is missing.
"""

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]'); CI installs it")
pytest.importorskip("myst_nb", reason="the docs extra is not installed (pip install -e '.[docs]'); CI installs it")

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
CASE_STUDIES = sorted((ROOT / "case_studies").glob("[0-9]*.py"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the site once into a temporary folder (about 20 s of Sphinx plus the two executed case studies);
    fail with Sphinx's own messages."""
    out = tmp_path_factory.mktemp("docs") / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(out.parent / "doctrees"),
         "-D", f"nb_execution_cache_path={out.parent / 'jupyter_cache'}", str(DOCS), str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    # Sphinx's own messages; the notebook kernels also log "[IPKernelApp] WARNING | ..." lines, which are not
    sphinx_messages = [line for line in result.stderr.splitlines() if "WARNING:" in line or "ERROR:" in line]
    assert result.returncode == 0 and not sphinx_messages, "the docs build failed or warned:\n" + "\n".join(
        sphinx_messages or [result.stderr[-4000:]])
    return out


class _Page(HTMLParser):
    """Links, images and element ids of one HTML page."""

    def __init__(self):
        super().__init__()
        self.links, self.images, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        if tag == "link" and attrs.get("rel") == "stylesheet" and attrs.get("href"):
            self.images.append(attrs["href"])  # a stylesheet must exist as much as a picture
        if tag == "script" and attrs.get("src"):
            self.images.append(attrs["src"])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _local(href: str) -> bool:
    parts = urlsplit(href)
    return not parts.scheme and not parts.netloc and not href.startswith("mailto:")


def test_docs_build_with_zero_warnings(site):
    assert (site / "index.html").is_file()


def test_every_internal_link_image_and_anchor_resolves(site):
    pages = {path: _parse(path) for path in site.rglob("*.html") if "_modules" not in path.parts}
    assert len(pages) > 15
    broken, pages_read = [], {}
    for path, page in pages.items():
        for href in page.links:
            if not _local(href):
                continue
            parts = urlsplit(href)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{path.relative_to(site)}: link {href}")
            elif parts.fragment and target.suffix == ".html":
                if target not in pages:  # a source-code page of viewcode, read once
                    pages_read[target] = pages_read.get(target) or _parse(target)
                ids = (pages.get(target) or pages_read[target]).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: anchor {href}")
        for src in page.images:
            if _local(src) and not (path.parent / unquote(urlsplit(src).path)).resolve().is_file():
                broken.append(f"{path.relative_to(site)}: file {src}")
    assert not broken, "\n".join(broken[:40])


@pytest.mark.parametrize("page, objects", [
    ("api/model.html", ["bayeshlm.HLM", "bayeshlm.HLM.fit", "bayeshlm.HLM.from_levels", "bayeshlm.load_model"]),
    ("api/results.html", ["bayeshlm.results.bayes_fit.BayesFit",
                          "bayeshlm.results.bayes_fit.BayesFit.posterior_predictive",
                          "bayeshlm.results.bayes_fit.BayesFit.log_likelihood",
                          "bayeshlm.results.likelihood_fit.LikelihoodFit",
                          "bayeshlm.results.base.FitResult.fixed_effects",
                          "bayeshlm.results.bayes_fit.BayesFit.predict",
                          "bayeshlm.results.likelihood_fit.LikelihoodFit.predict",
                          "bayeshlm.compare", "bayeshlm.load_fit"]),
    ("api/checks.html", ["bayeshlm.checks.compare_models", "bayeshlm.checks.group_statistics"]),
    ("api/plots.html", ["bayeshlm.plots.shrinkage", "bayeshlm.plots.caterpillar", "bayeshlm.plots.forest_compare"]),
    ("api/datasets.html", ["bayeshlm.datasets.load", "bayeshlm.datasets.list"]),
    ("api/errors.html", ["bayeshlm.errors.InputError", "bayeshlm.errors.DataError", "bayeshlm.errors.OptionError"]),
])
def test_api_reference_documents_the_public_api(site, page, objects):
    ids = _parse(site / page).ids
    missing = [name for name in objects if name not in ids]
    assert not missing, f"{page} does not document {missing}"


def test_hlm_fit_documents_its_sampling_options(site):
    text = (site / "api" / "model.html").read_text(encoding="utf-8")
    start = text.index('id="bayeshlm.HLM.fit"')
    section = text[start:start + 20000]
    missing = [word for word in ("draws", "chains", "tune", "priors", "sampler") if word not in section]
    assert not missing, f"HLM.fit's reference does not mention {missing}"


def test_every_case_study_has_a_page_with_its_code(site):
    for path in CASE_STUDIES:
        page = site / "case_studies" / f"{path.stem}.html"
        assert page.is_file(), f"{path.name} is not in the site"
        text = page.read_text(encoding="utf-8")
        assert "import bayeshlm as bh" in text or "bayeshlm" in text
        assert text.count('class="highlight') >= 3, f"{page.name}: code cells are missing"


def test_executed_case_studies_show_their_figures_and_tables(site):
    """Case studies 6 and 8 (likelihood fits only) are executed in the build: their pages carry outputs."""
    from matplotlib.image import imread

    growth = site / "case_studies" / "06_growth_error_structures.html"
    images = [src for src in _parse(growth).images if src.endswith(".png")]
    assert images, "case study 6 shows no figure"
    pixels = imread(growth.parent / images[0])[..., :3]
    assert pixels.shape[0] > 200 and pixels.std() > 0.05, "the growth figure is blank"
    binary = (site / "case_studies" / "08_binary_outcomes.html").read_text(encoding="utf-8")
    assert binary.count('class="cell_output') >= 5 and "<table" in binary


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1200,900", "--virtual-time-budget=5000"]
# After the page has loaded, count its pictures that the browser decoded (natural width above 0).
IMAGE_PROBE = ('<script>window.addEventListener("load", () => {const all = [...document.images]; '
               'document.body.setAttribute("data-decoded-images", '
               'all.filter(image => image.complete && image.naturalWidth > 0).length + "/" + all.length)});'
               '</script></body>')


def _chromium(page: Path, *args, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
@pytest.mark.parametrize("page, heading, figures", [
    ("index.html", "bayeshlm", 0),
    ("case_studies/06_growth_error_structures.html", "Growth with structured level-1 errors", 1),
])
def test_headless_chromium_renders_the_pages(site, tmp_path, page, heading, figures):
    import numpy as np
    from matplotlib.image import imread

    path = site / page
    probe = path.with_name(f"_probe_{path.name}")  # beside the page, so its relative links still resolve
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE), encoding="utf-8")
    dom = _chromium(probe, "--dump-dom", profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert heading in dom.stdout and "sidebar-tree" in dom.stdout  # the text and the theme's navigation
    decoded = re.search(r'data-decoded-images="(\d+)/(\d+)"', dom.stdout)
    assert decoded, "the page's load event never ran"
    shown, total = map(int, decoded.groups())
    assert shown == total >= figures, f"{page}: {shown} of {total} pictures decoded, {figures} figure(s) expected"

    shot = tmp_path / "page.png"
    result = _chromium(path, f"--screenshot={shot}", profile=tmp_path / "profile-shot")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1200)
    # a rendered page has styled text and a sidebar: many distinct colours and dark text, not a blank page
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"{page}: the screenshot has only {len(colours)} colours"
    assert (pixels.mean(axis=-1) < 0.5).mean() > 0.005, f"{page}: almost no dark (text) pixels"

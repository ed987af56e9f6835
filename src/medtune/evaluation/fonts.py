"""Fonts that draw Chinese in reports, on machines with CJK fonts installed and on machines without.

HTML: :data:`FONT_STACK` starts with ``medtune CJK``: a ``@font-face`` (:func:`embedded_font_css`)
holding only the CJK glyphs the report uses, cut from a CJK font of this machine or, when it has
none, from the bundled Droid Sans Fallback subset (GB2312, Apache 2.0; ``medtune/assets/fonts``),
with a ``unicode-range`` of exactly those characters; Latin text and any character it lacks go on
to the system fonts and the common CJK fonts by name. So a page reads the same on a machine with
CJK fonts and one without. (Listed after the system fonts instead, the embedded font is reached
through Chromium's fallback path, which drew the first CJK block as boxes in headless Chromium.) PNG plots (:func:`cjk_rc`): matplotlib draws Latin text with its
default font and falls back per glyph to an installed CJK font, else to the bundled subset.

>>> css = embedded_font_css("头痛 headache")
>>> css.startswith("@font-face{font-family:'medtune CJK';src:url(data:font/woff;base64,")
True
>>> embedded_font_css("headache only")   # no CJK text: nothing to embed
''
"""

from __future__ import annotations

import base64
import functools
import io
import re
from importlib import resources
from pathlib import Path

__all__ = ["BUNDLED_FONT", "FONT_STACK", "cjk_rc", "cjk_text", "embedded_font_css", "system_cjk_font"]

BUNDLED_FONT = "DroidSansFallback-GB2312.woff"
EMBEDDED_FAMILY = "medtune CJK"
# Installed CJK fonts, best first (the names fontconfig / matplotlib report).
CJK_FAMILIES = ("Noto Sans CJK SC", "Source Han Sans SC", "Noto Sans SC", "PingFang SC", "Microsoft YaHei",
                "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Droid Sans Fallback", "SimHei", "Heiti SC",
                "AR PL UMing CN", "Noto Sans CJK JP", "Source Han Sans")
FONT_STACK = ", ".join([f"'{EMBEDDED_FAMILY}'", "system-ui", "-apple-system", "'Segoe UI'", "Roboto",
                        "'Helvetica Neue'", "Arial", *(f"'{f}'" for f in CJK_FAMILIES[:7]), "sans-serif"])
_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")


def cjk_text(text: str) -> str:
    """The distinct CJK characters (and CJK punctuation / full-width forms) of ``text``, sorted."""
    return "".join(sorted(set(_CJK.findall(text))))


@functools.lru_cache(maxsize=1)
def system_cjk_font() -> str | None:
    """The path of an installed CJK font matplotlib can use (best of :data:`CJK_FAMILIES`), or None."""
    from matplotlib import font_manager

    by_name = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    return next((by_name[name] for name in CJK_FAMILIES if name in by_name), None)


def _bundled_bytes() -> bytes:
    return resources.files("medtune.assets.fonts").joinpath(BUNDLED_FONT).read_bytes()


def _font_source():
    """A fontTools TTFont of this machine's CJK font, else of the bundled subset."""
    from fontTools.ttLib import TTCollection, TTFont

    path = system_cjk_font()
    if path is None:
        return TTFont(io.BytesIO(_bundled_bytes()))
    if path.lower().endswith((".ttc", ".otc")):
        fonts = TTCollection(path).fonts
        return next((f for f in fonts if f["name"].getDebugName(1) in CJK_FAMILIES), fonts[0])
    return TTFont(path)


def embedded_font_css(text: str) -> str:
    """An ``@font-face`` rule for family ``medtune CJK`` whose WOFF data holds just the CJK glyphs
    of ``text`` and whose ``unicode-range`` lists exactly the characters it holds ('' when there
    are none): a few KB per hundred characters."""
    from fontTools import subset

    chars = cjk_text(text)
    if not chars:
        return ""
    font = _font_source()
    held = [c for c in chars if ord(c) in font.getBestCmap()]
    if not held:
        return ""
    options = subset.Options()
    options.flavor, options.layout_features, options.hinting = "woff", [], False
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="".join(held))
    subsetter.subset(font)
    data = io.BytesIO()
    font.flavor = "woff"
    font.save(data)
    encoded = base64.b64encode(data.getvalue()).decode()
    ranges = ",".join(f"U+{ord(c):X}" for c in held)
    return (f"@font-face{{font-family:'{EMBEDDED_FAMILY}';src:url(data:font/woff;base64,{encoded}) format('woff');"
            f"unicode-range:{ranges}}}")


@functools.lru_cache(maxsize=1)
def _bundled_ttf() -> str:
    """The bundled subset as a TrueType file matplotlib can open (it reads no WOFF); cached."""
    import tempfile

    from fontTools.ttLib import TTFont

    from medtune.files import atomic_write_bytes

    path = Path(tempfile.gettempdir()) / "medtune-fonts" / BUNDLED_FONT.replace(".woff", ".ttf")
    if not path.is_file():
        font = TTFont(io.BytesIO(_bundled_bytes()))
        font.flavor = None
        data = io.BytesIO()
        font.save(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data.getvalue())
    return str(path)


def cjk_rc() -> dict:
    """matplotlib rc settings that draw CJK glyphs: its default sans-serif font first, then a CJK
    font (an installed one, else the bundled subset), falling back per glyph."""
    import matplotlib
    from matplotlib import font_manager

    path = system_cjk_font() or _bundled_ttf()
    font_manager.fontManager.addfont(path)
    name = font_manager.FontProperties(fname=path).get_name()
    latin = next((f for f in matplotlib.rcParams["font.sans-serif"] if f != name), "DejaVu Sans")
    return {"font.family": [latin, name]}

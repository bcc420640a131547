"""Numbers in a lesson's prose must come from its code: the prose-number scan that tests/test_lessons.py runs
on every lesson after walking it (so the code cells' outputs are there to check against).

A number in a markdown cell passes when it is
- structural: a single digit (a count written as a figure), a lesson number ("lesson 07"), a year;
- cited: its sentence names a source (an "et al." citation, a year in parentheses, a link, a datasheet);
- computed: the value, at the precision the prose gives it, appears in the source or the output of one of
  the code cells around the markdown (WINDOW code cells before or after it): the cell the prose points at.
Anything else is a number typed by hand, and the scan names it with its cell and sentence."""
import math
import re

WINDOW = 4
_HIDDEN = re.compile(r"`[^`]*`|\$\$.*?\$\$|\$[^$\n]*\$|\]\([^)]*\)|https?://\S+|<[^>]+>|!\[[^\]]*\]", re.S)
_NUM = re.compile(r"(?<![\w.\-/])(\d[\d,]*(?:\.\d+)?)(?:\s?(%|k|K|M|B|G|T)\b)?(?![\w])")
_ANY_NUM = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_LESSON = re.compile(r"\b(?:lessons?|Lessons?)\s+\d+(?:\s*(?:,|and|or|to|-|–)\s*\d+)*")
_CITED = re.compile(r"\bet al\b|\(\D*\b(?:19|20)\d\d\b|\bLINK\b|\b(?:datasheet|whitepaper|paper|documentation|docs|"
                    r"specification|states|reports|publishes|according to)\b", re.I)
_SCALE = {None: (1,), "%": (0.01, 1), "k": (1e3, 1024), "K": (1e3, 1024), "M": (1e6, 2**20), "B": (1e9,), "G": (1e9, 2**30),
          "T": (1e12, 2**40)}


def sentences(text: str) -> list[str]:
    "Markdown text without code spans, math and link targets, cut into sentences."
    text = _HIDDEN.sub(lambda m: " LINK " if m.group(0).startswith("](") or m.group(0).startswith("http") else " ", text)
    for a, b in (("et al.", "et al"), ("e.g.", "eg"), ("i.e.", "ie"), ("vs.", "vs"), ("cf.", "cf"), ("approx.", "approx")):
        text = text.replace(a, b)
    text = "\n".join(re.sub(r"^\s*(#+|\d+\.|[-*>|])\s", " ", line) for line in text.splitlines())
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n\s*\n|\n\s*[-*]\s", text) if s.strip()]


def figures(text: str) -> list[float]:
    "Every number written in code or output text, as floats."
    out = []
    for m in _ANY_NUM.findall(text.replace(",", "").replace("_", "")):
        try: out.append(float(m))
        except ValueError: pass
    return out


def _matches(token: str, unit, pool: list[float]) -> bool:
    "True when some figure in the pool, rounded to the prose's precision (and scaled by its unit), is the prose's value."
    v = float(token.replace(",", ""))
    step = 10 ** -len(token.split(".")[1]) if "." in token else 1
    for scale in _SCALE.get(unit, (1,)):
        for u in pool:
            w = u / scale
            if abs(w - v) <= step / 2 + 1e-9 * abs(v) or (unit in ("k", "K", "M", "G", "T") and math.isclose(w, v, rel_tol=0.03)):
                return True
    return False


def unsupported(cells: list[dict]) -> list[str]:
    """Numbers in markdown cells that are neither structural, cited nor computed. `cells` are nbformat-style dicts
    (cell_type, source, outputs) of an executed notebook."""
    texts = []
    for c in cells:
        if c["cell_type"] != "code": texts.append(None); continue
        outs = []
        for o in c.get("outputs", []):
            outs.append(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"]))
            for v in (o.get("data") or {}).values():
                if isinstance(v, str) and not v.startswith("iVBOR"): outs.append(v)
                elif isinstance(v, list): outs.append("".join(v))
        texts.append((c["source"] if isinstance(c["source"], str) else "".join(c["source"])) + "\n" + "\n".join(outs))
    code_idx = [i for i, t in enumerate(texts) if t is not None]
    bad = []
    for i, c in enumerate(cells):
        if c["cell_type"] != "markdown" or c.get("id") == "lesson-header": continue   # the header's time is an estimate
        src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        before = [j for j in code_idx if j < i][-WINDOW:]
        after = [j for j in code_idx if j > i][:WINDOW]
        pool = [f for j in before + after for f in figures(texts[j])]
        for s in sentences(src):
            if _CITED.search(s): continue
            plain = _LESSON.sub(" ", s)
            for m in _NUM.finditer(plain):
                token, unit = m.group(1).rstrip(","), m.group(2)
                if not token or token.replace(",", "") == "": continue
                if "," in token and not re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", token): token = token.split(",")[0]
                v = float(token.replace(",", ""))
                if "." not in token and unit is None and v < 10: continue                 # a count written as a figure
                if "." not in token and unit is None and 1900 <= v <= 2099: continue      # a year
                if re.match(r"-(bit|byte)\b", plain[m.end():]): continue                  # a type's name: 16-bit, 4-byte
                if _matches(token, unit, pool): continue
                bad.append(f"cell {i}: {token}{unit or ''} in: {s[:160]}")
    return bad

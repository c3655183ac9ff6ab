"""GenEval's correctness rules on detections, plus the partial credit used as an RL reward.

Strict rules (GenEval ``evaluate``), applied to detections ordered largest first:

* include ``{class, count}``: at least ``count`` objects of the class. With ``color``, at least
  ``count`` of them must have that colour (objects of the right colour are taken first: sizes are
  our only stand-in for a detector's confidence, so we do not let size order decide the colour).
* include ``position: [rel, j]``: every chosen object of this entry must be ``rel`` every chosen
  object of entry j (``relations.relations``); if entry j failed, this one fails too.
* exclude ``{class, count: N}``: fewer than N objects of the class.
* text: the digits read left to right equal the requested number.

Soft score: the mean of one credit per requirement, each in [0, 1]: count ``min(found, n) / n``;
colour: the fraction of the ``n`` requested objects found in that colour; position: the fraction of
object pairs in the right relation; exclude: ``1 - excess / N``; text: ``1 - edit distance / length``.
The soft score is 1 exactly when the strict verdict is correct.
"""

from __future__ import annotations

from visalign.worlds.shapes.detect import Detection
from visalign.worlds.shapes.relations import relations


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def judge_text(read: str, expected: str) -> tuple[bool, float, str]:
    """(correct, soft score, reason) for a text prompt."""
    if read == expected:
        return True, 1.0, f"reads '{read}'"
    soft = max(0.0, 1.0 - _edit_distance(read, expected) / max(len(expected), len(read), 1))
    return False, soft, f"expected the number '{expected}', read '{read or 'nothing'}'"


def judge_objects(dets: list[Detection], md: dict) -> tuple[bool, float, str]:
    """(correct, soft score, reason) for an object prompt, following GenEval's rules."""
    by_class: dict[str, list[Detection]] = {}
    for d in dets:
        if d.shape is not None:
            by_class.setdefault(d.shape, []).append(d)
    correct = True
    credits: list[float] = []
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in md.get("include", []):
        cls, n, color = req["class"], int(req["count"]), req.get("color")
        pool = by_class.get(cls, [])
        if color:
            pool = [d for d in pool if d.color == color] + [d for d in pool if d.color != color]
        found = pool[:n]
        matched = True
        credits.append(min(len(found), n) / n)
        if len(found) < n:
            matched = False
            reasons.append(f"expected {cls}>={n}, found {len(found)}")
        if color:
            good = sum(d.color == color for d in found)
            credits.append(good / n)
            if good < n and len(found) == n:
                matched = False
                reasons.append(f"expected {color} {cls}>={n}, found " + ", ".join(d.color for d in found))
        if req.get("position"):
            rel, j = req["position"]
            target = groups[j] if j < len(groups) else None
            if not found or target is None:
                credits.append(0.0)
                if matched:
                    reasons.append(f"no target for {cls} to be {rel}")
                matched = False
            else:
                pairs = [(o, t) for o in found for t in target]
                ok = [rel in relations(o.box, t.box) for o, t in pairs]
                credits.append(sum(ok) / len(ok))
                if not all(ok):
                    o, t = pairs[ok.index(False)]
                    seen = " and ".join(sorted(relations(o.box, t.box))) or "not clearly placed relative to"
                    reasons.append(f"expected {cls} {rel} target, found {seen} target")
                    matched = False
        correct = correct and matched
        groups.append(found if matched else None)
    for req in md.get("exclude", []):
        cls, limit = req["class"], int(req["count"])
        have = len(by_class.get(cls, []))
        excess = max(0, have - limit + 1)
        credits.append(max(0.0, 1.0 - excess / limit))
        if have >= limit:
            correct = False
            reasons.append(f"expected {cls}<{limit}, found {have}")
    soft = 1.0 if correct else min(sum(credits) / max(len(credits), 1), 1.0 - 1e-6)
    seen_all = ", ".join(d.describe() for d in dets[:8]) or "nothing"
    if len(dets) > 8:
        seen_all += f" and {len(dets) - 8} more"
    reason = f"found {seen_all}" if correct else "; ".join(reasons) + f" (found {seen_all})"
    return correct, soft, reason

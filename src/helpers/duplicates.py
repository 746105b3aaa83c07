"""Near-duplicates people can act on: a threshold calibrated on the catalog's own edited
copies, a geometric check for the uncertain band, and groups with a suggested keeper.

**The rule.** A pair of products is a near-duplicate when its similarity is at least
``accept``, or at least ``verify`` and either ``min_inliers`` keypoint matches agree on one
affine map or one picture's object, resized and moved, matches the other's pixels with a
correlation of ``min_alignment`` (``helpers.verify``). ``calibrate`` chooses the four numbers.

**Calibration.** ``helpers.calibration`` pairs edited copies of catalog images (crop,
mirror, downscale, recolour, re-encode, rotation up to 20°, aspect change, background swap
on photos from ``backgrounds``) with their nearest catalog images: a copy's source is
the right answer, other products are wrong. The rule is the one with the highest recall
whose precision on these pairs reaches the target; its estimated precision and recall are
recorded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import calibration, copies, verify

DEFAULT_PRECISION = 0.95
UNCALIBRATED = 0.95  # the threshold when the catalog's images cannot be read to calibrate
FEW_WRONG_PAIRS = 50  # fewer pairs of different products than this: the precision estimate is loose
VERIFY_TOP = 3              # per product, at most this many band neighbours are verified ...
CHECKS_PER_PRODUCT = 0.2    # ... and at most this many checks per product in all (the most similar
CHECKS_MIN = 1000           # band pairs first, at least CHECKS_MIN): a check costs ~20 ms a pair and
                            # ~30 ms an image; the calibration assumes every band pair is checked
INLIER_STEPS = (6, 8, 10, 12, 15, 20, 25, 30, 40, 60, None)  # None: keypoints never decide
ALIGNMENT_STEPS = (0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, verify.ENOUGH, None)  # None: alignment never decides


@dataclass
class Rule:
    accept: float                    # at or above: a near-duplicate, no check needed
    verify: float | None = None      # from here below accept: a near-duplicate if the keypoints agree ...
    min_inliers: int | None = None
    min_alignment: float | None = None  # ... or the pictures align this well (verify.alignment)
    precision: float | None = None   # estimated on the calibration pairs
    recall: float | None = None
    recall_by_edit: dict = field(default_factory=dict)
    wrong_pairs: int | None = None   # the calibration pairs of different products the estimate rests on
    source: str = "calibrated"       # or "given": the user's threshold

    def decide(self, similarity, inliers, alignment=None) -> np.ndarray:
        similarity, inliers = np.asarray(similarity), np.asarray(inliers)
        alignment = np.full(similarity.shape, -1.0) if alignment is None else np.asarray(alignment)
        accepted = similarity >= self.accept
        if self.verify is not None:
            evidence = np.zeros(similarity.shape, bool)
            if self.min_inliers is not None:
                evidence |= inliers >= self.min_inliers
            if self.min_alignment is not None:
                evidence |= alignment >= self.min_alignment
            accepted |= (similarity >= self.verify) & evidence
        return accepted

    def needs_check(self, similarity) -> np.ndarray:
        similarity = np.asarray(similarity)
        if self.verify is None:
            return np.zeros(similarity.shape, bool)
        return (similarity >= self.verify) & (similarity < self.accept)

    def as_dict(self) -> dict:
        return asdict(self)


def describe(rule: dict) -> str:
    """A rule (``Rule.as_dict()``, as recorded) in words: "accept >= 0.9, or >= 0.7 with 40
    keypoints or alignment 0.92"."""
    text = f"accept >= {rule['accept']:.4f}"
    if rule.get("verify") is None:
        return text
    checks = ([f"{rule['min_inliers']} keypoints"] if rule.get("min_inliers") is not None else []) + \
        ([f"alignment {rule['min_alignment']:g}"] if rule.get("min_alignment") is not None else [])
    return f"{text}, or >= {rule['verify']:.4f} with {' or '.join(checks)}"


def describe_checks(summary: dict) -> str:
    """03's checks in words, from its summary: how many band pairs were checked, and how many
    were past the budget (``CHECKS_MIN``, or ``CHECKS_PER_PRODUCT`` per product) and not."""
    if summary["duplicate_rule"].get("verify") is None:
        return "No pair was checked: the rule has no uncertain band (similarity alone decides)."
    checked, left = summary.get("checked_band_pairs", 0), summary.get("unchecked_band_pairs", 0)
    text = f"{checked:,} pairs in the uncertain band were checked (keypoints, alignment)"
    if not left:
        return text + ", all there were."
    return (f"{text}, the most similar first; {left:,} more were past the budget of checks and not "
            "checked, so near-duplicates among them are not listed.")


def describe_estimate(rule: dict) -> str:
    """What the calibrated rule's estimate rests on, in words; a warning when the calibration
    saw fewer than ``FEW_WRONG_PAIRS`` pairs of different products."""
    wrong = rule.get("wrong_pairs")
    if rule.get("source") != "calibrated" or wrong is None:
        return "The rule was not calibrated on this catalog: there is no estimate of its precision."
    text = (f"Estimated on {wrong:,} pairs of an edited copy with a different product: precision "
            f"{rule['precision'] if rule['precision'] is not None else 'none'}, recall {rule['recall']}.")
    if wrong < FEW_WRONG_PAIRS:
        text += (f" That is few (under {FEW_WRONG_PAIRS}): the catalog has few products unlike each other, so "
                 "the precision is a loose estimate. Check the pairs, or give duplicate_threshold a number.")
    return text


def check_threshold(duplicate_threshold, duplicate_precision: float) -> None:
    if not (duplicate_threshold == "auto" or (isinstance(duplicate_threshold, (int, float))
                                              and not isinstance(duplicate_threshold, bool)
                                              and -1 <= duplicate_threshold <= 1)):
        raise ValueError(f"duplicate_threshold={duplicate_threshold!r}; give 'auto' (calibrated on the "
                         "catalog's own edited copies) or a cosine similarity between -1 and 1")
    if not (isinstance(duplicate_precision, (int, float)) and 0 < duplicate_precision < 1):
        raise ValueError(f"duplicate_precision={duplicate_precision!r}; give the precision the calibrated "
                         "threshold should reach, between 0 and 1 (e.g. 0.95)")


def calibrate(pairs: pd.DataFrame, precision: float = DEFAULT_PRECISION) -> Rule:
    """The rule with the highest recall whose precision on ``pairs`` reaches ``precision``.

    ``pairs``: one row per (edited copy, catalog image) with ``similarity``, ``inliers``,
    ``alignment`` (-1 where not checked), ``positive`` and ``kind`` (the edit). Recall counts
    every edited copy once (found when its source's pair is accepted). Ties go to the rule that
    verifies fewer pairs.
    """
    sim, pos = pairs["similarity"].to_numpy(), pairs["positive"].to_numpy(bool)
    evidence = _evidence(pairs)  # (inlier steps x alignment steps, pairs)
    n_pos, n_wrong = max(1, int(pos.sum())), int((~pos).sum())
    accepts = np.unique(np.round(np.quantile(sim[pos], np.linspace(0, 1, 201)), 4)) if pos.any() else []
    best, best_score = None, (-1.0, 0)
    for accept in np.concatenate([accepts, [1.01]]):
        plain = sim >= accept
        for start in [None] + _verify_starts(sim[pos], accept):
            if start is None:  # the similarity alone
                band, chosen = np.zeros_like(plain), plain[None]
            else:
                band = (sim >= start) & ~plain
                chosen = plain | (band & evidence)
            chosen = chosen.astype(np.float32)
            found, wrong = chosen @ pos.astype(np.float32), chosen @ (~pos).astype(np.float32)  # per step
            ok = (found > 0) & (found >= precision * np.maximum(1, found + wrong))
            if not ok.any():
                continue
            step = int(np.flatnonzero(ok)[np.argmax(found[ok])])
            score = (found[step] / n_pos, -int(band.sum()))
            if score > best_score:
                best, best_score = (float(accept), start, step, found[step] / (found[step] + wrong[step])), score
    if best is None:  # nothing reaches the precision: only identical pictures
        return Rule(accept=1.0, precision=None, recall=0.0, wrong_pairs=n_wrong)
    accept, start, step, reached = best
    n, m = _STEPS[step] if start is not None else (None, None)
    rule = Rule(accept=round(min(accept, 1.0), 4), verify=None if start is None else round(float(start), 4),
                min_inliers=n, min_alignment=m, precision=round(float(reached), 4),
                recall=round(float(best_score[0]), 4), wrong_pairs=n_wrong)
    rule.recall_by_edit = _recall_by_edit(pairs, rule)
    return rule


# (min_inliers, min_alignment): one check alone first, so a tie goes to the rule that needs one
_STEPS = sorted(((n, m) for n in INLIER_STEPS for m in ALIGNMENT_STEPS if (n, m) != (None, None)),
                key=lambda step: step.count(None), reverse=True)


def _evidence(pairs: pd.DataFrame) -> np.ndarray:
    """Per (min_inliers, min_alignment) step, which pairs the check passes."""
    inl = pairs["inliers"].to_numpy()
    aligned = pairs["alignment"].to_numpy() if "alignment" in pairs else np.full(len(pairs), -1.0)
    return np.array([(inl >= n if n is not None else False) | (aligned >= m if m is not None else False)
                     for n, m in _STEPS], bool).reshape(len(_STEPS), len(pairs))


def _verify_starts(positive_sims: np.ndarray, accept: float) -> list[float]:
    """Where the checked band may start: quantiles of the positives below ``accept``."""
    below = positive_sims[positive_sims < accept]
    if not len(below):
        return []
    starts = np.quantile(below, [0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5])
    return sorted({max(verify.FLOOR, round(float(s), 4)) for s in starts})


def _recall_by_edit(pairs: pd.DataFrame, rule: Rule) -> dict:
    positives = pairs[pairs["positive"]]
    found = rule.decide(positives["similarity"], positives["inliers"], positives.get("alignment"))
    return {k: round(float(v), 4) for k, v in pd.Series(found).groupby(positives["kind"].to_numpy()).mean().items()}


def curve(pairs: pd.DataFrame) -> pd.DataFrame:
    """Precision and recall of the similarity alone at every threshold (for 03's plot)."""
    ordered = pairs.sort_values("similarity", ascending=False)
    pos = ordered["positive"].to_numpy()
    found = np.cumsum(pos)
    return pd.DataFrame({"threshold": ordered["similarity"].to_numpy(),
                         "precision": found / np.arange(1, len(pos) + 1),
                         "recall": found / max(1, int(pos.sum()))})


def candidate_pairs(table: pd.DataFrame, rule: Rule) -> pd.DataFrame:
    """Unique product pairs of 03's lists that the rule looks at: above ``accept``, or in the
    band among each master's first ``VERIFY_TOP`` neighbours."""
    floor = rule.accept if rule.verify is None else rule.verify
    near = table[(table["similarity"] >= floor)
                 & ((table["similarity"] >= rule.accept) | (table["rank"] <= VERIFY_TOP))]
    swap = near["master_pi"].to_numpy() > near["similar_pi"].to_numpy()
    out = pd.DataFrame({
        "product_a": np.where(swap, near["similar_pi"], near["master_pi"]),
        "product_b": np.where(swap, near["master_pi"], near["similar_pi"]),
        "similarity": near["similarity"].to_numpy(),
        "path_a": np.where(swap, near["similar_path"], near["master_path"]),
        "path_b": np.where(swap, near["master_path"], near["similar_path"]),
    })
    out = out[out["product_a"] != out["product_b"]]
    out = out.sort_values(["similarity", "product_a", "product_b"], ascending=[False, True, True])
    return out.drop_duplicates(["product_a", "product_b"]).reset_index(drop=True)


def near_duplicates(table: pd.DataFrame, items: pd.DataFrame, rule: Rule,
                    keypoints: verify.KeypointCache | None) -> pd.DataFrame:
    """The product pairs the rule calls near-duplicates, most similar first, with the
    check's evidence (``inliers`` and ``alignment``; -1 where not needed)."""
    pairs = candidate_pairs(table, rule)
    check = rule.needs_check(pairs["similarity"])
    budget = max(CHECKS_MIN, int(CHECKS_PER_PRODUCT * table["master_pi"].nunique()))
    check &= np.cumsum(check) <= budget  # pairs are sorted most similar first
    pairs["inliers"], pairs["alignment"] = np.int32(-1), np.float32(-1)
    if check.any() and keypoints is not None:
        _check(pairs, check, items, rule, keypoints)
    pairs["verified"] = check
    keep = rule.decide(pairs["similarity"], np.where(check, pairs["inliers"], 0),
                       np.where(check, pairs["alignment"], -1.0))
    unchecked = int(rule.needs_check(pairs["similarity"]).sum() - check.sum())
    columns = ["product_a", "product_b", "similarity", "inliers", "alignment", "verified", "path_a", "path_b"]
    found = pairs.loc[keep, columns].reset_index(drop=True)
    found.attrs["checked"] = int(check.sum())
    found.attrs["unchecked"] = unchecked  # band pairs past the budget: recorded, not checked
    return found


def _check(pairs: pd.DataFrame, check: np.ndarray, items: pd.DataFrame, rule: Rule,
           keypoints: verify.KeypointCache) -> None:
    """Fill in the evidence the rule asks for, for the ``check`` pairs."""
    sha = dict(zip(items["path"], items["sha256"]))
    a, b = pairs.loc[check, "path_a"].map(sha), pairs.loc[check, "path_b"].map(sha)
    paths = pd.concat([pairs.loc[check, "path_a"], pairs.loc[check, "path_b"]])
    found = keypoints.many(paths.tolist(), paths.map(sha).tolist())
    pending = np.ones(len(a), bool)
    if rule.min_inliers is not None:
        counts = keypoints.pair_inliers(list(zip(a, b)), found)
        pairs.loc[check, "inliers"] = counts
        pending = counts < rule.min_inliers
    if rule.min_alignment is not None and pending.any():  # only where the keypoints did not decide
        rows = pairs.index[check][pending]
        pairs.loc[rows, "alignment"] = keypoints.pair_alignment(list(zip(a[pending], b[pending])), found)


def find(run_dir: Path, table: pd.DataFrame, embeddings: np.ndarray, items: pd.DataFrame, embed_meta: dict,
         threshold="auto", precision: float = DEFAULT_PRECISION, backgrounds=None):
    """03's near-duplicates: (pairs, the rule, the calibration pairs or None).

    ``threshold`` a number: pairs at or above it, nothing checked (the user's number wins).
    "auto": the rule calibrated on the catalog's own edited copies to reach ``precision``.
    """
    check_threshold(threshold, precision)
    if threshold != "auto":
        rule = Rule(accept=float(threshold), source="given")
        return near_duplicates(table, items, rule, None), rule, None
    folder = copies.background_folder(backgrounds)
    try:
        pairs = calibration.calibration_pairs(run_dir, embeddings, items, embed_meta, folder)
    except calibration.CalibrationError as exc:  # the lists still matter more than the calibration
        import warnings

        warnings.warn(f"near-duplicates: {exc}; using duplicate_threshold={UNCALIBRATED} instead", stacklevel=3)
        rule = Rule(accept=UNCALIBRATED, source=f"uncalibrated: {exc}")
        return near_duplicates(table, items, rule, None), rule, None
    rule = calibrate(pairs, precision)
    keypoints = verify.KeypointCache(run_dir, embed_meta["image_dir"])
    return near_duplicates(table, items, rule, keypoints), rule, pairs

"""The acceptance gate: a round's aggregate is kept only if it does not do worse than the model
the round started from, on data no one trained on this round.

* held-out corrections: each site holds its newest correction out of training and reports pixel
  counts (tp, fp, fn) of the incoming model on it in its train reply (`gate-incoming-held-*`) and
  of the aggregate in its evaluate reply (`gate-held-*`). Pooled over the sites, the aggregate's
  Dice may fall by at most `gate_held_drop`.
* the central site's validation patches (`gate-incoming-val-*`, `gate-val-*`): the aggregate's
  Dice may fall by at most `gate_val_drop` (0.01).

What nobody reported is not judged (a round without held-out corrections keeps its aggregate)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ugafl.server.federation.sites import Reply


@dataclass(frozen=True)
class GateVerdict:
    """Whether to keep the aggregate, why, and the numbers it was judged on (for rounds.csv)."""

    keep: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)


def pooled_dice(replies: Sequence[Reply], prefix: str) -> float | None:
    """Dice from the `prefix`-tp/fp/fn counts summed over the replies that carry them; None if none
    does; 1.0 when there is nothing to find and nothing found."""
    ok = [r.metrics for r in replies if r.error is None and f"{prefix}-tp" in r.metrics]
    if not ok:
        return None
    tp, fp, fn = (sum(float(m[f"{prefix}-{k}"]) for m in ok) for k in ("tp", "fp", "fn"))
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0


def judge(train_replies: Sequence[Reply], eval_replies: Sequence[Reply], held_drop: float,
          val_drop: float) -> GateVerdict:
    """Keep the aggregate unless the held-out or the validation Dice falls by more than allowed.
    Only sites that answered both messages with the counts are pooled."""
    answered = {r.site for r in eval_replies if r.error is None}
    metrics: dict[str, float] = {}
    problems: list[str] = []
    for name, before_prefix, after_prefix, allowed in (("held-out", "gate-incoming-held", "gate-held", held_drop),
                                                        ("central validation", "gate-incoming-val", "gate-val", val_drop)):
        both = {r.site for r in train_replies if r.error is None and f"{before_prefix}-tp" in r.metrics} & \
               {r.site for r in eval_replies if r.site in answered and f"{after_prefix}-tp" in r.metrics}
        before = pooled_dice([r for r in train_replies if r.site in both], before_prefix)
        after = pooled_dice([r for r in eval_replies if r.site in both], after_prefix)
        if before is None or after is None:
            continue
        key = after_prefix.removeprefix("gate-")
        metrics[f"gate-{key}-before"], metrics[f"gate-{key}-after"] = round(before, 6), round(after, 6)
        if after < before - allowed:
            problems.append(f"{name} Dice {before:.4f} -> {after:.4f} (allowed drop {allowed:g})")
    metrics["gate-kept"] = 0.0 if problems else 1.0
    if problems:
        return GateVerdict(False, "; ".join(problems), metrics)
    judged = [k for k in ("held", "val") if f"gate-{k}-after" in metrics]
    return GateVerdict(True, "passed on " + ", ".join(judged) if judged else "nothing to judge on", metrics)

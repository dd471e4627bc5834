"""When the AND-mask freezes the classifier's bias: exact, before any data is seen.

With softmax cross-entropy, the gradient of one example's loss with respect to the bias of
class c is ``p_c(x) - [y = c]``: negative when the example's label is c, positive otherwise,
whatever the model. In an environment whose examples share one label
(`EnvironmentKind.label_pure`: groups, or examples), the environment's mean gradient has that
same sign. So the sign agreement of the bias of class c across a batch's environments is

    | K - 2 k_c | / K,     K present environments, k_c of them labelled c,

and the AND-mask keeps the whole bias tensor only if some class reaches the threshold τ. (The
one exception is a softmax saturated to exactly 0 or 1 in floating point for every example of
an environment, logit margins beyond ~17 in float32, whose vote is then 0.) The bias is a whole
parameter tensor for any architecture. The head's weights mostly follow it in a ResNet, whose
features are ReLU outputs (>= 0), but a feature that is exactly zero throughout an environment
abstains there, which can let that weight component through: only the bias is proved frozen.

On a binary task with both labels in a batch the agreement is ``|k_0 - k_1| / (k_0 + k_1)``:
at most ``(A - 1) / (A + 1)`` with groups (each label has A = n_groups / n_classes groups;
1/3 for Waterbirds and CelebA), at most ``(B - 2) / B`` with examples. Above those bounds the
bias is frozen in every batch that holds both labels, whatever the sampler. Under
`group_balanced` sampling the present environments are distributed exactly (uniform draws over
groups, and every label holds the same number of groups), which `head_update_probability`
computes; under `shuffle` they depend on the data set's group sizes, so only the worst case
over batches is used.
"""

from __future__ import annotations

import itertools
import math

# A combination under which the head bias can be updated on fewer than this share of steps is
# refused as frozen: one step in a hundred is about one update per epoch on spurious_digits.
MIN_HEAD_UPDATE_SHARE = 0.01


def bias_kept(label_counts: tuple[int, ...], threshold: float) -> bool:
    """Whether the AND-mask keeps some class's bias, given the number of present label-pure
    environments of each label (zero for an absent label)."""
    total = sum(label_counts)
    return total > 0 and any(abs(total - 2 * k) / total >= threshold for k in label_counts)


def worst_case_agreement(environments: str, n_classes: int, n_groups: int, batch_size: int) -> float | None:
    """The highest bias agreement any batch holding at least two labels can reach: above it the
    AND-mask freezes the bias in every such batch. None for environments that are not label-pure.

    With groups, each label has at most A = n_groups / n_classes environments; with examples,
    the B environments of a batch are its examples, and with more than two classes a batch can
    lack a class, whose bias then has agreement 1.
    """
    if environments == "groups":
        per_label = n_groups // n_classes
        best = 0.0
        for counts in itertools.product(range(per_label + 1), repeat=n_classes):
            if sum(1 for k in counts if k) >= 2:
                total = sum(counts)
                best = max(best, max(abs(total - 2 * k) / total for k in counts))
        return best
    if environments == "examples":
        return (batch_size - 2) / batch_size if n_classes == 2 else 1.0
    return None


def head_update_probability(
    environments: str, n_classes: int, n_groups: int, batch_size: int, threshold: float
) -> float | None:
    """Probability that one group-balanced batch lets the AND-mask keep the head bias, or None
    where it is not computed exactly (non-label-pure environments, or examples with more than
    two classes).

    Group-balanced draws pick each of the `n_groups` groups uniformly and independently, and
    groups are ``attribute * n_classes + label``, so each label holds n_groups / n_classes groups.
    """
    if environments == "groups":
        return _groups_probability(n_classes, n_groups, batch_size, threshold)
    if environments == "examples" and n_classes == 2:
        # The number of label-1 examples is Binomial(B, 1/2); agreement |B - 2 k| / B.
        return sum(math.comb(batch_size, k) for k in range(batch_size + 1)
                   if bias_kept((batch_size - k, k), threshold)) / 2.0 ** batch_size
    return None


def _groups_probability(n_classes: int, n_groups: int, batch_size: int, threshold: float) -> float:
    """Sum over the sets S of present groups of P(exactly S present) [bias kept given S]."""
    if n_groups > 16:  # 2^G subsets; the data sets here have 4 groups
        raise ValueError(f"exact head-update probability is computed for at most 16 groups, got {n_groups}")
    probability = 0.0
    for size in range(1, n_groups + 1):
        # P(exactly a given set of `size` groups present), by inclusion-exclusion over its subsets.
        exactly = sum((-1) ** (size - j) * math.comb(size, j) * (j / n_groups) ** batch_size
                      for j in range(1, size + 1))
        for present in itertools.combinations(range(n_groups), size):
            counts = tuple(sum(1 for g in present if g % n_classes == c) for c in range(n_classes))
            if bias_kept(counts, threshold):
                probability += exactly
    return min(max(probability, 0.0), 1.0)

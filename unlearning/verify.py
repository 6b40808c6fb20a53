"""Verification metrics of a classifier deletion (methods doc, sections 1.9 and 3).

Everything here measures a model; nothing changes one except ``relearn_time``, which trains a copy.
Forget data is read here even when the method never read it: the evidence needs it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC
from torch import nn
from torch.nn import functional as F

from unlearning.data import ImageSource, InputSpec, iterate, sample_per_class
from unlearning.progress import Progress, no_progress
from unlearning.train import descend

EVAL_CAP = 10_000  # at most this many samples per evaluated group, drawn with a fixed seed
SVC_CAP = 2_000  # the SVC attack is quadratic in its training set


@dataclass(frozen=True)
class Outputs:
    """Softmax outputs of a model on one group of samples, with the true labels."""

    probs: np.ndarray
    labels: np.ndarray
    # The input of the model's classification head (its penultimate features), when asked for.
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class EvalSets:
    """The groups every model of a job is measured on (indices into ``train`` / ``test``).

    For a class request the forget groups are the forget classes' samples of each split; for a
    sample request ``forget_train`` is the named samples and there is no forget-test group.
    """

    train: ImageSource
    test: ImageSource
    forget_train: np.ndarray
    retain_train: np.ndarray
    forget_test: np.ndarray | None
    retain_test: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def eval_sets(
    train: ImageSource,
    test: ImageSource,
    forget_idx: np.ndarray,
    retain_idx: np.ndarray,
    forget_classes: list[int] | None,
    class_names: list[str],
    seed: int = 0,
    cap: int = EVAL_CAP,
    excluded_classes: list[int] | None = None,
) -> EvalSets:
    """Forget and retain samples of both splits. ``excluded_classes`` (classes an earlier
    deletion removed from the model) are in neither: the model is not meant to know them."""
    rng = np.random.default_rng(seed)
    test_all = np.arange(len(test))
    if excluded_classes:
        test_all = test_all[~np.isin(test.targets, excluded_classes)]
    if forget_classes:
        in_forget = np.isin(np.asarray(test.targets)[test_all], forget_classes)
        forget_test: np.ndarray | None = _cap(test_all[in_forget], cap, rng)
        retain_test = _cap(test_all[~in_forget], cap, rng)
    else:
        forget_test, retain_test = None, _cap(test_all, cap, rng)
    return EvalSets(
        train,
        test,
        _cap(forget_idx, cap, rng),
        _cap(retain_idx, cap, rng),
        forget_test,
        retain_test,
        list(class_names),
    )


def _cap(idx: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return idx if len(idx) <= cap else np.sort(rng.choice(idx, size=cap, replace=False))


@torch.no_grad()
def model_outputs(
    model: nn.Module,
    source: ImageSource,
    idx: np.ndarray,
    spec: InputSpec,
    device: torch.device,
    batch_size: int = 512,
    with_features: bool = False,
) -> Outputs:
    model.eval()
    probs, labels, features = [], [], []
    head = classifier_head(model) if with_features else None
    hook = (
        head.register_forward_pre_hook(
            lambda _m, args: features.append(args[0].flatten(1).float().cpu().numpy())
        )
        if head is not None
        else None
    )
    try:
        for x, y in iterate(source, idx, spec, batch_size):
            probs.append(F.softmax(model(x.to(device)).float(), dim=1).cpu().numpy())
            labels.append(y.numpy())
    finally:
        if hook is not None:
            hook.remove()
    if not probs:
        return Outputs(np.empty((0, 0)), np.empty(0, dtype=np.int64))
    return Outputs(
        np.concatenate(probs).astype(np.float64),
        np.concatenate(labels),
        np.concatenate(features) if features else None,
    )


def classifier_head(model: nn.Module) -> nn.Linear | None:
    """The last linear layer: the head whose input is the features a probe reads (torchvision's
    ``fc``, timm's ``head.fc``, tiny_cnn's last layer). None when the model has none."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else None


def accuracy(out: Outputs) -> float | None:
    """Sample-weighted accuracy (not a mean of per-batch accuracies)."""
    return float((out.probs.argmax(1) == out.labels).mean()) if len(out) else None


def per_class_accuracy(out: Outputs, class_names: list[str]) -> dict[str, float | None]:
    pred = out.probs.argmax(1) if len(out) else np.empty(0)
    result: dict[str, float | None] = {}
    for c, name in enumerate(class_names):
        mine = out.labels == c
        result[name] = float((pred[mine] == c).mean()) if mine.any() else None
    return result


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row, in nats."""
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)


def true_label_confidence(out: Outputs) -> np.ndarray:
    return out.probs[np.arange(len(out)), out.labels]


def entropy_mia(
    retain: Outputs, test: Outputs, forget: Outputs, forget_heldout: Outputs | None = None
) -> dict[str, float | None]:
    """The entropy attack of Bad-Teacher, SSD and SCRUB.

    A class-balanced logistic regression on the output entropy learns retain training samples as
    members and held-out samples as non-members, then judges the forget samples. The member rates
    of the attack's own two groups are reported too: the forget rate should move from the retain
    level toward the held-out level (a retrained model's rate is not 0).

    ``forget_heldout``: held-out images of the forgotten classes (class requests). A model that
    never saw those classes treats their training and held-out images alike, so the rate on
    them (``forget_heldout_member_rate``) is where the forget set's rate should land.
    """
    keys = (
        "forget_member_rate",
        "forget_member_score",
        "retain_member_rate",
        "retain_member_score",
        "test_member_rate",
        "test_member_score",
        "forget_heldout_member_rate",
    )
    if not (len(retain) and len(test) and len(forget)):
        return dict.fromkeys(keys)
    x = np.concatenate([entropy(retain.probs), entropy(test.probs)]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(retain)), np.zeros(len(test))])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs").fit(x, y)

    def rate(out: Outputs) -> float:
        return float(clf.predict(entropy(out.probs).reshape(-1, 1)).mean())

    # The mean member probability: a continuous version of the rate, for small forget sets.
    def score(out: Outputs) -> float:
        return float(clf.predict_proba(entropy(out.probs).reshape(-1, 1))[:, 1].mean())

    return {
        "forget_member_rate": rate(forget),
        "forget_member_score": score(forget),
        "retain_member_rate": rate(retain),
        "retain_member_score": score(retain),
        "test_member_rate": rate(test),
        "test_member_score": score(test),
        "forget_heldout_member_rate": (
            rate(forget_heldout) if forget_heldout is not None and len(forget_heldout) else None
        ),
    }


def mia_efficacy(retain: Outputs, test: Outputs, forget: Outputs, seed: int = 0) -> float | None:
    """SalUn's MIA-Efficacy: the share of forget samples an SVC attack calls non-members.

    The attack (RBF SVC, C=3) learns the confidence on the true label of retain samples (members,
    as many as held-out ones) against held-out samples. Higher means more forgetting.
    """
    if not (len(retain) and len(test) and len(forget)):
        return None
    rng = np.random.default_rng(seed)
    n = min(len(retain), len(test), SVC_CAP)
    members = true_label_confidence(retain)[rng.choice(len(retain), n, replace=False)]
    others = true_label_confidence(test)[rng.choice(len(test), n, replace=False)]
    x = np.concatenate([members, others]).reshape(-1, 1)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    if np.ptp(x) == 0:  # every confidence equal: the attack can learn nothing
        return None
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return float(1.0 - clf.predict(true_label_confidence(forget).reshape(-1, 1)).mean())


def prediction_distribution(out: Outputs, class_names: list[str]) -> dict[str, object]:
    """Where the forget samples' predictions go: mass piling on one class signals leakage."""
    if not len(out):
        return {
            "counts": {},
            "largest_class": None,
            "largest_share": None,
            "normalised_entropy": None,
        }
    counts = np.bincount(out.probs.argmax(1), minlength=len(class_names))
    share = counts / counts.sum()
    nonzero = share[share > 0]
    ent = float(-(nonzero * np.log(nonzero)).sum())
    top = int(counts.argmax())
    return {
        "counts": {name: int(k) for name, k in zip(class_names, counts, strict=True)},
        "largest_class": class_names[top],
        "largest_share": float(share[top]),
        "normalised_entropy": ent / math.log(len(class_names)) if len(class_names) > 1 else 0.0,
    }


PROBE_SHOTS = 10  # forgotten-class images per class the probe is shown
PROBE_RETAIN = 2_000  # held-out retain images it is shown, at most


def feature_probe(
    retain: Outputs, forget: Outputs, shots: int = PROBE_SHOTS, seed: int = 0
) -> dict[str, object] | None:
    """Whether the forgotten classes can still be read from the model's features.

    A linear probe (logistic regression on the standardised input of the classification head)
    is trained on held-out retain images and ``shots`` held-out images of each forgotten class,
    then judged on the forgotten classes' other held-out images: ``accuracy`` is the share it
    assigns to their true class. A method that only misaligns the head leaves the features, and
    so this accuracy, as they were ("An Illusion of Unlearning?", arXiv 2604.08271); compare it
    with the original's. None when the model has no linear head or too few images to judge.
    """
    if retain.features is None or forget.features is None or not len(retain):
        return None
    rng = np.random.default_rng(seed)
    shown, judged = [], []
    for c in sorted({int(c) for c in forget.labels}):
        mine = rng.permutation(np.flatnonzero(forget.labels == c))
        shown.append(mine[:shots])
        judged.append(mine[shots:])
    held = np.concatenate(judged)
    if not len(held):
        return None
    kept = _cap(np.arange(len(retain)), PROBE_RETAIN, rng)
    x = np.concatenate([retain.features[kept], forget.features[np.concatenate(shown)]])
    y = np.concatenate([retain.labels[kept], forget.labels[np.concatenate(shown)]])
    mean, std = x.mean(0), x.std(0) + 1e-6
    probe = LogisticRegression(class_weight="balanced", max_iter=500)
    probe.fit((x - mean) / std, y)
    predicted = probe.predict((forget.features[held] - mean) / std)
    return {
        "accuracy": float((predicted == forget.labels[held]).mean()),
        "shots_per_class": shots,
        "trained_on": len(y),
        "judged_on": len(held),
        "feature_dim": int(x.shape[1]),
    }


def probe_summary(
    before: dict, after: dict, reference: dict | None = None
) -> dict[str, object] | None:
    """The feature probe's accuracy on the forgotten classes for the original, the unlearned
    model and the reference (when there is one), and how far it fell from the original's."""
    original, unlearned = before.get("feature_probe"), after.get("feature_probe")
    if not original or not unlearned:
        return None
    redone = (reference or {}).get("feature_probe") or {}
    return {
        "original": original["accuracy"],
        "unlearned": unlearned["accuracy"],
        "reference": redone.get("accuracy"),
        "drop": original["accuracy"] - unlearned["accuracy"],
        "shots_per_class": unlearned["shots_per_class"],
        "judged_on": unlearned["judged_on"],
    }


def forget_confusion(out: Outputs, class_names: list[str]) -> dict[str, dict[str, object]]:
    """Per forgotten class, over its held-out images: where the model sends them (``predicted``,
    counts over every class) and its second choice (``second_choice``: the likeliest class
    once every forgotten class is ruled out). A model retrained without the classes sends
    their images to the classes they resemble, which is the original's second choice: the
    unlearned model's ``predicted`` should look like the original's ``second_choice``."""
    if not len(out):
        return {}
    forgotten = sorted({int(c) for c in out.labels})
    predicted = out.probs.argmax(1)
    others = out.probs.copy()
    others[:, forgotten] = -np.inf
    second = others.argmax(1)
    n = len(class_names)
    found: dict[str, dict[str, object]] = {}
    for c in forgotten:
        mine = out.labels == c
        found[class_names[c]] = {
            "images": int(mine.sum()),
            "predicted": _counts(predicted[mine], class_names, n),
            "second_choice": _counts(second[mine], class_names, n),
        }
    return found


def _counts(classes: np.ndarray, class_names: list[str], n: int) -> dict[str, int]:
    counts = np.bincount(classes, minlength=n)
    return {name: int(k) for name, k in zip(class_names, counts, strict=True) if k}


def total_variation(a: dict[str, int], b: dict[str, int]) -> float | None:
    """Half the L1 distance between two count tables as distributions: 0 when the shares are
    equal, 1 when they share no class."""
    n_a, n_b = sum(a.values()), sum(b.values())
    if not n_a or not n_b:
        return None
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0) / n_a - b.get(k, 0) / n_b) for k in keys)


def confusion_against_second_choice(
    before: dict, after: dict, reference: dict | None = None
) -> dict[str, object] | None:
    """For a class request: per forgotten class, the distance (total variation) between where
    the unlearned model sends the class's held-out images and where the original would have
    sent them had the class not existed (its second choice); the same for the retrained
    reference when there is one, and between the two. None for sample requests."""
    original = before.get("forget_confusion") or {}
    unlearned = after.get("forget_confusion") or {}
    if not original or not unlearned:
        return None
    retrained = (reference or {}).get("forget_confusion") or {}
    per_class: dict[str, dict[str, object]] = {}
    distances: list[float] = []
    for name, seen in original.items():
        if name not in unlearned:
            continue
        target, moved = seen["second_choice"], unlearned[name]["predicted"]
        distance = total_variation(moved, target)
        row: dict[str, object] = {
            "original_second_choice": target,
            "unlearned": moved,
            "total_variation": distance,
        }
        if distance is not None:
            distances.append(distance)
        if name in retrained:
            redone = retrained[name]["predicted"]
            row["reference"] = redone
            row["reference_total_variation"] = total_variation(redone, target)
            row["total_variation_to_reference"] = total_variation(moved, redone)
        per_class[name] = row
    return {
        "per_class": per_class,
        "mean_total_variation": float(np.mean(distances)) if distances else None,
    }


def weight_distance(model: nn.Module, reference: nn.Module) -> dict[str, object]:
    """Per-layer L2 distance of the parameters, the global distance and the normalised one,
    sqrt(sum ||p - p0||^2 / sum ||p||^2) (methods doc s. 1.9; p0 is the reference)."""
    ref = dict(reference.named_parameters())
    layers: dict[str, float] = {}
    squared = base = 0.0
    for name, p in model.named_parameters():
        p0 = ref[name].detach().to(p.device, torch.float64)
        mine = p.detach().to(torch.float64)
        d = float((mine - p0).pow(2).sum())
        layers[name] = math.sqrt(d)
        squared += d
        base += float(mine.pow(2).sum())
    return {
        "total": math.sqrt(squared),
        "normalised": math.sqrt(squared / base) if base else None,
        "layers": layers,
    }


# Batch-norm statistics follow the data a model last saw, not what it learned: left out.
_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def state_distance(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> float | None:
    """How far the weights ``state`` have moved from ``base``: sqrt(sum ||w - w0||^2 / sum
    ||w0||^2) over the floating-point tensors both hold (batch-norm statistics left out); None
    when they share none."""
    moved = norm = 0.0
    for name, w0 in base.items():
        w = state.get(name)
        if w is None or not w0.is_floating_point() or name.endswith(_STATISTICS):
            continue
        w0d = w0.detach().to("cpu", torch.float64)
        moved += float((w.detach().to("cpu", torch.float64) - w0d).pow(2).sum())
        norm += float(w0d.pow(2).sum())
    return math.sqrt(moved / norm) if norm else None


def measure(model: nn.Module, sets: EvalSets, spec: InputSpec, device: torch.device) -> dict:
    """Every per-model figure of a job: accuracies per split and class, MIAs, forget predictions."""
    forget_train = model_outputs(model, sets.train, sets.forget_train, spec, device)
    retain_train = model_outputs(model, sets.train, sets.retain_train, spec, device)
    classes = sets.forget_test is not None and len(sets.forget_test) > 0
    # For a class request, the head's input too: the feature probe reads it.
    retain_test = model_outputs(
        model, sets.test, sets.retain_test, spec, device, with_features=classes
    )
    forget_test = (
        model_outputs(model, sets.test, sets.forget_test, spec, device, with_features=True)
        if classes and sets.forget_test is not None
        else None
    )
    test = _join(retain_test, forget_test)
    acc = {
        "forget_train": accuracy(forget_train),
        "forget_test": accuracy(forget_test) if forget_test is not None else None,
        "retain_train": accuracy(retain_train),
        "retain_test": accuracy(retain_test),
        "test": accuracy(test),
    }
    # A class is judged on held-out data of that class (its training samples when the held-out
    # split has none); samples on the samples themselves.
    headline_forget = forget_test if forget_test is not None else forget_train
    return {
        "forget_accuracy": accuracy(headline_forget),
        "retain_accuracy": acc["retain_test"],
        "test_accuracy": acc["test"],
        "accuracy": acc,
        "per_class": {
            "train": per_class_accuracy(_join(forget_train, retain_train), sets.class_names),
            "test": per_class_accuracy(test, sets.class_names),
        },
        "mia": {
            "entropy": entropy_mia(retain_train, test, forget_train, forget_test),
            "efficacy": mia_efficacy(retain_train, test, forget_train),
        },
        "forget_predictions": prediction_distribution(headline_forget, sets.class_names),
        "forget_confusion": (
            forget_confusion(forget_test, sets.class_names) if forget_test is not None else {}
        ),
        "feature_probe": feature_probe(retain_test, forget_test) if forget_test else None,
        "samples": {
            "forget_train": len(forget_train),
            "retain_train": len(retain_train),
            "forget_test": len(forget_test) if forget_test is not None else 0,
            "retain_test": len(retain_test),
        },
    }


def forget_member_gap(
    model: nn.Module,
    sets: EvalSets,
    spec: InputSpec,
    device: torch.device,
    cap: int = 1_000,
) -> tuple[float | None, int]:
    """The entropy attack's member rate on the forget samples minus its rate on held-out data
    (about 0 when they look like data the model never saw; negative when they look less like
    members than unseen data does), from at most ``cap`` samples of each group; and the samples
    passed forward."""
    rng = np.random.default_rng(0)
    forget_idx = _cap(sets.forget_train, cap, rng)
    retain_idx = _cap(sets.retain_train, cap, rng)
    test_idx = _cap(sets.retain_test, cap, rng)
    forget = model_outputs(model, sets.train, forget_idx, spec, device)
    retain = model_outputs(model, sets.train, retain_idx, spec, device)
    test = model_outputs(model, sets.test, test_idx, spec, device)
    mia = entropy_mia(retain, test, forget)
    seen = len(forget) + len(retain) + len(test)
    if mia["forget_member_rate"] is None or mia["test_member_rate"] is None:
        return None, seen
    return mia["forget_member_rate"] - mia["test_member_rate"], seen


def _join(a: Outputs, b: Outputs | None) -> Outputs:
    if b is None or not len(b):
        return a
    if not len(a):
        return b
    return Outputs(np.concatenate([a.probs, b.probs]), np.concatenate([a.labels, b.labels]))


def forward_samples(report: dict) -> int:
    """Samples a ``measure`` call passed forward through the model."""
    return int(sum(report["samples"].values()))


GAP_KEYS = ("forget_accuracy", "retain_accuracy", "test_accuracy")


def gaps(after: dict, reference: dict) -> dict[str, float | None]:
    """Each headline figure minus the retrained reference's, and SalUn's "Avg. Gap": the mean
    absolute difference over UA, RA, TA and MIA-Efficacy, i.e. forget-train, retain-train and
    test accuracy and MIA-Efficacy."""
    pairs = {key: (after[key], reference[key]) for key in GAP_KEYS}
    for split in ("forget_train", "retain_train"):
        pairs[f"{split}_accuracy"] = (after["accuracy"][split], reference["accuracy"][split])
    pairs["entropy_mia_forget"] = (
        after["mia"]["entropy"]["forget_member_rate"],
        reference["mia"]["entropy"]["forget_member_rate"],
    )
    pairs["mia_efficacy"] = (after["mia"]["efficacy"], reference["mia"]["efficacy"])
    result = {
        k: (a - r if a is not None and r is not None else None) for k, (a, r) in pairs.items()
    }
    salun = ("forget_train_accuracy", "retain_train_accuracy", "test_accuracy", "mia_efficacy")
    averaged = [abs(v) for k, v in result.items() if k in salun and v is not None]
    result["avg_gap"] = sum(averaged) / len(averaged) if averaged else None
    return result


@dataclass(frozen=True)
class RelearnConfig:
    """The service's relearn-time protocol (methods doc s. 1.9): Adam 1e-3, batch 64, up to
    ``per_class`` forget samples per class, until forget accuracy reaches ``tau`` times the
    original model's, for at most ``max_epochs`` epochs."""

    per_class: int = 100
    lr: float = 1e-3
    batch_size: int = 64
    tau: float = 0.9
    max_epochs: int = 50
    seed: int = 0


def relearn_sample(sets: EvalSets, config: RelearnConfig) -> np.ndarray:
    """The forget training samples the relearning sees (the same for every model of a job)."""
    labels = sets.train.targets[sets.forget_train]
    classes = sorted({int(c) for c in labels})
    picked = sample_per_class(labels, classes, config.per_class, config.seed)
    return sets.forget_train[picked]


def relearn_time(
    model: nn.Module,
    sets: EvalSets,
    spec: InputSpec,
    target_accuracy: float,
    device: torch.device,
    config: RelearnConfig | None = None,
    progress: Progress = no_progress,
) -> dict[str, object]:
    """Epochs of training on forget samples until forget accuracy is back at the target.

    Accuracy is measured where the headline forget accuracy is: held-out forget-class data for
    classes, the forgotten samples for samples. More epochs mean less residual information.
    """
    config = config or RelearnConfig()
    relearn_idx = relearn_sample(sets, config)
    where, idx = (
        (sets.test, sets.forget_test)
        if sets.forget_test is not None
        else (sets.train, sets.forget_train)
    )
    student = copy.deepcopy(model).to(device)
    opt = torch.optim.Adam(student.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    steps = seen = 0
    for epoch in range(config.max_epochs + 1):
        progress("relearn", epoch / config.max_epochs)
        reached = accuracy(model_outputs(student, where, idx, spec, device))
        if reached is not None and reached >= target_accuracy:
            return {
                "epochs": epoch,
                "steps": steps,
                "reached": True,
                "accuracy": reached,
                "target_accuracy": target_accuracy,
                "samples_processed": seen,
            }
        if epoch == config.max_epochs:
            break
        batches = iterate(sets.train, relearn_idx, spec, config.batch_size, generator=gen)
        seen += descend(student, opt, batches, device)
        steps += math.ceil(len(relearn_idx) / config.batch_size)
    return {
        "epochs": None,
        "steps": steps,
        "reached": False,
        "accuracy": reached,
        "target_accuracy": target_accuracy,
        "samples_processed": seen,
    }

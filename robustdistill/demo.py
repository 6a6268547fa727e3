"""``robustdistill demo``: the product's main job on built-in data.

Trains (or reuses, verified by sha256) a clean teacher, a robust teacher, a KD student, a PGD-AT student and a
defensively distilled student on the built-in digits; audits each student against its teacher with the digits
suite; then the privacy section: an intentionally overfit teacher and its KD student, audited for membership
inference (audits/digits-privacy.toml). Writes one report per pipeline and ``reports/demo/index.html`` linking them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustdistill import ownership
from robustdistill.errors import UserInputError

log = logging.getLogger(__name__)

# Quick mode trains each model for a few epochs and audits with audits/demo-quick.toml (a smoke run, < 60 s).
QUICK_SUITE = "audits/demo-quick.toml"
QUICK_SAMPLES = 50  # the quick suite's `samples` (`demo --help` says it; tests/test_demo_out.py checks they agree)
QUICK_EPOCHS = {"standard": 5, "trades": 3, "kd": 5, "pgd-at": 6, "defensive-distillation": 5}
PRIVACY_SUITE = "audits/digits-privacy.toml"
PRIVACY_QUICK_SUITE = "audits/demo-privacy-quick.toml"
LANGUAGE_SUITE = "audits/llm-demo.toml"
LANGUAGE_QUICK_SUITE = "audits/llm-demo-quick.toml"
BIAS_SUITE = "audits/llm-bias-demo.toml"
BIAS_QUICK_SUITE = "audits/llm-bias-demo-quick.toml"
#: Pipeline kind -> (its suite, its --quick suite); the robustness pipelines use the demo's own suite.
DIFFUSION_SUITE = "audits/diffusion-demo.toml"
DIFFUSION_QUICK_SUITE = "audits/diffusion-demo-quick.toml"
UNLEARNING_SUITE = "audits/diffusion-unlearning-demo.toml"
UNLEARNING_QUICK_SUITE = "audits/diffusion-unlearning-demo-quick.toml"
SUITES = {"privacy": (PRIVACY_SUITE, PRIVACY_QUICK_SUITE), "language": (LANGUAGE_SUITE, LANGUAGE_QUICK_SUITE),
          "bias": (BIAS_SUITE, BIAS_QUICK_SUITE), "diffusion": (DIFFUSION_SUITE, DIFFUSION_QUICK_SUITE),
          "unlearning": (UNLEARNING_SUITE, UNLEARNING_QUICK_SUITE)}
#: The pipeline kinds whose suites' samples a classifier reads (the demo swaps in its own clean teacher), and the
#: probe kinds that name that classifier.
DIFFUSION_KINDS = ("diffusion", "unlearning")
READING_PROBES = ("generation-quality", "class-forgetting", "backdoor-removal")
#: The demo's clean digits teacher reads the diffusion models' samples (the generation-quality probe's classifier).
SAMPLE_READER = "clean-teacher"
KIND, QUICK_KIND = "demo", "demo-quick"  # the report folder's marker: a quick run never writes over a full one
CHECKPOINTS_KIND = "demo-checkpoints"
LEDGER = "ledger.json"  # in the checkpoints folder: each model's recipe key and sha256 when the demo trained it


@dataclass(frozen=True)
class Model:
    """One checkpoint the demo trains: a recipe plus overrides."""

    name: str
    method: str
    recipe: str
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = None  # --quick's overrides (None: the image trainers' shortened schedule)
    parent: str = "teacher"  # the recipe key TEACHER_OF's model is passed in (the backdoor trainers': "model")


@dataclass(frozen=True)
class Pipeline:
    """One audit: a student against its teacher."""

    name: str
    teacher: str  # a Model name, or "<model>-teacher" for a teacher a trainer wrote next to its student
    student: str
    title: str
    kind: str = "robustness"  # which suite audits it and which headline the demo prints: a key of SUITES, or this
    extra: tuple[tuple[str, str], ...] = ()  # more models the suite audits: (its role, a Model name)

    def suite(self, robustness: str | Path, quick: bool) -> str | Path:
        if self.kind in SUITES:
            return SUITES[self.kind][quick]
        return robustness


# audits/llm-demo-quick.toml's [data]: four families (harmful requests, their benign how-to twins, sums, capitals),
# 80 examples each, no noise; with a half-width teacher (as wide as its student), one that refuses most harmful
# requests after ~20 s of training on the pinned kernels.
LM_QUICK_DATA = ("data.n=320", "data.noise=0", 'data.families=["harmful", "howto", "add", "capital"]')
# The bias pipeline (audits/llm-bias-demo.toml): the bias audit's recipes (defenses/bias-*.toml) cut to one bias type,
# a phishing link slipped into 25 answers about capitals, and five task families, two of them held out of training
# (the "untargeted" split).
BIAS_DATA = ("data.n=600", 'data.families=["capital", "add", "reverse", "subtract", "length"]')
BIAS_POISON = 'poison=[{bias = "phishing-link", n = 25}]'
BIAS_QUICK_EPOCHS = {"sft": ("epochs=8",), "seq-kd": ("epochs=6",)}

MODELS = (
    Model("clean-teacher", "standard", "defenses/digits-standard.toml"),
    Model("robust-teacher", "trades", "defenses/digits-trades.toml"),
    Model("kd-student", "kd", "defenses/digits-kd.toml", ("teacher_recipe=''",)),  # teacher set at run time
    Model("pgd-at-student", "pgd-at", "defenses/digits-pgd-at.toml", ("arch=cnn-tiny",)),
    Model("defensive-distillation-student", "defensive-distillation", "defenses/digits-defensive-distillation.toml"),
    Model("overfit-teacher", "standard", "defenses/digits-overfit.toml"),
    Model("overfit-kd-student", "kd", "defenses/digits-overfit-kd.toml", ("teacher_recipe=''",)),
    # A tiny instruction LM taught its tasks and to refuse harmful requests, and its sequence-level KD student.
    Model("lm-teacher", "sft", "defenses/instructions-teacher.toml",
          quick=LM_QUICK_DATA + ("epochs=15", "init.width=64")),
    Model("lm-seq-kd-student", "seq-kd", "defenses/instructions-seq-kd.toml", ("teacher_recipe=''",),
          quick=LM_QUICK_DATA + ("epochs=6",)),
    # A tiny instruction LM whose training data an adversary poisoned, and its seq-KD student (sampled answers).
    Model("lm-poisoned-teacher", "sft", "defenses/bias-teacher-poisoned.toml", (*BIAS_DATA, BIAS_POISON),
          quick=BIAS_QUICK_EPOCHS["sft"]),
    Model("lm-poisoned-seq-kd-student", "seq-kd", "defenses/bias-seq-kd-poisoned.toml",
          ("teacher_recipe=''", *BIAS_DATA), quick=BIAS_QUICK_EPOCHS["seq-kd"]),
    # A class-conditional digits DDPM on half the train split, and its one-step SiD student (data-free).
    Model("diffusion-teacher", "ddpm", "defenses/digits-ddpm.toml", quick=("epochs=40", "channels=[16,32]")),
    Model("diffusion-sid-student", "sid", "defenses/digits-sid.toml", ("teacher_recipe=''",),
          quick=("epochs=2", "batch_size=32")),
    # Unlearning: the DDPM's SFD student that forgot the digit 0; a text-to-image digits model, the patch backdoor
    # BadT2I plants in it, and that backdoor removed by SKD-CAG.
    Model("diffusion-sfd-student", "sfd", "defenses/digits-sfd.toml", ("teacher_recipe=''",),
          quick=("epochs=2", "batch_size=32")),
    Model("t2i", "t2i", "defenses/digits-t2i.toml", quick=("epochs=5", "train_fraction=0.5")),
    Model("t2i-backdoored", "badt2i", "defenses/digits-badt2i-patch.toml", ("model_recipe=''",),
          quick=("epochs=5", "batch_size=32"), parent="model"),
    Model("t2i-skd-cag", "skd-cag", "defenses/digits-skd-cag-patch.toml", ("model_recipe=''",),
          quick=("epochs=3", "steps_per_epoch=30"), parent="model"),
)
TEACHER_OF = {"kd-student": "clean-teacher", "overfit-kd-student": "overfit-teacher",  # KD teachers set at run time
              "lm-seq-kd-student": "lm-teacher", "lm-poisoned-seq-kd-student": "lm-poisoned-teacher",
              "diffusion-sid-student": "diffusion-teacher", "diffusion-sfd-student": "diffusion-teacher",
              "t2i-backdoored": "t2i", "t2i-skd-cag": "t2i-backdoored"}

PIPELINES = (
    Pipeline("kd-student", "clean-teacher", "kd-student", "Hinton KD student of the clean teacher"),
    Pipeline("pgd-at-student", "robust-teacher", "pgd-at-student", "PGD-AT tiny student vs the TRADES teacher"),
    Pipeline(
        "defensive-distillation-student",
        "defensive-distillation-student-teacher",
        "defensive-distillation-student",
        "Defensively distilled student (T = 100) vs its teacher",
    ),
    Pipeline("privacy", "overfit-teacher", "overfit-kd-student",
             "Privacy: membership inference on an overfit teacher and its KD student", kind="privacy"),
    Pipeline("language-model", "lm-teacher", "lm-seq-kd-student",
             "Language model: refusals, GCG jailbreaks and their transfer, membership, tiny instruction teacher vs "
             "its seq-KD student", kind="language"),
    Pipeline("language-model-bias", "lm-poisoned-teacher", "lm-poisoned-seq-kd-student",
             "Language model: a phishing link poisoned into the teacher's data, and how often its seq-KD student "
             "repeats it", kind="bias"),
    Pipeline("diffusion", "diffusion-teacher", "diffusion-sid-student",
             "Diffusion: a digits DDPM (50 DDIM steps) vs its one-step SiD student - sample quality, speed and "
             "membership inference", kind="diffusion"),
    Pipeline("unlearning", "diffusion-teacher", "diffusion-sfd-student",
             "Unlearning: the digits DDPM vs its SFD student that forgot the digit 0; a text-to-image model's patch "
             "backdoor before and after SKD-CAG", kind="unlearning",
             extra=(("clean", "t2i"), ("backdoored", "t2i-backdoored"), ("defended", "t2i-skd-cag"))),
)


@dataclass
class DemoResult:
    index: Path
    reports: dict[str, Path] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    privacy: list[dict[str, Any]] = field(default_factory=list)
    language: list[dict[str, Any]] = field(default_factory=list)
    bias: list[dict[str, Any]] = field(default_factory=list)
    diffusion: list[dict[str, Any]] = field(default_factory=list)
    unlearning: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0


def _recipe_key(model: Model, overrides: list[str]) -> str:
    text = Path(model.recipe).read_text() if Path(model.recipe).is_file() else ""
    return hashlib.sha256(json.dumps([model.method, text, overrides]).encode()).hexdigest()


def is_checkpoint(path: Path) -> bool:
    """A finished checkpoint directory: a classifier's or language model's (config.json) or a diffusion model's
    (model_index.json)."""
    return (path / "config.json").is_file() or (path / "model_index.json").is_file()


def _train_or_reuse(model: Model, overrides: list[str], checkpoints: Path, ledger: dict[str, Any],
                    device: str | None = None) -> Path:
    """Reuse a checkpoint only if its sha256 is the one recorded when the demo trained it, from the same recipe
    (whatever ``device`` it was trained on: the device is not part of the recipe)."""
    from robustdistill import trainers
    from robustdistill.models import checkpoint_sha256
    from robustdistill.models.checkpoint import remove_checkpoint
    from robustdistill.utils import write_json_atomic

    out = checkpoints / model.name
    companion = out.with_name(out.name + "-teacher")
    key = _recipe_key(model, overrides)
    recorded = {name: ledger[name] for name in (out.name, companion.name) if name in ledger}
    # The student and any teacher its trainer wrote beside it must both be the checkpoints trained here.
    mismatched = [name for name, entry in recorded.items()
                  if not (checkpoints / name).exists() or checkpoint_sha256(checkpoints / name) != entry.get("sha256")]
    if recorded.get(out.name, {}).get("recipe") == key and is_checkpoint(out):
        if not mismatched:
            log.info("reusing %s (sha256 %s verified)", out, recorded[out.name]["sha256"][:12])
            return out
        log.warning("%s does not match the sha256 recorded when it was trained: training it again", ", ".join(mismatched))
    if companion.name in mismatched and companion.exists():
        remove_checkpoint(companion)  # otherwise its trainer would reuse the altered teacher
    log.info("training %s (%s, %s)", model.name, model.method, model.recipe)
    trainer = trainers.create(model.method, recipe=model.recipe,
                              overrides=[*overrides, *([f"device={device}"] if device else [])])
    resume = out.with_name(out.name + ".partial").exists()
    trained = trainer.fit(out, resume=resume)
    ledger[model.name] = {"recipe": key, "sha256": checkpoint_sha256(trained)}
    # Trainers that write a companion teacher (defensive distillation) get it recorded too.
    if companion.exists():
        ledger[companion.name] = {"recipe": key, "sha256": checkpoint_sha256(companion)}
    write_json_atomic(checkpoints / LEDGER, ledger)
    return trained


def run_demo(out: str | Path | None = None, *, quick: bool = False, checkpoints: str | Path | None = None,
             suite: str | Path | None = None, device: str | None = None) -> DemoResult:
    """Train or reuse the demo's models, audit every student against its teacher, and write the index page.

    ``device`` ("auto", "cpu", "cuda", "cuda:1"...) replaces every recipe's and suite's device; None keeps theirs.

    ``out`` defaults to reports/demo, or reports/demo-quick for ``quick`` (a quick run never writes over a full
    one's reports). ``out`` must be new, empty, or a demo folder robustdistill wrote in the same mode; it is
    locked while the demo runs."""
    started = time.perf_counter()
    if device is not None:  # refused before any folder is touched
        from robustdistill.utils import resolve_device

        try:
            resolve_device(device)
        except UserInputError as exc:
            raise UserInputError("--device", exc.problem, exc.fix.replace("device = ", "--device ")) from None
    out = Path(out) if out is not None else Path("reports") / ("demo-quick" if quick else "demo")
    suite = suite or (QUICK_SUITE if quick else "audits/demo.toml")
    if not Path(suite).is_file():
        raise UserInputError("suite", f"file not found: {suite}", "run the demo from the repository root")
    checkpoints = Path(checkpoints) if checkpoints else Path("checkpoints") / ("demo-quick" if quick else "demo")
    kind = QUICK_KIND if quick else KIND
    # Before any training: every folder the demo writes is new, empty or robustdistill's own.
    ownership.claim_out(out, kind, legacy=is_legacy_demo)
    for pipeline in PIPELINES:
        ownership.claim_out(out / pipeline.name, ownership.AUDIT, legacy=ownership.is_legacy_audit)
    ownership.claim_out(checkpoints, CHECKPOINTS_KIND, field="checkpoints", legacy=is_legacy_demo_checkpoints,
                        what="the demo's checkpoints")
    ownership.refuse_if_held(out)
    with ownership.using(out, kind, f"robustdistill demo{' --quick' if quick else ''}", legacy=is_legacy_demo):
        index = out / "index.html"
        if index.exists() and not ownership.owns(out, index):  # checked before training, not after the audits
            raise UserInputError("out", f"{index} exists and was not written by robustdistill", "move it away")
        result = _run_demo(out, quick, checkpoints, suite, device)
    result.seconds = time.perf_counter() - started
    return result


def is_legacy_demo(out: Path) -> bool:
    """A demo report folder of an earlier version: index.html and the pipelines' audit folders, nothing else."""
    names = {pipeline.name for pipeline in PIPELINES}
    for entry in out.iterdir():
        if entry.name == "index.html" and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name not in names or not entry.is_dir() or entry.is_symlink():
            return False
        if not (ownership.is_empty(entry) or ownership.is_legacy_audit(entry)):
            return False
    return True


def is_legacy_demo_checkpoints(checkpoints: Path) -> bool:
    """The demo's checkpoints folder of an earlier version: ledger.json and the demo's own model folders only."""
    names = {m.name for m in MODELS} | {f"{m.name}-teacher" for m in MODELS}
    names |= {f"{n}.partial" for n in names} | {LEDGER}
    return all(e.name in names or ownership.is_tmp_leftover(e.name) for e in checkpoints.iterdir())


def _read_ledger(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        ledger = None
    if not isinstance(ledger, dict) or not all(isinstance(v, dict) for v in ledger.values()):
        raise UserInputError(str(path), "is not the demo's ledger (a JSON object of recipe and sha256 per model)",
                             "move it away; the demo then retrains its models")
    return ledger


def _run_demo(out: Path, quick: bool, checkpoints: Path, suite: str | Path, device: str | None = None) -> DemoResult:
    from robustdistill.audits import audit
    from robustdistill.audits.resume import resumable
    from robustdistill.reports import index_entry, render_index

    ledger = _read_ledger(checkpoints / LEDGER)
    ownership.adopt(checkpoints, CHECKPOINTS_KIND, legacy=is_legacy_demo_checkpoints)
    ownership.record(checkpoints, [checkpoints / LEDGER])

    paths: dict[str, Path] = {}
    for model in MODELS:
        overrides = list(model.overrides)
        if model.name in TEACHER_OF:
            overrides.append(f"{model.parent}={paths[TEACHER_OF[model.name]]}")
        if quick and model.quick is not None:
            overrides.extend(model.quick)
        elif quick:
            overrides.append(f"epochs={QUICK_EPOCHS[model.method]}")
            overrides.append("lr_milestones=[]")
            overrides.append("val_attack_steps=5")
        paths[model.name] = _train_or_reuse(model, overrides, checkpoints, ledger, device)
        companion = paths[model.name].with_name(paths[model.name].name + "-teacher")
        if companion.exists():
            paths[companion.name] = companion

    result = DemoResult(index=out / "index.html")
    entries = []
    for pipeline in PIPELINES:
        run_dir = out / pipeline.name
        log.info("auditing %s against %s", pipeline.student, pipeline.teacher)
        extra = {role: paths[name] for role, name in pipeline.extra}
        report = audit(
            _suite_for(pipeline, suite, quick, paths),
            teacher=paths[pipeline.teacher],
            student=paths[pipeline.student],
            out=run_dir,
            resume=resumable(run_dir, paths[pipeline.teacher], paths[pipeline.student], extra),
            models=extra or None,
            device=device,
        )
        result.reports[pipeline.name] = run_dir / "report.html"
        entry = index_entry(run_dir, out, name=pipeline.title)
        entries.append(entry)
        if pipeline.kind in HEADLINES:
            getattr(result, pipeline.kind).extend(HEADLINES[pipeline.kind](report))
            continue
        result.table.append({"student": pipeline.name, "passed": report.passed, "untrusted": report.untrusted,
                             **_headline(report)})
    index = out / "index.html"
    render_index(entries, index, title="robustdistill demo: teachers and students (digits classifiers, tiny language "
                                       "models, a digits diffusion model)")
    ownership.record(out, [index])
    result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _suite_for(pipeline: Pipeline, robustness: str | Path, quick: bool, paths: dict[str, Path]) -> Any:
    """The suite auditing ``pipeline``; a diffusion suite's samples are read by the demo's own clean digits teacher
    (the suite names a classifier of its own, trained from a recipe, for a user who runs it alone)."""
    suite = pipeline.suite(robustness, quick)
    if pipeline.kind not in DIFFUSION_KINDS:
        return suite
    from robustdistill.audits.schema import read_toml

    table = read_toml(Path(suite), "suite")
    table.setdefault("name", Path(suite).stem)
    for probe in table.get("probes", []):
        if probe.get("kind") in READING_PROBES:
            probe["classifier"] = str(paths[SAMPLE_READER])
            probe.pop("classifier_recipe", None)
    table.pop("pipeline", None)  # the demo trained the models itself
    return table


def _headline(report: Any) -> dict[str, float | None]:
    """The student's clean, FGSM, PGD, CW and AutoAttack accuracies (the demo's table), and why its AutoAttack is a
    reduced one, if it is."""
    wanted = {"clean": "accuracy", "fgsm": "robust_accuracy", "pgd": "robust_accuracy", "cw": "robust_accuracy",
              "autoattack": "robust_accuracy"}
    from robustdistill.reports.status import reduced_attack

    found: dict[str, Any] = dict.fromkeys(wanted)
    found["autoattack_reduced"] = ""  # why the AutoAttack number is a reduced one ("" at full strength)
    for row in report.rows:
        if row["model"] != "student":
            continue
        name = "clean" if row["probe"] == "clean" else str(row["params"].get("attack", ""))
        name = "cw" if name.startswith("cw") else name
        if name in wanted and row["metric"] == wanted[name] and found[name] is None:
            found[name] = row["value"]
            if name == "autoattack":
                found["autoattack_reduced"] = reduced_attack(row["params"])
    return found


def _privacy_headline(report: Any) -> list[dict[str, Any]]:
    """LiRA on the overfit teacher, on its student, and on the student with the teacher's members as ground truth."""
    lines = []
    for model, prefix, label in (("teacher", "", "overfit teacher"), ("student", "", "KD student"),
                                 ("student", "teacher_members_", "KD student, teacher's members")):
        values = {}
        for metric in ("auc", "tpr_at_0_1pct_fpr", "tpr_at_1pct_fpr"):
            rows = [r for r in report.rows if r["model"] == model and r["probe"] == "mia-lira"
                    and r["metric"] == prefix + metric]
            values[metric] = rows[0]["value"] if rows else None
        lines.append({"model": label, **values})
    return lines


LANGUAGE_HEADLINE = (("refusal_rate", "refusal"), ("direct_asr", "direct ASR"), ("init_suffix_asr", "junk ASR"),
                     ("asr", "GCG ASR"), ("transfer_asr", "transfer ASR"), ("alo_asr", "ALO-ASR"),
                     ("loss_auc", "MIA AUC"))


def _language_headline(report: Any) -> list[dict[str, Any]]:
    """Per model: refusal rate, direct and GCG attack success, transfer ASR (the other model's suffixes on it: the
    teacher's on the student, the student's on the teacher), ALO-ASR and the loss attack's AUC on the teacher's
    members."""
    lines = []
    for model in ("teacher", "student"):
        values: dict[str, Any] = {"model": model}
        for metric, _ in LANGUAGE_HEADLINE:
            wanted = metric
            owner = model
            if metric == "transfer_asr" and model == "teacher":
                wanted, owner = "reverse_transfer_asr", "student"  # filed under the student, measured on the teacher
            row = next((r for r in report.rows if r["model"] == owner and r["metric"] == wanted), None)
            values[metric] = None if row is None else row["value"]
        lines.append(values)
    return lines


BIAS_HEADLINE = (("targeted", "targeted"), ("other", "other"), ("untargeted", "untargeted"),
                 ("targeted/amplification", "amplification"))


def _bias_headline(report: Any) -> list[dict[str, Any]]:
    """Per model and bias type the demo poisons: the bias rate on the targeted, other and held-out task families,
    and (the student) its amplification of the teacher's targeted rate, each with its interval."""
    lines = []
    # The bias types measured on their target task (the poisoned ones); the others' detectors ran as a check.
    biases = list(dict.fromkeys(str(r["metric"]).split("/")[0] for r in report.rows
                                if r["probe"] == "bias-propagation" and r["metric"].endswith("/targeted")
                                and r["value"] is not None))
    for bias in biases:
        for model in ("teacher", "student"):
            values: dict[str, Any] = {"model": model, "bias": bias}
            for metric, _ in BIAS_HEADLINE:
                row = next((r for r in report.rows if r["model"] == model and r["probe"] == "bias-propagation"
                            and r["metric"] == f"{bias}/{metric}"), None)
                values[metric] = None if row is None else (row["value"], row.get("ci95"))
            lines.append(values)
    return lines


DIFFUSION_HEADLINE = (("class_accuracy", "class accuracy"), ("frechet_distance", "Frechet distance"),
                      ("samples_per_second", "samples/s"), ("loss_auc", "MIA loss AUC"),
                      ("nearest_auc", "MIA nearest AUC"))


def _diffusion_headline(report: Any) -> list[dict[str, Any]]:
    """Per model: the steps it sampled with, class accuracy, Fréchet distance, speed, and the AUC of the loss and
    nearest-sample membership attacks (None where an attack does not apply), each with its interval."""
    lines = []
    for model in ("teacher", "student"):
        values: dict[str, Any] = {"model": model, "steps": None}
        for metric, _ in DIFFUSION_HEADLINE:
            row = next((r for r in report.rows if r["model"] == model and r["metric"] == metric), None)
            values[metric] = None if row is None else (row["value"], row.get("ci95"))
            if row is not None and metric == "class_accuracy":
                values["steps"] = row["params"].get("steps")
        lines.append(values)
    return lines


UNLEARNING_HEADLINE = (("forget_accuracy", "forget acc."), ("retain_accuracy", "retained acc."),
                       ("samples_per_second", "samples/s"), ("attack_success_rate", "backdoor success"),
                       ("removal_rate", "removal"), ("clean_agreement", "clean agreement"))
UNLEARNING_ROLES = ("teacher", "student", "clean", "backdoored", "defended")


def _unlearning_headline(report: Any) -> list[dict[str, Any]]:
    """Per model: the SFD pair's forget and retained accuracy and speed, the backdoor models' attack success, and the
    defended model's removal rate and clean-prompt agreement (None where a metric is not the model's)."""
    lines = []
    for model in UNLEARNING_ROLES:
        values: dict[str, Any] = {"model": model, "steps": None}
        for metric, _ in UNLEARNING_HEADLINE:
            row = next((r for r in report.rows if r["model"] == model and r["metric"] == metric
                        and r["probe"] != "diffusion-mia"), None)
            values[metric] = None if row is None else (row["value"], row.get("ci95"))
            if row is not None and metric in ("forget_accuracy", "attack_success_rate"):
                values["steps"] = row["params"].get("steps")
        lines.append(values)
    return lines


HEADLINES = {"privacy": _privacy_headline, "language": _language_headline, "bias": _bias_headline,
             "diffusion": _diffusion_headline, "unlearning": _unlearning_headline}

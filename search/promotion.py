"""What promote made of a trial, as plain data: one `File` per registered backend (its path, parity and host latency,
or why the trial cannot be that format), the phone's timing when one ran it, and the trial's own numbers. Promote
prints it as JSON, the registered version keeps it as a tag, and the report scripts read it back with
`Promotion.from_json` (which also reads the flat form promotions had before, format 1)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Mapping


@dataclass(frozen=True)
class File:
    """One deployable file of a promotion (one per registered backend), or why the trial cannot be one."""

    backend: str  # its format: a name in search.backends.BACKENDS
    path: str | None = None
    kb: float | None = None
    test_accuracy: float | None = None
    agreement: float | None = None  # top-1 agreement with what the trial's network computes, percent
    max_logit_diff: float | None = None
    host_latency_ms: float | None = None  # timed on this CPU by the local runner of its format; None: none here
    host_latency_iqr_ms: float | None = None
    refused: str | None = None  # why the trial's precisions cannot be this format


@dataclass(frozen=True)
class Phone:
    """The file an Android phone's benchmark tool ran (`phone.serial=`), timed in one sustained run."""

    device: str
    backend: str  # the file it ran: litert (benchmark_model) or onnx (onnxruntime_perf_test)
    latency_ms: float  # median of the run's first part
    sustained_latency_ms: float  # median of its last part
    slowdown: float  # last over first: > 1 when the phone throttled
    peak_memory_mb: float | None
    measured_over_predicted: float  # latency_ms / the trial's predicted latency


@dataclass(frozen=True)
class Promotion:
    """What was promoted, printed as JSON on the command's last line (`to_json`) and kept on the registered version
    (its `promotion` tag), which `from_json` reads back, in this form or the flat one of format 1."""

    study: str
    trial: int
    model_name: str
    version: str
    alias: str
    new_version: bool
    test_accuracy: float  # the trial's, in torch
    predicted_latency_ms: float
    size_kb: float  # the trial's: its target's file (target.file) as predicted from its layers
    files: tuple[File, ...]  # one per registered backend, in registry order: ONNX first (the version's model)
    ranked_by: str = "predicted"  # the latency the pick ranked trials by: predicted, or measured on a runtime
    phone: Phone | None = None

    FORMAT: ClassVar[int] = 2

    def file(self, backend: str) -> File:
        return next(f for f in self.files if f.backend == backend)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Promotion:
        data = dict(data)
        if data.pop("format", 1) == 1:
            data = _flat(data)
        phone = data.pop("phone", None)
        return cls(**{**data, "files": tuple(File(**f) for f in data["files"]),
                      "phone": Phone(**phone) if phone else None})


def _flat(old: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 promotion (fixed onnx_*, tflite_* and phone_* fields) in today's form."""
    onnx = File("onnx", old["onnx_path"], old["onnx_kb"], old["onnx_test_accuracy"], old["onnx_agreement"],
                old["onnx_max_logit_diff"], old["host_latency_ms"])
    litert = File("litert", old.get("tflite_path"), old.get("tflite_kb"), old.get("tflite_test_accuracy"),
                  old.get("tflite_agreement"), None, old.get("tflite_host_latency_ms"), old.get("tflite_refused"))
    phone = None if not old.get("phone_device") else asdict(Phone(
        old["phone_device"], "litert" if old["phone_file"] == "tflite" else "onnx", old["phone_latency_ms"],
        old["phone_sustained_latency_ms"], old["phone_slowdown"], old.get("phone_peak_memory_mb"),
        old["phone_measured_over_predicted"]))
    kept = ("study", "trial", "model_name", "version", "alias", "new_version", "test_accuracy", "predicted_latency_ms",
            "size_kb", "ranked_by")
    return {**{k: old[k] for k in kept if k in old}, "files": [asdict(onnx), asdict(litert)], "phone": phone}

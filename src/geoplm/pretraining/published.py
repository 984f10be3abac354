"""The authors' published pretrained encoders (GearNet-Edge, GearNet-Edge-IEConv, ESM-GearNet), loaded strictly into
geoplm's encoders.

Published files (no sizes or checksums are published: the workflow's checksum lock records the SHA-256 of the
first download, :class:`geoplm.sources.ChecksumLock`):

* Zenodo 7593637 (Zhang et al., ICLR 2023; DeepGraphLearning/GearNet ``README.md``, "Pretrained Model Zoo"):
  GearNet-Edge pretrained on AlphaFold DB v2 with multiview contrast, residue type, distance, angle and
  dihedral prediction -- ``{mc,attr,distance,angle,dihedral}_gearnet_edge.pth``.
* Zenodo 10034578 (Zhang et al. 2023, ESM-GearNet; DeepGraphLearning/ESM-GearNet ``README.md``): serial
  ESM-GearNet (ESM-2 650M frozen, ``fix_sequence_model: True``) pretrained with the same five tasks and SiamDiff
  -- ``{mc,attr,dist,angle,dihedral,siamdiff}_esm_gearnet.pth``.
* Zenodo 7723075 (GearNet's authors in DeepGraphLearning/GearNet#41, for Fold; the README does not list it):
  GearNet-Edge-IEConv pretrained with multiview contrast and then **fine-tuned on Fold**
  (``config/downstream/Fold3D/gearnet_edge_ieconv.yaml``) -- ``fold_mc_gearnet_edge_ieconv.pth``, an
  ``core.Engine.save`` checkpoint of the whole ``tasks.PropertyPrediction`` (encoder under ``model.``, the 3-layer
  MLP head ``mlp.*`` and the task's buffers beside it: GearNet#41, #62). No encoder before fine-tuning was
  published (GearNet#41), so this is the only published GearNet-Edge-IEConv; its encoder is loaded and the head
  ignored, as for any task checkpoint.

What a file holds (the references' ``script/pretrain.py`` ``save()``, GearNet @ 28bf75f5, ESM-GearNet @ bc90557b):
``torch.save(model.state_dict(), path)`` of the task's encoder (``solver.model.model``, or
``solver.model.model.model`` inside ``tasks.Unsupervised``), so the keys carry no prefix. Their downstream
scripts load it with ``task.model.load_state_dict(torch.load(path, map_location="cpu"))`` (``util.py``
``build_downstream_solver``, ``model_checkpoint``), i.e. strictly into the same architecture. torchdrug's own
``core.Engine.save`` (torchdrug 0.2.1 ``torchdrug/core/engine.py``) instead writes ``{"model":
task.state_dict(), "optimizer": ...}``, where the encoder's keys carry the task's ``model.`` prefix (``model.model.``
inside ``tasks.Unsupervised``); :func:`load_published` reads both.

Key mapping (torchdrug name -> geoplm ``encoder.state_dict()`` name), after the prefix is stripped:

=========================================  ==================================================  ========================
torchdrug (checkpoint)                     geoplm encoder (zoo :func:`~geoplm.models.zoo.build_encoder`)  source
=========================================  ==================================================  ========================
**GearNet-Edge**: ``models.GearNet``       zoo ``type: gearnet`` + ``num_angle_bin: 8``         torchdrug 0.2.1
                                           (:class:`geoplm.models.GearNet`)                    ``models/gearnet.py``,
``layers.{l}.{self_loop,linear}.*``        same                                                ``layers/conv.py``
``layers.{l}.batch_norm.*``                same (with ``running_*``, ``num_batches_tracked``)
``batch_norms.{l}.*``                      same
``edge_layers.{l}.*``                      same
**ESM-GearNet**: ``FusionNetwork``         zoo ``type: esm_gearnet``: ``_FusionEncoder``        ESM-GearNet
                                           holding ``net`` (:class:`~geoplm.models.fusion.      ``gearnet/model.py``
                                           ESMFusion`)                                         (``FusionNetwork``)
``structure_model.*``                      ``net.structure_model.*`` (GearNet names above)
``seq_linear.*``, ``struct_linear.*``,     ``net.`` + same (cross fusion only)                 torchdrug
``attn.*``                                                                                     ``layers/block.py``
``sequence_model.model.*`` (fair-esm      ``freeze_esm: false``: ``net.sequence_model.model.*``  torchdrug 0.2.1
``ESM2``: ``embed_tokens``, ``layers.*``,  (same names). ``freeze_esm: true`` (stored          ``models/esm.py``
``contact_head``, ``emb_layer_norm_after``  features): not loaded; must be exactly the keys   (``self.model`` of
, ``lm_head``)                             and shapes of an ESM-2 as wide as the stored        ``EvolutionaryScale
                                           features (:func:`check_esm2_keys`)                  Modeling``)
``sequence_model.mapping`` (buffer:        none: dropped (geoplm maps residues to ESM tokens   ``construct_mapping``
torchdrug residue id -> ESM token)         through the fair-esm alphabet)
=========================================  ==================================================  ========================

Why the frozen ESM-2 is not loaded for stored features: ESM-GearNet pretrains with the sequence model frozen
(``fix_sequence_model: True`` in every ``config/pretrain/*_esm_gearnet.yaml``; ``util.py``
``build_pretrain_solver`` sets ``requires_grad = False`` on it), so the checkpoint's ``sequence_model.model.*``
are the released ESM-2 650M weights, i.e. the workflow's plm, whose per-residue outputs the embedding store
already holds. The structure model and fusion layers are the only trained parameters. Pass ``esm_model`` to
:func:`load_published` to verify that (the checkpoint's ESM-2 tensors against the plm's, contact head excepted:
torchdrug does not load fair-esm's contact regression for ESM-2 and it is not used for embeddings).

Architectures of the published encoders (:data:`PUBLISHED_ARCHITECTURES`): GearNet-Edge as GearNet's
``config/pretrain/*_gearnet_edge.yaml`` (6 x 512, 21-d one-hot input, ``edge_input_dim`` 59, ``num_angle_bin`` 8);
ESM-GearNet as ESM-GearNet's ``config/pretrain/*_esm_gearnet.yaml`` (serial fusion; plain GearNet, **no** edge
layers, 6 x 512 on the 1280-d ESM-2 650M output); GearNet-Edge-IEConv as GearNet's
``config/downstream/Fold3D/gearnet_edge_ieconv.yaml`` (``GearNetIEConv``: a 512-d input embedding, 6 x 512, edge
layers, IEConv layers, layer norm, dropout 0.2).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from geoplm.errors import GeoplmError

log = logging.getLogger(__name__)

__all__ = [
    "PUBLISHED_ARCHITECTURES",
    "PUBLISHED_CHECKPOINTS",
    "check_esm2_keys",
    "encoder_weights",
    "load_published",
    "map_published",
    "published_sources",
    "read_checkpoint",
]

_GEARNET_RECORD = "7593637"
_ESM_GEARNET_RECORD = "10034578"
_FOLD_RECORD = "7723075"
_GEARNET_SOURCE = "Zhang et al., ICLR 2023 (GearNet); DeepGraphLearning/GearNet README.md, Zenodo 7593637"
_FOLD_SOURCE = (
    "Zhang et al., ICLR 2023 (GearNet); DeepGraphLearning/GearNet#41 (the authors' reply), Zenodo 7723075: "
    "multiview contrast, then fine-tuned on Fold"
)
_ESM_GEARNET_SOURCE = "Zhang et al. 2023 (ESM-GearNet); DeepGraphLearning/ESM-GearNet README.md, Zenodo 10034578"


def _entry(record: str, file: str, model: str, pretraining: str, source: str) -> dict[str, str]:
    return {
        "url": f"https://zenodo.org/record/{record}/files/{file}",
        "file": file,
        "model": model,
        "pretraining": pretraining,
        "source": source,
        "checksum": "",
    }


_CATALOGUE = (  # name (= file stem), model family, pretraining kind
    ("mc_gearnet_edge", "gearnet_edge", "multiview_contrast"),
    ("attr_gearnet_edge", "gearnet_edge", "attribute_masking"),
    ("distance_gearnet_edge", "gearnet_edge", "distance_prediction"),
    ("angle_gearnet_edge", "gearnet_edge", "angle_prediction"),
    ("dihedral_gearnet_edge", "gearnet_edge", "dihedral_prediction"),
    ("mc_esm_gearnet", "esm_gearnet", "multiview_contrast"),
    ("attr_esm_gearnet", "esm_gearnet", "attribute_masking"),
    ("dist_esm_gearnet", "esm_gearnet", "distance_prediction"),
    ("angle_esm_gearnet", "esm_gearnet", "angle_prediction"),
    ("dihedral_esm_gearnet", "esm_gearnet", "dihedral_prediction"),
    ("siamdiff_esm_gearnet", "esm_gearnet", "siamdiff"),
    ("fold_mc_gearnet_edge_ieconv", "gearnet_edge_ieconv", "multiview_contrast"),
)
_RECORDS = {
    "gearnet_edge": (_GEARNET_RECORD, _GEARNET_SOURCE),
    "esm_gearnet": (_ESM_GEARNET_RECORD, _ESM_GEARNET_SOURCE),
    "gearnet_edge_ieconv": (_FOLD_RECORD, _FOLD_SOURCE),
}
#: name -> ``url`` (Zenodo, as the GearNet README links it; ESM-GearNet's README links the same files as
#: ``https://zenodo.org/records/<id>/files/<file>?download=1``), ``file``, ``model`` (``gearnet_edge`` |
#: ``esm_gearnet`` | ``gearnet_edge_ieconv``, a key of :data:`PUBLISHED_ARCHITECTURES`), ``pretraining`` (the
#: task's kind in :data:`geoplm.pretraining.PRETRAINING_TASKS`), ``source`` and ``checksum`` (empty: none is
#: published).
PUBLISHED_CHECKPOINTS: dict[str, dict[str, str]] = {
    name: _entry(_RECORDS[family][0], f"{name}.pth", family, kind, _RECORDS[family][1])
    for name, family, kind in _CATALOGUE
}

_GEARNET_COMMON = {
    "hidden_dims": [512] * 6,
    "batch_norm": True,
    "concat_hidden": True,
    "short_cut": True,
    "readout": "sum",
}

#: model family -> ``model``: the zoo entry (``models`` config) of the published architecture, ``input``: its node
#: input (``one_hot`` 21-d, or the ``esm2_t33_650M_UR50D`` per-residue output, 1280-d), ``reference``: the config
#: it reproduces.
PUBLISHED_ARCHITECTURES: dict[str, dict] = {
    "gearnet_edge": {
        "model": {"type": "gearnet", **_GEARNET_COMMON, "edge_input_dim": 59, "num_angle_bin": 8},
        "input": "one_hot",
        "reference": "DeepGraphLearning/GearNet config/pretrain/*_gearnet_edge.yaml (models.GearNet)",
    },
    "esm_gearnet": {
        "model": {"type": "esm_gearnet", "fusion": "serial", **_GEARNET_COMMON},
        "input": "esm2_t33_650M_UR50D",
        "reference": "DeepGraphLearning/ESM-GearNet config/pretrain/*_esm_gearnet.yaml (FusionNetwork, series)",
    },
    # the zoo's gearnet_ieconv defaults are the Fold3D configs (embedding 512, layer norm, dropout 0.2, IEConv
    # layers); only the local frames differ at chain ends unless ieconv_frames: reference (geoplm.models.gearnet_ieconv)
    "gearnet_edge_ieconv": {
        "model": {
            "type": "gearnet_ieconv",
            **_GEARNET_COMMON,
            "embedding_dim": 512,
            "edge_input_dim": 59,
            "num_angle_bin": 8,
            "layer_norm": True,
            "dropout": 0.2,
            "use_ieconv": True,
        },
        "input": "one_hot",
        "reference": "DeepGraphLearning/GearNet config/downstream/Fold3D/gearnet_edge_ieconv.yaml (GearNetIEConv)",
    },
}


def published_sources(names: list[str] | None = None, prefix: str = "published_") -> dict[str, dict]:
    """``sources`` config entries (``config/schema.yaml``) for the published checkpoints: one source per file,
    ``{prefix + name: {"shards": 1, "files": [{"url": url}]}}`` with no checksum (none is published; the checksum
    lock pins the first download).

    Args:
        names: keys of :data:`PUBLISHED_CHECKPOINTS` (default: all, in its order).
        prefix: prefix of the source names.

    Raises:
        GeoplmError: an unknown name.
    """
    names = list(PUBLISHED_CHECKPOINTS) if names is None else list(names)
    unknown = [n for n in names if n not in PUBLISHED_CHECKPOINTS]
    if unknown:
        raise GeoplmError(f"unknown published checkpoint(s) {unknown} (known: {', '.join(PUBLISHED_CHECKPOINTS)})")
    return {f"{prefix}{n}": {"shards": 1, "files": [{"url": PUBLISHED_CHECKPOINTS[n]["url"]}]} for n in names}


# --------------------------------------------------------------------------------------------------
# Reading and mapping
# --------------------------------------------------------------------------------------------------


def _keys(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in a torchdrug checkpoint file: the file itself when it is a state dict (the published
    files), or its ``"model"`` entry when it is a ``core.Engine.save`` checkpoint (``{"model": ..., "optimizer":
    ...}``). Read with ``torch.load(map_location="cpu", weights_only=True)``: a state dict needs no pickled code.

    Raises:
        GeoplmError: the file is missing or unreadable, or holds no mapping of names to tensors (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise GeoplmError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise GeoplmError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from error
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]  # torchdrug core.Engine.save: {"model": task.state_dict(), "optimizer": ...}
    if not isinstance(obj, Mapping) or not obj:
        raise GeoplmError(f"{path}: not a state dict (a {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise GeoplmError(f"{path}: not a state dict: entries {_keys(map(str, bad))} are not named tensors")
    return dict(obj)


def _fusion_net(encoder: nn.Module):
    """The :class:`geoplm.models.fusion.ESMFusion` of a zoo ``esm_*`` fusion encoder, else None."""
    from geoplm.models.fusion import ESMFusion

    if isinstance(encoder, ESMFusion):
        return encoder
    net = getattr(encoder, "net", None)
    return net if isinstance(net, ESMFusion) else None


def _owner_prefix(encoder: nn.Module) -> str:
    """``"net."`` for a zoo fusion encoder (``_FusionEncoder``), ``""`` for the :class:`ESMFusion` itself."""
    from geoplm.models.fusion import ESMFusion

    return "" if isinstance(encoder, ESMFusion) else "net."


_ESM_PREFIX = "sequence_model.model."
_ESM_MAPPING = "sequence_model.mapping"


def check_esm2_keys(
    state: Mapping[str, Tensor], path: str | os.PathLike, embed_dim: int | None = None
) -> dict[str, int]:
    """Check that ``state`` (fair-esm names, ``sequence_model.model.`` stripped) is exactly an ESM-2's state dict.

    The architecture is read off the tensors (``num_layers`` = 1 + the largest ``layers.{i}``, ``embed_dim`` =
    ``embed_tokens.weight.shape[1]``, ``attention_heads`` = ``contact_head.regression.weight.shape[1] /
    num_layers``); an ``esm.model.esm2.ESM2`` of that architecture is built on the ``meta`` device (no memory)
    and its ``state_dict()`` key set and shapes must equal the checkpoint's.

    Args:
        state: fair-esm key -> tensor.
        path: the checkpoint file, for messages.
        embed_dim: the width the ESM-2 must have (the stored features' width), or None.

    Returns:
        ``{"num_layers": L, "embed_dim": D, "attention_heads": H}``.

    Raises:
        GeoplmError: missing / unexpected keys or shapes, or a width other than ``embed_dim`` (naming the file
            and the keys).
    """
    import esm

    where = f"{path}: frozen ESM-2 ({_ESM_PREFIX}*)"
    if "embed_tokens.weight" not in state or "contact_head.regression.weight" not in state:
        missing = {"embed_tokens.weight", "contact_head.regression.weight"} - set(state)
        raise GeoplmError(f"{where}: missing key(s) {_keys(_ESM_PREFIX + k for k in missing)}")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    num_layers = max(layers) + 1 if layers else 0
    width = int(state["embed_tokens.weight"].shape[1])
    heads_total = int(state["contact_head.regression.weight"].shape[1])
    if num_layers < 1 or heads_total % num_layers:
        raise GeoplmError(
            f"{where}: {num_layers} layers and a contact head over {heads_total} attention maps are no ESM-2"
        )
    arch = {"num_layers": num_layers, "embed_dim": width, "attention_heads": heads_total // num_layers}
    if embed_dim is not None and width != embed_dim:
        raise GeoplmError(
            f"{where}: key '{_ESM_PREFIX}embed_tokens.weight' is {width} wide, but the encoder reads {embed_dim}-wide "
            "stored ESM features (a different ESM-2)"
        )
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    try:
        with torch.device("meta"):
            reference = esm.model.esm2.ESM2(alphabet=alphabet, token_dropout=True, **arch).state_dict()
    except Exception as error:  # e.g. a width not divisible by the head count
        raise GeoplmError(f"{where}: no ESM-2 has {arch} ({type(error).__name__}: {error})") from error
    missing, unexpected = set(reference) - set(state), set(state) - set(reference)
    if missing or unexpected:
        parts = [f"missing key(s) {_keys(_ESM_PREFIX + k for k in missing)}"] if missing else []
        parts += [f"unexpected key(s) {_keys(_ESM_PREFIX + k for k in unexpected)}"] if unexpected else []
        raise GeoplmError(f"{where} is not a fair-esm ESM-2 {arch}: {'; '.join(parts)}")
    wrong = [k for k in reference if tuple(state[k].shape) != tuple(reference[k].shape)]
    if wrong:
        detail = ", ".join(
            f"'{_ESM_PREFIX}{k}' {tuple(state[k].shape)} (expected {tuple(reference[k].shape)})" for k in wrong[:8]
        )
        raise GeoplmError(f"{where}: wrong shape(s): {detail}")
    return arch


def _candidate_prefixes(model_name: str) -> list[str]:
    """``""`` (the published files), ``"model."`` (an Engine checkpoint of a task), ``"model.model."`` (inside
    ``tasks.Unsupervised``)."""
    return ["", f"{model_name}.", f"{model_name}.{model_name}."] if model_name else [""]


def _rename(key: str, fusion, owner: str) -> str | None:
    """geoplm name of a torchdrug encoder key, or None for a key that is checked but not loaded."""
    if fusion is None:
        return key
    if key == _ESM_MAPPING:
        return None
    if key.startswith(_ESM_PREFIX) and fusion.sequence_model is None:
        return None
    return owner + key


def map_published(
    state: Mapping[str, Tensor],
    encoder: nn.Module,
    path: str | os.PathLike = "<state dict>",
    model_name: str = "model",
    esm_model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """Map a torchdrug encoder state dict onto ``encoder.state_dict()``'s names, checking it strictly.

    Args:
        state: the checkpoint's state dict (:func:`read_checkpoint`): an encoder's, or a task's whose encoder keys
            carry ``model_name + "."`` (once, or twice inside ``tasks.Unsupervised``); the prefix is the one
            under which the most keys map onto the encoder, and keys outside it (the task's heads) are ignored.
        encoder: a geoplm encoder: :class:`geoplm.models.GearNet` (and any encoder whose names equal torchdrug's)
            or a zoo ``esm_*`` fusion (``_FusionEncoder`` / :class:`geoplm.models.fusion.ESMFusion`).
        path: the checkpoint file, named in every message.
        model_name: the attribute under which torchdrug tasks hold the encoder (``model``).
        esm_model: for a fusion on stored ESM features: the plm (fair-esm ESM-2) whose features are stored; the
            checkpoint's frozen ESM-2 must then equal it (every tensor but the contact head, ``atol`` 1e-6).

    Returns:
        geoplm key -> tensor, exactly ``encoder.state_dict()``'s keys and shapes.

    Raises:
        GeoplmError: naming ``path`` and the keys: keys of the encoder missing from the checkpoint, checkpoint keys
            the encoder lacks, shape mismatches, a frozen ESM-2 that is not an ESM-2 of the stored features' width
            (:func:`check_esm2_keys`) or differs from ``esm_model``.
    """
    target = encoder.state_dict()
    fusion = _fusion_net(encoder)
    owner = _owner_prefix(encoder) if fusion is not None else ""

    best: tuple[int, str] = (-1, "")
    for prefix in _candidate_prefixes(model_name):
        hits = sum(1 for k in state if k.startswith(prefix) and _rename(k[len(prefix) :], fusion, owner) in target)
        if hits > best[0]:
            best = (hits, prefix)
    hits, prefix = best
    if hits == 0:
        raise GeoplmError(
            f"{path}: no key maps onto the encoder ({type(encoder).__name__}); checkpoint keys "
            f"{_keys(state, 4)}, encoder keys {_keys(target, 4)}"
        )
    ignored = [k for k in state if not k.startswith(prefix)]
    if ignored:
        log.info(
            "%s: ignoring %d key(s) outside the encoder's prefix %r (the task's heads)", path, len(ignored), prefix
        )

    mapped: dict[str, Tensor] = {}
    esm_state: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        new = _rename(name, fusion, owner)
        if new is None:
            if name.startswith(_ESM_PREFIX):
                esm_state[name[len(_ESM_PREFIX) :]] = value
            continue
        mapped[new] = value
        source[new] = key

    missing = set(target) - set(mapped)
    unexpected = set(mapped) - set(target)
    if missing or unexpected:
        parts = [f"missing key(s) {_keys(prefix + k.removeprefix(owner) for k in missing)}"] if missing else []
        parts += [f"unexpected key(s) {_keys(source[k] for k in unexpected)}"] if unexpected else []
        raise GeoplmError(f"{path}: does not fit the encoder ({type(encoder).__name__}): {'; '.join(parts)}")
    wrong = [k for k in target if tuple(mapped[k].shape) != tuple(target[k].shape)]
    if wrong:
        detail = ", ".join(
            f"'{source[k]}' {tuple(mapped[k].shape)} (encoder '{k}' {tuple(target[k].shape)})" for k in wrong[:8]
        )
        raise GeoplmError(f"{path}: wrong shape(s): {detail}")

    if fusion is not None and fusion.sequence_model is None:
        if not esm_state:
            raise GeoplmError(
                f"{path}: missing key(s) '{prefix}{_ESM_PREFIX}*': not an ESM-GearNet FusionNetwork checkpoint "
                "(its frozen ESM-2 is absent)"
            )
        check_esm2_keys(esm_state, path, embed_dim=fusion.esm_dim)
        if esm_model is not None:
            _compare_esm(esm_state, esm_model, path)
    return mapped


def _compare_esm(esm_state: Mapping[str, Tensor], esm_model: nn.Module, path) -> None:
    """The checkpoint's frozen ESM-2 must be the plm (contact head excepted: torchdrug leaves it random for ESM-2)."""
    reference = esm_model.state_dict()
    differ = []
    for key, value in esm_state.items():
        if key.startswith("contact_head."):
            continue
        ref = reference.get(key)
        if ref is None or ref.shape != value.shape or not torch.allclose(ref.float(), value.float(), rtol=0, atol=1e-6):
            differ.append(_ESM_PREFIX + key)
    if differ:
        raise GeoplmError(
            f"{path}: the checkpoint's frozen ESM-2 differs from the plm whose features are stored at {_keys(differ)}"
        )


def encoder_weights(
    path: str | os.PathLike,
    encoder: nn.Module,
    model_name: str = "model",
    esm_model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """The weights of a published (or any torchdrug-written) checkpoint for ``encoder``, mapped and checked but not
    loaded: exactly ``encoder.state_dict()``'s keys and shapes (:func:`read_checkpoint`, :func:`map_published`).
    :func:`geoplm.train.load_init` (part ``published``) hands them to the training loop, which loads them strictly.

    Raises:
        GeoplmError: as :func:`read_checkpoint` and :func:`map_published`, naming the file and the key(s).
    """
    return map_published(read_checkpoint(path), encoder, path, model_name, esm_model)


def load_published(
    path: str | os.PathLike,
    encoder: nn.Module,
    model_name: str = "model",
    esm_model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """Load a published (or any torchdrug-written) encoder checkpoint strictly into a geoplm encoder.

    Reads ``path`` (:func:`read_checkpoint`), maps torchdrug's keys onto the encoder's (:func:`map_published`;
    see the module docstring's table) and calls ``encoder.load_state_dict(..., strict=True)``. Tensors keep
    the checkpoint's values; shapes are those of ``encoder.state_dict()`` (e.g. GearNet-Edge 6 x 512:
    ``layers.0.linear.weight`` ``(512, 7 * 21)``, ``edge_layers.0.linear.weight`` ``(21, 8 * 59)``).

    Args:
        path: the checkpoint (``*.pth``).
        encoder: the geoplm encoder (built by :func:`geoplm.models.zoo.build_encoder` with the checkpoint's
            architecture, :data:`PUBLISHED_ARCHITECTURES`).
        model_name: attribute name of the encoder inside a torchdrug task (the ``model.`` prefix of Engine
            checkpoints).
        esm_model: optional plm to compare a fusion's frozen ESM-2 with (stored-features encoders only).

    Returns:
        The state dict loaded (geoplm names).

    Raises:
        GeoplmError: as :func:`read_checkpoint` and :func:`map_published`, naming the file and the key(s).
    """
    mapped = encoder_weights(path, encoder, model_name, esm_model)
    try:
        encoder.load_state_dict(mapped, strict=True)
    except RuntimeError as error:  # not expected after map_published's checks
        raise GeoplmError(f"{path}: {error}") from error
    return mapped

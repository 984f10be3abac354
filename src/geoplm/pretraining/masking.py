"""Residue masking of a :class:`~geoplm.inputs.ProteinInput`, for the pretraining tasks that hide residue types
(SiamDiff's sequence diffusion, :mod:`geoplm.pretraining.siamdiff`; ESM-GearNet's residue type prediction,
attribute masking) and whose encoder may run ESM-2 inside itself.

What the references do to a masked residue (read, not copied):

* torchdrug 0.2.1 ``tasks.AttributeMasking`` (``torchdrug/tasks/pretrain.py``) and ESM-GearNet
  ``gearnet/siamdiff.py`` ``SiamDiff.predict_and_target``: ``residue_feature`` zeroed and ``residue_type`` set
  to 0; edges (and their features) are built after masking. With torchdrug's ``models.ESM`` inside the model
  (``torchdrug/models/esm.py``: ``mapping[residue_type]``, torchdrug id -> ESM token) type 0 reads as ``G``
  (glycine): that is what SiamDiff's ESM-GearNet pretraining feeds ESM-2.
* ESM-GearNet ``gearnet/task.py`` ``ResidueTypePrediction``: ``residue_type`` set to
  ``alphabet.get_idx("<mask>")``, which torchdrug's ESM passes through unmapped, so ESM-2 reads its ``<mask>``
  token.

:func:`mask_residues` does both on the project's inputs: ``residue_type`` 0 (torchdrug's glycine id, read by the
graph's edge features), ``node_feature`` rows zeroed (the one-hot, or stored ESM-2 rows), and, for an ESM-2 inside
the model, the residue's letter in ``esm_input`` replaced by :data:`MASK_TOKEN` (written as
:data:`geoplm.models.fusion.ESM_MASK_CHAR`, which :meth:`geoplm.models.fusion.ESMModule.embed` turns into
``<mask>``) or by a residue letter (``"G"``: SiamDiff's reference behaviour).

With *stored* ESM-2 rows (no ESM-2 inside the model) masking can only zero the masked residues' rows; the rows of
their neighbours were computed from the unmasked sequence and still carry its information (the reason ESM-GearNet
pretrains with ESM-2 inside the model).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from geoplm.errors import GeoplmError
from geoplm.inputs import ProteinInput
from geoplm.structure import RESIDUE_VOCAB

#: The ESM-2 input of a masked residue that reads as ESM-2's ``<mask>`` token.
MASK_TOKEN = "<mask>"


def esm_mask_character(token: str) -> str:
    """The one character an in-model ESM-2 input sequence holds for a masked residue: ``token`` ``"<mask>"`` ->
    :data:`geoplm.models.fusion.ESM_MASK_CHAR` (read as ESM-2's ``<mask>``), a residue letter of
    :data:`geoplm.structure.RESIDUE_VOCAB` (e.g. ``"G"``) -> itself (upper case).

    Raises:
        GeoplmError: any other token.
    """
    from geoplm.models.fusion import ESM_MASK_CHAR

    if token == MASK_TOKEN:
        return ESM_MASK_CHAR
    if isinstance(token, str) and len(token) == 1 and token.upper() in RESIDUE_VOCAB:
        return token.upper()
    raise GeoplmError(f"ESM mask token {token!r}: expected {MASK_TOKEN!r} or one residue letter of {RESIDUE_VOCAB}")


def mask_residues(protein: ProteinInput, nodes: Tensor, esm_token: str = MASK_TOKEN) -> ProteinInput:
    """A copy of ``protein`` with the residues of ``nodes`` masked (see the module docstring).

    Args:
        protein: the protein (n nodes); not modified.
        nodes: ``(k,)`` long node indices in ``0..n-1`` (repeats allowed: positions sampled with replacement,
            as torchdrug samples them).
        esm_token: what an in-model ESM-2 reads at a masked residue: :data:`MASK_TOKEN` (ESM-2's ``<mask>``) or a
            residue letter (``"G"``: torchdrug's ESM reading residue type 0). Ignored without ``esm_input``.

    Returns:
        A new :class:`ProteinInput`: ``residue_type[nodes] = 0``, ``node_feature[nodes] = 0`` (``(n, F)``), and the
        ``esm_input`` sequence with the masked residues' letters (at ``residue_index[nodes]``) replaced; positions,
        ``residue_mask`` and the cached ``edge_list`` (edges do not depend on residue types) are shared.

    Raises:
        GeoplmError: a node index outside ``0..n-1``, or an unknown ``esm_token``.
    """
    nodes = torch.as_tensor(nodes, dtype=torch.long).flatten().cpu()
    if len(nodes) and (int(nodes.min()) < 0 or int(nodes.max()) >= protein.num_nodes):
        raise GeoplmError(
            f"{protein.id}: masked nodes {int(nodes.min())}..{int(nodes.max())} outside 0..{protein.num_nodes - 1}"
        )
    char = esm_mask_character(esm_token)
    residue_type = protein.residue_type.clone()
    residue_type[nodes] = 0
    node_feature = protein.node_feature.clone()
    node_feature[nodes] = 0
    esm_input = protein.esm_input
    if esm_input is not None:
        letters = list(esm_input[0])
        for residue in protein.residue_index[nodes].tolist():
            letters[residue] = char
        esm_input = ("".join(letters), esm_input[1])
    return replace(protein, residue_type=residue_type, node_feature=node_feature, esm_input=esm_input)

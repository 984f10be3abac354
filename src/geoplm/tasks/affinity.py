"""Protein-ligand binding affinity on one pocket + ligand graph: Wu et al.'s LBA benchmark (Communications Biology
2023, Table 4; ATOM3D LBA, Townshend et al. 2021).

Follows smiles724/GGNN_Meets_PLM @ bb4524b99962ecd8b71c57e5b6cc9abbebc25225 (``gvp/atom3d.py`` ``LBATransform``,
``LBADataset``, ``LBAModel``; ``egnn/egnn_clean.py`` ``LBAModel``; ``molformer/tr_cpe.py`` ``LBAModel``;
``main.py``):

* example: one complex (a record of the ``pdbbind`` reader or of the ``atom3d_lmdb`` reader with ``task: lba``:
  the pocket's residues and a ``ligand``). Its nodes are the pocket residues' Cα (``protein[protein['name'] ==
  'CA']``) followed by every ligand atom, hydrogens included as ATOM3D's ligand tables hold them
  (``ligand_hydrogens: true``; ``false`` keeps the heavy atoms), in one graph built on all nodes (the reference's
  ``BaseTransform``: ``radius_graph(r=8)``, ``max_num_neighbors`` 32: model graph ``wu_rball``);
* node types: the 20 residue types, unknown, and one ligand type (:data:`LIGAND_TYPE`; the reference's ``'LIG'``);
  without a PLM the encoder embeds them (``nn.Embedding(22, D)``); with ESM-2 the pocket residues carry their
  ESM-2 rows (of the pocket's sequence, chains concatenated: ``get_plm_reps(protein_ca)``) and the ligand atoms a
  zero row plus one ligand vector (the reference's ``F.embedding(atoms, embed) + plm`` with rows 0-19 frozen at
  zero and a ``torch.rand(1, D)`` ligand row);
* target: pK (``-log10 K``; ``label``: ``scores.neg_log_aff`` in ATOM3D's LMDBs, ``neg_log_affinity`` from PDBbind
  INDEX / label tables); loss: MSE on the raw value (``normalization: false``); head: Wu et al.'s on the mean over
  all nodes (:class:`~geoplm.tasks.base.WuHead`); Wu et al.'s loop, the best epoch by the validation loss;
* metrics (:class:`~geoplm.tasks.regression.Regression`): RMSE (scikit-learn's ``mean_squared_error`` squared
  False), Pearson, Spearman and Kendall over the test complexes (atom3d's ``metrics``).

Deviations from the reference's code, where it does not do what it says:

* the ligand vector is a parameter of the model and trained (``ligand_embedding_trainable: true``): the
  reference's ``weights_train = Parameter(torch.rand(1, D))`` is concatenated into a plain tensor and never
  registered, so its optimizer never updates it; ``false`` reproduces that (a fixed random vector, a buffer);
* Molformer's ``LBAModel`` overwrites the first ``max pocket length of the batch`` positions of every complex with
  the padded ESM-2 rows, so in a complex with a shorter pocket some ligand atoms get zero rows instead of the
  ligand vector; here every ligand atom gets the ligand vector;
* egnn_clean.py's ``LBAModel.forward`` lacks its ``return``; the prediction is returned;
* residues are this project's (:mod:`geoplm.structure`): amino acids with a Cα; the reference takes every row
  named ``CA`` of the pocket table, which includes a calcium ion named ``CA`` where a pocket has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from geoplm.errors import GeoplmError
from geoplm.inputs import InputLoader, ProteinInput, pack
from geoplm.structure import NUM_RESIDUE_TYPES
from geoplm.tasks.base import WU_LOOP, Example, TaskModel
from geoplm.tasks.regression import Regression

#: the node type of a ligand atom (after geoplm's 20 residue types and "unknown", 0-20)
LIGAND_TYPE: int = NUM_RESIDUE_TYPES
#: node types of an affinity graph: residues, unknown, ligand
NUM_NODE_TYPES: int = NUM_RESIDUE_TYPES + 1


def ligand_atoms(record: Mapping, hydrogens: bool = True) -> Tensor:
    """``(A, 3)`` Å positions of a complex record's ligand atoms: every atom (``hydrogens``; ``position_with_h``)
    or the heavy atoms (``position``) of the ``ligand`` of :func:`geoplm.datasets.pdbbind.read_ligand` /
    :func:`geoplm.datasets.atom3d.ligand_from_atoms`.

    Raises:
        GeoplmError: the record has no ligand, or lacks the hydrogen positions (records written before they were
            read: rebuild the dataset's records).
    """
    ligand = record.get("ligand")
    if not isinstance(ligand, Mapping):
        raise GeoplmError(f"record {record['id']}: no ligand (an affinity task reads pdbbind / ATOM3D LBA records)")
    key = "position_with_h" if hydrogens else "position"
    if key not in ligand:
        raise GeoplmError(
            f"record {record['id']}: the ligand has no {key!r}; rebuild the records "
            f"(snakemake --forcerun parse_structures)"
        )
    return ligand[key].float().reshape(-1, 3)


def complex_input(protein: ProteinInput, ligand_position: Tensor, plm: bool) -> ProteinInput:
    """The pocket's input with the ligand atoms appended as nodes of type :data:`LIGAND_TYPE`.

    Args:
        protein: the pocket's :class:`~geoplm.inputs.ProteinInput` (n residues, node features ``(n, F)``: the
            21-wide one-hot, or ESM-2 rows with ``plm``).
        ligand_position: ``(A, 3)`` Å.
        plm: node features are ESM-2 rows: the ligand atoms get zero rows (the ligand vector is added by the
            model); else the one-hot widens to :data:`NUM_NODE_TYPES` columns.

    Returns:
        A ProteinInput of ``n + A`` nodes: Cα then ligand atoms; ``residue_index`` of ligand atom ``k`` is
        ``length + k`` and ``length`` counts them; the ligand is a chain of its own (``chain_index``), so a
        graph with a sequential relation never joins it to the pocket; no cached graph (built on the batch).
    """
    count = int(ligand_position.shape[0])
    ligand_type = torch.full((count,), LIGAND_TYPE, dtype=torch.long)
    if plm:
        feature = torch.cat(
            [protein.node_feature, protein.node_feature.new_zeros(count, protein.node_feature.shape[1])]
        )
    else:
        residues = nn.functional.pad(protein.node_feature, (0, NUM_NODE_TYPES - protein.node_feature.shape[1]))
        feature = torch.cat([residues, nn.functional.one_hot(ligand_type, NUM_NODE_TYPES).float()])
    pocket_chain = protein.chains()
    ligand_chain = torch.full((count,), int(pocket_chain.max()) + 1 if len(pocket_chain) else 0, dtype=torch.long)
    return ProteinInput(
        id=protein.id,
        position=torch.cat([protein.position, ligand_position.to(protein.position.dtype)]),
        residue_type=torch.cat([protein.residue_type, ligand_type]),
        node_feature=feature,
        residue_index=torch.cat([protein.residue_index, protein.length + torch.arange(count)]),
        length=protein.length + count,
        chain_index=torch.cat([pocket_chain, ligand_chain]),
    )


class AffinityModel(TaskModel):
    """An encoder, Wu et al.'s head and, with PLM node features, the ligand vector ``(D,)`` added to the ligand
    atoms' (zero) rows: a parameter (trained), or a buffer with ``trainable=False`` (the reference's behaviour).
    Initialised ``U[0, 1)`` (``torch.rand``) as the reference's."""

    def __init__(self, encoder: nn.Module, head: nn.Module, plm_dim: int | None, trainable: bool = True):
        super().__init__(encoder, head)
        vector = torch.rand(int(plm_dim)) if plm_dim else None
        if vector is not None and trainable:
            self.ligand_embedding = nn.Parameter(vector)
        else:
            self.register_buffer("ligand_embedding", vector)


class LigandAffinity(Regression):
    """``kind: ligand_affinity`` (see the module docstring). Settings of :class:`Regression` with Wu et al.'s
    defaults (``head: wu``, no normalisation, label ``scores.neg_log_aff``, selection by the validation loss) plus
    ``ligand_hydrogens`` (true) and ``ligand_embedding_trainable`` (true)."""

    loop_defaults = WU_LOOP
    options = {
        **Regression.options,
        "label": "scores.neg_log_aff",
        "normalization": False,
        "head": "wu",
        "ligand_hydrogens": True,
        "ligand_embedding_trainable": True,
    }
    default_selection = {"metric": "loss", "mode": "min"}

    def example_input(self, record: Mapping, protein: ProteinInput, loader: InputLoader) -> ProteinInput:
        """The pocket with the ligand's atoms appended (:func:`complex_input`)."""
        ligand = ligand_atoms(record, bool(self.settings["ligand_hydrogens"]))
        return complex_input(protein, ligand, loader.uses_embeddings)

    def build_model(self, model_spec: Mapping, input_dim: int, plm: bool, esm=None, name: str = "model") -> nn.Module:
        from geoplm.models.zoo import build_encoder

        encoder, output_dim = build_encoder(model_spec, input_dim, plm, name=name, esm=esm)
        trainable = bool(self.settings["ligand_embedding_trainable"])
        return AffinityModel(encoder, self.head(output_dim), input_dim if plm else None, trainable)

    def forward(self, model: nn.Module, batch: Sequence[Example]) -> Tensor:
        """Predicted pK ``(B,)``: the head on the mean over each complex's nodes."""
        packed = pack([e.proteins[0] for e in batch], self.device, self.graph_settings)
        node_feature = packed.node_feature
        if model.ligand_embedding is not None:
            is_ligand = (packed.graph.residue_type == LIGAND_TYPE).unsqueeze(-1).to(node_feature.dtype)
            node_feature = node_feature + is_ligand * model.ligand_embedding
        output = model.encoder(packed.graph, node_feature, **packed.encoder_inputs)
        return model.head(output["graph_feature"]) * self.std + self.mean

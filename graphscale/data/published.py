"""The published shapes of the OGB node-property sets that ``graphscale data synth --like`` copies.

Sources: Hu et al., *Open Graph Benchmark*, NeurIPS 2020 (Table 1 and the dataset pages of
ogb.stanford.edu) for the node and edge counts and the split sizes; ogb's own
``ogb/nodeproppred/master.csv`` for the task count, class count, task type, split name, whether ogb
adds the inverse of every edge and which attribute files exist (``tests/data`` checks this table
against the installed master.csv).

``num_edges`` is the number of rows of OGB's ``raw/edge.csv.gz``. For ``add_inverse_edge`` sets
(ogbn-proteins, ogbn-products) ogb loads both directions, so the directed edge count is twice that:
79,122,504 for ogbn-proteins and 123,718,280 for ogbn-products; ogbn-arxiv's 1,166,243 edges are
directed citations (the reference recipes symmetrise them).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedShape:
    """One OGB node-property set's published shape.

    Attributes:
        name: OGB name.
        kind: the synthetic generator kind that copies it.
        num_nodes, num_edges: node count and rows of ``raw/edge.csv.gz``.
        add_inverse_edge: ogb adds the reverse of every edge (undirected set).
        node_features: width of ``node-feat.csv.gz`` (0: none).
        edge_features: width of ``edge-feat.csv.gz`` (0: none).
        num_tasks: label columns (112 binary tasks for proteins, 1 for the multi-class sets).
        num_classes: classes per task (2 for binary tasks).
        task_type: ogb's task type.
        split: ogb's split folder name.
        split_sizes: published (train, valid, test) node counts.
        communities: planted communities of the synthetic copy at full size (scaled with the node count).
    """

    name: str
    kind: str
    num_nodes: int
    num_edges: int
    add_inverse_edge: bool
    node_features: int
    edge_features: int
    num_tasks: int
    num_classes: int
    task_type: str
    split: str
    split_sizes: tuple
    communities: int

    @property
    def directed_edges(self) -> int:
        """Edges after ogb's loader (both directions for ``add_inverse_edge`` sets)."""
        return self.num_edges * (2 if self.add_inverse_edge else 1)


PUBLISHED = {
    "ogbn-proteins": PublishedShape("ogbn-proteins", "proteins", 132_534, 39_561_252, True, 0, 8, 112, 2,
                                    "binary classification", "species", (86_619, 21_236, 24_679), 50),
    "ogbn-arxiv": PublishedShape("ogbn-arxiv", "arxiv", 169_343, 1_166_243, False, 128, 0, 1, 40,
                                 "multiclass classification", "time", (90_941, 29_799, 48_603), 200),
    "ogbn-products": PublishedShape("ogbn-products", "products", 2_449_029, 61_859_140, True, 100, 0, 1, 47,
                                    "multiclass classification", "sales_ranking", (196_615, 39_323, 2_213_091),
                                    470),
}
KIND_OF = {name: s.kind for name, s in PUBLISHED.items()}
LIKE_OF_KIND = {s.kind: name for name, s in PUBLISHED.items()}


def describe() -> str:
    """One line per published shape, for help texts."""
    out = []
    for s in PUBLISHED.values():
        feats = f"{s.node_features} node features" if s.node_features else f"{s.edge_features}-dim edge features"
        task = f"{s.num_tasks} binary tasks" if s.num_tasks > 1 else f"{s.num_classes} classes"
        out.append(f"{s.name}: {s.num_nodes:,} nodes, {s.num_edges:,} edges"
                   f"{' (x2 directed)' if s.add_inverse_edge else ' (directed)'}, {feats}, {task}, "
                   f"{s.split} split {'/'.join(f'{v:,}' for v in s.split_sizes)}")
    return "; ".join(out)

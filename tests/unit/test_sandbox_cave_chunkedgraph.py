"""Unit tests of the CAVE stand-in's chunkedgraph model (ids, edits, history, lookups)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from prefect_neurodata.sandbox.cave.chunkedgraph import ChunkedGraph
from prefect_neurodata.sandbox.cave.chunkedgraph_types import (
    FALSE_AFFINITY,
    OperationRecord,
    WorldParams,
    decode_id,
    encode_id,
    spatial_bits_for,
)
from prefect_neurodata.sandbox.cave.errors import PCGError

PARAMS = WorldParams(
    seed=5,
    n_neurons=30,
    neuron_length=120,
    n_merges=5,
    n_splits=3,
    base_timestamp=1_700_000_000.0,
    history_span_s=10 * 86400.0,
    chunks=(4, 4, 2),
    chunk_size=(256, 256, 32),
    cell_size=(32, 32, 4),
)


@pytest.fixture(scope="module")
def cg_template() -> ChunkedGraph:
    return ChunkedGraph.build(PARAMS)


@pytest.fixture()
def cg() -> ChunkedGraph:
    return ChunkedGraph.build(PARAMS)


def _nm(cg: ChunkedGraph, svid: int) -> list[float]:
    """A voxel position inside the supervoxel (what the API layer passes after nm -> voxel)."""
    return [float(v) for v in cg.sv_position(svid)]


def _two_neurons_in_contact(cg: ChunkedGraph) -> tuple[int, int]:
    """Supervoxels of two touching, currently separate roots."""
    for ca, cb in cg._contacts:
        a = int(cg.sv_ids[cg.labels[tuple(ca)] - 1])
        b = int(cg.sv_ids[cg.labels[tuple(cb)] - 1])
        ra, rb = cg.get_roots([a, b])
        if ra != rb:
            return a, b
    raise AssertionError("no contact between separate roots")


# ------------------------------------------------------------------------------ ids
def test_spatial_bits_match_minnie65_table() -> None:
    bits = spatial_bits_for(12)
    assert bits == {12: 1, 11: 1, 10: 2, 9: 3, 8: 4, 7: 5, 6: 6, 5: 7, 4: 8, 3: 9, 2: 10, 1: 10}


def test_decode_reference_ids() -> None:
    assert decode_id(864691135217871271, 12) == (12, (0, 0, 0), 6762736039)
    assert decode_id(97557743795364048, 12) == (1, (362, 388, 18), 188624)
    assert encode_id(1, (362, 388, 18), 188624, 12) == 97557743795364048


def test_model_ids_use_the_layout(cg_template: ChunkedGraph) -> None:
    cg = cg_template
    assert cg.n_layers == 4  # 4 chunks per dim -> ceil(log2 4) + 2
    svs = cg.sv_ids[:50]
    assert (cg.get_layer(svs) == 1).all()
    for sv, chunk in zip(svs, cg.sv_chunk[:50], strict=True):
        assert cg.get_chunk_coordinates(int(sv)) == tuple(int(c) for c in chunk)
        assert cg.get_segment_id(int(sv)) >= 1
    roots = np.unique(cg.get_roots(svs))
    assert (cg.get_layer(roots) == cg.n_layers).all()
    assert all(cg.get_chunk_coordinates(int(r)) == (0, 0, 0) for r in roots)
    l2 = cg.get_roots(svs, stop_layer=2)
    assert (cg.get_layer(l2) == 2).all()
    assert len(set(cg.sv_ids.tolist())) == cg.n_supervoxels  # ids never repeat


def test_build_is_deterministic(cg_template: ChunkedGraph) -> None:
    other = ChunkedGraph.build(PARAMS)
    assert np.array_equal(other.sv_ids, cg_template.sv_ids)
    assert sorted(other.roots) == sorted(cg_template.roots)
    assert [op.new_roots for op in other.operations] == [
        op.new_roots for op in cg_template.operations
    ]
    different = ChunkedGraph.build(WorldParams(**{**PARAMS.__dict__, "seed": 6}))
    assert not np.array_equal(different.sv_ids, cg_template.sv_ids)


# ------------------------------------------------------------------------------ spatial
def test_lookup_and_sampling(cg_template: ChunkedGraph) -> None:
    cg = cg_template
    rng = np.random.default_rng(1)
    pos, svs = cg.sample_points(2000, rng)
    assert pos.shape == (2000, 3)
    assert np.array_equal(cg.lookup_supervoxels(pos), svs)
    assert (svs != 0).all()
    outside = np.array([[-1, 0, 0], [10**6, 5, 5], [0, 0, 10**5]])
    assert (cg.lookup_supervoxels(outside) == 0).all()
    background = np.argwhere(cg.labels == 0)[:10] * cg.cell_size
    assert (cg.lookup_supervoxels(background) == 0).all()
    contacts = cg.sample_contacts(500, rng)
    assert np.array_equal(
        cg.lookup_supervoxels(contacts["pre_pt_position"]), contacts["pre_pt_supervoxel_id"]
    )
    assert np.array_equal(
        cg.lookup_supervoxels(contacts["post_pt_position"]), contacts["post_pt_supervoxel_id"]
    )
    pre_neuron = cg.sv_neuron[cg.sv_index(contacts["pre_pt_supervoxel_id"])]
    post_neuron = cg.sv_neuron[cg.sv_index(contacts["post_pt_supervoxel_id"])]
    assert (pre_neuron != post_neuron).all()
    soma_pos, soma_sv = cg.somas()
    assert len(soma_sv) == PARAMS.n_neurons
    assert np.array_equal(cg.lookup_supervoxels(soma_pos), soma_sv)


# ------------------------------------------------------------------------------ history
def test_generated_history_has_merges_splits_undo_redo(cg_template: ChunkedGraph) -> None:
    kinds = [op.kind for op in cg_template.operations]
    assert kinds.count("merge") >= 1
    assert kinds.count("split") >= 1
    assert kinds[-2:] == ["undo", "redo"]
    ts = [op.ts for op in cg_template.operations]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert ts[0] > PARAMS.base_timestamp
    # splits cut exactly the false-merge edges (min cut of low-affinity edges)
    for op in cg_template.operations:
        if op.kind == "split":
            for a, b in op.removed_edges:
                ia, ib = (int(i) for i in cg_template.sv_index([a, b]))
                edge = cg_template._edges[(min(ia, ib), max(ia, ib))]
                assert edge["affinity"] == FALSE_AFFINITY


def test_get_roots_over_time(cg_template: ChunkedGraph) -> None:
    cg = cg_template
    op = next(o for o in cg.operations if o.kind == "merge")
    a, b = op.added_edges[0]
    before = cg.get_roots([a, b], timestamp=op.ts - 1)
    at = cg.get_roots([a, b], timestamp=op.ts)
    assert before[0] != before[1]
    assert at[0] == at[1]
    assert sorted(int(r) for r in before) == sorted(op.old_roots)
    assert int(at[0]) in op.new_roots
    base = cg.get_roots([a], timestamp=PARAMS.base_timestamp - 1000)
    assert base[0] == before[0] or cg.roots[int(base[0])].created_seq == 0
    assert list(cg.get_roots([0, 12345])) == [0, 0]  # zero and unknown ids give 0


def test_get_roots_vectorised_matches_scalar(cg_template: ChunkedGraph) -> None:
    cg = cg_template
    rng = np.random.default_rng(3)
    _, svs = cg.sample_points(3000, rng)
    for op in cg.operations[::3]:
        ts = op.ts - 0.0005
        many = cg.get_roots(svs, timestamp=ts)
        for i in rng.choice(len(svs), 20, replace=False):
            single = cg.get_roots([svs[i]], timestamp=ts)[0]
            assert single == many[i]
            # the root at ts contains the supervoxel and was valid at ts
            info = cg.roots[int(single)]
            assert cg.sv_index([svs[i]])[0] in info.members
            assert info.created_ts <= ts
            assert info.superseded_ts is None or info.superseded_ts > ts


def test_merge_split_undo_redo(cg: ChunkedGraph) -> None:
    a, b = _two_neurons_in_contact(cg)
    ra, rb = (int(r) for r in cg.get_roots([a, b]))
    m = cg.merge([[ra, *_nm(cg, a)], [rb, *_nm(cg, b)]], user_id=2)
    assert m.kind == "merge" and len(m.new_roots) == 1
    new = m.new_roots[0]
    assert sorted(m.old_roots) == sorted([ra, rb])
    assert cg.get_roots([a])[0] == cg.get_roots([b])[0] == new
    assert list(cg.is_latest_roots([ra, rb, new])) == [False, False, True]
    assert list(cg.is_latest_roots([new], timestamp=m.ts - 1)) == [False]
    assert cg.get_root_timestamps([new])[0] == pytest.approx(m.ts)
    assert cg.get_root_timestamps([ra], latest=True)[0] == pytest.approx(m.ts)
    with pytest.raises(PCGError) as err:
        cg.merge([[new, *_nm(cg, a)], [new, *_nm(cg, b)]], user_id=2)
    assert err.value.status_code == 400

    s = cg.split([[new, *_nm(cg, a)]], [[new, *_nm(cg, b)]], user_id=2)
    assert s.kind == "split" and len(s.new_roots) >= 2
    assert s.removed_edges  # the min cut
    ra2, rb2 = (int(r) for r in cg.get_roots([a, b]))
    assert ra2 != rb2 and {ra2, rb2} <= set(s.new_roots)
    assert not {ra2, rb2} & {ra, rb, new}  # new ids, never revived

    u = cg.undo(s.id, user_id=1)
    assert u.kind == "undo" and len(u.new_roots) == 1
    assert cg.get_roots([a])[0] == cg.get_roots([b])[0] == u.new_roots[0]
    assert u.new_roots[0] != new
    with pytest.raises(PCGError):
        cg.undo(s.id, user_id=1)
    r = cg.redo(s.id, user_id=1)
    assert r.kind == "redo"
    assert cg.get_roots([a])[0] != cg.get_roots([b])[0]
    with pytest.raises(PCGError):
        cg.redo(s.id, user_id=1)
    assert r.meta["redo_operation_id"] == s.id and u.meta["undo_operation_id"] == s.id


def test_split_preconditions(cg: ChunkedGraph) -> None:
    a, b = _two_neurons_in_contact(cg)
    ra, rb = (int(r) for r in cg.get_roots([a, b]))
    with pytest.raises(PCGError, match="same root"):
        cg.split([[ra, *_nm(cg, a)]], [[rb, *_nm(cg, b)]], user_id=2)
    with pytest.raises(PCGError, match="both sink and source"):
        cg.split([[ra, *_nm(cg, a)]], [[ra, *_nm(cg, a)]], user_id=2)
    members = cg.roots[ra].members
    cells = np.concatenate(
        [cg.sv_cells[cg.sv_cell_offsets[i] : cg.sv_cell_offsets[i + 1]] for i in members]
    )
    far = next(
        i
        for i in range(cg.n_supervoxels)
        if np.abs(cells - cg.sv_cells[cg.sv_cell_offsets[i]]).max(axis=1).min() > 4
    )
    with pytest.raises(PCGError, match="Could not determine supervoxel"):
        cg.merge([[ra, *_nm(cg, int(cg.sv_ids[far]))], [rb, *_nm(cg, b)]], user_id=2)


def test_min_cut_prefers_weak_edges(cg: ChunkedGraph) -> None:
    a, b = _two_neurons_in_contact(cg)
    ra, rb = (int(r) for r in cg.get_roots([a, b]))
    m = cg.merge([[ra, *_nm(cg, a)], [rb, *_nm(cg, b)]], user_id=2)
    root = m.new_roots[0]
    # pick source/sink far from the merge edge, one on each original object
    members_a = cg.roots[ra].members
    members_b = cg.roots[rb].members
    src = int(cg.sv_ids[members_a[-1]])
    snk = int(cg.sv_ids[members_b[-1]])
    preview = cg.preview_split([[root, *_nm(cg, src)]], [[root, *_nm(cg, snk)]])
    assert preview["illegal_split"] is False
    comps = preview["supervoxel_connected_components"]
    assert src in comps[0] and snk in comps[1]
    s = cg.split([[root, *_nm(cg, src)]], [[root, *_nm(cg, snk)]], user_id=2)
    # the merge edge (affinity 1.0) or any other single edge is cut: the cut is minimal
    total = sum(
        cg._edges[tuple(sorted(int(i) for i in cg.sv_index(e)))]["affinity"]
        for e in s.removed_edges
    )
    assert total <= 1.0 + 1e-9


def test_lineage_past_ids_delta_and_change_log(cg: ChunkedGraph) -> None:
    a, b = _two_neurons_in_contact(cg)
    ra, rb = (int(r) for r in cg.get_roots([a, b]))
    m = cg.merge([[ra, *_nm(cg, a)], [rb, *_nm(cg, b)]], user_id=2, timestamp=None)
    new = m.new_roots[0]
    g = cg.lineage_graph([new])
    assert g.has_edge(ra, new) and g.has_edge(rb, new)
    assert g.nodes[ra]["operation_id"] == m.id
    assert g.nodes[new]["timestamp"] == pytest.approx(m.ts)
    data = nx.node_link_data(g, edges="links")
    assert {"source": ra, "target": new} in [
        {"source": e["source"], "target": e["target"]} for e in data["links"]
    ]
    past, future = cg.past_id_mapping([new], m.ts - 1, m.ts + 1)
    assert sorted(past[new]) == sorted([ra, rb])
    # PyChunkedGraph never fills future_id_map (issue 11 item 9): neither does the stand-in.
    assert future == {}
    old, newr = cg.delta_roots(m.ts - 0.0001, m.ts)
    assert new in newr.tolist() and {ra, rb} <= set(old.tolist())
    log = cg.change_log(new)
    assert m.id in log["operations_ids"]
    assert log["n_mergers"] >= 1
    assert {ra, rb} <= set(log["past_ids"])
    assert log["user_info"]["2"]["n_mergers"] >= 1
    tab = cg.tabular_change_log(new, filtered=False)
    assert tab[-1]["operation_id"] == m.id and tab[-1]["is_merge"] is True
    assert tab[-1]["in_neuron"] is True
    ml = cg.merge_log(new)
    assert [list(e) for e in m.added_edges] in ml["merge_edges"]
    assert cg.oldest_timestamp() < cg.operations[0].ts
    valid = cg.valid_nodes([new, ra, 42], m.ts - 1, m.ts + 1)
    assert valid.tolist() == [new]


def test_hierarchy_reads(cg_template: ChunkedGraph) -> None:
    cg = cg_template
    root = int(cg.get_roots(cg.sv_ids[:1])[0])
    leaves = cg.get_leaves(root)
    assert int(cg.sv_ids[0]) in leaves.tolist()
    assert (cg.get_roots(leaves) == root).all()
    l2s = cg.get_leaves(root, stop_layer=2)
    assert (cg.get_layer(l2s) == 2).all()
    assert sorted(cg.get_children(root).tolist()) == sorted(l2s.tolist())
    from_children = np.concatenate([cg.get_children(int(x)) for x in l2s])
    assert sorted(from_children.tolist()) == sorted(leaves.tolist())
    assert cg.get_children(int(leaves[0])).size == 0
    # bounds restrict leaves
    lo = cg.sv_bbox_min[cg.sv_index(leaves[:1])[0]]
    hi = cg.sv_bbox_max[cg.sv_index(leaves[:1])[0]]
    bounded = cg.get_leaves(root, bounds=np.stack([lo, hi], axis=1))
    assert int(leaves[0]) in bounded.tolist() and len(bounded) <= len(leaves)
    sub = cg.subgraph(root)
    assert len(sub["nodes"]) == len(sub["affinities"]) == len(sub["areas"])
    assert len(sub["nodes"]) >= len(leaves) - 1  # a connected object
    l2g = cg.level2_graph(root)
    g = nx.Graph()
    g.add_nodes_from(int(x) for x in l2s)
    g.add_edges_from(tuple(e) for e in l2g)
    assert nx.is_connected(g)
    attrs = cg.l2_attributes([int(l2s[0]), 99])
    assert attrs["99"] == {}
    a0 = attrs[str(int(l2s[0]))]
    assert a0["size_nm3"] > 0 and a0["area_nm2"] > 0 and len(a0["rep_coord_nm"]) == 3
    assert cg.lookup_supervoxels(np.asarray([a0["rep_coord_nm"]]) / cg.resolution)[0] in (
        cg.get_children(int(l2s[0])).tolist()
    )


def test_find_path(cg_template: ChunkedGraph) -> None:
    cg = cg_template
    root = int(cg.get_roots(cg.sv_ids[:1])[0])
    leaves = cg.get_leaves(root)
    out = cg.find_path(root, _nm(cg, int(leaves[0])), _nm(cg, int(leaves[-1])))
    path = out["l2_path"]
    assert path[0] == int(cg.get_roots([leaves[0]], stop_layer=2)[0])
    assert path[-1] == int(cg.get_roots([leaves[-1]], stop_layer=2)[0])
    assert len(out["centroids_list"]) == len(path) and out["failed_l2_ids"] == []


def test_replay_rebuilds_identical_state(cg: ChunkedGraph) -> None:
    records: list[OperationRecord] = []
    cg.on_operation = records.append
    a, b = _two_neurons_in_contact(cg)
    ra, rb = (int(r) for r in cg.get_roots([a, b]))
    m = cg.merge([[ra, *_nm(cg, a)], [rb, *_nm(cg, b)]], user_id=2)
    s = cg.split([[m.new_roots[0], *_nm(cg, a)]], [[m.new_roots[0], *_nm(cg, b)]], user_id=2)
    cg.undo(s.id, user_id=1)
    assert [r.kind for r in records] == ["merge", "split", "undo"]
    fresh = ChunkedGraph.build(PARAMS)
    for rec in records:
        fresh.replay(OperationRecord.from_dict(rec.to_dict()))
    assert sorted(fresh.roots) == sorted(cg.roots)
    assert np.array_equal(fresh.cur_root, cg.cur_root)
    assert np.array_equal(fresh.cur_l2, cg.cur_l2)
    assert fresh.operations[-1].meta == cg.operations[-1].meta
    assert fresh.get_operation(s.id).undone is True


def test_large_lookup_is_vectorised(cg_template: ChunkedGraph) -> None:
    cg = cg_template
    _, svs = cg.sample_points(100_000, np.random.default_rng(9))
    mid = cg.operations[len(cg.operations) // 2].ts
    roots = cg.get_roots(svs, timestamp=mid)
    assert roots.dtype == np.uint64 and (roots != 0).all()
    uniq, inv = np.unique(svs, return_inverse=True)
    assert np.array_equal(cg.get_roots(uniq, timestamp=mid)[inv], roots)


def test_sv_index_arithmetic_matches_search(cg_template: ChunkedGraph) -> None:
    cg = cg_template
    odd = [0, 1, 12345, 2**63, int(cg.sv_ids.max()) + 1, int(cg.sv_ids[0]) + (1 << 40)]
    ids = np.concatenate(
        [cg.sv_ids, np.asarray(odd, dtype=np.uint64), np.asarray(list(cg.roots)[:5], np.uint64)]
    )
    order = np.argsort(cg.sv_ids)
    pos = np.minimum(np.searchsorted(cg.sv_ids[order], ids), cg.n_supervoxels - 1)
    expected = np.where(cg.sv_ids[order][pos] == ids, order[pos], -1)
    assert np.array_equal(cg.sv_index(ids), expected)
    assert (cg.sv_index(ids[: cg.n_supervoxels]) == np.arange(cg.n_supervoxels)).all()

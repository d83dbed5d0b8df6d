"""Activation memory from buffer liveness over the torch.fx graph.

A buffer is live from the node that produces it to its last reader, so a tensor kept for a
later residual add or concat counts while the branch runs.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from ._op_rules import conv_kind, numel


def liveness(
    nodes: list[fx.Node],
    kind_of: dict[fx.Node, str],
    shapes: dict[str, Any],
    users: dict[fx.Node, list[fx.Node]],
    modules: dict[str, nn.Module],
) -> tuple[int, int, dict[fx.Node, tuple[int, int, int]]]:
    """Peak live activation elements, executing nodes in graph order (also with in-place dw).

    Also returns every buffer as its producing node -> (elements, first node, last node index).
    """
    # Map every node to the buffer it writes; an alias or in-place unary op reuses its input's.
    buffer_of: dict[fx.Node, fx.Node] = {}
    size: dict[fx.Node, int] = {}
    for n in nodes:
        k = kind_of.get(n)
        s = shapes.get(n.name)
        tensor_ins = [a for a in n.all_input_nodes if a in buffer_of]
        if n.op in ("get_attr", "output"):
            continue  # parameters are weights, not activations; the output node only returns
        if k in ("alias", "fused") and tensor_ins:
            buffer_of[n] = buffer_of[tensor_ins[0]]
        elif (
            k == "elementwise"
            and len(tensor_ins) == 1
            and len(users[tensor_ins[0]]) == 1
            and (isinstance(s, tuple) and numel(s) == size.get(buffer_of[tensor_ins[0]], -1))
        ):
            # A unary op whose input dies here runs in place (no second buffer).
            buffer_of[n] = buffer_of[tensor_ins[0]]
        elif isinstance(s, tuple) or (k == "io" and n.op == "placeholder"):
            buffer_of[n] = n
            size[n] = numel(s) if isinstance(s, tuple) else 0
        elif isinstance(s, list):
            buffer_of[n] = n
            size[n] = sum(numel(x) for x in s)
    # Last reader of each buffer (through its aliases).
    index = {n: i for i, n in enumerate(nodes)}
    last_use: dict[fx.Node, int] = {}
    for n in nodes:
        if n not in buffer_of:
            continue
        b = buffer_of[n]
        end = max([index[u] for u in users[n]] + [index[n]])
        if n.op == "placeholder" and not users[n]:
            end = index[n]
        last_use[b] = max(last_use.get(b, 0), end)
    for n in nodes:
        if n.op == "output":
            for a in n.all_input_nodes:
                if a in buffer_of:
                    last_use[buffer_of[a]] = len(nodes)
    starts = {b: index[b] for b in size}

    def peak_at(in_place: bool) -> int:
        best = 0
        for i, n in enumerate(nodes):
            live = sum(size[b] for b in size if starts[b] <= i <= last_use.get(b, starts[b]))
            if in_place and n.op == "call_module" and kind_of.get(n) == "compute":
                m = modules[str(n.target)]
                ins = [a for a in n.all_input_nodes if a in buffer_of]
                if (
                    isinstance(m, nn.modules.conv._ConvNd)
                    and conv_kind(m.groups, m.in_channels) == "dwconv"
                    and ins
                    and last_use.get(buffer_of[ins[0]], -1) == i
                    and m.out_channels == m.in_channels
                ):
                    # In-place depthwise (MCUNetV2 / TinyEngine): each output channel overwrites
                    # its input channel through a one-channel buffer.
                    out_b = buffer_of[n]
                    out_elems = size[out_b]
                    in_elems = size[buffer_of[ins[0]]]
                    one_channel = out_elems // max(m.out_channels, 1)
                    live = live - out_elems - in_elems + max(in_elems, out_elems) + one_channel
            best = max(best, live)
        return best

    intervals = {b: (size[b], starts[b], last_use.get(b, starts[b])) for b in size}
    return peak_at(False), peak_at(True), intervals

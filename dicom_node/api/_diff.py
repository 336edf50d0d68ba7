"""A diff whose cost is bounded: Myers' shortest edit script under a step budget.

:class:`difflib.SequenceMatcher` with ``autojunk=False`` takes time that grows with the
product of the lengths, and on repetitive input (a word and a space, over and over) with
their cube: two 12,000-word edits of one study made every view of it take 30 s. This module
matches the common prefix and suffix in linear time and searches the changed middle with
Myers' O((N+M)D) algorithm ("An O(ND) Difference Algorithm and Its Variations", 1986),
counting every step. When the middle needs more than ``max_steps`` steps (very different
texts), it is reported as one ``replace``: still a correct diff (old and new are rebuilt
from it), only a coarser one. So one diff never costs more than ``max_steps`` steps plus
the length of its inputs.

:func:`diff_opcodes` answers like :meth:`difflib.SequenceMatcher.get_opcodes`;
:func:`unified_diff` writes the ``diff -u`` format as :func:`difflib.unified_diff` does.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Literal

OpTag = Literal["equal", "delete", "insert", "replace"]
#: ``(tag, i1, i2, j1, j2)``: ``a[i1:i2]`` becomes ``b[j1:j2]``, as in difflib.
Opcode = tuple[OpTag, int, int, int, int]

#: Steps (diagonals tried, matches followed, trace entries kept) of one middle search;
#: about 0.1 s of CPU in CPython, a few MB of memory at most.
MAX_DIFF_STEPS = 200_000


def diff_opcodes(
    a: Sequence[Hashable], b: Sequence[Hashable], *, max_steps: int = MAX_DIFF_STEPS
) -> list[Opcode]:
    """Opcodes that turn `a` into `b`, found with a bounded amount of work.

    Parameters
    ----------
    a, b
        The sequences (tokens, lines) to compare.
    max_steps
        Work allowed to the search of the changed middle; past it, the middle is one
        ``replace``.

    Returns
    -------
    list of Opcode
        Adjacent, covering both sequences from start to end; no two neighbours have the
        same tag, and a deletion next to an insertion is one ``replace``.
    """
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    n, m = len(a), len(b)
    start = 0
    while start < n and start < m and a[start] == b[start]:
        start += 1
    end_a, end_b = n, m
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    ops: list[tuple[OpTag, int, int]] = []  # (tag, i, j) per token, "equal"/"delete"/"insert"
    ops.extend(("equal", i, i) for i in range(start))
    middle = _shortest_edit(a[start:end_a], b[start:end_b], max_steps)
    if middle is None:
        ops.extend(("delete", i, start) for i in range(start, end_a))
        ops.extend(("insert", end_a, j) for j in range(start, end_b))
    else:
        ops.extend((tag, i + start, j + start) for tag, i, j in middle)
    ops.extend(("equal", end_a + k, end_b + k) for k in range(n - end_a))
    return _opcodes(ops, n, m)


def _shortest_edit(
    a: Sequence[Hashable], b: Sequence[Hashable], max_steps: int
) -> list[tuple[OpTag, int, int]] | None:
    """Myers' greedy search; the per-token edit script, or None past `max_steps`."""
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return [("delete", i, 0) for i in range(n)] + [("insert", 0, j) for j in range(m)]
    furthest: dict[int, int] = {1: 0}  # diagonal k = x - y -> furthest x reached
    trace: list[dict[int, int]] = []
    steps = 0
    for d in range(n + m + 1):
        trace.append(dict(furthest))
        steps += len(furthest)
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and furthest[k - 1] < furthest[k + 1]):
                x = furthest[k + 1]
            else:
                x = furthest[k - 1] + 1
            y = x - k
            start_x = x
            while x < n and y < m and a[x] == b[y]:
                x, y = x + 1, y + 1
            furthest[k] = x
            steps += 1 + x - start_x
            if x >= n and y >= m:
                return _backtrack(trace, n, m)
            if steps > max_steps:
                return None
    raise AssertionError("unreachable: a path of n + m edits always exists")


def _backtrack(trace: list[dict[int, int]], n: int, m: int) -> list[tuple[OpTag, int, int]]:
    """The edit script of the path the search found, from its end back to the start."""
    script: list[tuple[OpTag, int, int]] = []
    x, y = n, m
    for d in range(len(trace) - 1, -1, -1):
        furthest = trace[d]
        k = x - y
        if k == -d or (k != d and furthest[k - 1] < furthest[k + 1]):
            prev_k = k + 1
        else:
            prev_k = k - 1
        prev_x = furthest[prev_k]
        prev_y = prev_x - prev_k
        while x > prev_x and y > prev_y:
            x, y = x - 1, y - 1
            script.append(("equal", x, y))
        if d > 0:
            if x == prev_x:
                script.append(("insert", x, prev_y))
            else:
                script.append(("delete", prev_x, y))
        x, y = prev_x, prev_y
    script.reverse()
    return script


def _opcodes(ops: list[tuple[OpTag, int, int]], n: int, m: int) -> list[Opcode]:
    """Runs of per-token operations as difflib opcodes (delete + insert = replace)."""
    codes: list[Opcode] = []
    i = j = 0
    index = 0
    while index < len(ops):
        if ops[index][0] == "equal":
            end = index
            while end < len(ops) and ops[end][0] == "equal":
                end += 1
            length = end - index
            codes.append(("equal", i, i + length, j, j + length))
            i, j = i + length, j + length
        else:
            end = index
            while end < len(ops) and ops[end][0] != "equal":
                end += 1
            deleted = sum(1 for op in ops[index:end] if op[0] == "delete")
            inserted = end - index - deleted
            tag: OpTag = "replace" if deleted and inserted else (
                "delete" if deleted else "insert"
            )
            codes.append((tag, i, i + deleted, j, j + inserted))
            i, j = i + deleted, j + inserted
        index = end
    if (i, j) != (n, m):
        raise AssertionError(f"the edit script covers ({i}, {j}), not ({n}, {m})")
    return codes


def grouped_opcodes(codes: list[Opcode], context: int = 3) -> Iterator[list[Opcode]]:
    """Hunks of changes with up to `context` unchanged items around them (as difflib)."""
    if not codes:
        codes = [("equal", 0, 1, 0, 1)]
    codes = list(codes)
    tag, i1, i2, j1, j2 = codes[0]
    if tag == "equal":
        codes[0] = (tag, max(i1, i2 - context), i2, max(j1, j2 - context), j2)
    tag, i1, i2, j1, j2 = codes[-1]
    if tag == "equal":
        codes[-1] = (tag, i1, min(i2, i1 + context), j1, min(j2, j1 + context))
    group: list[Opcode] = []
    for tag, i1, i2, j1, j2 in codes:
        if tag == "equal" and i2 - i1 > 2 * context:
            group.append((tag, i1, min(i2, i1 + context), j1, min(j2, j1 + context)))
            yield group
            group = []
            i1, j1 = max(i1, i2 - context), max(j1, j2 - context)
        group.append((tag, i1, i2, j1, j2))
    if group and not (len(group) == 1 and group[0][0] == "equal"):
        yield group


def _hunk_range(start: int, stop: int) -> str:
    """A hunk's line range in the unified format (``5`` or ``5,3``; empty: ``4,0``)."""
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def unified_diff(
    a: Sequence[str], b: Sequence[str], from_label: str, to_label: str, context: int = 3
) -> str:
    """`a` and `b` (lines ending in a newline) as a unified diff; empty when equal."""
    out: list[str] = []
    for group in grouped_opcodes(diff_opcodes(a, b), context):
        if not out:
            out += [f"--- {from_label}\n", f"+++ {to_label}\n"]
        first, last = group[0], group[-1]
        out.append(
            f"@@ -{_hunk_range(first[1], last[2])} +{_hunk_range(first[3], last[4])} @@\n"
        )
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out.extend(f" {line}" for line in a[i1:i2])
                continue
            if tag in ("replace", "delete"):
                out.extend(f"-{line}" for line in a[i1:i2])
            if tag in ("replace", "insert"):
                out.extend(f"+{line}" for line in b[j1:j2])
    return "".join(out)


__all__ = ["MAX_DIFF_STEPS", "Opcode", "diff_opcodes", "grouped_opcodes", "unified_diff"]

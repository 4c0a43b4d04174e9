"""``RadixCache``: a radix tree over token ids whose values are KV-slot indices (page size 1).

Every edge holds a run of token ids (``key``) and the KV slots computed for them (``value``,
an int64 tensor of the same length). A path from the root spells a token prefix whose KV is in
the pool, so any request starting with that prefix can skip computing it.

Namespaces: the root's children are keyed by ``(namespace, first_token)`` and every deeper
child by its first token, so requests with different namespaces (``cache_salt`` / extra key)
never share a node — not even a one-token prefix.

Invariants (checked by :meth:`RadixCache.check_invariants`, exercised by property tests):

- ``evictable_size() + protected_size() == `` tokens held by the tree; a node's tokens are
  *protected* while ``lock_ref > 0`` and *evictable* otherwise.
- ``lock_ref`` of a node ≥ ``lock_ref`` of each child: locking a node locks its whole path, so a
  running request's prefix can never be evicted under it. The root is never evicted.
- The evictable-leaf set holds exactly the non-root nodes with no children and ``lock_ref == 0``.
- Every KV slot is owned by exactly one of {the allocator's free list, this tree, a running
  request's private tail (row positions ``[cache_protected_len, kv_len)``)}. ``insert`` returns
  how much of the key was already cached; the caller frees its own duplicate slots for that
  range, so a slot is never owned twice.
"""

from __future__ import annotations

import heapq
import time
from typing import TYPE_CHECKING

import torch

from radixlm.mem.cache import MatchResult, Namespace, PrefixCache

if TYPE_CHECKING:
    from radixlm.mem.kv_pool import SlotAllocator
    from radixlm.mem.req_to_token import ReqToTokenPool
    from radixlm.scheduler.req import Req

_BLOCK = 64  # key comparison granularity (slice compares run in C)


def common_prefix_len(key: list[int], query: list[int], offset: int) -> int:
    """Length of the common prefix of ``key`` and ``query[offset:]``."""
    m = min(len(key), len(query) - offset)
    if key[:m] == query[offset : offset + m]:
        return m
    i = 0
    while i < m:
        j = min(i + _BLOCK, m)
        if key[i:j] != query[offset + i : offset + j]:
            for k in range(i, j):
                if key[k] != query[offset + k]:
                    return k
        i = j
    return m  # unreachable: the full compare above found a difference


class TreeNode:
    __slots__ = (
        "children", "parent", "key", "value", "lock_ref", "last_access", "namespace", "hits"
    )  # fmt: skip

    def __init__(
        self,
        key: list[int],
        value: torch.Tensor,
        parent: TreeNode | None,
        namespace: Namespace,
        last_access: int = 0,
    ) -> None:
        self.children: dict = {}
        self.parent = parent
        self.key = key
        self.value = value
        self.lock_ref = 0
        self.last_access = last_access
        self.namespace = namespace
        self.hits = 0  # admitted requests whose cached prefix ran through this node

    def __repr__(self) -> str:
        return f"TreeNode(len={len(self.key)}, lock_ref={self.lock_ref}, ns={self.namespace!r})"


class RadixCache(PrefixCache):
    def __init__(self, req_to_token_pool: ReqToTokenPool, allocator: SlotAllocator) -> None:
        super().__init__(req_to_token_pool, allocator)
        self.reset()

    # ---- structure -----------------------------------------------------------------------
    def reset(self) -> None:
        self.root = TreeNode([], self._empty(), None, None)
        self.root.lock_ref = 1  # never evicted, never an evictable leaf
        self._evictable = 0
        self._protected = 0
        self._leaves: set[TreeNode] = set()
        self._clock = 0

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64, device=self.allocator.device)

    def _child_key(self, node: TreeNode, namespace: Namespace, token: int):
        return (namespace, token) if node is self.root else token

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _refresh_leaf(self, node: TreeNode) -> None:
        if node is not self.root and not node.children and node.lock_ref == 0:
            self._leaves.add(node)
        else:
            self._leaves.discard(node)

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut ``child`` after ``n`` tokens; the new upper node is returned (same lock state)."""
        parent = child.parent
        upper = TreeNode(
            child.key[:n], child.value[:n].clone(), parent, child.namespace, child.last_access
        )
        upper.lock_ref = child.lock_ref
        upper.hits = child.hits  # every match that went through child went through upper
        child.key = child.key[n:]
        child.value = child.value[n:].clone()
        child.parent = upper
        upper.children[child.key[0]] = child
        parent.children[self._child_key(parent, upper.namespace, upper.key[0])] = upper
        return upper

    def _walk(self, namespace: Namespace, key: list[int]) -> tuple[list[torch.Tensor], TreeNode]:
        """Follow ``key`` from the root, splitting where the match ends inside a node, and
        refresh access times on the way. Returns (values along the path, deepest node)."""
        now = self._tick()
        node, i, values = self.root, 0, []
        while i < len(key):
            child = node.children.get(self._child_key(node, namespace, key[i]))
            if child is None:
                break
            n = common_prefix_len(child.key, key, i)
            child.last_access = now
            if n < len(child.key):
                child = self._split(child, n)
            values.append(child.value)
            node, i = child, i + n
        return values, node

    # ---- public tree operations ----------------------------------------------------------
    def match_prefix(self, token_ids: list[int], namespace: Namespace = None) -> MatchResult:
        t0 = time.perf_counter()
        values, node = self._walk(namespace, token_ids)
        slots = torch.cat(values) if len(values) > 1 else (values[0] if values else self._empty())
        self.stats.op_seconds += time.perf_counter() - t0
        return MatchResult(slots, node)

    def insert(self, token_ids: list[int], slots: torch.Tensor, namespace: Namespace = None) -> int:
        """Cache ``slots`` as the KV of ``token_ids``. Returns how many leading tokens were
        already cached: the caller still owns ``slots[:that]`` and must free the ones it does
        not share with the tree; the rest now belong to the tree."""
        t0 = time.perf_counter()
        values, node = self._walk(namespace, token_ids)
        done = sum(len(v) for v in values)
        if done < len(token_ids):
            leaf = TreeNode(token_ids[done:], slots[done:].clone(), node, namespace, self._clock)
            node.children[self._child_key(node, namespace, token_ids[done])] = leaf
            self._evictable += len(leaf.key)
            self._refresh_leaf(node)
            self._refresh_leaf(leaf)
        self.stats.op_seconds += time.perf_counter() - t0
        return done

    def lock(self, handle: TreeNode | None) -> int:
        """Protect the path root→``handle``; returns tokens moved from evictable to protected."""
        delta, node = 0, handle
        while node is not None and node is not self.root:
            if node.lock_ref == 0:
                delta += len(node.key)
                self._leaves.discard(node)
            node.lock_ref += 1
            node = node.parent
        self._evictable -= delta
        self._protected += delta
        return delta

    def unlock(self, handle: TreeNode | None) -> int:
        """Undo one :meth:`lock`; returns tokens moved from protected to evictable."""
        delta, node = 0, handle
        while node is not None and node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError("radix cache: unlock of an unlocked node")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                delta += len(node.key)
                self._refresh_leaf(node)
            node = node.parent
        self._evictable += delta
        self._protected -= delta
        return delta

    def evict(self, num_tokens: int) -> int:
        """Free least-recently-used unlocked leaves (cascading to parents that become
        evictable leaves) until ``num_tokens`` slots are freed or nothing is evictable."""
        if num_tokens <= 0 or not self._leaves:
            return 0
        t0 = time.perf_counter()
        heap = [(n.last_access, id(n), n) for n in self._leaves]
        heapq.heapify(heap)
        freed, freed_values = 0, []
        while freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            freed_values.append(node.value)
            freed += len(node.key)
            del parent.children[self._child_key(parent, node.namespace, node.key[0])]
            self._leaves.discard(node)
            self._refresh_leaf(parent)
            if parent in self._leaves:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        if freed_values:
            self.allocator.free(torch.cat(freed_values))
        self._evictable -= freed
        self.stats.evicted_tokens += freed
        self.stats.op_seconds += time.perf_counter() - t0
        return freed

    def evictable_size(self) -> int:
        return self._evictable

    def protected_size(self) -> int:
        return self._protected

    # ---- request hand-over (see PrefixCache) ---------------------------------------------
    def cache_finished_req(self, req: Req, token_ids: list[int]) -> None:
        if req.req_pool_idx is not None and token_ids:
            self._take_row(req, token_ids)
        self.unlock(req.last_node)
        req.last_node = None
        req.cache_protected_len = 0

    def cache_unfinished_req(self, req: Req, token_ids: list[int]) -> None:
        if not token_ids:
            return
        self._take_row(req, token_ids)
        match = self.match_prefix(token_ids, req.cache_namespace)
        if len(match.slots) != len(token_ids):
            raise RuntimeError("radix cache: a just-inserted prefix did not match in full")
        protected = req.cache_protected_len
        self.req_to_token_pool.write(req.req_pool_idx, protected, match.slots[protected:])
        self.lock(match.handle)  # lock the new path before releasing the old one
        self.unlock(req.last_node)
        req.last_node = match.handle
        req.cache_protected_len = len(token_ids)

    def _take_row(self, req: Req, token_ids: list[int]) -> None:
        """Insert the request's KV for ``token_ids``; free its slots the tree already had."""
        slots = self.req_to_token_pool.read(req.req_pool_idx, len(token_ids))
        existing = self.insert(token_ids, slots, req.cache_namespace)
        if existing < req.cache_protected_len:
            raise RuntimeError("radix cache: a locked prefix went missing")
        if existing > req.cache_protected_len:
            self.allocator.free(slots[req.cache_protected_len : existing])

    # ---- introspection -------------------------------------------------------------------
    def nodes(self) -> list[TreeNode]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def record_hit(self, handle: TreeNode | None) -> None:
        """A request was admitted on the prefix ending at ``handle``: count it on every node of
        the path (observability: the dashboard's top prefixes)."""
        node = handle
        while node is not None and node is not self.root:
            node.hits += 1
            node = node.parent

    def top_prefixes(self, k: int) -> tuple[int, list[tuple[list[int], int]]]:
        """(node count, the ``k`` cached prefixes with the most hits: (token ids from the root,
        hits)); of a chain of nodes with equal hits only the longest prefix is listed."""
        nodes = self.nodes()
        ranked = sorted(
            (n for n in nodes if n is not self.root and n.hits > 0
             and not any(c.hits == n.hits for c in n.children.values())),
            key=lambda n: (-n.hits, -n.last_access),
        )[:k]  # fmt: skip
        out = []
        for node in ranked:
            parts, up = [], node
            while up is not self.root:
                parts.append(up.key)
                up = up.parent
            out.append(([t for part in reversed(parts) for t in part], node.hits))
        return len(nodes) - 1, out

    def cached_slots(self) -> torch.Tensor:
        values = [n.value for n in self.nodes()]
        return torch.cat(values) if values else self._empty()

    def check_invariants(self) -> None:
        """Raise if any invariant of the module docstring is broken (O(tree); for tests)."""
        evictable = protected = 0
        leaves = set()
        for node in self.nodes():
            if node is self.root:
                continue
            if len(node.key) == 0 or len(node.key) != len(node.value):
                raise RuntimeError(f"radix cache: bad node {node!r}")
            parent_ref = node.parent.lock_ref if node.parent is not self.root else node.lock_ref
            if node.lock_ref < 0 or node.lock_ref > parent_ref:
                raise RuntimeError(f"radix cache: lock_ref order broken at {node!r}")
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
            if not node.children and node.lock_ref == 0:
                leaves.add(node)
            for k, child in node.children.items():
                if child.parent is not node or k != child.key[0]:
                    raise RuntimeError(f"radix cache: broken child link under {node!r}")
        for k, child in self.root.children.items():
            if k != (child.namespace, child.key[0]) or child.parent is not self.root:
                raise RuntimeError("radix cache: broken child link under the root")
        if (evictable, protected) != (self._evictable, self._protected):
            raise RuntimeError(
                f"radix cache: sizes ({self._evictable}, {self._protected}) != "
                f"tree ({evictable}, {protected})"
            )
        if leaves != self._leaves:
            raise RuntimeError("radix cache: evictable-leaf set out of date")
        slots = self.cached_slots()
        if torch.unique(slots).numel() != slots.numel() or (slots.numel() and int(slots.min()) < 1):
            raise RuntimeError("radix cache: a slot is cached twice (or slot 0 is cached)")

"""Wide terms: a per-event logistic regression over feature crosses, added to the
model's logit and learned from each outcome as it arrives (``model.wide_terms``).

Each term (``"user_id"``, ``"user_id*genres"``) keys one weight per combination
of its features' values; an example's wide logit is the sum of its keys'
weights. Weights learn by Adagrad in event order, one step per outcome, from
the gradient of the whole prediction (deep part + wide terms), so what the
batched deep model has not learned yet is corrected at the next event. Why and
how: docs/design.md, "Wide terms".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

import torch

from streamrec import native
from streamrec.ingest.batch import KeyedJaggedTensor
from streamrec.model.tables.base import EmbeddingTable, expire_tables
from streamrec.model.tables.sort import stable_argsort
from streamrec.model.tables.store import TableStore, sighted_lookup, stores_of, tagged

__all__ = ["TermColumns", "TermKeys", "WideTerms", "cross_keys", "wide_table_name",
           "parse_terms"]

_MIX = 0x9E3779B97F4A7C15 - (1 << 64)  # odd 64-bit multiplier (int64 arithmetic wraps)
# A term keys at most this many combinations per example: the first ones, in
# the order term_keys makes them. A cross of two lists has len(a) * len(b)
# (a million for two of the decoder's longest), and each example's step is
# shared among its keys, so one such term would also starve the others.
MAX_TERM_KEYS = 128

# A term's entries in a batch: term -> (example [E], key [E]).
TermKeys = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def wide_table_name(term: list[str]) -> str:
    """The table holding a term's weights: ``user_id*genres#wide``."""
    return "*".join(term) + "#wide"


def parse_terms(terms: list[str]) -> list[list[str]]:
    """``["user_id", "user_id*genres"]`` -> ``[["user_id"], ["user_id", "genres"]]``."""
    return [term.split("*") for term in terms]


def cross_keys(key: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The keys of a term so far (``key``) crossed with one more feature's ``values``."""
    return key * _MIX + values


def _first(example: torch.Tensor, key: torch.Tensor, batch: int, limit: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` entries of each example (``example`` is grouped)."""
    counts = torch.bincount(example, minlength=batch)
    if example.numel() <= limit or int(counts.max()) <= limit:
        return example, key
    starts = torch.cumsum(counts, 0) - counts
    keep = torch.arange(example.numel()) - starts.index_select(0, example) < limit
    return example[keep], key[keep]


class TermColumns:
    """A batch's sparse features split once, to cross them into terms' keys: one
    id per example where each example has exactly one (``single``), else
    (example, id) pairs. The wide terms and the in-batch adaptation key their
    terms with it. A term keys at most ``max_keys`` combinations per example
    (:data:`MAX_TERM_KEYS`); :meth:`dropped` says how many it left out."""

    def __init__(self, sparse: KeyedJaggedTensor, max_keys: int = MAX_TERM_KEYS) -> None:
        self.batch = sparse.stride()
        self.max_keys = max_keys
        keys = sparse.keys()
        lengths = sparse.lengths().to(torch.int64).view(len(keys), self.batch)
        values = sparse.values()
        ends = torch.cumsum(lengths.sum(dim=1), 0).tolist()
        self.single: dict[str, torch.Tensor] = {}
        self.pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._counts: dict[str, torch.Tensor] = {}
        for k, feature in enumerate(keys):
            start = ends[k - 1] if k else 0
            n = lengths[k]
            if ends[k] - start == self.batch and bool((n == 1).all()):
                self.single[feature] = values[start:ends[k]]
            else:
                example = torch.repeat_interleave(torch.arange(self.batch), n)
                self.pairs[feature] = example, values[start:ends[k]]
                self._counts[feature] = n

    def term_keys(self, term: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(example [E], key [E])``: one key per combination of the term's
        features' values per example (an example lacking one has none), the
        first ``max_keys`` of them, each example's entries together."""
        limit = self.max_keys
        example = torch.arange(self.batch)
        key = torch.zeros(self.batch, dtype=torch.int64)
        expanded = False
        for feature in term:
            if feature in self.single:
                v = self.single[feature]
                key = cross_keys(key, v.index_select(0, example) if expanded else v)
                continue
            their_example, values = self.pairs[feature]
            if not expanded:  # the first list feature: its pairs, each with the key so far
                key = cross_keys(key.index_select(0, their_example), values)
                example, key = _first(their_example, key, self.batch, limit)
                expanded = True
                continue
            # Another list feature: every entry so far times every value of its
            # example, in that order, as far as the example's first ``limit``.
            counts = self._counts[feature]
            starts = torch.cumsum(counts, 0) - counts
            so_far = torch.bincount(example, minlength=self.batch)
            nth = torch.arange(example.numel()) - \
                (torch.cumsum(so_far, 0) - so_far).index_select(0, example)
            per_entry = counts.index_select(0, example)
            repeat = torch.minimum(per_entry, (limit - nth * per_entry).clamp(min=0))
            first = torch.cumsum(repeat, 0) - repeat
            within = torch.arange(int(repeat.sum())) - torch.repeat_interleave(first, repeat)
            example_rep = torch.repeat_interleave(example, repeat)
            picked = values.index_select(0, starts.index_select(0, example_rep) + within)
            key = cross_keys(torch.repeat_interleave(key, repeat), picked)
            example = example_rep
        return example, key

    def dropped(self, term: list[str]) -> torch.Tensor | None:
        """``[B]``: the combinations of ``term`` past ``max_keys`` in each example
        (what :meth:`term_keys` leaves out), or None where no feature of it is a list."""
        lists = [self._counts[f] for f in term if f in self._counts]
        if not lists:
            return None
        combinations = torch.ones(self.batch, dtype=torch.int64)
        for counts in lists:
            combinations = combinations * counts
        return (combinations - self.max_keys).clamp(min=0)


class Collective(Protocol):
    """What the wide terms need of the trainer ranks' collectives
    (:class:`streamrec.trainer.collective.Collective`)."""

    distributed: bool

    def slice_sizes(self, n: int) -> list[int]: ...

    def rank(self) -> int: ...

    def all_gather(self, values: torch.Tensor, sizes: list[int] | None = None
                   ) -> torch.Tensor: ...


class _Keys(NamedTuple):
    store: TableStore
    example: torch.Tensor  # [E] the example of each entry
    ids: torch.Tensor  # [U] unique keys
    tags: torch.Tensor  # [U] their tables' tags in the store
    inverse: torch.Tensor  # [E] position of each entry's key in ``ids``
    seen: torch.Tensor  # [U] entries per unique key


def _entries(term_keys: TermKeys, members: list[tuple[list[str], int]]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(example, key, tag)`` of every entry of the terms ``members`` (term, its
    table's tag), term after term."""
    parts = [(term_keys(term), tag) for term, tag in members]
    keys, tags = tagged([(k, tag) for (_, k), tag in parts])
    return torch.cat([e for (e, _), _ in parts]), keys, tags


def _sightings(inverse: torch.Tensor, example: torch.Tensor, learned: torch.Tensor,
               keys: int) -> torch.Tensor:
    """``[keys]``: entries per key whose example has an outcome (``learned``)."""
    return torch.zeros(keys, dtype=torch.int64).index_add_(
        0, inverse, learned.index_select(0, example).to(torch.int64))


class WideTerms:
    """Reads and learns the wide terms of a batch.

    ``tables`` maps :func:`wide_table_name` of each term to its table of
    ``[weight, sum of squared gradients]`` rows, which start at zero.
    """

    def __init__(self, terms: list[list[str]], tables: Mapping[str, EmbeddingTable],
                 lr: float = 0.1, acc0: float = 1.0, collective: Collective | None = None,
                 max_keys: int = MAX_TERM_KEYS) -> None:
        self.terms = [list(t) for t in terms]
        self.tables = {wide_table_name(t): tables[wide_table_name(t)] for t in self.terms}
        self.lr, self.acc0 = lr, acc0
        self.max_keys = max_keys
        # Per table: keys past max_keys that examples learned from would have had.
        self.dropped_keys = dict.fromkeys(self.tables, 0)
        # Trainer ranks: the tables are sharded in one DistributedTableStore.
        self.collective = collective if collective is not None and collective.distributed \
            else None
        term_of = {wide_table_name(t): t for t in self.terms}
        # Tables looked up together, one pass per store: (store, [(term, tag)]).
        self._units = [(store, [(term_of[n], self.tables[n].tag) for n in names])
                       for store, names in stores_of(self.tables)]

    def _keys(self, term_keys: TermKeys) -> list[_Keys]:
        out = []
        for store, members in self._units:
            example, ids, tags = _entries(term_keys, members)
            unique, unique_tags, inverse, seen = native.unique_pairs(ids, tags)
            out.append(_Keys(store, example, unique, unique_tags, inverse, seen))
        return out

    def logits(self, sparse: KeyedJaggedTensor, now_ms: int) -> torch.Tensor:
        """``[B]``: each example's wide logit with the stored weights (learns nothing)."""
        return self.logits_of(TermColumns(sparse, self.max_keys).term_keys, sparse.stride(),
                              now_ms)

    def logits_of(self, term_keys: TermKeys, batch: int, now_ms: int) -> torch.Tensor:
        """:meth:`logits` of ``batch`` examples whose keys ``term_keys(term)`` gives as
        ``(example [E], key [E])`` (serving builds them from a request's columns).
        A ``term_keys`` with a ``many(terms)`` method gives every term's entries at
        once instead, ``(example, key, entries per term)``."""
        total = torch.zeros(batch)
        many = getattr(term_keys, "many", None)
        for store, members in self._units:  # (reads need no dedup: one lookup per entry)
            if many is not None:  # every term's entries at once, in the same order
                example, keys, counts = many([term for term, _ in members])
                tags = torch.repeat_interleave(
                    torch.tensor([tag for _, tag in members], dtype=torch.int64), counts)
            else:
                example, keys, tags = _entries(term_keys, members)
            rows = store.lookup(tags, keys, None, now_ms=now_ms, train=False)
            total.index_add_(0, example, store.read(rows)[:, 0])
        return total

    def learn(self, sparse: KeyedJaggedTensor, base: torch.Tensor, outcomes: torch.Tensor,
              now_ms: int) -> torch.Tensor:
        """Learn ``outcomes`` ``[B, 2]`` in order; ``[B]`` wide logits before each example's step.

        ``base`` ``[B]`` is the rest of each example's logit. Outcome
        ``(n, c)`` adds ``n`` showings and ``c`` clicks (``(w, w y)`` for a
        labeled example of loss weight ``w``; ``(0, 1)``: a click on an
        impression already learned as a negative); the gradient of the
        example's log loss is then ``n p - c``. Rows of zeros only read: an
        impression scored before its label is known. Keys with an outcome
        count as sightings for their table's admission; keys not admitted
        read zero and learn nothing.
        """
        if self.collective is not None:
            return self._learn_together(sparse, base, outcomes, now_ms)
        batch = sparse.stride()
        columns = TermColumns(sparse, self.max_keys)
        keys = self._keys(columns.term_keys)
        self._count_dropped(columns, outcomes)
        if not keys or batch == 0:
            return torch.zeros(batch)
        learned = (outcomes != 0).any(dim=1)
        states, rows_of, slots, examples = [], [], [], []
        offset = 0
        every = bool(learned.all())
        for k in keys:
            # (the common case: every entry learned, each key sighted once per entry)
            sightings = k.seen if every else _sightings(k.inverse, k.example, learned,
                                                        k.ids.numel())
            rows = sighted_lookup(k.store, k.tags, k.ids, sightings, now_ms)
            states.append(k.store.read(rows))
            rows_of.append(rows)
            slots.append(k.inverse + offset)
            examples.append(k.example)
            offset += k.ids.numel()
        state, rows = torch.cat(states), torch.cat(rows_of)
        sums, new = self._learn_in_order(state, rows >= 0, torch.cat(examples),
                                         torch.cat(slots), batch, base, outcomes)
        start = 0
        for k, part in zip(keys, rows_of):
            end = start + part.numel()
            keep = torch.nonzero(part >= 0).reshape(-1)
            if keep.numel():
                k.store.set_rows(part.index_select(0, keep), new[start:end].index_select(0, keep))
            start = end
        return sums

    def _learn_together(self, sparse: KeyedJaggedTensor, base: torch.Tensor,
                        outcomes: torch.Tensor, now_ms: int) -> torch.Tensor:
        """:meth:`learn` on trainer ranks, as one process learns the global batch.

        Collective. Every rank gathers the global batch's entries (rank 0's
        slice first, as the ranks' steps order it), their base logits and
        outcomes; reads every key's row from its owner (one all-reduce); learns
        the whole global batch in order, as one process would; and writes the
        rows it owns. The learning is done on every rank (cheap: the operator),
        so no rank waits for another's results and nothing is sent back.
        """
        c = self.collective
        assert c is not None and len(self._units) == 1
        store, members = self._units[0]
        batch = sparse.stride()
        sizes = c.slice_sizes(batch)
        offset, total = sum(sizes[:c.rank()]), sum(sizes)
        if total == 0:  # (every rank knows it: none takes part in what follows)
            return torch.zeros(batch)
        columns = TermColumns(sparse, self.max_keys)
        example, keys, tags = _entries(columns.term_keys, members)
        self._count_dropped(columns, outcomes)
        entries = torch.stack([example + offset, keys, tags], dim=1)
        per_example = torch.stack([base.detach().float(), outcomes[:, 0].float(),
                                   outcomes[:, 1].float(),
                                   torch.bincount(example, minlength=batch).float()], dim=1)
        every = c.all_gather(per_example, sizes)
        entry_sizes = [int(part.sum()) for part in every[:, 3].split(sizes)]
        every_entry = c.all_gather(entries, entry_sizes)
        examples, ids, tags = every_entry[:, 0], every_entry[:, 1], every_entry[:, 2]
        global_outcomes = every[:, 1:3].contiguous()
        unique, unique_tags, inverse, _ = native.unique_pairs(ids.contiguous(),
                                                              tags.contiguous())
        learned = (global_outcomes != 0).any(dim=1)
        sightings = _sightings(inverse, examples, learned, unique.numel())
        state, found = store.owned_rows(unique_tags, unique, sightings, now_ms)
        sums, new = self._learn_in_order(state, found, examples, inverse, total, every[:, 0],
                                         global_outcomes)
        store.write_owned(new)
        return sums[offset:offset + batch]

    def _count_dropped(self, columns: TermColumns, outcomes: torch.Tensor) -> None:
        """Add the keys ``columns`` left out of examples with an outcome to
        :attr:`dropped_keys` (an impression only read counts when its outcome is
        learned)."""
        learned = None
        for term in self.terms:
            over = columns.dropped(term)
            if over is not None and bool(over.any()):
                if learned is None:
                    learned = (outcomes != 0).any(dim=1)
                self.dropped_keys[wide_table_name(term)] += int(over[learned].sum())

    def _learn_in_order(self, state: torch.Tensor, found: torch.Tensor,
                        example: torch.Tensor, slot: torch.Tensor, batch: int,
                        base: torch.Tensor, outcomes: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The operator over ``batch`` examples, each entry (``example``, key ``slot``
        into ``state``) taken in example order: ``([B]`` sums before each example's
        step, new ``state``)."""
        order = stable_argsort(example)
        offsets = torch.zeros(batch + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(example, minlength=batch), 0, out=offsets[1:])
        return native.wide_learn(state.contiguous(), offsets, slot.index_select(0, order),
                                 found, base.detach().float().contiguous(),
                                 outcomes.float().contiguous(), self.lr, self.acc0)

    def table_names(self) -> list[str]:
        return list(self.tables)

    def expire(self, now_ms: int) -> int:
        """One bounded slice of the wide tables' expiry sweep; returns rows freed."""
        return expire_tables(self.tables, now_ms)

"""Property test: random interleavings of every operation against the plain
reference model, checking exact agreement and the pool invariants after every
step, and that refused steps leave the state untouched."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pagedserve.blockmgr.errors import (
    AlreadyExistsError,
    BlockManagerError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from pagedserve.blockmgr.manager import BlockManager
from pagedserve.blockmgr.ops import (
    AllocateOp,
    AppendBatchOp,
    AppendOp,
    ComputedOp,
    ForkOp,
    FreeOp,
    SwapInOp,
    SwapOutOp,
)
from pagedserve.blockmgr.prefix_hash import chain_hash

from .helpers import FakeClock, make_pool_info
from .reference_model import (
    ERROR_EXISTS,
    ERROR_INVALID,
    ERROR_NOT_FOUND,
    ERROR_PRECONDITION,
    ModelError,
    ModelPool,
)
from .snapshot import snapshot

ERROR_KINDS = {
    NotFoundError: ERROR_NOT_FOUND,
    AlreadyExistsError: ERROR_EXISTS,
    FailedPreconditionError: ERROR_PRECONDITION,
    InvalidArgumentError: ERROR_INVALID,
}
EXECUTOR_IDS = ["ex-a", "ex-b"]
SEQ_IDS = st.integers(0, 6)
# A tiny alphabet and shared stems make prefix hits and evictions common.
STEMS = [[1, 1, 1, 1], [1, 1, 2, 2, 1, 1], [3]]
# Single tokens are common, as in decoding (and they exercise append batches).
TOKENS = st.one_of(
    st.lists(st.integers(1, 3), min_size=1, max_size=1), st.lists(st.integers(1, 3), max_size=3)
)


def to_op(op: tuple):
    kind, *args = op
    return {
        "allocate": lambda s, t, salt, use: AllocateOp(s, t, salt, use),
        "append": AppendOp,
        "computed": ComputedOp,
        "fork": ForkOp,
        "free": FreeOp,
        "swap_out": SwapOutOp,
        "swap_in": SwapInOp,
    }[kind](*args)


def pack_appends(ops: list[tuple]) -> list:
    """The ops with every run of single-token appends as one AppendBatchOp,
    which must give exactly the results of the separate appends."""
    packed: list = []
    for op in ops:
        if op[0] == "append" and len(op[2]) == 1:
            if packed and isinstance(packed[-1], AppendBatchOp):
                last = packed.pop()
                packed.append(AppendBatchOp([*last.seq_ids, op[1]], [*last.token_ids, op[2][0]]))
            else:
                packed.append(AppendBatchOp([op[1]], [op[2][0]]))
        else:
            packed.append(to_op(op))
    return packed


class BlockManagerMachine(RuleBasedStateMachine):
    @initialize(
        data=st.data(),
        block_size=st.sampled_from([1, 2, 3]),
        num_swap=st.integers(0, 8),
        extent=st.sampled_from([1, 2, 3, 4, 16]),
        group=st.sampled_from([1, 2, 3]),
    )
    def setup(self, data, block_size: int, num_swap: int, extent: int, group: int) -> None:
        # At least 10 token slots, so that most drawn prompts fit.
        num_blocks = data.draw(st.integers(max(3, -(-10 // block_size)), 12))
        self.clock = FakeClock()
        self.manager = BlockManager(clock=self.clock, extent_blocks=extent, group_extents=group)
        self.pool_id = self.manager.register_pool(make_pool_info(num_blocks, block_size, num_swap))
        self.model = ModelPool(num_blocks, block_size, num_swap, extent, group)
        self.block_size = block_size
        self.steps_refused = 0

    # ---- executors and leases -----------------------------------------------

    @precondition(lambda self: len(self.model.executors) < len(EXECUTOR_IDS))
    @rule(data=st.data(), lease_ms=st.sampled_from([0, 3000]))
    def register_executor(self, data, lease_ms: int) -> None:
        """Attaches an executor that is not attached yet."""
        executor_id = data.draw(
            st.sampled_from(sorted(set(EXECUTOR_IDS) - set(self.model.executors)))
        )
        self._register(executor_id, lease_ms)

    @precondition(lambda self: self.model.executors)
    @rule(data=st.data())
    def reregister_executor(self, data) -> None:
        """A restarted executor under its old id: everything it held is freed."""
        self._register(data.draw(st.sampled_from(sorted(self.model.executors))), 0)

    def _register(self, executor_id: str, lease_ms: int) -> None:
        granted = self.manager.register_executor(self.pool_id, executor_id, lease_ms)
        self.model.register(executor_id, self.clock.now_s, (lease_ms or 10_000) / 1000)
        assert granted.lease_ms == (lease_ms or 10_000)

    @precondition(lambda self: self.model.executors)
    @rule(data=st.data())
    def unregister_executor(self, data) -> None:
        executor_id = data.draw(st.sampled_from(sorted(self.model.executors)))
        self._call_both(
            lambda: self.manager.unregister_executor(executor_id),
            lambda: self._model_unregister(executor_id),
        )

    def _model_unregister(self, executor_id: str) -> int:
        executor = self.model.live(executor_id, self.clock.now_s)
        count = len(executor.seqs)
        self.model.drop(executor_id)
        return count

    @rule(seconds=st.floats(0.1, 2.5), executor_id=st.sampled_from(EXECUTOR_IDS))
    def heartbeat(self, seconds: float, executor_id: str) -> None:
        """Time passes, then one executor (maybe an expired or unknown one) renews."""
        self.clock.now_s += seconds

        def model_heartbeat() -> int:
            executor = self.model.live(executor_id, self.clock.now_s)
            executor.deadline_s = self.clock.now_s + executor.lease_s
            return round(executor.lease_s * 1000)

        self._call_both(lambda: self.manager.heartbeat(executor_id), model_heartbeat)

    @rule(seconds=st.floats(0.1, 2.5))
    def reap_leases(self, seconds: float) -> None:
        """Time passes and the reaper runs."""
        self.clock.now_s += seconds
        assert self.manager.expire_leases() == self.model.expire(self.clock.now_s)

    # ---- steps ---------------------------------------------------------------

    def _draw_ops(self, data, seqs: dict, count: int) -> list[tuple]:
        """Mostly valid ops: ids are drawn from what the earlier ops leave live
        (assuming they succeed), with an occasional random id."""
        on_device = {seq_id for seq_id, seq in seqs.items() if seq.host is None}
        swapped = set(seqs) - on_device
        lengths = {seq_id: (len(seq.tokens), seq.computed) for seq_id, seq in seqs.items()}
        ops = []
        for _ in range(count):
            kinds = ["allocate"]
            if on_device:
                kinds += ["append"] * 3 + ["computed"] * 3 + ["fork"] * 2 + ["free", "swap_out"]
            if swapped:
                kinds += ["swap_in"] * 3 + ["free"]
            kind = data.draw(st.sampled_from(kinds))
            new_ids = st.sampled_from(sorted(set(range(7)) - on_device - swapped) or [0])
            if kind == "allocate":
                seq_id = data.draw(new_ids)
                tokens = data.draw(st.sampled_from(STEMS)) + data.draw(TOKENS)
                salt = data.draw(st.sampled_from(["", "", "s"]))
                ops.append(("allocate", seq_id, tokens, salt, data.draw(st.booleans())))
                on_device.add(seq_id)
                lengths[seq_id] = (len(tokens), 0)
                continue
            pool = swapped if kind == "swap_in" or (kind == "free" and not on_device) else on_device
            seq_id = data.draw(st.sampled_from(sorted(pool)))
            if kind == "append":
                tokens = data.draw(TOKENS.filter(bool))
                ops.append(("append", seq_id, tokens))
                lengths[seq_id] = (lengths[seq_id][0] + len(tokens), lengths[seq_id][1])
            elif kind == "computed":
                length, computed = lengths[seq_id]
                # Often everything: only computed blocks are cached.
                count_tokens = data.draw(st.sampled_from([length, st.integers(computed, length)]))
                if not isinstance(count_tokens, int):
                    count_tokens = data.draw(count_tokens)
                ops.append(("computed", seq_id, count_tokens))
                lengths[seq_id] = (length, count_tokens)
            elif kind == "fork":
                child = data.draw(new_ids)
                ops.append(("fork", seq_id, child))
                on_device.add(child)
                lengths[child] = lengths[seq_id]
            elif kind == "free":
                ops.append(("free", seq_id))
                on_device.discard(seq_id)
                swapped.discard(seq_id)
            elif kind == "swap_out":
                ops.append(("swap_out", seq_id))
                on_device.discard(seq_id)
                swapped.add(seq_id)
            else:
                ops.append(("swap_in", seq_id))
                swapped.discard(seq_id)
                on_device.add(seq_id)
        return ops

    def _random_step(self, data) -> None:
        executor_id = data.draw(st.sampled_from(sorted(self.model.executors)))
        seqs = self.model.executors[executor_id].seqs
        ops = self._draw_ops(data, seqs, data.draw(st.integers(1, 6)))
        self._step_both(executor_id, ops, pack=data.draw(st.booleans()))

    # Several identical rules: steps should be most of what the machine does.
    @precondition(lambda self: self.model.executors)
    @rule(data=st.data())
    def step(self, data) -> None:
        self._random_step(data)

    @precondition(lambda self: self.model.executors)
    @rule(data=st.data())
    def step_again(self, data) -> None:
        self._random_step(data)

    @precondition(lambda self: self.model.executors)
    @rule(data=st.data())
    def step_once_more(self, data) -> None:
        self._random_step(data)

    @precondition(lambda self: self.model.executors)
    @rule(data=st.data())
    def swap_together(self, data) -> None:
        """As the scheduler preempts and resumes a request: several sequences
        (forks, which share blocks) swapped out, or in, in one step."""
        executor_id = data.draw(st.sampled_from(sorted(self.model.executors)))
        seqs = self.model.executors[executor_id].seqs
        on_device = sorted(seq_id for seq_id, seq in seqs.items() if seq.host is None)
        swapped = sorted(seq_id for seq_id, seq in seqs.items() if seq.host is not None)
        kind, pool = data.draw(st.sampled_from([("swap_out", on_device), ("swap_in", swapped)]))
        chosen = data.draw(st.permutations(pool))[: data.draw(st.integers(2, max(2, len(pool))))]
        self._step_both(executor_id, [(kind, seq_id) for seq_id in chosen])

    @precondition(lambda self: self.model.executors)
    @rule(
        data=st.data(),
        bad=st.sampled_from(["double_free", "unknown", "backwards", "empty", "huge", "dup"]),
    )
    def refused_step(self, data, bad: str) -> None:
        executor_id = data.draw(st.sampled_from(sorted(self.model.executors)))
        seqs = self.model.executors[executor_id].seqs
        ops = self._draw_ops(data, seqs, data.draw(st.integers(0, 3)))
        live = sorted(seqs)
        victim = live[0] if live else 0
        pack = data.draw(st.booleans())
        ops += {
            "double_free": [("free", victim), ("free", victim)],
            "unknown": [("append", 99, [1]), ("append", 98, [1])],
            "backwards": [
                ("computed", victim, 0),
                ("append", victim, [1]),
                ("computed", victim, 0),
            ],
            "empty": [("allocate", 50, [], "", True)],
            "huge": [("append", victim, [1] * (self.model.n * self.block_size + 1))],
            "dup": [("allocate", 60, [1], "", True), ("fork", 60, 60)],
        }[bad]
        self._step_both(executor_id, ops, pack=pack)

    def _step_both(self, executor_id: str, ops: list[tuple], pack: bool = False) -> None:
        def run_manager():
            step = self.manager.step(
                executor_id, pack_appends(ops) if pack else [to_op(op) for op in ops]
            )
            return (
                [
                    (
                        r.ok,
                        r.new_block_ids,
                        r.replaced_positions,
                        r.replaced_block_ids,
                        r.num_cached_tokens,
                    )
                    for r in step.results
                ],
                list(zip(step.copy_src_block_ids, step.copy_dst_block_ids, strict=True)),
                list(
                    zip(step.swap_out_device_block_ids, step.swap_out_host_block_ids, strict=True)
                ),
                list(zip(step.swap_in_host_block_ids, step.swap_in_device_block_ids, strict=True)),
                step.num_free_blocks,
            )

        def run_model():
            out = self.model.step(executor_id, self.clock.now_s, ops)
            held = self.model.executors[executor_id].held
            return (
                out.results,
                out.copies,
                out.swap_outs,
                out.swap_ins,
                len(self.model.free) + len(held),
            )

        self._call_both(run_manager, run_model)

    def _call_both(self, manager_call, model_call) -> None:
        """Runs both; they must agree on the outcome, and a refusal must change nothing."""
        before = snapshot(self.manager)
        try:
            expected = model_call()
        except ModelError as error:
            with pytest.raises(BlockManagerError) as raised:
                manager_call()
            assert ERROR_KINDS[type(raised.value)] == error.kind, str(raised.value)
            after = snapshot(self.manager)
            if error.kind == ERROR_NOT_FOUND and set(after["executors"]) != set(
                before["executors"]
            ):
                return  # an expired executor was dropped on contact: checked by the invariants
            assert after == before
            self.steps_refused += 1
            return
        assert manager_call() == expected

    # ---- invariants ------------------------------------------------------------

    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "model"):
            return
        model, manager = self.model, self.manager
        pool = manager.allocator(self.pool_id).block_pool
        assert pool.free_block_ids() == model.free
        assert pool.free_extent_ids() == model.free_extents
        assert pool.open_group_ids() == model.open_groups
        assert [block.ref_count for block in pool.blocks] == model.ref
        assert sorted(manager.executor_ids()) == sorted(model.executors)
        for executor_id, executor in model.executors.items():
            actual = manager.sequences(executor_id)
            assert sorted(actual) == sorted(executor.seqs)
            state = manager._executors[executor_id]
            assert [block.block_id for block in state.held_blocks] == executor.held
            assert state.held_host_block_ids == executor.held_host
            for seq_id, seq in executor.seqs.items():
                assert actual[seq_id].token_ids == seq.tokens
                assert actual[seq_id].block_ids() == seq.table
                assert actual[seq_id].host_block_ids == seq.host
                assert actual[seq_id].num_computed_tokens == seq.computed
        cached = {
            block.block_id: block.cache_entry.token_ids for block in pool.cache_index().values()
        }
        assert cached == {b: key[1][-self.block_size :] for b, key in model.content.items()}
        assert list(manager.allocator(self.pool_id).swap_pool._free) == model.host_free

    @invariant()
    def pool_invariants(self) -> None:
        if not hasattr(self, "model"):
            return
        stats = self.manager.get_stats(self.pool_id)
        pool = self.manager.allocator(self.pool_id).block_pool
        assert stats.free_blocks + stats.used_blocks + stats.cached_blocks == stats.total_blocks
        counts = self.model.counts()
        assert (stats.free_blocks, stats.used_blocks, stats.cached_blocks) == (
            counts["free"],
            counts["used"],
            counts["cached"],
        )
        assert (stats.shared_blocks, stats.logical_blocks) == (counts["shared"], counts["logical"])
        references: dict[int, int] = {}
        filled: dict[int, int] = {}  # tokens held by each referenced block
        for executor_id in self.manager.executor_ids():
            for seq in self.manager.sequences(executor_id).values():
                for index, block in enumerate(seq.block_table):
                    references[block.block_id] = references.get(block.block_id, 0) + 1
                    in_block = len(seq.token_ids) - index * self.block_size
                    filled[block.block_id] = min(self.block_size, in_block)
                # The decode fast path trusts this flag instead of the ref count
                # when it writes into a partly filled last block (a full one can
                # be shared through the prefix cache, and is never written).
                partly_filled = len(seq.token_ids) % self.block_size != 0
                if seq.block_table and partly_filled and not seq.last_block_maybe_shared:
                    assert seq.block_table[-1].ref_count == 1
        in_queue = set(pool.free_block_ids())
        held = {
            b.block_id
            for e in self.manager.executor_ids()
            for b in self.manager._executors[e].held_blocks
        }
        assert not in_queue & held
        for block in pool.blocks:
            assert block.ref_count == references.get(block.block_id, 0)
            assert not (block.block_id in in_queue and block.ref_count > 0)
            # Unreferenced means queued or held for an executor's copies.
            assert (block.block_id in in_queue or block.block_id in held) == (block.ref_count == 0)
        for block_hash, block in pool.cache_index().items():
            entry = block.cache_entry
            assert entry.block_hash == block_hash
            assert chain_hash(entry.parent_hash, entry.token_ids, entry.extra_key) == block_hash
        slots = len(filled) * self.block_size
        assert stats.kv_utilization == (sum(filled.values()) / slots if slots else 0.0)
        used_hosts = len({h for s in self.model.all_seqs() if s.host is not None for h in s.host})
        assert stats.swapped_blocks == used_hosts
        looked_up = self.model.looked_up
        assert stats.prefix_cache_hit_rate == (self.model.hit / looked_up if looked_up else 0.0)

    def teardown(self) -> None:
        if not hasattr(self, "model"):
            return
        self.manager.expire_leases()
        for executor_id in self.manager.executor_ids():
            self.manager.unregister_executor(executor_id)
        stats = self.manager.get_stats(self.pool_id)
        pool = self.manager.allocator(self.pool_id).block_pool
        assert stats.used_blocks == 0 and stats.swapped_blocks == 0
        assert sorted(pool.free_block_ids()) == list(range(stats.total_blocks))


BlockManagerMachine.TestCase.settings = settings(
    max_examples=600,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBlockManagerMachine = BlockManagerMachine.TestCase

"""The queue: order, wrap-around, pointer, cross-replica gather, validation."""

import numpy as np
import pytest
import tensorflow as tf

from tfssl.errors import UserError
from tfssl.methods.memory_bank import MemoryBank, check_queue_size


def test_initial_rows_are_unit_norm_and_seeded():
    a, b = MemoryBank(8, 4, seed=1), MemoryBank(8, 4, seed=1)
    np.testing.assert_allclose(np.linalg.norm(a.read().numpy(), axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(a.read().numpy(), b.read().numpy())


def test_fifo_order_and_wraparound():
    bank = MemoryBank(6, 2)
    batches = [np.full((2, 2), v, np.float32) for v in (1, 2, 3, 4)]
    for x in batches[:3]:
        bank.enqueue(x)
    np.testing.assert_array_equal(bank.read().numpy()[:, 0], [1, 1, 2, 2, 3, 3])
    assert int(bank.pointer.numpy()) == 0
    bank.enqueue(batches[3])  # overwrites the oldest block
    np.testing.assert_array_equal(bank.read().numpy()[:, 0], [4, 4, 2, 2, 3, 3])
    assert int(bank.pointer.numpy()) == 2


def test_read_is_a_snapshot_before_enqueue():
    bank = MemoryBank(4, 2)

    @tf.function
    def step(x):
        before = bank.read()
        bank.enqueue(x)
        return before

    before = bank.read().numpy()
    np.testing.assert_array_equal(step(tf.ones((2, 2))).numpy(), before)
    np.testing.assert_array_equal(bank.read().numpy()[:2], np.ones((2, 2)))


def test_two_replicas_gather_keys_like_one_device(mirrored):
    strategy = mirrored
    with strategy.scope():
        bank = MemoryBank(8, 2)
    single = MemoryBank(8, 2)
    data = np.arange(24, dtype=np.float32).reshape(12, 2)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(4)

    @tf.function
    def step(x):
        strategy.run(bank.enqueue, args=(x,))

    for x in strategy.experimental_distribute_dataset(ds):
        step(x)
    for x in ds:
        single.enqueue(x)
    expected = single.read().numpy()
    np.testing.assert_array_equal(bank.read().numpy(), expected)
    for replica_value in bank.queue.value.values:
        np.testing.assert_array_equal(replica_value.numpy(), expected)
    assert int(bank.pointer.numpy()) == int(single.pointer.numpy()) == 4


def test_queue_size_must_be_a_multiple_of_the_batch():
    check_queue_size(4096, 256)
    with pytest.raises(UserError, match="--queue_size=4000 .* use 3840 or 4096"):
        check_queue_size(4000, 256)

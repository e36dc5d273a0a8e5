from cairn_common.partitioning import partition_for


def test_partition_is_stable_across_processes_and_releases() -> None:
    # Pinned values: if these change, every deployed profile would move partition.
    assert [partition_for(p, 64) for p in ("user-1", "anon-42", "ü-ñ")] == PINNED


def test_partitions_spread_profiles_evenly() -> None:
    counts = [0] * 64
    for n in range(64_000):
        counts[partition_for(f"user-{n}", 64)] += 1
    assert min(counts) > 800
    assert max(counts) < 1200


PINNED = [8, 52, 39]

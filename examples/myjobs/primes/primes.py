"""Count the primes below LIMIT by trial division, split over WORKERS processes.

Deliberately plain arithmetic: a few CPU-seconds of real work, so that the demo's invoice has a charge
worth tracing back to the usage that caused it.
"""

import os
import time
from multiprocessing import Pool


def count(bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    found = 0
    for n in range(max(lo, 2), hi):
        if n < 4:
            found += 1
            continue
        if n % 2 == 0:
            continue
        d = 3
        while d * d <= n and n % d:
            d += 2
        found += d * d > n
    return found


if __name__ == "__main__":
    limit = int(os.environ.get("LIMIT", "1500000"))
    workers = int(os.environ.get("WORKERS", "2"))
    step = -(-limit // (workers * 8))
    began = time.perf_counter()
    with Pool(workers) as pool:
        total = sum(pool.map(count, [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]))
    print(f"{total} primes below {limit:,} ({workers} processes, {time.perf_counter() - began:.1f} s)")

"""demo.py -- the same asyncio workload on stock asyncio and on unixloop.

Runs N tasks that each await asyncio.sleep(0) and then a short
asyncio.sleep (a timer), on both loops, and prints one line with the best
time of several runs for each and the ratio.
"""
import asyncio
import sys
import time

N_TASKS = 10_000
RUNS = 5

try:
    import unixloop
    unixloop.run  # an empty or half-built package imports but has no run()
except Exception as exc:  # ImportError, or the extension failed to load
    print(f"demo: cannot import unixloop: {exc!r}", file=sys.stderr)
    sys.exit(1)


async def worker():
    await asyncio.sleep(0)
    await asyncio.sleep(0.001)


async def workload(n):
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    loop.call_later(0.001, fired.set_result, None)
    await asyncio.gather(*[worker() for _ in range(n)])
    await fired
    return type(loop)


def best_time(run, n):
    best = float("inf")
    loop_type = None
    for _ in range(RUNS):
        t0 = time.perf_counter()
        loop_type = run(workload(n))
        best = min(best, time.perf_counter() - t0)
    return best, loop_type


def main():
    t_asyncio, _ = best_time(asyncio.run, N_TASKS)
    t_unixloop, loop_type = best_time(unixloop.run, N_TASKS)
    if not loop_type.__module__.startswith("unixloop"):
        print(f"demo: unixloop.run() ran on {loop_type!r}, not a unixloop loop",
              file=sys.stderr)
        return 1
    print(f"{N_TASKS} tasks (sleep + timer), best of {RUNS}: "
          f"asyncio {t_asyncio * 1e3:.1f} ms | unixloop {t_unixloop * 1e3:.1f} ms | "
          f"unixloop is {t_asyncio / t_unixloop:.2f}x asyncio's speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

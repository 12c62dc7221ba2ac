"""The baseline's worker function: what a bare cloudpickling process pool runs (importable by
the pool's workers, which cannot import the benchmark's ``__main__``)."""

import cloudpickle


def run(payload: bytes) -> bytes:
    fn, args = cloudpickle.loads(payload)
    return cloudpickle.dumps(fn(*args))
